"""Label-free performance estimates of a multiclass model (CBPE as NannyML does it for multiclass
models): the binary estimates of core/metrics/estimated.py, one-vs-rest per class, macro-averaged.

The topology lists the classes (estimates.classes). A prediction's scores map is normalised to sum
to 1; s_k is its share for class k (0 if the map has no such key). Per class k, a one-vs-rest
calibration maps the bin of s_k to P(the label is k): isotonic regression over the reference's
labeled counts, as the binary calibration (core/metrics/estimated.py). The calibrated
probabilities c_k of one prediction are then normalised to sum to 1, q_k = c_k / sum_j c_j, which
is what NannyML does. With d_i the class prediction i decided, the expected one-vs-rest confusion
matrix of class k is

    TP_k = sum of q_ik over i with d_i = k     FP_k = sum of (1 - q_ik) over i with d_i = k
    FN_k = sum of q_ik over i with d_i != k    TN_k = the rest

estimated_accuracy is the mean q_{i, d_i}; estimated_precision, _recall and _f1 are the means over
the listed classes of the per-class metrics of those matrices (macro averages; a zero division
reads 0.0); estimated_roc_auc is the mean over the classes of each class's expected
Mann-Whitney statistic over the bins of s_k (expected positives q_ik, negatives 1 - q_ik; pairs
within a bin count one half), as the binary one.

Because q_ik depends on every class's bin of prediction i, it cannot be read back from counts per
class and bin alone. Once the calibration is frozen (it never changes after), a row's q is known
when it comes: a pane then adds its rows and their q (in integer units of 2**-32) per (decided the
class or not, class, bin), K * 2 * 2 * bins integers however many rows. Rows that came before are
counted per joint key (decided class, bin of s_1, ..., bin of s_K), sparse, and turned into the
same counts when read. Both are integers, so merging panes and taking rows back out are exact.

The realized metrics the errors are taken against are computed here too, over the labeled rows and
the listed classes: accuracy, macro precision, recall and F1 from a confusion count, and macro ROC
AUC over the score bins (ties within a bin count one half), since the window's multiclass metrics
hold neither macro precision and recall nor an AUC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.metrics.base import check_mergeable, check_snapshot, ratio
from mle_stream.core.metrics.estimated import (
    ESTIMATED,
    Estimate,
    IntArray,
    ReferenceCounts,
    check_bins,
    isotonic,
    score_bins,
)
from mle_stream.core.metrics.outcomes import FloatArray

_NAMES = [f"estimated_{m}{s}" for s in ("", "_error") for m in ESTIMATED] + ["estimated_coverage"]


def _check_classes(classes: Any) -> tuple[str, ...]:
    out = tuple(str(c) for c in classes)
    if len(out) < 2 or len(set(out)) != len(out):
        raise ValueError(f"classes must be at least 2 distinct names, got {classes!r}")
    return out


def class_scores(outputs: Sequence[Mapping[str, float] | None], classes: Sequence[str]) -> FloatArray:
    """Each prediction's scores map as a row of shares per listed class (normalised over the whole
    map, as log loss reads it); NaN rows for predictions without one (failed)."""
    nan = (float("nan"),) * len(classes)
    get = itemgetter(*classes) if len(classes) > 1 else None  # the usual case: every class in every map

    def row(s: Mapping[str, float] | None) -> Any:
        if s is None:
            return nan
        try:
            return get(s) if get is not None else (s[classes[0]],)
        except KeyError:
            return [s.get(c, 0.0) for c in classes]

    values = np.array([row(s) for s in outputs], dtype=np.float64).reshape(len(outputs), len(classes))
    total = np.fromiter((1.0 if s is None else sum(s.values()) for s in outputs), dtype=np.float64,
                        count=len(outputs))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, values / total[:, None], 0.0 * values)  # type: ignore[no-any-return]


def class_codes(names: Sequence[Any], classes: Sequence[str]) -> IntArray:
    """Each class name's index among `classes` (names are strings, as the multiclass task reads
    decisions and labels); -1 for a name not listed (or None)."""
    index: dict[Any, int] = {c: i for i, c in enumerate(classes)}
    return np.fromiter(map(lambda n: index.get(n, -1), names), dtype=np.int64, count=len(names))


def _add_rows(keys: IntArray, counts: IntArray, more_keys: IntArray,
              more_counts: IntArray) -> tuple[IntArray, IntArray]:
    """Sparse counts per key row plus others: sorted unique keys, zero counts dropped."""
    all_keys = np.concatenate([keys, more_keys])
    all_counts = np.concatenate([counts, more_counts]).astype(np.float64)
    if len(all_keys) == 0:
        return all_keys, np.zeros(0, dtype=np.int64)
    radix = int(all_keys.max()) + 1
    if radix ** all_keys.shape[1] < 1 << 62:  # each key as one integer: a 1-d unique, much faster
        code = np.zeros(len(all_keys), dtype=np.int64)
        for j in range(all_keys.shape[1]):
            code = code * radix + all_keys[:, j]
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        unique = all_keys[first]
    else:
        unique, inverse = np.unique(all_keys, axis=0, return_inverse=True)
    summed = np.rint(np.bincount(inverse.ravel(), weights=all_counts, minlength=len(unique))).astype(np.int64)
    nonzero = summed != 0
    return unique[nonzero], summed[nonzero]


class ClassScoreBins(Estimate):
    """Counts of one pane or window for multiclass estimates.

    Rows served (or labeled) once the calibration is frozen are added straight to dense counts per
    (decided the class or not, class, bin of its share): rows, and the sum of their calibrated,
    normalised probabilities q of that class in units of 2**-32 (integers, so merging is exact; the
    rounding is below 1e-9 per row). The calibration never changes once frozen, so these sums are
    what the rows would give at any later read. Rows that came before it froze are kept as sparse
    counts per joint key (decided class, bin of each class's share), turned into the same dense
    counts when read. Also the labeled rows per (true class, class bin), a confusion count (true
    class, or K for one not listed, by decided class), and the served rows whose decided class is
    not listed (`unlisted`, left out of the estimates)."""

    KIND = "class_score_bins"

    def __init__(self, classes: Sequence[str], bins: int = 64) -> None:
        self.classes = _check_classes(classes)
        self.bins = check_bins(bins)
        k = len(self.classes)
        self._served_keys: IntArray = np.zeros((0, k + 1), dtype=np.int64)  # before the calibration froze
        self._served: IntArray = np.zeros(0, dtype=np.int64)
        self._labeled_keys: IntArray = np.zeros((0, k + 1), dtype=np.int64)
        self._labeled: IntArray = np.zeros(0, dtype=np.int64)
        self._served_dense: IntArray = np.zeros((2, 2, k, self.bins), dtype=np.int64)  # [rows | q], decided, k, bin
        self._labeled_dense: IntArray = np.zeros((2, 2, k, self.bins), dtype=np.int64)
        self._covered = 0  # dense served rows whose every class share falls in a bin with reference labels
        self._positives: IntArray = np.zeros((k, self.bins), dtype=np.int64)
        self._confusion: IntArray = np.zeros((k + 1, k), dtype=np.int64)
        self.unlisted = 0  # served predictions with scores whose decided class is not listed

    @property
    def count(self) -> int:
        """Served predictions with scores and a listed decided class."""
        return int(self._served.sum()) + int(self._served_dense[0, :, 0].sum())

    @property
    def labeled(self) -> int:
        return int(self._labeled.sum()) + int(self._labeled_dense[0, :, 0].sum())

    @property
    def params(self) -> dict[str, Any]:
        return {"classes": self.classes, "bins": self.bins}

    def _keys(self, scores: FloatArray, decided: IntArray) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        ok = ~np.isnan(scores).any(axis=1) & (decided >= 0)
        keys = np.empty((int(ok.sum()), len(self.classes) + 1), dtype=np.int64)
        keys[:, 0] = decided[ok]
        keys[:, 1:] = score_bins(scores[ok], self.bins)
        return keys, ok

    def serve(self, scores: FloatArray, decided: npt.NDArray[Any], calibration: ReferenceCounts | None = None) -> None:
        """Served predictions: their class shares (class_scores; NaN rows, failed predictions', are
        left out) and decided classes (class_codes); `calibration`, the model's."""
        keys, ok = self._keys(scores, decided)
        self.unlisted += int((~np.isnan(scores).any(axis=1) & (decided < 0)).sum())
        ones = np.ones(len(keys), dtype=np.int64)
        p = None if calibration is None else calibration.probabilities()
        if p is None or calibration is None:
            self._served_keys, self._served = _add_rows(self._served_keys, self._served, keys, ones)
        else:
            self._served_dense += dense(keys, ones, p, self.bins)
            self._covered += _covered(keys, ones, calibration.covered())

    def update(self, scores: FloatArray, decided: npt.NDArray[Any], truth: npt.NDArray[Any], weights: FloatArray,
               calibration: ReferenceCounts | None = None) -> None:
        """Labeled rows: shares, decided classes, true classes (class_codes: -1 for a class not
        listed) and weights (-1 takes one back out)."""
        keys, ok = self._keys(scores, decided)
        w = np.rint(weights[ok]).astype(np.int64)
        p = None if calibration is None else calibration.probabilities()
        if p is None:
            self._labeled_keys, self._labeled = _add_rows(self._labeled_keys, self._labeled, keys, w)
        else:
            self._labeled_dense += dense(keys, w, p, self.bins)
        k = len(self.classes)
        t = truth[ok]
        listed = t >= 0
        flat = t[listed] * self.bins + keys[listed, 1 + t[listed]]
        self._positives += np.rint(np.bincount(flat, weights=w[listed], minlength=k * self.bins)).astype(
            np.int64).reshape(k, self.bins)
        code = np.where(listed, t, k) * k + keys[:, 0]
        self._confusion += np.rint(np.bincount(code, weights=w, minlength=(k + 1) * k)).astype(np.int64).reshape(
            k + 1, k)

    def merge(self, other: ClassScoreBins) -> ClassScoreBins:
        check_mergeable(self, other, ("classes", "bins"))
        merged = ClassScoreBins(self.classes, self.bins)
        merged._served_keys, merged._served = _add_rows(self._served_keys, self._served, other._served_keys,
                                                        other._served)
        merged._labeled_keys, merged._labeled = _add_rows(self._labeled_keys, self._labeled, other._labeled_keys,
                                                          other._labeled)
        for name in ("_served_dense", "_labeled_dense", "_positives", "_confusion", "_covered", "unlisted"):
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        return merged

    def reference_counts(self) -> tuple[IntArray, IntArray]:
        """Per (class, bin of its share): labeled predictions and those whose label is that class."""
        k = len(self.classes)
        labeled = self._labeled_dense[0].sum(axis=0).copy()
        for c in range(k):
            labeled[c] += np.bincount(self._labeled_keys[:, 1 + c], weights=self._labeled,
                                      minlength=self.bins).astype(np.int64)
        return labeled, self._positives.copy()

    def realized(self) -> dict[str, float | None]:
        """The labeled rows' metrics over the listed classes (see the module docstring)."""
        n = self.labeled
        if n <= 0:
            return dict.fromkeys(ESTIMATED)
        k = len(self.classes)
        tp = np.diag(self._confusion[:k]).astype(np.float64)
        decided = self._confusion.sum(axis=0).astype(np.float64)
        true = self._confusion[:k].sum(axis=1).astype(np.float64)
        labeled, positives = self.reference_counts()
        return _macro(float(tp.sum()) / n, tp, decided, true, positives.astype(np.float64),
                      (labeled - positives).astype(np.float64))

    def values(self, calibration: ReferenceCounts | None,
               realized: Mapping[str, float | None] | None = None) -> dict[str, float | None]:
        """estimated_<metric> over the served predictions; estimated_<metric>_error, the estimate
        over the labeled predictions minus the realized metric (realized(), not the window's
        metrics `realized`: those hold neither macro precision and recall nor an AUC);
        estimated_coverage, the share of served predictions with scores whose decided class is
        listed and every class share of which falls in a bin the reference had labels in. None
        without a frozen calibration, or without labels for the errors."""
        p = None if calibration is None else calibration.probabilities()
        if p is None or calibration is None or self.count == 0:
            return dict.fromkeys(_NAMES)
        served = self._served_dense + dense(self._served_keys, self._served, p, self.bins)
        out: dict[str, float | None] = {f"estimated_{m}": v for m, v in estimate_dense(served).items()}
        if self.labeled > 0:
            truth = self.realized()
            labeled = self._labeled_dense + dense(self._labeled_keys, self._labeled, p, self.bins)
            for m, v in estimate_dense(labeled).items():
                r = truth.get(m)
                out[f"estimated_{m}_error"] = None if v is None or r is None else v - r
        covered = self._covered + _covered(self._served_keys, self._served, calibration.covered())
        out["estimated_coverage"] = covered / (self.count + self.unlisted)
        return {name: out.get(name) for name in _NAMES}

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": 1, "classes": list(self.classes), "bins": self.bins,
                "served_keys": self._served_keys.tolist(), "served": self._served.tolist(),
                "labeled_keys": self._labeled_keys.tolist(), "labeled": self._labeled.tolist(),
                "served_dense": self._served_dense.tolist(), "labeled_dense": self._labeled_dense.tolist(),
                "covered": self._covered, "positives": self._positives.tolist(),
                "confusion": self._confusion.tolist(), "unlisted": self.unlisted}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ClassScoreBins:
        check_snapshot(data, cls.KIND, 1)
        state = cls(data["classes"], int(data["bins"]))
        k = len(state.classes)
        for name in ("served", "labeled"):
            keys = np.asarray(data[f"{name}_keys"], dtype=np.int64).reshape(-1, k + 1)
            counts = np.asarray(data[name], dtype=np.int64)
            if len(keys) != len(counts):
                raise ValueError(f"snapshot field {name!r} must hold a count per key")
            setattr(state, f"_{name}_keys", keys)
            setattr(state, f"_{name}", counts)
        for name, shape in (("positives", (k, state.bins)), ("confusion", (k + 1, k)),
                            ("served_dense", (2, 2, k, state.bins)), ("labeled_dense", (2, 2, k, state.bins))):
            array = np.asarray(data[name], dtype=np.int64)
            if array.shape != shape:
                raise ValueError(f"snapshot field {name!r} must have shape {shape}")
            setattr(state, f"_{name}", array)
        state._covered = int(data["covered"])
        state.unlisted = int(data["unlisted"])
        return state


UNIT = 2.0 ** 32  # the dense sums of q count units of 2**-32


def dense(keys: IntArray, counts: IntArray, p: FloatArray, bins: int) -> IntArray:
    """Rows counted per joint key as dense counts [rows | q in units of 2**-32, decided the class
    or not, class, bin of its share], under the calibration p (per class and bin)."""
    k = p.shape[0]
    out = np.zeros((2, 2, k, bins), dtype=np.int64)
    if len(keys) == 0:
        return out
    q = np.rint(calibrated(keys, p) * UNIT).astype(np.int64)  # (m, k)
    decided = (keys[:, :1] == np.arange(k)[None, :]).astype(np.int64)  # (m, k)
    flat = ((decided * k + np.arange(k)[None, :]) * bins + keys[:, 1:]).ravel()
    size = 2 * k * bins
    w = np.repeat(counts, k).astype(np.float64)
    out[0] = np.rint(np.bincount(flat, weights=w, minlength=size)).astype(np.int64).reshape(2, k, bins)
    # The q sums split in 16-bit halves: float64 bincounts add them exactly up to 2**37 rows.
    qc = q.ravel() * np.repeat(counts, k)
    hi, lo = qc >> 16, qc & 0xFFFF
    out[1] = ((np.rint(np.bincount(flat, weights=hi.astype(np.float64), minlength=size)).astype(np.int64) << 16)
              + np.rint(np.bincount(flat, weights=lo.astype(np.float64), minlength=size)).astype(np.int64)
              ).reshape(2, k, bins)
    return out


def _covered(keys: IntArray, counts: IntArray, covered: npt.NDArray[np.bool_]) -> int:
    inside = np.ones(len(keys), dtype=bool)
    for c in range(covered.shape[0]):
        inside &= covered[c, keys[:, 1 + c]]
    return int(counts[inside].sum())


def estimate_dense(counts: IntArray) -> dict[str, float | None]:
    """The estimates of dense counts (see dense): per class k, TP_k the q of rows decided k, the
    rows decided k, the expected rows of class k, and per bin of its share the expected positives
    and negatives."""
    rows, q = counts[0].astype(np.float64), counts[1].astype(np.float64) / UNIT
    n = float(rows[:, 0].sum())
    tp = q[1].sum(axis=1)
    decided = rows[1].sum(axis=1)
    pos = q.sum(axis=0)
    true = pos.sum(axis=1)
    return _macro(float(tp.sum()) / n, tp, decided, true, pos, rows.sum(axis=0) - pos)


def _auc(pos: FloatArray, neg: FloatArray) -> float | None:
    """Mann-Whitney over bins (pairs within a bin count one half), as a ratio of totals."""
    p_total, n_total = float(pos.sum()), float(neg.sum())
    if p_total <= 0 or n_total <= 0:
        return None
    return float(pos @ (np.cumsum(neg) - 0.5 * neg)) / (p_total * n_total)


def _macro(accuracy: float, tp: FloatArray, decided: FloatArray, true: FloatArray, pos: FloatArray,
           neg: FloatArray) -> dict[str, float | None]:
    """accuracy and the macro averages from per-class TP, decided and true totals, and per (class,
    bin) positives and negatives for the AUC (the mean over the classes where it is defined)."""
    precision = [ratio(float(a), float(b)) or 0.0 for a, b in zip(tp, decided)]
    recall = [ratio(float(a), float(b)) or 0.0 for a, b in zip(tp, true)]
    f1 = [ratio(2 * float(a), float(b + c)) or 0.0 for a, b, c in zip(tp, decided, true)]
    aucs = [a for a in (_auc(pos[c], neg[c]) for c in range(len(tp))) if a is not None]
    return {"accuracy": accuracy, "precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
            "f1": float(np.mean(f1)), "roc_auc": float(np.mean(aucs)) if aucs else None}


def calibrated(keys: IntArray, p: FloatArray) -> FloatArray:
    """q per key and class: the calibrated probabilities of its bins, normalised to sum to 1 (the
    uniform distribution if every one reads 0)."""
    k = p.shape[0]
    c = np.stack([p[j, keys[:, 1 + j]] for j in range(k)], axis=1) if len(keys) else np.zeros((0, k))
    total = c.sum(axis=1, keepdims=True)
    return np.where(total > 0, c / np.where(total > 0, total, 1.0), 1.0 / k)  # type: ignore[no-any-return]


class ClassCalibration(ReferenceCounts):
    """Per listed class, the map from the bin of its share to P(the label is that class), learned
    one-vs-rest from a reference period's labeled counts and frozen once the reference holds
    `reference_labels` labeled predictions (see docs/estimates.md)."""

    KIND = "class_calibration"

    def __init__(self, classes: Sequence[str], bins: int = 64, reference_labels: int = 2000) -> None:
        self.classes = _check_classes(classes)
        self.bins = check_bins(bins)
        super().__init__((len(self.classes), self.bins), reference_labels)

    @property
    def params(self) -> dict[str, Any]:
        return {"classes": self.classes, "bins": self.bins}

    def probabilities(self) -> FloatArray | None:
        """P(class) per (class, bin) once frozen (None before): isotonic per class, as the binary
        calibration (before the normalisation per prediction, which `calibrated` does)."""
        if not self.frozen:
            return None
        if self._p is None:
            self._p = np.stack([isotonic(self._positives[c], self._labeled[c]) for c in range(len(self.classes))])
        return self._p

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": 1, "classes": list(self.classes), "bins": self.bins,
                "reference_labels": self.reference_labels, "labeled": self._labeled.tolist(),
                "positives": self._positives.tolist(), "reference_panes": self.reference_panes}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ClassCalibration:
        check_snapshot(data, cls.KIND, 1)
        state = cls(data["classes"], int(data["bins"]), int(data["reference_labels"]))
        state._restore_counts(data)
        return state


__all__ = ["ClassCalibration", "ClassScoreBins", "calibrated", "class_codes", "class_scores", "dense", "estimate_dense"]
