"""What the worker refuses in a prediction or label whatever the model's topology, beyond the
contract of the dataclasses (core/events.py) and the wire format (mle_stream/wire/).

The evaluator dead-letters these records; the serving client (mle_stream/client.py) refuses the
same ones in the caller's thread through these functions, so a record the client accepts is
never dead-lettered for them. A prediction's output names the one task that can take it, so its
rules apply whatever the topology too. What else depends on the topology (whether the model's task
is that one, the clock skew allowed, which labels its task can score) only the worker can judge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mle_stream.core.events import Prediction, binary_truth
from mle_stream.core.id_hash import unholdable_ids
from mle_stream.core.metrics.regression import MAX_MAGNITUDE as REGRESSION_MAX_MAGNITUDE
from mle_stream.core.metrics.serving import MAX_LATENCY_MS


@dataclass(frozen=True)
class Reject:
    index: int  # the row in the batch that was passed in
    field: str
    reason: str


def unjoinable_ids(ids: Sequence[str]) -> list[Reject]:
    """Rejects for the ids the label join cannot hold (core/id_hash.unholdable_ids)."""
    return [Reject(i, "prediction_id", why) for i, why in unholdable_ids(ids)]


def unusable_predictions(ids: Sequence[str], latency_ms: npt.NDArray[np.float64], *,
                         ids_held: bool = False) -> list[Reject]:
    """At most one Reject per row, in row order: a latency the serving metrics cannot hold (their
    moments keep squares, which must stay finite doubles), else an id the label join cannot hold.
    `ids_held`: the caller has already shown that every id can be held."""
    rejects = [Reject(i, "latency_ms", f"{float(latency_ms[i]):g} ms is not a latency (the worker takes "
                                       f"latencies below {MAX_LATENCY_MS:g} ms)")
               for i in np.flatnonzero(latency_ms >= MAX_LATENCY_MS).tolist()]
    if ids_held:
        return rejects
    refused = {r.index for r in rejects}
    rejects += [r for r in unjoinable_ids(ids) if r.index not in refused]
    return sorted(rejects, key=lambda r: r.index) if refused else rejects


def class_probabilities_problem(scores: Mapping[str, float]) -> str | None:
    """Why a multiclass model cannot use these class probabilities, or None."""
    if sum(scores.values()) <= 0 or min(scores.values()) < 0:
        return "class probabilities must be >= 0 and not all 0"
    return None


def regression_value_problem(value: float) -> str | None:
    """Why a regression model cannot use this value (its metrics keep squares), or None."""
    if abs(value) >= REGRESSION_MAX_MAGNITUDE:
        return (f"a regression value must be below {REGRESSION_MAX_MAGNITUDE:g} in magnitude (its square must "
                f"be a double), got {value!r}")
    return None


def output_reject(p: Prediction) -> Reject | None:
    """What refuses the output of a prediction in the one task that can take it: a prediction carries
    `score` (binary), `scores` (multiclass) or `value` (regression), and a model of another task
    refuses it anyway. A failed prediction (`error`) has no output to check."""
    if p.error is not None:
        return None
    if p.score is not None and p.predicted_label is not None:
        try:
            binary_truth(p.predicted_label)
        except ValueError as exc:
            return Reject(0, "predicted_label", str(exc))
    elif p.scores is not None:
        why = class_probabilities_problem(p.scores)
        return None if why is None else Reject(0, "scores", why)
    elif p.value is not None:
        why = regression_value_problem(float(p.value))
        return None if why is None else Reject(0, "value", why)
    return None


__all__ = ["Reject", "class_probabilities_problem", "output_reject", "regression_value_problem", "unjoinable_ids",
           "unusable_predictions"]
