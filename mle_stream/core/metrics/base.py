"""The one protocol every metric state follows, so windows, partitions and changelogs treat them alike.

A state is a group element more than a running average: `update` adds rows (weight +1) or takes
them back out (weight -1), `merge` adds two states, and every ratio is read from the merged counts
and sums, never averaged. That is what makes a window's state equal to the merge of its partitions'
states, and a corrected label replace the label it corrects (river's `utils/rolling.py` builds
windows on the same update/revert pair).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ParamSpec, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from mle_stream.core.exact_sum import SCALE_BITS, exact_column_sums, pack, square_parts, to_float, unpack

P = ParamSpec("P")


@runtime_checkable
class MetricState(Protocol[P]):
    """What the window logic and the changelog need from a metric state.

    `P` is the signature of `update`: `MetricState[[BinaryOutcomes]]` takes a joined batch, while
    `ServingMetrics` takes the prediction columns (it counts predictions, which exist before labels).

    - `update(...)`: in place, vectorised; rows with weight -1 are removed exactly as they were
      added: counts are integers and float sums exact (exact_sum.py), so a state is the same
      bit for bit however its rows were grouped into updates and merges.
    - `merge(other)`: a new state for the union of both inputs' rows; the inputs are untouched.
      States with different hyperparameters raise ValueError, naming the hyperparameter.
    - `snapshot()` / `restore(data)`: plain JSON data (ints, floats, strings, lists, str-keyed
      dicts) and back. A snapshot names its kind and format version.
    - `values()`: metric name -> value, None where the metric is undefined (no rows, one class...).
    - `count`: the net number of rows the state holds.
    """

    def update(self, *args: P.args, **kwargs: P.kwargs) -> None: ...

    def merge(self, other: Self) -> Self: ...

    def snapshot(self) -> dict[str, Any]: ...

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Self: ...

    def values(self) -> dict[str, float | None]: ...

    @property
    def count(self) -> int: ...


def check_mergeable(state: object, other: object, hyperparameters: tuple[str, ...]) -> None:
    """Refuse to merge states of different kinds or hyperparameters: their counts mean different
    things (other bins, other thresholds), so adding them would silently produce nonsense."""
    if type(other) is not type(state):
        raise TypeError(f"cannot merge {type(state).__name__} with {type(other).__name__}")
    differing = [name for name in hyperparameters if getattr(state, name) != getattr(other, name)]
    if differing:
        detail = "; ".join(f"{name}: {getattr(state, name)!r} != {getattr(other, name)!r}" for name in differing)
        raise ValueError(f"cannot merge {type(state).__name__} states with different hyperparameters ({detail})")


def check_snapshot(data: dict[str, Any], kind: str, version: int) -> None:
    """A changelog may hold snapshots of another kind or an older format: say so instead of
    restoring garbage."""
    if not isinstance(data, dict) or data.get("kind") != kind:
        got = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a {kind} snapshot (kind={got!r})")
    if data.get("v") != version:
        raise ValueError(f"{kind} snapshot format v{data.get('v')!r} is not supported (expected v{version})")


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when the denominator is not positive (no rows yet, or a
    state that holds only removals)."""
    return numerator / denominator if denominator > 0 else None


# (n, s, q): n values, s = the exact sum of the values, q = the exact sum of their exact squares,
# both as integer counts of 2**-1074 (exact_sum.py). Adding, merging and taking rows back out are
# integer additions, so the moments of a set of rows are the same however the rows were grouped,
# and the variance, from n q - s^2 computed exactly, is correctly rounded: exactly 0 for constant
# values, and all its digits for values far from zero (timestamps, labels around 1e6).
Moments = tuple[int, int, int]
EMPTY_MOMENTS: Moments = (0, 0, 0)


def moment_columns(values: npt.NDArray[np.float64], weight: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
    """The three columns whose exact sums `add_moments` takes: the signed values, and the signed
    high and low parts of their squares (square_parts: they add up to the square exactly)."""
    hi, lo = square_parts(values)
    return [weight * values, weight * hi, weight * lo]


def add_moments(moments: Moments, n: int, sums: Sequence[int]) -> Moments:
    """`moments` plus n rows whose `moment_columns` summed to `sums`."""
    s, q_hi, q_lo = sums
    return moments[0] + n, moments[1] + s, moments[2] + q_hi + q_lo


def signed_moments(moments: Moments, values: npt.NDArray[np.float64], weight: npt.NDArray[np.float64]) -> Moments:
    """`moments` with the weight +1 values added and the weight -1 values taken out."""
    return add_moments(moments, int(weight.sum()), exact_column_sums(moment_columns(values, weight)))


def combine_moments(a: Moments, b: Moments) -> Moments:
    """The moments of both sides' rows."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def squared_deviations(moments: Moments) -> float | None:
    """sum((x - mean)^2) of the rows, correctly rounded from the exact sums; None without rows."""
    n, s, q = moments
    if n <= 0:
        return None
    return max(0, (q * n << SCALE_BITS) - s * s) / (n << 2 * SCALE_BITS)


def moments_mean_std(moments: Moments) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1); None where undefined (n < 1, n < 2)."""
    n, s, _ = moments
    if n <= 0:
        return None, None
    deviations = squared_deviations(moments)
    return to_float(s, n), (math.sqrt(deviations / (n - 1)) if n >= 2 and deviations is not None else None)


def moments_snapshot(moments: Moments) -> list[Any]:
    return [moments[0], pack(moments[1]), pack(moments[2])]


def restore_moments(data: Any) -> Moments:
    n, s, q = data
    return int(n), unpack(s), unpack(q)
