"""Binary classification metrics of one window, from integer counts and float sums that merge.

Counts are integers and float sums (log loss, Brier, scores per calibration bin) exact sums
(exact_sum.py): a state is the same bit for bit however its rows were grouped, and its values
match scikit-learn to rounding. The two ranking metrics, roc_auc and average_precision, come from a score histogram
(positive and negative counts per score bin), because the exact values need every score kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.exact_sum import SCALE_BITS, exact_column_sums, pack, square_parts, to_float, unpack
from mle_stream.core.metrics.base import (
    EMPTY_MOMENTS,
    Moments,
    add_moments,
    check_mergeable,
    check_snapshot,
    combine_moments,
    moment_columns,
    moments_mean_std,
    moments_snapshot,
    ratio,
    restore_moments,
)
from mle_stream.core.metrics.outcomes import BinaryOutcomes, FloatArray

IntArray = npt.NDArray[np.int64]

_KIND, _VERSION = "binary", 3  # v2: exact sums; v3: the Brier terms' squares (v2 restores without them)
# sklearn.metrics.log_loss clips probabilities to [eps, 1 - eps], eps of the input's dtype.
_EPS = float(np.finfo(np.float64).eps)
# The finest histogram level has 2**40 bins: scores closer than ~1e-12 share a bin, coarser than
# that the histogram is exact. JSON carries these integers exactly (< 2**53).
FINEST_BITS = 40
# Log-odds beyond +-ln(1e12) (scores within 1e-12 of 0 or 1) are clipped into the end bins.
_LOGIT_RANGE = math.log((1 - 1e-12) / 1e-12)


class BinaryMetrics:
    """Binary metrics of the `predicted` decision, of extra score thresholds, and of the scores.

    values(): count; accuracy, error_rate (misclassified share, from counts), precision, recall,
    f1 of `predicted`; accuracy@t, precision@t, recall@t, f1@t, positive_rate@t for each t in
    `thresholds` (score >= t is positive, keys like "precision@0.5"); roc_auc, roc_auc_error_bound,
    average_precision, average_precision_error_bound; log_loss, log_loss_std, brier_score,
    brier_score_std (the per-prediction losses' and Brier terms' sample standard deviations, for a
    sequential test), expected_calibration_error; positive_rate (share predicted positive),
    label_rate (share labelled positive), mean_score. Everything but count is None for an empty
    state; the standard deviations with fewer than two rows, and brier_score_std for a state
    restored from a v2 snapshot, which did not keep the squares.

    Where scikit-learn warns and returns 0.0 we return 0.0 too: precision with no predicted
    positive, recall with no positive label, f1 when both are missing, and average_precision when
    there is no positive label. roc_auc is None with a single class (sklearn raises). log_loss is
    defined with one class present (sklearn needs `labels=[False, True]` to agree). Probabilities
    are clipped to [eps, 1 - eps] for log_loss, eps = float64 machine epsilon, as sklearn does.

    Calibration bins are sklearn.calibration.calibration_curve(strategy="uniform")'s: edges
    np.linspace(0, 1, calibration_bins + 1), closed on the right (a score on an edge counts in the
    lower bin; np.histogram would put it in the upper one). ECE = sum_b n_b/n |mean(y)_b - mean(s)_b|.

    The score histogram. Scores are mapped to a coordinate that is half the score and half its
    log-odds (a fraud model's negatives packed below 0.001 keep relative resolution, mid-range
    scores keep absolute resolution) and binned at 2**40 bins over it. Whenever more than
    `score_bins` bins are non-empty, neighbouring bins are merged pairwise, level after level,
    until at most `score_bins` remain: a snapshot never holds more than `score_bins` bins, and a
    window of up to `score_bins` rows is exact. The level, the finest at which the bins fit,
    depends only on the rows held, so merging states equals updating from the union. Taking rows
    back out (weight -1) does not refine a coarsened histogram again.

    Its error bound. A bin reads as a tie (sklearn's rule for equal scores), so only
    positive-negative pairs sharing a bin can be misordered. With P_b, N_b the positive and
    negative counts of bin b and P, N the totals:

        |roc_auc - exact| <= sum_b P_b N_b / (2 P N)                       (roc_auc_error_bound)
        |average_precision - exact| <= sum_b P_b/P max(hi_b - p_b, p_b - lo_b)
                                                            (average_precision_error_bound)

    where, walking bins from the highest score down with tp0, fp0 the counts above bin b and
    tp1 = tp0 + P_b, fp1 = fp0 + N_b: p_b = tp1 / (tp1 + fp1) is the precision the bin reads,
    hi_b = tp1 / (tp1 + fp0) and lo_b = (tp0 + 1) / (tp0 + 1 + fp1) bound the precision at any
    positive inside it. Both bounds are computed from the state, so a policy can see them (how
    large they get in practice: docs/metrics.md).
    """

    def __init__(self, thresholds: Sequence[float] = (0.5,), score_bins: int = 10_000,
                 calibration_bins: int = 10) -> None:
        ts = [float(t) for t in thresholds]
        if any(not 0.0 <= t <= 1.0 for t in ts):  # also refuses NaN
            raise ValueError(f"thresholds must lie in [0, 1], got {list(thresholds)!r}")
        if len(set(ts)) != len(ts):
            raise ValueError(f"thresholds must be distinct, got {list(thresholds)!r}")
        if isinstance(score_bins, bool) or not isinstance(score_bins, int) or score_bins < 2:
            raise ValueError(f"score_bins must be an integer >= 2, got {score_bins!r}")
        if isinstance(calibration_bins, bool) or not isinstance(calibration_bins, int) or calibration_bins < 1:
            raise ValueError(f"calibration_bins must be an integer >= 1, got {calibration_bins!r}")
        # Sorted, so that (0.3, 0.5) and (0.5, 0.3) are the same hyperparameter and merge.
        self.thresholds: tuple[float, ...] = tuple(sorted(ts))
        self.score_bins = score_bins
        self.calibration_bins = calibration_bins
        self._thresholds = np.array(self.thresholds, dtype=np.float64)
        self._inner_edges = np.linspace(0.0, 1.0, calibration_bins + 1)[1:-1]
        self._n = 0
        self._positives = 0  # labelled positive
        self._tp = 0  # of the `predicted` column
        self._fp = 0
        self._tp_at = np.zeros(len(ts), dtype=np.int64)  # per threshold
        self._fp_at = np.zeros(len(ts), dtype=np.int64)
        # Of the per-prediction losses: their sum is the log loss's, their spread is for a sequential test.
        self._loss_moments: Moments = EMPTY_MOMENTS
        self._brier_sum = 0  # exact sums: integer counts of 2**-1074
        self._brier_sq_sum: int | None = 0  # of the Brier terms' squares; None: unknown (a v2 snapshot)
        self._cal_count = np.zeros(calibration_bins, dtype=np.int64)
        self._cal_positives = np.zeros(calibration_bins, dtype=np.int64)
        self._cal_score_sum = [0] * calibration_bins
        self._level = 0  # histogram bins are finest-level bins >> level
        self._bins = np.zeros(0, dtype=np.int64)  # sorted, non-empty bins only
        self._bin_pos = np.zeros(0, dtype=np.int64)
        self._bin_neg = np.zeros(0, dtype=np.int64)

    @property
    def count(self) -> int:
        return self._n

    @property
    def score_histogram(self) -> tuple[IntArray, IntArray]:
        """Positive and negative label counts per score bin, bins in rising score order (see the
        class docstring): what a rank test needs beyond the AUC itself."""
        return self._bin_pos.copy(), self._bin_neg.copy()

    def update(self, batch: BinaryOutcomes) -> None:
        w = batch.weights()
        score = np.asarray(batch.score, dtype=np.float64)
        if not np.all((score >= 0.0) & (score <= 1.0)):  # also catches NaN
            raise ValueError("score must be a probability in [0, 1] for every row")
        y = np.asarray(batch.y_true, dtype=bool)
        predicted = np.asarray(batch.predicted, dtype=bool)
        wy = w * y  # +-1 on positive labels, 0 elsewhere
        wn = w - wy

        self._n += int(w.sum())
        self._positives += int(wy.sum())
        self._tp += int(wy @ predicted)
        self._fp += int(wn @ predicted)
        at = score[None, :] >= self._thresholds[:, None]
        self._tp_at += (at @ wy).astype(np.int64)
        self._fp_at += (at @ wn).astype(np.int64)

        p_label = np.clip(np.where(y, score, 1.0 - score), _EPS, 1.0 - _EPS)  # as sklearn clips
        losses = -np.log(p_label)
        cal = np.searchsorted(self._inner_edges, score)  # calibration_curve's own binning
        k = self.calibration_bins
        brier_terms = (score - y) ** 2
        brier_sq_hi, brier_sq_lo = square_parts(brier_terms)
        loss_s, loss_q_hi, loss_q_lo, brier, brier_q_hi, brier_q_lo, *cal_scores = exact_column_sums(
            [*moment_columns(losses, w), w * brier_terms, w * brier_sq_hi, w * brier_sq_lo],
            grouped=(w * score, cal, k))
        self._loss_moments = add_moments(self._loss_moments, int(w.sum()), (loss_s, loss_q_hi, loss_q_lo))
        self._brier_sum += brier
        if self._brier_sq_sum is not None:
            self._brier_sq_sum += brier_q_hi + brier_q_lo
        self._cal_count += np.bincount(cal, weights=w, minlength=k).astype(np.int64)
        self._cal_positives += np.bincount(cal, weights=wy, minlength=k).astype(np.int64)
        self._cal_score_sum = [a + b for a, b in zip(self._cal_score_sum, cal_scores)]

        bins = finest_bins(score) >> self._level
        self._set_histogram(self._level, np.concatenate([self._bins, bins]),
                            np.concatenate([self._bin_pos, wy.astype(np.int64)]),
                            np.concatenate([self._bin_neg, wn.astype(np.int64)]))

    def merge(self, other: BinaryMetrics) -> BinaryMetrics:
        check_mergeable(self, other, ("thresholds", "score_bins", "calibration_bins"))
        merged = BinaryMetrics(self.thresholds, self.score_bins, self.calibration_bins)
        merged._n = self._n + other._n
        merged._positives = self._positives + other._positives
        merged._tp = self._tp + other._tp
        merged._fp = self._fp + other._fp
        merged._tp_at = self._tp_at + other._tp_at
        merged._fp_at = self._fp_at + other._fp_at
        merged._loss_moments = combine_moments(self._loss_moments, other._loss_moments)
        merged._brier_sum = self._brier_sum + other._brier_sum
        merged._brier_sq_sum = (None if self._brier_sq_sum is None or other._brier_sq_sum is None
                                else self._brier_sq_sum + other._brier_sq_sum)
        merged._cal_count = self._cal_count + other._cal_count
        merged._cal_positives = self._cal_positives + other._cal_positives
        merged._cal_score_sum = [a + b for a, b in zip(self._cal_score_sum, other._cal_score_sum)]
        level = max(self._level, other._level)
        shift_a, shift_b = level - self._level, level - other._level
        merged._set_histogram(level, np.concatenate([self._bins >> shift_a, other._bins >> shift_b]),
                              np.concatenate([self._bin_pos, other._bin_pos]),
                              np.concatenate([self._bin_neg, other._bin_neg]))
        return merged

    def _set_histogram(self, level: int, bins: IntArray, pos: IntArray, neg: IntArray) -> None:
        """Sum duplicate bins, drop empty ones, and coarsen until at most score_bins remain. The
        finest level that fits depends only on the rows held, not on the order they came in, so
        merging states equals updating from the union (for states built without removals: a bin
        emptied by a removal no longer counts against the capacity)."""
        bins, pos, neg = _sum_by_bin(bins, pos, neg)
        if len(bins) > self.score_bins:
            shift = _smallest_fitting_shift(bins, self.score_bins)
            level += shift
            bins, pos, neg = _sum_by_bin(bins >> shift, pos, neg)
        self._level, self._bins, self._bin_pos, self._bin_neg = level, bins, pos, neg

    def values(self) -> dict[str, float | None]:
        n, p = self._n, self._positives
        out: dict[str, float | None] = {"count": n}
        if n <= 0:
            names = ["accuracy", "precision", "recall", "f1"]
            names += [f"{m}@{t!r}" for t in self.thresholds for m in [*names, "positive_rate"]]
            names += ["error_rate", "roc_auc", "roc_auc_error_bound", "average_precision",
                      "average_precision_error_bound", "log_loss", "log_loss_std", "brier_score",
                      "brier_score_std", "expected_calibration_error", "positive_rate", "label_rate", "mean_score"]
            return out | dict.fromkeys(names)
        out |= _confusion_metrics(n, p, self._tp, self._fp, "")
        # From the counts, not 1 - accuracy, so that it is exact (the policy compares it).
        out["error_rate"] = (self._fp + p - self._tp) / n
        for t, tp, fp in zip(self.thresholds, self._tp_at.tolist(), self._fp_at.tolist()):
            out |= _confusion_metrics(n, p, tp, fp, f"@{t!r}")
            out[f"positive_rate@{t!r}"] = (tp + fp) / n  # a sequential precision@t test counts from it
        out |= self._ranking_metrics()
        out["log_loss"], out["log_loss_std"] = moments_mean_std(self._loss_moments)
        out["brier_score"] = to_float(self._brier_sum, n)
        out["brier_score_std"] = (None if self._brier_sq_sum is None
                                  else moments_mean_std((n, self._brier_sum, self._brier_sq_sum))[1])
        # sum_b |positives_b - score sum_b|, exactly: the positives in the sums' unit.
        gaps = sum(abs((positives << SCALE_BITS) - scores)
                   for positives, scores in zip(self._cal_positives.tolist(), self._cal_score_sum))
        out["expected_calibration_error"] = to_float(gaps, n)
        out["positive_rate"] = (self._tp + self._fp) / n
        out["label_rate"] = p / n
        out["mean_score"] = to_float(sum(self._cal_score_sum), n)
        return out

    def _ranking_metrics(self) -> dict[str, float | None]:
        pos, neg = self._bin_pos.astype(np.float64), self._bin_neg.astype(np.float64)
        p_total, n_total = float(pos.sum()), float(neg.sum())
        out: dict[str, float | None] = dict.fromkeys(["roc_auc", "roc_auc_error_bound"])
        if p_total > 0 and n_total > 0:
            neg_below = np.cumsum(neg) - neg
            out["roc_auc"] = float(pos @ (neg_below + 0.5 * neg)) / (p_total * n_total)
            out["roc_auc_error_bound"] = float(pos @ neg) / (2.0 * p_total * n_total)
        if p_total <= 0:
            # sklearn warns that recall is ill-defined and returns 0.0.
            return out | {"average_precision": 0.0, "average_precision_error_bound": 0.0}
        pos_d, neg_d = pos[::-1], neg[::-1]  # highest scores first
        tp1, fp1 = np.cumsum(pos_d), np.cumsum(neg_d)
        tp0, fp0 = tp1 - pos_d, fp1 - neg_d
        has = pos_d > 0
        read = tp1[has] / (tp1[has] + fp1[has])
        hi = tp1[has] / (tp1[has] + fp0[has])
        lo = (tp0[has] + 1.0) / (tp0[has] + 1.0 + fp1[has])
        share = pos_d[has] / p_total
        out["average_precision"] = float(share @ read)
        out["average_precision_error_bound"] = float(share @ np.maximum(hi - read, read - lo))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": _KIND, "v": _VERSION,
            "thresholds": list(self.thresholds), "score_bins": self.score_bins,
            "calibration_bins": self.calibration_bins,
            "n": self._n, "positives": self._positives, "tp": self._tp, "fp": self._fp,
            "tp_at": self._tp_at.tolist(), "fp_at": self._fp_at.tolist(),
            "loss_moments": moments_snapshot(self._loss_moments), "brier_sum": pack(self._brier_sum),
            "brier_sq_sum": None if self._brier_sq_sum is None else pack(self._brier_sq_sum),
            "cal_count": self._cal_count.tolist(), "cal_positives": self._cal_positives.tolist(),
            "cal_score_sum": [pack(v) for v in self._cal_score_sum],
            "level": self._level, "bins": self._bins.tolist(),
            "bin_pos": self._bin_pos.tolist(), "bin_neg": self._bin_neg.tolist(),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> BinaryMetrics:
        if isinstance(data, dict) and data.get("v") == 2:  # v2 lacks only the Brier squares: unknown
            data = {**data, "v": _VERSION, "brier_sq_sum": None}
        check_snapshot(data, _KIND, _VERSION)
        state = cls(data["thresholds"], int(data["score_bins"]), int(data["calibration_bins"]))
        state._n, state._positives = int(data["n"]), int(data["positives"])
        state._tp, state._fp = int(data["tp"]), int(data["fp"])
        state._tp_at = _array(data["tp_at"], np.int64, len(state.thresholds), "tp_at")
        state._fp_at = _array(data["fp_at"], np.int64, len(state.thresholds), "fp_at")
        state._brier_sum = unpack(data["brier_sum"])
        state._brier_sq_sum = None if data["brier_sq_sum"] is None else unpack(data["brier_sq_sum"])
        state._loss_moments = restore_moments(data["loss_moments"])
        k = state.calibration_bins
        state._cal_count = _array(data["cal_count"], np.int64, k, "cal_count")
        state._cal_positives = _array(data["cal_positives"], np.int64, k, "cal_positives")
        if not isinstance(data["cal_score_sum"], list) or len(data["cal_score_sum"]) != k:
            raise ValueError(f"snapshot field 'cal_score_sum' must be a list of {k} exact sums")
        state._cal_score_sum = [unpack(v) for v in data["cal_score_sum"]]
        m = len(data["bins"])
        state._level = int(data["level"])
        state._bins = _array(data["bins"], np.int64, m, "bins")
        state._bin_pos = _array(data["bin_pos"], np.int64, m, "bin_pos")
        state._bin_neg = _array(data["bin_neg"], np.int64, m, "bin_neg")
        return state

    def __repr__(self) -> str:
        return (f"BinaryMetrics(thresholds={self.thresholds!r}, score_bins={self.score_bins}, "
                f"calibration_bins={self.calibration_bins}, count={self._n})")


def finest_bins(score: FloatArray) -> IntArray:
    """The finest-level histogram bin of each score: monotone in the score, so bins keep order."""
    with np.errstate(divide="ignore"):
        log_odds = np.log(score) - np.log1p(-score)  # -inf at 0, +inf at 1: clipped just below
    z = np.clip(log_odds, -_LOGIT_RANGE, _LOGIT_RANGE)
    coordinate = 0.5 * score + 0.25 * (z / _LOGIT_RANGE + 1.0)  # in [0, 1]
    bins: IntArray = np.minimum((coordinate * (1 << FINEST_BITS)).astype(np.int64), (1 << FINEST_BITS) - 1)
    return bins


def _sum_by_bin(bins: IntArray, pos: IntArray, neg: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Counts summed per distinct bin, sorted by bin, empty bins dropped (integers throughout)."""
    if len(bins) == 0:
        return bins, pos, neg
    order = np.argsort(bins, kind="stable")
    bins, pos, neg = bins[order], pos[order], neg[order]
    starts = np.flatnonzero(np.concatenate([[True], bins[1:] != bins[:-1]]))
    bins, pos, neg = bins[starts], np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)
    keep = (pos != 0) | (neg != 0)
    return bins[keep], pos[keep], neg[keep]


def _smallest_fitting_shift(bins: IntArray, capacity: int) -> int:
    """The fewest levels to coarsen sorted, distinct `bins` by so that at most `capacity` remain.
    A binary search: coarsening never increases the number of distinct bins."""
    def distinct(shift: int) -> int:
        shifted = bins >> shift
        return 1 + int(np.count_nonzero(shifted[1:] != shifted[:-1]))

    lo, hi = 1, FINEST_BITS  # at FINEST_BITS every bin is 0: one bin, which always fits
    while lo < hi:
        mid = (lo + hi) // 2
        if distinct(mid) <= capacity:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _confusion_metrics(n: int, p: int, tp: int, fp: int, suffix: str) -> dict[str, float | None]:
    """accuracy, precision, recall, f1 from counts; 0.0 where sklearn warns (zero_division)."""
    fn = p - tp
    tn = n - p - fp
    return {
        f"accuracy{suffix}": (tp + tn) / n,
        f"precision{suffix}": ratio(tp, tp + fp) or 0.0,
        f"recall{suffix}": ratio(tp, p) or 0.0,
        f"f1{suffix}": ratio(2 * tp, 2 * tp + fp + fn) or 0.0,
    }


def _array(values: Any, dtype: type, length: int, name: str) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.asarray(values, dtype=dtype)
    if array.shape != (length,):
        raise ValueError(f"snapshot field {name!r} must be a list of {length} numbers")
    return array
