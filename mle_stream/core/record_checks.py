"""What the worker refuses in a prediction or label whatever the model's topology, beyond the
contract of the dataclasses (core/events.py) and the wire format (codec.py).

The evaluator dead-letters these records; the serving client (mle_stream/client.py) refuses the
same ones in the caller's thread through these functions, so a record the client accepts is
never dead-lettered for them. What depends on the topology (the task's output, the clock skew
allowed) only the worker can judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

from mle_stream.core.id_hash import unholdable_ids
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


__all__ = ["Reject", "unjoinable_ids", "unusable_predictions"]
