"""Columnar batches of joined outcomes: what every metric state updates from.

The hot path works on arrays, not on one record at a time (per-event Python
overhead is the throughput limit). Each row may carry a weight of +1 or -1: -1 takes a row back
out, which is how a corrected label replaces the one it corrects without double counting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]


def _weights(weight: FloatArray | None, n: int) -> FloatArray:
    if weight is None:
        return np.ones(n, dtype=np.float64)
    if weight.shape != (n,) or not np.all(np.isin(weight, (-1.0, 1.0))):
        raise ValueError("weight must be +1 or -1 for every row")
    return weight.astype(np.float64, copy=False)


@dataclass(frozen=True)
class BinaryOutcomes:
    """y_true: the label; score: P(positive); predicted: the decision the pod took (score >= the
    topology's threshold unless the pod sent predicted_label)."""

    y_true: BoolArray
    score: FloatArray
    predicted: BoolArray
    weight: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.y_true)
        if self.score.shape != (n,) or self.predicted.shape != (n,):
            raise ValueError("y_true, score and predicted must have the same length")

    def __len__(self) -> int:
        return len(self.y_true)

    def weights(self) -> FloatArray:
        return _weights(self.weight, len(self))


@dataclass(frozen=True)
class MulticlassOutcomes:
    """y_true / predicted: class names; p_true: the probability the model gave the true class,
    after normalising its scores to sum to 1 (what log loss needs)."""

    y_true: ObjectArray
    predicted: ObjectArray
    p_true: FloatArray
    weight: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.y_true)
        if self.predicted.shape != (n,) or self.p_true.shape != (n,):
            raise ValueError("y_true, predicted and p_true must have the same length")

    def __len__(self) -> int:
        return len(self.y_true)

    def weights(self) -> FloatArray:
        return _weights(self.weight, len(self))


@dataclass(frozen=True)
class RegressionOutcomes:
    y_true: FloatArray
    y_pred: FloatArray
    weight: FloatArray | None = None

    def __post_init__(self) -> None:
        if self.y_pred.shape != self.y_true.shape:
            raise ValueError("y_true and y_pred must have the same length")

    def __len__(self) -> int:
        return len(self.y_true)

    def weights(self) -> FloatArray:
        return _weights(self.weight, len(self))
