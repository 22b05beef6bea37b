"""Multiclass classification metrics of one window, from a sparse confusion table keyed by class name.

Keying by name, not by a position in some class list, is what lets windows and partitions that
saw different classes merge: their tables simply add.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.exact_sum import exact_sum, pack, to_float, unpack
from mle_stream.core.metrics.base import check_mergeable, check_snapshot, ratio
from mle_stream.core.metrics.outcomes import MulticlassOutcomes

StrArray = npt.NDArray[np.str_]
IntArray = npt.NDArray[np.int64]

_KIND, _VERSION = "multiclass", 2  # v2: exact log loss sum
_EPS = float(np.finfo(np.float64).eps)  # sklearn.metrics.log_loss clips to [eps, 1 - eps]
OTHER = "__other__"


class MulticlassMetrics:
    """accuracy, micro_f1, macro_f1, log_loss and recall[<class>] of single-label predictions.

    values(): count, classes (how many classes the table holds), classes_overflowed (1 if any
    class was folded into "__other__", else 0), accuracy, error_rate (misclassified share, from
    counts), micro_f1, macro_f1, log_loss, and per class recall[<class>] and label_rate[<class>]
    (the share of rows whose true class it is: a sequential recall test counts from it); all but
    count, classes and classes_overflowed are None when empty.

    As scikit-learn's defaults: macro_f1 averages over the union of classes seen in y_true or
    predicted; micro_f1 equals accuracy (single-label); recall[c] of a class only ever predicted
    is 0.0 (sklearn warns and returns 0.0); log_loss is the mean of -log(p_true) with p_true
    clipped to [eps, 1 - eps], float64 machine epsilon. Class names are compared as strings
    (str(label)): the wire contract names classes by the keys of `scores`.

    Overflow: a window may hold at most `max_classes` named classes. Past that, the table keeps the
    `max_classes` smallest names (in string order) and folds every other class into one class
    named "__other__" (a label literally named so shares it), and classes_overflowed becomes 1.
    Smallest-names is the rule because it is the only simple one under which merging two states
    equals updating from the union: "first seen" depends on arrival order. count, accuracy,
    micro_f1 and log_loss stay exact: a row whose true and predicted classes are both folded but
    differ is counted apart as a miss, never as an "__other__" hit. recall["__other__"] and its
    share of macro_f1 treat the folded classes as one class. Folding cannot be undone: removing the
    rows that caused it keeps the folded classes folded (totals stay exact), and
    classes_overflowed stays 1.
    """

    def __init__(self, max_classes: int = 1000) -> None:
        if isinstance(max_classes, bool) or not isinstance(max_classes, int) or max_classes < 1:
            raise ValueError(f"max_classes must be an integer >= 1, got {max_classes!r}")
        self.max_classes = max_classes
        self._true: StrArray = np.zeros(0, dtype=str)  # the table: sorted by (true, predicted),
        self._pred: StrArray = np.zeros(0, dtype=str)  # non-zero counts only
        self._pairs: IntArray = np.zeros(0, dtype=np.int64)
        self._folded_misses = 0  # rows with true != predicted whose classes were both folded
        self._overflowed = False
        self._n = 0
        self._log_loss_sum = 0  # exact (exact_sum.py): an integer count of 2**-1074

    @property
    def count(self) -> int:
        return self._n

    def update(self, batch: MulticlassOutcomes) -> None:
        w = batch.weights()
        p_true = np.asarray(batch.p_true, dtype=np.float64)
        if not np.all((p_true >= 0.0) & (p_true <= 1.0)):  # also catches NaN
            raise ValueError("p_true must be a probability in [0, 1] for every row")
        true = np.asarray(batch.y_true).astype(str)
        pred = np.asarray(batch.predicted).astype(str)
        self._n += int(w.sum())
        self._log_loss_sum += exact_sum(w * -np.log(np.clip(p_true, _EPS, 1.0 - _EPS)))
        self._add_table(true, pred, w.astype(np.int64), 0)

    def merge(self, other: MulticlassMetrics) -> MulticlassMetrics:
        check_mergeable(self, other, ("max_classes",))
        merged = MulticlassMetrics(self.max_classes)
        merged._n = self._n + other._n
        merged._log_loss_sum = self._log_loss_sum + other._log_loss_sum
        merged._true, merged._pred, merged._pairs = self._true, self._pred, self._pairs
        merged._folded_misses = self._folded_misses
        merged._overflowed = self._overflowed or other._overflowed
        merged._add_table(other._true, other._pred, other._pairs, other._folded_misses)
        return merged

    def _add_table(self, true: StrArray, pred: StrArray, counts: IntArray, folded_misses: int) -> None:
        """Add (true, predicted, count) rows to the table, folding classes past max_classes."""
        true = np.concatenate([self._true, true])
        pred = np.concatenate([self._pred, pred])
        counts = np.concatenate([self._pairs, counts])
        self._folded_misses += folded_misses
        names = np.unique(np.concatenate([true, pred]))
        names = names[names != OTHER]
        if len(names) > self.max_classes:
            keep = names[: self.max_classes]  # np.unique sorts: these are the smallest names
            self._overflowed = True
            true_f = np.where(np.isin(true, keep), true, OTHER)
            pred_f = np.where(np.isin(pred, keep), pred, OTHER)
            miss = (true_f == OTHER) & (pred_f == OTHER) & (true != pred)
            self._folded_misses += int(counts[miss].sum())
            true, pred, counts = true_f[~miss], pred_f[~miss], counts[~miss]
        if len(true) == 0:
            self._true, self._pred, self._pairs = true, pred, counts
            return
        codes_names, codes = np.unique(np.concatenate([true, pred]), return_inverse=True)
        k = len(codes_names)
        key = codes[: len(true)].astype(np.int64) * k + codes[len(true):]
        keys, inverse = np.unique(key, return_inverse=True)  # sorted by (true, predicted)
        sums = np.bincount(inverse, weights=counts, minlength=len(keys)).astype(np.int64)
        nonzero = sums != 0
        keys, sums = keys[nonzero], sums[nonzero]
        self._true, self._pred, self._pairs = codes_names[keys // k], codes_names[keys % k], sums

    def values(self) -> dict[str, float | None]:
        classes, tp, true_n, pred_n = self._per_class()
        out: dict[str, float | None] = {
            "count": self._n, "classes": len(classes), "classes_overflowed": int(self._overflowed),
        }
        if self._n <= 0:
            return out | dict.fromkeys(["accuracy", "error_rate", "micro_f1", "macro_f1", "log_loss"]) | {
                f"{m}[{c}]": None for c in classes.tolist() for m in ("recall", "label_rate")}
        accuracy = float(tp.sum()) / self._n
        f1 = 2.0 * tp / np.maximum(true_n + pred_n, 1)  # 2tp / (2tp + fp + fn); never 0/0 here
        out |= {
            "accuracy": accuracy,
            "error_rate": float(self._n - tp.sum()) / self._n,  # from counts: exact, the policy compares it
            "micro_f1": accuracy,
            "macro_f1": float(f1.mean()) if len(classes) else None,
            "log_loss": to_float(self._log_loss_sum, self._n),
        }
        for c, hit, total in zip(classes.tolist(), tp.tolist(), true_n.tolist()):
            out[f"recall[{c}]"] = ratio(hit, total) or 0.0  # sklearn: 0.0 for a class never true
            out[f"label_rate[{c}]"] = total / self._n
        return out

    def _per_class(self) -> tuple[StrArray, IntArray, IntArray, IntArray]:
        """Classes in the table with their hits, true counts and predicted counts."""
        names, codes = np.unique(np.concatenate([self._true, self._pred]), return_inverse=True)
        if self._folded_misses and OTHER not in names:
            names = np.sort(np.append(names, OTHER))
            codes = np.searchsorted(names, np.concatenate([self._true, self._pred]))
        k, m = len(names), len(self._true)
        t, p = codes[:m], codes[m:]
        tp = np.bincount(t[t == p], weights=self._pairs[t == p], minlength=k).astype(np.int64)
        true_n = np.bincount(t, weights=self._pairs, minlength=k).astype(np.int64)
        pred_n = np.bincount(p, weights=self._pairs, minlength=k).astype(np.int64)
        if self._folded_misses:  # a miss between two folded classes: a false negative and a
            other = int(np.searchsorted(names, OTHER))  # false positive of "__other__"
            true_n[other] += self._folded_misses
            pred_n[other] += self._folded_misses
        return names, tp, true_n, pred_n

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": _KIND, "v": _VERSION, "max_classes": self.max_classes,
            "n": self._n, "log_loss_sum": pack(self._log_loss_sum),
            "pairs": [[t, p, c] for t, p, c in zip(self._true.tolist(), self._pred.tolist(), self._pairs.tolist())],
            "folded_misses": self._folded_misses, "overflowed": self._overflowed,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> MulticlassMetrics:
        check_snapshot(data, _KIND, _VERSION)
        state = cls(int(data["max_classes"]))
        state._n, state._log_loss_sum = int(data["n"]), unpack(data["log_loss_sum"])
        rows = data["pairs"]
        state._true = np.array([str(r[0]) for r in rows], dtype=str)
        state._pred = np.array([str(r[1]) for r in rows], dtype=str)
        state._pairs = np.array([int(r[2]) for r in rows], dtype=np.int64)
        state._folded_misses, state._overflowed = int(data["folded_misses"]), bool(data["overflowed"])
        return state

    def __repr__(self) -> str:
        return f"MulticlassMetrics(max_classes={self.max_classes}, count={self._n})"
