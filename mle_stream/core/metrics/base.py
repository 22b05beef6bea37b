"""The one protocol every metric state follows, so windows, partitions and changelogs treat them alike.

A state is a group element more than a running average: `update` adds rows (weight +1) or takes
them back out (weight -1), `merge` adds two states, and every ratio is read from the merged counts
and sums, never averaged. That is what makes a window's state equal to the merge of its partitions'
states, and a corrected label replace the label it corrects (river's `utils/rolling.py` builds
windows on the same update/revert pair).
"""

from __future__ import annotations

from typing import Any, ParamSpec, Protocol, Self, runtime_checkable

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
