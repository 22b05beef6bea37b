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

Because q_ik depends on every class's bin of prediction i, a pane's state counts predictions per
joint key (decided class, bin of s_1, ..., bin of s_K): integer counts, sparse, so merging panes
and taking rows back out are exact. The number of keys is at most the number of predictions and
at most K * bins^(K - 1); docs/estimates.md says what that means for many classes.

The realized metrics the errors are taken against are computed here too, over the labeled rows and
the listed classes: accuracy, macro precision, recall and F1 from a confusion count, and macro ROC
AUC over the score bins (ties within a bin count one half), since the window's multiclass metrics
hold neither macro precision and recall nor an AUC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.metrics.base import check_mergeable, check_snapshot, ratio
from mle_stream.core.metrics.estimated import ESTIMATED, IntArray, _check_bins, isotonic, score_bins
from mle_stream.core.metrics.outcomes import FloatArray

_KIND, _VERSION = "class_score_bins", 1
_NAMES = [f"estimated_{m}{s}" for s in ("", "_error") for m in ESTIMATED] + ["estimated_coverage"]


def _check_classes(classes: Any) -> tuple[str, ...]:
    out = tuple(str(c) for c in classes)
    if len(out) < 2 or len(set(out)) != len(out):
        raise ValueError(f"classes must be at least 2 distinct names, got {classes!r}")
    return out


def class_scores(outputs: Sequence[Mapping[str, float] | None], classes: Sequence[str]) -> FloatArray:
    """Each prediction's scores map as a row of shares per listed class (normalised over the whole
    map, as log loss reads it); NaN rows for predictions without one (failed)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.full((len(outputs), len(classes)), np.nan)
    for i, scores in enumerate(outputs):
        if scores is None:
            continue
        total = sum(scores.values())
        row = out[i]
        row[:] = 0.0
        if total > 0:
            for c, s in scores.items():
                k = index.get(c)
                if k is not None:
                    row[k] = s / total
    return out


def class_codes(names: Sequence[Any], classes: Sequence[str]) -> IntArray:
    """Each class name's index among `classes`; -1 for a name not listed (or None)."""
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((-1 if n is None else index.get(str(n), -1) for n in names), dtype=np.int64, count=len(names))


def _add_rows(keys: IntArray, counts: IntArray, more_keys: IntArray,
              more_counts: IntArray) -> tuple[IntArray, IntArray]:
    """Sparse counts per key row plus others: sorted unique keys, zero counts dropped."""
    all_keys = np.concatenate([keys, more_keys])
    if len(all_keys) == 0:
        return all_keys, np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(all_keys, axis=0, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=np.concatenate([counts, more_counts]).astype(np.float64),
                         minlength=len(unique))
    summed = np.rint(summed).astype(np.int64)
    nonzero = summed != 0
    return unique[nonzero], summed[nonzero]


class ClassScoreBins:
    """Counts of one pane or window for multiclass estimates: served and labeled predictions per
    joint key (decided class, bin of each class's share), the labeled rows per (true class, class
    bin) and a confusion count (true class, or K for one not listed, by decided class). Predictions
    whose decided class is not listed are counted apart (`unlisted`) and left out of the estimates."""

    def __init__(self, classes: Sequence[str], bins: int = 64) -> None:
        self.classes = _check_classes(classes)
        self.bins = _check_bins(bins)
        k = len(self.classes)
        self._served_keys: IntArray = np.zeros((0, k + 1), dtype=np.int64)
        self._served: IntArray = np.zeros(0, dtype=np.int64)
        self._labeled_keys: IntArray = np.zeros((0, k + 1), dtype=np.int64)
        self._labeled: IntArray = np.zeros(0, dtype=np.int64)
        self._positives: IntArray = np.zeros((k, self.bins), dtype=np.int64)
        self._confusion: IntArray = np.zeros((k + 1, k), dtype=np.int64)
        self.unlisted = 0  # served predictions with scores whose decided class is not listed

    @property
    def count(self) -> int:
        """Served predictions with scores and a listed decided class."""
        return int(self._served.sum())

    @property
    def labeled(self) -> int:
        return int(self._labeled.sum())

    def _keys(self, scores: FloatArray, decided: IntArray) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        ok = ~np.isnan(scores).any(axis=1) & (decided >= 0)
        keys = np.empty((int(ok.sum()), len(self.classes) + 1), dtype=np.int64)
        keys[:, 0] = decided[ok]
        keys[:, 1:] = score_bins(scores[ok], self.bins)
        return keys, ok

    def serve(self, scores: FloatArray, decided: IntArray) -> None:
        """Served predictions: their class shares (class_scores; NaN rows, failed predictions', are
        left out) and decided classes (class_codes)."""
        keys, ok = self._keys(scores, decided)
        self.unlisted += int((~np.isnan(scores).any(axis=1) & (decided < 0)).sum())
        self._served_keys, self._served = _add_rows(self._served_keys, self._served, keys,
                                                    np.ones(len(keys), dtype=np.int64))

    def update(self, scores: FloatArray, decided: IntArray, truth: IntArray, weights: FloatArray) -> None:
        """Labeled rows: shares, decided classes, true classes (class_codes: -1 for a class not
        listed) and weights (-1 takes one back out)."""
        keys, ok = self._keys(scores, decided)
        w = np.rint(weights[ok]).astype(np.int64)
        self._labeled_keys, self._labeled = _add_rows(self._labeled_keys, self._labeled, keys, w)
        k = len(self.classes)
        t = truth[ok]
        listed = t >= 0
        flat = t[listed] * self.bins + keys[listed, 1 + t[listed]]
        self._positives += np.bincount(flat, weights=w[listed], minlength=k * self.bins).astype(np.int64).reshape(
            k, self.bins)
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
        merged._positives = self._positives + other._positives
        merged._confusion = self._confusion + other._confusion
        merged.unlisted = self.unlisted + other.unlisted
        return merged

    def reference_counts(self) -> tuple[IntArray, IntArray]:
        """Per (class, bin of its share): labeled predictions and those whose label is that class."""
        k = len(self.classes)
        labeled = np.zeros((k, self.bins), dtype=np.int64)
        for c in range(k):
            labeled[c] = np.bincount(self._labeled_keys[:, 1 + c], weights=self._labeled,
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

    def values(self, calibration: ClassCalibration | None) -> dict[str, float | None]:
        """estimated_<metric> over the served predictions; estimated_<metric>_error, the estimate
        over the labeled predictions minus the realized metric (realized()); estimated_coverage,
        the share of served predictions with scores whose decided class is listed and every class
        share of which falls in a bin the reference had labels in. None without a frozen
        calibration, or without labels for the errors."""
        p = None if calibration is None else calibration.probabilities()
        if p is None or calibration is None or self.count == 0:
            return dict.fromkeys(_NAMES)
        out: dict[str, float | None] = {f"estimated_{m}": v for m, v in
                                        estimate_classes(self._served_keys, self._served, p).items()}
        if self.labeled > 0:
            truth = self.realized()
            for m, v in estimate_classes(self._labeled_keys, self._labeled, p).items():
                r = truth.get(m)
                out[f"estimated_{m}_error"] = None if v is None or r is None else v - r
        covered = calibration.covered()
        inside = np.ones(len(self._served), dtype=bool)
        for c in range(len(self.classes)):
            inside &= covered[c, self._served_keys[:, 1 + c]]
        out["estimated_coverage"] = float(self._served[inside].sum()) / (self.count + self.unlisted)
        return {name: out.get(name) for name in _NAMES}

    def snapshot(self) -> dict[str, Any]:
        return {"kind": _KIND, "v": _VERSION, "classes": list(self.classes), "bins": self.bins,
                "served_keys": self._served_keys.tolist(), "served": self._served.tolist(),
                "labeled_keys": self._labeled_keys.tolist(), "labeled": self._labeled.tolist(),
                "positives": self._positives.tolist(), "confusion": self._confusion.tolist(),
                "unlisted": self.unlisted}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ClassScoreBins:
        check_snapshot(data, _KIND, _VERSION)
        state = cls(data["classes"], int(data["bins"]))
        k = len(state.classes)
        for name in ("served", "labeled"):
            keys = np.asarray(data[f"{name}_keys"], dtype=np.int64).reshape(-1, k + 1)
            counts = np.asarray(data[name], dtype=np.int64)
            if len(keys) != len(counts):
                raise ValueError(f"snapshot field {name!r} must hold a count per key")
            setattr(state, f"_{name}_keys", keys)
            setattr(state, f"_{name}", counts)
        for name, shape in (("positives", (k, state.bins)), ("confusion", (k + 1, k))):
            array = np.asarray(data[name], dtype=np.int64)
            if array.shape != shape:
                raise ValueError(f"snapshot field {name!r} must have shape {shape}")
            setattr(state, f"_{name}", array)
        state.unlisted = int(data["unlisted"])
        return state


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


def estimate_classes(keys: IntArray, counts: IntArray, p: FloatArray) -> dict[str, float | None]:
    """The estimates of predictions counted per joint key (decided class, class bins), class j's
    bin b being the label with (uncalibrated-normalised) probability p[j, b]."""
    k, bins = p.shape
    n = counts.astype(np.float64)
    q = calibrated(keys, p)
    d = keys[:, 0]
    nq = n[:, None] * q  # expected rows of each class per key
    tp = np.bincount(d, weights=nq[np.arange(len(d)), d], minlength=k).astype(np.float64)
    decided = np.bincount(d, weights=n, minlength=k).astype(np.float64)
    true = nq.sum(axis=0)
    pos = np.zeros((k, bins))
    neg = np.zeros((k, bins))
    for c in range(k):
        pos[c] = np.bincount(keys[:, 1 + c], weights=nq[:, c], minlength=bins)
        neg[c] = np.bincount(keys[:, 1 + c], weights=n - nq[:, c], minlength=bins)
    return _macro(float(tp.sum()) / float(n.sum()), tp, decided, true, pos, neg)


class ClassCalibration:
    """Per listed class, the map from the bin of its share to P(the label is that class), learned
    one-vs-rest from a reference period's labeled counts and frozen once the reference holds
    `reference_labels` labeled predictions (see docs/estimates.md)."""

    def __init__(self, classes: Sequence[str], bins: int = 64, reference_labels: int = 2000) -> None:
        self.classes = _check_classes(classes)
        self.bins = _check_bins(bins)
        if isinstance(reference_labels, bool) or not isinstance(reference_labels, int) or reference_labels < 1:
            raise ValueError(f"reference_labels must be a positive integer, got {reference_labels!r}")
        self.reference_labels = reference_labels
        k = len(self.classes)
        self._labeled = np.zeros((k, self.bins), dtype=np.int64)
        self._positives = np.zeros((k, self.bins), dtype=np.int64)
        self.reference_panes = 0
        self._p: FloatArray | None = None

    @property
    def labels(self) -> int:
        """Reference labels taken so far (each labeled prediction counted once)."""
        return int(self._labeled[0].sum())

    @property
    def frozen(self) -> bool:
        return self.labels >= self.reference_labels

    def add(self, state: ClassScoreBins) -> None:
        """A reference pane's labeled rows; ignored once the calibration is frozen."""
        if self.frozen:
            return
        if state.bins != self.bins or state.classes != self.classes:
            raise ValueError("cannot calibrate from a state of other classes or bins")
        labeled, positives = state.reference_counts()
        if labeled[0].sum() <= 0:
            return
        self._labeled = self._labeled + labeled
        self._positives = self._positives + positives
        self.reference_panes += 1
        self._p = None

    def covered(self) -> npt.NDArray[np.bool_]:
        return self._labeled > 0

    def probabilities(self) -> FloatArray | None:
        """P(class) per (class, bin) once frozen (None before): isotonic per class, as the binary
        calibration (before the normalisation per prediction, which `calibrated` does)."""
        if not self.frozen:
            return None
        if self._p is None:
            self._p = np.stack([isotonic(self._positives[c], self._labeled[c]) for c in range(len(self.classes))])
        return self._p

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "class_calibration", "v": 1, "classes": list(self.classes), "bins": self.bins,
                "reference_labels": self.reference_labels, "labeled": self._labeled.tolist(),
                "positives": self._positives.tolist(), "reference_panes": self.reference_panes}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ClassCalibration:
        check_snapshot(data, "class_calibration", 1)
        state = cls(data["classes"], int(data["bins"]), int(data["reference_labels"]))
        shape = (len(state.classes), state.bins)
        state._labeled = np.asarray(data["labeled"], dtype=np.int64)
        state._positives = np.asarray(data["positives"], dtype=np.int64)
        if state._labeled.shape != shape or state._positives.shape != shape:
            raise ValueError(f"class calibration snapshot must hold {shape} counts per field")
        state.reference_panes = int(data["reference_panes"])
        return state


__all__ = ["ClassCalibration", "ClassScoreBins", "calibrated", "class_codes", "class_scores", "estimate_classes"]
