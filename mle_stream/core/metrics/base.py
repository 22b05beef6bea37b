"""The one protocol every metric state follows, so windows, partitions and changelogs treat them alike.

A state is a group element more than a running average: `update` adds rows (weight +1) or takes
them back out (weight -1), `merge` adds two states, and every ratio is read from the merged counts
and sums, never averaged. That is what makes a window's state equal to the merge of its partitions'
states, and a corrected label replace the label it corrects (river's `utils/rolling.py` builds
windows on the same update/revert pair).
"""

from __future__ import annotations

import math
from typing import Any, ParamSpec, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

P = ParamSpec("P")


@runtime_checkable
class MetricState(Protocol[P]):
    """What the window logic and the changelog need from a metric state.

    `P` is the signature of `update`: `MetricState[[BinaryOutcomes]]` takes a joined batch, while
    `ServingMetrics` takes the prediction columns (it counts predictions, which exist before labels).

    - `update(...)`: in place, vectorised; rows with weight -1 are removed exactly as they were
      added (integer counts exactly; float sums up to rounding relative to the sums involved).
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


# (n, pivot, s1, s2): n values, s1 = sum(y - pivot), s2 = sum((y - pivot)^2). The pivot is a
# value (or near the mean, see combine_moments); signed rows can leave n = 0 with content (a removal and
# an addition of different rows), which this form holds without dividing by n.
Moments = tuple[int, float, float, float]
EMPTY_MOMENTS: Moments = (0, 0.0, 0.0, 0.0)


def moments_of(y: npt.NDArray[np.float64]) -> Moments:
    """Moments of one batch about its first value: constant values give exactly zero deviations."""
    if len(y) == 0:
        return EMPTY_MOMENTS
    deviation = y - y[0]
    return len(y), float(y[0]), float(deviation.sum()), float(deviation @ deviation)


def combine_moments(a: Moments, b: Moments) -> Moments:
    """The moments of both sides' values. Keeps a's pivot while a holds rows, so that adding rows
    and taking them back out returns the pivot, and the sums, to what they were."""
    na, ka, s1a, s2a = a
    nb, kb, s1b, s2b = b
    n = na + nb
    pivot = ka if na else kb
    da, db = ka - pivot, kb - pivot
    s1_terms = (s1a, na * da, s1b, nb * db)
    s2_terms = (s2a, 2 * da * s1a, na * da * da, s2b, 2 * db * s1b, nb * db * db)
    # fsum: the sums of the terms are exact, so terms added and later subtracted cancel exactly.
    s1, s2 = math.fsum(s1_terms), math.fsum(s2_terms)
    if n == 0:
        return (0, pivot, s1, s2) if s1 or s2 else EMPTY_MOMENTS
    if n > 0 and 2 * s1 * s1 > n * s2:
        # The mean moved more than a standard deviation off the pivot: s2 - s1^2/n would start to
        # cancel. Move the pivot to the mean (Chan's centring); any pivot is exact, this one is stable.
        shift = (pivot + s1 / n) - pivot
        s1, s2 = math.fsum((s1, -n * shift)), math.fsum((s2, -2 * shift * s1, n * shift * shift))
        pivot += shift
    return n, pivot, s1, s2


def signed_moments(moments: Moments, values: npt.NDArray[np.float64], weight: npt.NDArray[np.float64]) -> Moments:
    """`moments` with the weight +1 values added and the weight -1 values taken out."""
    added, removed = moments_of(values[weight > 0]), moments_of(values[weight < 0])
    return combine_moments(combine_moments(moments, added), (-removed[0], removed[1], -removed[2], -removed[3]))


def moments_mean_std(moments: Moments) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1); None where undefined (n < 1, n < 2)."""
    n, pivot, s1, s2 = moments
    if n <= 0:
        return None, None
    mean = pivot + s1 / n
    # combine_moments keeps the pivot within a standard deviation of the mean: no cancellation.
    return mean, (math.sqrt(max(0.0, s2 - s1 * s1 / n) / (n - 1)) if n >= 2 else None)
