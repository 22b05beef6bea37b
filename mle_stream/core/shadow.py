"""Shadow mode: the candidate answers a mirrored copy of production traffic and is never served.

A shadow prediction carries the `prediction_id` of the production prediction of the same request
(its request id: KServe's inference logger and an Istio or Gateway API mirror hand both models the
same request, and the serving code publishes both predictions under its id). With that the
evaluator can

- pair the two predictions of a request (`ShadowPairing`) and measure how far the shadow is from
  production on exactly the same requests (`AgreementMetrics`): how often their decisions agree,
  and how far apart their scores are (the shadow's score drift, signed and absolute);
- score the shadow on the production prediction's label, in a second label join (evaluator.py).

Both sides may arrive in either order. A side whose counterpart has not come within `within_ms`
of event time stays unpaired and is counted (`unpaired`), never an error: mirrors may sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mle_stream.core.exact_sum import exact_column_sums, pack, to_float, unpack
from mle_stream.core.snapshot_columns import decode_column, encode_column, encode_rows
from mle_stream.core.tasks.base import Agreement, Task
from mle_stream.core.windows import Segment

# A prediction as shadow pairing keeps it, one per prediction waiting for its counterpart:
# (pane, version, segments, output, decision), where segments start with None (the whole version),
# output is the score, the scores map or the value, and decision the decided class (None for a
# regression). Read by unpacking, never by position. A plain tuple, not a NamedTuple: CPython's
# garbage collector stops tracking a plain tuple of atomic values, never a tuple subclass, and
# walking every waiting row cost shadow mode ~15% of its throughput (measured).
Pending = tuple[int, str, tuple[Segment, ...], Any, Any]


class ShadowPairing:
    """Shadow and production predictions waiting for their counterpart, by prediction_id."""

    def __init__(self, within_ms: int) -> None:
        if within_ms <= 0:
            raise ValueError(f"need within_ms > 0, got {within_ms}")
        self.within_ms = within_ms
        # id -> (timestamp, is_shadow, prediction), in insertion order (expiry pops from the front).
        self._waiting: dict[str, tuple[int, bool, Pending]] = {}
        self.unpaired = {"shadow": 0, "production": 0}

    def add(self, ids: Sequence[str], timestamps: Sequence[int], predictions: Sequence[Pending],
            shadow: Sequence[bool], at: list[int] | None = None) -> list[tuple[Pending, Pending]]:
        """Predictions the label join did not find to be duplicates; returns the (shadow,
        production) pairs they complete, and appends to `at` the timestamp of the prediction that
        completed each (when the pair came to be in event time). A second prediction of the same
        side and id keeps the first (the join lets a prediction through again only after it expired)."""
        pairs: list[tuple[Pending, Pending]] = []
        waiting = self._waiting
        for key, ts, prediction, is_shadow in zip(ids, timestamps, predictions, shadow):
            other = waiting.get(key)
            if other is None:
                waiting[key] = (ts, is_shadow, prediction)
                continue
            _, other_is_shadow, other_prediction = other
            if other_is_shadow != is_shadow:
                del waiting[key]
                pairs.append((prediction, other_prediction) if is_shadow else (other_prediction, prediction))
                if at is not None:
                    at.append(ts)
        return pairs

    def expire(self, watermark: int) -> None:
        horizon = watermark - self.within_ms
        expired = []
        for key, (ts, is_shadow, _) in self._waiting.items():
            if ts >= horizon:
                break
            expired.append(key)
            self.unpaired["shadow" if is_shadow else "production"] += 1
        for key in expired:
            del self._waiting[key]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def snapshot(self) -> dict[str, Any]:
        timestamps, shadow, predictions = zip(*self._waiting.values()) if self._waiting else ((), (), ())
        return {"kind": "shadow_pairing", "v": 1, "within_ms": self.within_ms,
                "id": encode_column(list(self._waiting)), "ts": encode_column(list(timestamps)),
                "shadow": encode_column(list(shadow)), "prediction": encode_rows(list(predictions)),
                "unpaired": dict(self.unpaired)}

    @classmethod
    def restore(cls, data: dict[str, Any], predictions: Callable[[dict[str, Any]], list[Pending]]) -> ShadowPairing:
        if not isinstance(data, dict) or data.get("kind") != "shadow_pairing" or data.get("v") != 1:
            raise ValueError(f"not a shadow_pairing v1 snapshot: kind={data.get('kind')!r}, v={data.get('v')!r}")
        pairing = cls(int(data["within_ms"]))
        pairing._waiting = dict(zip(decode_column(data["id"]), zip(
            decode_column(data["ts"]), map(bool, decode_column(data["shadow"])), predictions(data["prediction"]))))
        pairing.unpaired = {k: int(v) for k, v in data["unpaired"].items()}
        return pairing


def compare(task: Task, pairs: Sequence[tuple[Pending, Pending]]) -> Agreement:
    """Per (shadow, production) pair: (agree, decided, diff, abs_diff).

    decided: both decisions are known (binary and multiclass; a regression has none), agree:
    they are equal. diff: shadow score - production score (binary: the score, regression: the
    value; NaN for multiclass), abs_diff: |diff|, or for multiclass the total variation distance
    between the two normalised class distributions (half the L1 distance, in [0, 1])."""
    outputs = [(s_out, p_out, s_dec, p_dec) for (*_, s_out, s_dec), (*_, p_out, p_dec) in pairs]
    shadow_out, production_out, shadow_dec, production_dec = zip(*outputs) if outputs else ((), (), (), ())
    return task.compare(list(shadow_out), list(production_out), list(shadow_dec), list(production_dec))


_SUMS = ("abs_sum", "diff_sum")  # exact sums, packed in snapshots


class AgreementMetrics:
    """Mergeable: the shadow's pairs with production in one pane or window, as counts and exact sums
    (integer counts of 2**-1074, core/exact_sum.py), so the same pairs give the same values
    however they were grouped."""

    __slots__ = ("pairs", "decided", "agree", "abs_n", "abs_sum", "diff_n", "diff_sum")

    def __init__(self) -> None:
        self.pairs = 0
        self.decided = 0  # pairs with both decisions known
        self.agree = 0
        self.abs_n, self.abs_sum = 0, 0
        self.diff_n, self.diff_sum = 0, 0

    def update(self, agree: np.ndarray, decided: np.ndarray, diff: np.ndarray, abs_diff: np.ndarray) -> None:
        self.pairs += len(agree)
        self.decided += int(decided.sum())
        self.agree += int((agree & decided).sum())
        has_abs, has_diff = ~np.isnan(abs_diff), ~np.isnan(diff)
        self.abs_n += int(has_abs.sum())
        self.diff_n += int(has_diff.sum())
        abs_sum, diff_sum = exact_column_sums([abs_diff[has_abs], diff[has_diff]])
        self.abs_sum += abs_sum
        self.diff_sum += diff_sum

    def merge(self, other: AgreementMetrics) -> AgreementMetrics:
        out = AgreementMetrics()
        for name in self.__slots__:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def values(self) -> dict[str, float | None]:
        return {"paired": float(self.pairs),
                "agreement": self.agree / self.decided if self.decided else None,
                "score_abs_diff": to_float(self.abs_sum, self.abs_n) if self.abs_n else None,
                "score_diff": to_float(self.diff_sum, self.diff_n) if self.diff_n else None}

    def snapshot(self) -> dict[str, Any]:
        return {name: pack(getattr(self, name)) if name in _SUMS else getattr(self, name) for name in self.__slots__}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> AgreementMetrics:
        out = cls()
        for name in cls.__slots__:
            setattr(out, name, unpack(data[name]) if name in _SUMS else int(data[name]))
        return out
