"""Label-free performance estimates of a binary model (confidence-based performance estimation,
CBPE, as NannyML describes it): a window's accuracy, precision, recall, F1 and ROC AUC estimated
from the scores of all its predictions, labeled or not, once the scores are calibrated on a
reference period's labels.

With p_i the calibrated probability that prediction i is positive, the expected confusion matrix
of the window is

    TP = sum of p_i over predicted positives     FP = sum of (1 - p_i) over predicted positives
    FN = sum of p_i over predicted negatives     TN = sum of (1 - p_i) over predicted negatives

and the estimates are the metrics of that matrix. The estimated ROC AUC is the expected
Mann-Whitney statistic over the score bins (a bin's expected positives n_b p_b and negatives
n_b (1 - p_b); pairs within a bin count one half), as a ratio of expectations.

`ScoreBins` is a pane's mergeable state: integer counts of predictions per (decision, score bin),
served and labeled, and the labeled positives. Everything is a count, so merging panes and taking
rows back out are exact. `Calibration` is the map from a score bin to P(positive): isotonic
regression (pool adjacent violators) over the reference's labeled counts per bin. Bins are those
of the binary metric state's score histogram, coarsened to `bins`: half the score, half its
log-odds, so scores packed near 0 or 1 keep resolution.

The multiclass state and calibration (core/metrics/estimated_multiclass.py) share their
interfaces, `Estimate` and `ReferenceCounts`: the window state and the evaluator use only those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
import numpy.typing as npt

from mle_stream.core.metrics.base import check_mergeable, check_snapshot, ratio
from mle_stream.core.metrics.binary import FINEST_BITS, finest_bins
from mle_stream.core.metrics.outcomes import FloatArray

IntArray = npt.NDArray[np.int64]
ESTIMATED = ("accuracy", "precision", "recall", "f1", "roc_auc")  # estimated_<name>


def score_bins(score: FloatArray, bins: int) -> IntArray:
    """The bin of each score (in [0, 1]), monotone in the score: one binary search over the bins'
    edges (cheaper on the hot path than computing each score's coordinate)."""
    return np.searchsorted(_edges(bins), score, side="right")  # type: ignore[no-any-return]


@cache
def _edges(bins: int) -> FloatArray:
    """The scores at which the coordinate of the binary state's histogram crosses b / bins, b = 1
    .. bins - 1, by bisection: bin b holds the scores from edge b - 1 (included) to edge b."""
    targets = (np.arange(1, bins, dtype=np.int64) << FINEST_BITS) // bins
    lo, hi = np.zeros(bins - 1), np.ones(bins - 1)
    for _ in range(64):
        mid = (lo + hi) / 2
        below = finest_bins(mid) < targets
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return hi


def check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 1 << 16:
        raise ValueError(f"bins must be an integer in [2, 65536], got {bins!r}")
    return bins


class Estimate(ABC):
    """A pane's or window's state for label-free estimates, binary (ScoreBins) or multiclass
    (ClassScoreBins, core/metrics/estimated_multiclass.py): what the window state and the evaluator
    ask of it, so that neither needs to know which task's it holds. Rows come as the task reads them
    for the estimates (Task.estimate_scores and estimate_codes, core/tasks); `calibration` is the
    model's, made by the same task (None while there is none)."""

    KIND: ClassVar[str]  # the snapshot's kind

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """What the counts mean (the bins; multiclass, the classes too): a state or calibration of
        other params cannot be read or merged with this one."""

    @abstractmethod
    def serve(self, scores: FloatArray, decided: npt.NDArray[Any], calibration: ReferenceCounts | None = None) -> None:
        """Served predictions; rows without scores (NaN: failed predictions) are left out."""

    @abstractmethod
    def update(self, scores: FloatArray, decided: npt.NDArray[Any], truth: npt.NDArray[Any], weights: FloatArray,
               calibration: ReferenceCounts | None = None) -> None:
        """Labeled rows (weight -1 takes one back out)."""

    @abstractmethod
    def merge(self, other: Self) -> Self: ...

    @abstractmethod
    def values(self, calibration: ReferenceCounts | None,
               realized: Mapping[str, float | None]) -> dict[str, float | None]:
        """The estimated_* metrics; `realized`: the window's metrics the estimates' errors are taken against."""

    @abstractmethod
    def reference_counts(self) -> tuple[IntArray, IntArray]:
        """Labeled predictions and positives per bin (multiclass: per class and bin): what a calibration learns."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def restore(cls, data: dict[str, Any]) -> Self: ...


class ScoreBins(Estimate):
    """Counts per (decision, score bin) of one pane or window: predictions served with a score,
    labeled predictions, and labeled positives. Row 0 of each array: decided negative; row 1:
    decided positive."""

    KIND = "score_bins"

    def __init__(self, bins: int = 64) -> None:
        self.bins = check_bins(bins)
        self._served = np.zeros((2, bins), dtype=np.int64)
        self._labeled = np.zeros((2, bins), dtype=np.int64)
        self._positives = np.zeros((2, bins), dtype=np.int64)

    @property
    def count(self) -> int:
        """Served predictions with a score."""
        return int(self._served.sum())

    @property
    def labeled(self) -> int:
        return int(self._labeled.sum())

    @property
    def params(self) -> dict[str, Any]:
        return {"bins": self.bins}

    def serve(self, scores: FloatArray, decided: npt.NDArray[Any], calibration: ReferenceCounts | None = None) -> None:
        """Served predictions: a score and a decision (bool) each; rows without a usable score (NaN:
        a failed prediction) are left out. The counts do not depend on the calibration (only
        values() reads it)."""
        ok = scores == scores  # not NaN; scores are in [0, 1] by contract
        if not ok.all():
            scores, decided = scores[ok], decided[ok]
        flat = decided.astype(np.int64) * self.bins + score_bins(scores, self.bins)
        self._served += np.bincount(flat, minlength=2 * self.bins).reshape(2, self.bins)

    def update(self, scores: FloatArray, decided: npt.NDArray[Any], truth: npt.NDArray[Any],
               weights: FloatArray | None = None, calibration: ReferenceCounts | None = None) -> None:
        """Labeled rows: score, decision and label (bools), weight (-1 takes one back out; None:
        all +1); the calibration is not needed, as for serve."""
        # One count per (decision, bin, label): a single bincount gives both labeled and positives.
        predicted, y = np.asarray(decided, dtype=bool), np.asarray(truth, dtype=bool)
        code = ((predicted * self.bins + score_bins(scores, self.bins)) << 1) + y
        k = 4 * self.bins
        if weights is None:  # integer counts directly
            counts = np.bincount(code, minlength=k)
        else:
            counts = np.rint(np.bincount(code, weights=weights, minlength=k)).astype(np.int64)
        counts = counts.reshape(2, self.bins, 2)
        self._labeled += counts[:, :, 0] + counts[:, :, 1]
        self._positives += counts[:, :, 1]

    def merge(self, other: ScoreBins) -> ScoreBins:
        check_mergeable(self, other, ("bins",))
        merged = ScoreBins(self.bins)
        merged._served = self._served + other._served
        merged._labeled = self._labeled + other._labeled
        merged._positives = self._positives + other._positives
        return merged

    def values(self, calibration: ReferenceCounts | None,
               realized: Mapping[str, float | None]) -> dict[str, float | None]:
        """estimated_<metric> over the served predictions; estimated_<metric>_error, the estimate
        over the labeled predictions minus `realized[<metric>]` (the metric their labels give);
        estimated_coverage, the share of served predictions in bins the reference had labels in.
        None without a frozen calibration, or without labels for the errors."""
        names = [f"estimated_{m}{s}" for s in ("", "_error") for m in ESTIMATED] + ["estimated_coverage"]
        p = None if calibration is None else calibration.probabilities()
        if p is None or calibration is None or self.count == 0:
            return dict.fromkeys(names)
        out: dict[str, float | None] = {f"estimated_{k}": v for k, v in estimate(self._served, p).items()}
        if self.labeled > 0:
            for k, v in estimate(self._labeled, p).items():
                truth = realized.get(k)
                out[f"estimated_{k}_error"] = None if v is None or truth is None else v - truth
        out["estimated_coverage"] = float(self._served.sum(axis=0) @ calibration.covered()) / self.count
        return {name: out.get(name) for name in names}

    def reference_counts(self) -> tuple[IntArray, IntArray]:
        """Labeled predictions and positives per bin, whatever the decision (for a Calibration)."""
        return self._labeled.sum(axis=0), self._positives.sum(axis=0)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": 1, "bins": self.bins, "served": self._served.tolist(),
                "labeled": self._labeled.tolist(), "positives": self._positives.tolist()}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ScoreBins:
        check_snapshot(data, cls.KIND, 1)
        state = cls(int(data["bins"]))
        for name in ("served", "labeled", "positives"):
            array = np.asarray(data[name], dtype=np.int64)
            if array.shape != (2, state.bins):
                raise ValueError(f"snapshot field {name!r} must be 2 lists of {state.bins} counts")
            setattr(state, f"_{name}", array)
        return state


def estimate(counts: IntArray, p: FloatArray) -> dict[str, float | None]:
    """The metrics of the expected confusion matrix of predictions counted per (decision, bin),
    bin b being positive with probability p[b]; zero divisions read 0.0, as the realized metrics do."""
    negative, positive = counts[0].astype(np.float64), counts[1].astype(np.float64)
    n = float(counts.sum())
    tp = float(positive @ p)
    fp = float(positive.sum()) - tp
    fn = float(negative @ p)
    tn = float(negative.sum()) - fn
    per_bin = negative + positive
    pos, neg = per_bin * p, per_bin * (1.0 - p)
    p_total, n_total = float(pos.sum()), float(neg.sum())
    auc = None
    if p_total > 0 and n_total > 0:
        auc = float(pos @ (np.cumsum(neg) - 0.5 * neg)) / (p_total * n_total)
    return {"accuracy": (tp + tn) / n, "precision": ratio(tp, tp + fp) or 0.0, "recall": ratio(tp, tp + fn) or 0.0,
            "f1": ratio(2 * tp, 2 * tp + fp + fn) or 0.0, "roc_auc": auc}


class ReferenceCounts(ABC):
    """What every calibration learns from: labeled and positive counts per bin (per class for
    multiclass: shape (classes, bins)), summed over the reference's panes until `reference_labels`
    labeled predictions, then frozen. Calibration (binary) and ClassCalibration (multiclass) share
    this interface, as their panes' states share Estimate's."""

    KIND: ClassVar[str]  # the snapshot's kind

    def __init__(self, shape: tuple[int, ...], reference_labels: int) -> None:
        if isinstance(reference_labels, bool) or not isinstance(reference_labels, int) or reference_labels < 1:
            raise ValueError(f"reference_labels must be a positive integer, got {reference_labels!r}")
        self.reference_labels = reference_labels
        self._labeled = np.zeros(shape, dtype=np.int64)
        self._positives = np.zeros(shape, dtype=np.int64)
        self.reference_panes = 0
        self._p: FloatArray | None = None

    @property
    def labels(self) -> int:
        """Reference labels taken so far (each labeled prediction counted once: one class's row)."""
        return int(self._labeled.reshape(-1, self._labeled.shape[-1])[0].sum())

    @property
    def frozen(self) -> bool:
        return self.labels >= self.reference_labels

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """As Estimate.params: a calibration reads and learns from the states of its own params."""

    @abstractmethod
    def probabilities(self) -> FloatArray | None:
        """The calibrated probabilities per bin (multiclass: per class and bin) once frozen; None before."""

    def add(self, state: Estimate) -> None:
        """A reference pane's labeled rows; ignored once the calibration is frozen."""
        if self.frozen:
            return
        if state.params != self.params:
            raise ValueError(f"cannot calibrate {self.params} from a state of {state.params}")
        labeled, positives = state.reference_counts()
        if labeled.reshape(-1, labeled.shape[-1])[0].sum() <= 0:
            return  # a pane without labels is not counted as one
        self._labeled = self._labeled + labeled
        self._positives = self._positives + positives
        self.reference_panes += 1
        self._p = None

    @abstractmethod
    def snapshot(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def restore(cls, data: dict[str, Any]) -> Self: ...

    def _restore_counts(self, data: dict[str, Any]) -> None:
        shape = self._labeled.shape
        self._labeled = np.asarray(data["labeled"], dtype=np.int64)
        self._positives = np.asarray(data["positives"], dtype=np.int64)
        if self._labeled.shape != shape or self._positives.shape != shape:
            raise ValueError(f"{data['kind']} snapshot must hold {shape} counts per field")
        self.reference_panes = int(data["reference_panes"])

    def covered(self) -> npt.NDArray[np.bool_]:
        return self._labeled > 0


class Calibration(ReferenceCounts):
    """The map from score bin to P(positive), learned from a reference period's labeled counts
    and frozen once the reference holds `reference_labels` labels (see docs/estimates.md)."""

    KIND = "calibration"

    def __init__(self, bins: int = 64, reference_labels: int = 2000) -> None:
        self.bins = check_bins(bins)
        super().__init__((self.bins,), reference_labels)

    @property
    def params(self) -> dict[str, Any]:
        return {"bins": self.bins}

    def probabilities(self) -> FloatArray | None:
        """P(positive) per bin once frozen (None before): isotonic over the bins with reference
        labels, a bin without any taking its nearest lower neighbour's value (the highest's above)."""
        if not self.frozen:
            return None
        if self._p is None:
            self._p = isotonic(self._positives, self._labeled)
        return self._p

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.KIND, "v": 1, "bins": self.bins, "reference_labels": self.reference_labels,
                "labeled": self._labeled.tolist(), "positives": self._positives.tolist(),
                "reference_panes": self.reference_panes}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Calibration:
        check_snapshot(data, cls.KIND, 1)
        state = cls(int(data["bins"]), int(data["reference_labels"]))
        state._restore_counts(data)
        return state


Restorable = TypeVar("Restorable", Estimate, ReferenceCounts)


def restore_like(fresh: Restorable, stored: dict[str, Any] | None) -> Restorable:
    """`stored` (an estimate state's or a calibration's snapshot, or None) restored if it is of
    `fresh`'s kind and params, else `fresh`: a checkpoint taken without estimates, or under other
    bins or classes, starts them afresh, since its counts would mean something else."""
    if stored and stored.get("kind") == fresh.KIND:
        restored = type(fresh).restore(stored)
        if restored.params == fresh.params:
            return restored
    return fresh


def isotonic(positives: IntArray, counts: IntArray) -> FloatArray:
    """The non-decreasing fit of positives/counts over the bins with counts, weighted by counts
    (pool adjacent violators: sklearn's IsotonicRegression on the binned data); empty bins take the
    value of the nearest non-empty bin below (above, for those below the first)."""
    blocks: list[list[float]] = []  # [positives, count, bins]
    for b in np.flatnonzero(counts > 0).tolist():
        blocks.append([float(positives[b]), float(counts[b]), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            pos, n, k = blocks.pop()
            blocks[-1][0] += pos
            blocks[-1][1] += n
            blocks[-1][2] += k
    filled = np.flatnonzero(counts > 0)
    values = np.repeat([pos / n for pos, n, _ in blocks], [int(k) for _, _, k in blocks])
    out = np.empty(len(counts), dtype=np.float64)
    if len(filled) == 0:
        out[:] = np.nan
        return out
    below = np.searchsorted(filled, np.arange(len(counts)), side="right") - 1
    out[:] = values[np.maximum(below, 0)]
    return out


__all__ = ["ESTIMATED", "Calibration", "Estimate", "ReferenceCounts", "ScoreBins", "estimate", "isotonic",
           "restore_like", "score_bins"]
