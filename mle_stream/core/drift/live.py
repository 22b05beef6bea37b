"""Drift of live windows: the sketches a model version fills per pane, and its drift table per window.

What a version's window is compared with (its reference):

- the version's reference profile (its training data, `mle-stream profile build`), when there is
  one: its features and score, on the profile's bins;
- otherwise, for the candidate, the baseline's window over the same event-time span ("is the
  candidate seeing, and scoring, the traffic the baseline sees?"), on shared bins: the baseline
  profile's when the baseline has one, else bins learned from the baseline's first `warmup`
  predictions (their quantiles, like a profile built from live rows);
- otherwise (the baseline without a profile) nothing: the baseline has no drift table, and its
  sketches serve only as the candidate's reference.

Until the bins are learned, rows wait in a warm-up buffer (part of the snapshot) and are added
to their panes once the bins exist, as long as retention still holds those panes.

The prediction score is one more column, named `SCORE`: binary models' score, regression
models' value. Rows without a value of a column (a pod that does not send a feature, a failed
prediction's score) count as missing in that sketch and are not binned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from mle_stream.core.drift.concept import DetectorSpec
from mle_stream.core.drift.decision import DriftThresholds, FeatureDrift, Sketches, decide_drift
from mle_stream.core.drift.profile import ReferenceProfile, Sketch, build_profile, empty_like, restore_sketch
from mle_stream.core.drift.sketch import NumericSketch

SCORE = "__score__"  # the prediction score's column among the features (no feature is named like it)

Columns = Mapping[str, np.ndarray]  # column name -> one value per row (float64, or object for text)


@dataclass(frozen=True)
class DriftSettings:
    """The `drift` section of a topology."""

    enabled: bool = False
    features: tuple[str, ...] = ()  # empty: every feature of the reference
    bins: int = 20  # bins per numeric column when they are learned from live rows (no profile)
    top_k: int = 20  # categories per categorical column, idem
    warmup: int = 1000  # baseline predictions the bins are learned from
    thresholds: DriftThresholds = DriftThresholds()
    concept: tuple[DetectorSpec, ...] = ()  # online detectors on each tracked version's errors


def as_float(values: np.ndarray) -> np.ndarray:
    """A column as float64, whatever a pod sent: text that is not a number becomes NaN (missing)."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values.tolist()):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[i] = v
        return out


class DriftSketches:
    """One version's sketches over one pane or window: one per tracked column, on fixed bins."""

    __slots__ = ("sketches",)

    def __init__(self, sketches: dict[str, Sketch]) -> None:
        self.sketches = sketches

    @classmethod
    def like(cls, bins: Mapping[str, Sketch]) -> DriftSketches:
        return cls({name: empty_like(s) for name, s in bins.items()})

    def update(self, columns: Columns, n: int) -> None:
        """Add n rows; a tracked column absent from `columns` is missing in all n."""
        for name, sketch in self.sketches.items():
            values = columns.get(name)
            if isinstance(sketch, NumericSketch):
                sketch.update(np.full(n, np.nan) if values is None else as_float(values))
            else:
                sketch.update(np.full(n, None, dtype=object) if values is None else values)

    def merge(self, other: DriftSketches) -> DriftSketches:
        if set(self.sketches) != set(other.sketches):
            raise ValueError(f"cannot merge drift sketches of columns {sorted(self.sketches)} "
                             f"with {sorted(other.sketches)}")
        return DriftSketches({n: s.merge(other.sketches[n]) for n, s in self.sketches.items()})  # type: ignore[arg-type]

    def snapshot(self) -> dict[str, Any]:
        return {name: s.snapshot() for name, s in self.sketches.items()}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> DriftSketches:
        return cls({str(name): restore_sketch(s, f"drift column {name!r}") for name, s in data.items()})


class _Mergeable(Protocol):
    def merge(self: _M, other: _M) -> _M: ...


_M = TypeVar("_M", bound=_Mergeable)


def merge_optional(a: _M | None, b: _M | None) -> _M | None:
    """a merged with b, where either may be absent (a state that never had rows)."""
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


def profile_columns(profile: ReferenceProfile, only: Sequence[str] = ()) -> dict[str, Sketch]:
    """A profile's sketches by column (the score as SCORE), limited to `only` when given."""
    out: dict[str, Sketch] = {n: s for n, s in profile.features.items() if not only or n in only}
    if profile.score is not None:
        out[SCORE] = profile.score
    return out


@dataclass(frozen=True)
class DriftTableResult:
    """The drift of one version's window against its reference."""

    reference: str  # "profile v<version>" or "baseline v<version> window"
    features: dict[str, FeatureDrift]

    @property
    def drifted(self) -> list[str]:
        return [n for n, f in self.features.items() if f.drifted]

    @property
    def tested(self) -> int:
        return sum(1 for f in self.features.values() if f.p_value is not None)

    @property
    def drifted_share(self) -> float | None:
        """Share of the tested features (the score left out) that drifted."""
        tested = [f for n, f in self.features.items() if n != SCORE and f.p_value is not None]
        return sum(f.drifted for f in tested) / len(tested) if tested else None


class LiveDrift:
    """Which bins each version's sketches use and what each version is compared with (module
    docstring), plus the warm-up buffer of rows waiting for learned bins."""

    def __init__(self, settings: DriftSettings, model: str, baseline: str, candidate: str,
                 profiles: Mapping[str, ReferenceProfile]) -> None:
        self.settings = settings
        self.model, self.baseline, self.candidate = model, baseline, candidate
        self.profiles = {v: profiles[v] for v in (baseline, candidate) if v in profiles}
        self._profile_bins = {v: profile_columns(p, settings.features) for v, p in self.profiles.items()}
        self._learned: dict[str, Sketch] | None = None
        self._warmup: list[tuple[int, str, dict[str, list[Any]], int]] = []
        self._warmup_rows = 0

    def tracked(self, version: str) -> bool:
        return version == self.baseline or version == self.candidate

    def bins(self, version: str) -> Mapping[str, Sketch] | None:
        if version in self._profile_bins:
            return self._profile_bins[version]
        if self.baseline in self._profile_bins:
            return self._profile_bins[self.baseline]
        return self._learned

    def reference_of(self, version: str) -> str | None:
        if version in self.profiles:
            return f"profile v{version}"
        if version == self.candidate:
            return f"baseline v{self.baseline} window"
        return None

    def take(self, pane: int, version: str, columns: Columns, n: int) -> list[tuple[int, str, Columns, int]]:
        """Rows of one (pane, version) as they are applied: what can go into sketches now. Before
        the bins are learned that is nothing, and then, once the baseline's warm-up is complete,
        everything buffered (the caller checks the panes are still retained)."""
        if self.bins(version) is not None:
            return [(pane, version, columns, n)]
        self._warmup.append((pane, version, {k: _plain(v) for k, v in columns.items()}, n))
        if version == self.baseline:
            self._warmup_rows += n
        if self._warmup_rows < self.settings.warmup:
            return []
        self._learn()
        buffered, self._warmup, self._warmup_rows = self._warmup, [], 0
        return [(p, v, {k: np.array(c, dtype=object if _is_text(c) else np.float64) for k, c in cols.items()}, m)
                for p, v, cols, m in buffered]

    def _learn(self) -> None:
        """Bins from the first `warmup` buffered baseline rows (exactly those, whatever the batches
        they came in, so a restored worker learns the same bins), as `profile build` derives them."""
        rows = [(cols, m) for _, v, cols, m in self._warmup if v == self.baseline]
        names = list(dict.fromkeys(k for cols, _ in rows for k in cols))
        if self.settings.features:
            names = [n for n in names if n in self.settings.features or n == SCORE]
        if not names:  # nothing to track (no features, no score): an empty table
            self._learned = {}
            return
        first = self.settings.warmup
        data = {name: [x for cols, m in rows for x in (cols.get(name) or [None] * m)][:first] for name in names}
        profile = build_profile(data, model=self.model, version=self.baseline, score_column=SCORE,
                                bins=self.settings.bins, top_k=self.settings.top_k, created_at="live")
        self._learned = profile_columns(profile)

    def table(self, version: str, current: DriftSketches | None,
              baseline_window: DriftSketches | None) -> DriftTableResult | None:
        """The window's drift table; None when the version has no reference or no sketches yet."""
        if current is None:
            return None
        reference = self.reference_of(version)
        if version in self._profile_bins:
            refs: Mapping[str, Sketch] = self._profile_bins[version]
        elif reference is not None and baseline_window is not None:
            refs = baseline_window.sketches
        else:
            return None
        pairs: dict[str, Sketches] = {n: (refs[n], s) for n, s in current.sketches.items() if n in refs}  # type: ignore[misc]
        return DriftTableResult(reference or "", decide_drift(pairs, self.settings.thresholds))

    # -- state ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "learned": None if self._learned is None else {n: s.snapshot() for n, s in self._learned.items()},
            "warmup": [[p, v, cols, m] for p, v, cols, m in self._warmup],
            "warmup_rows": self._warmup_rows,
        }

    def restore_state(self, data: Mapping[str, Any]) -> None:
        learned = data.get("learned")
        self._learned = None if learned is None else {
            str(n): restore_sketch(s, f"learned drift bins {n!r}") for n, s in learned.items()}
        self._warmup = [(int(p), str(v), {str(k): list(c) for k, c in cols.items()}, int(m))
                        for p, v, cols, m in data.get("warmup", [])]
        self._warmup_rows = int(data.get("warmup_rows", 0))


def _plain(values: np.ndarray) -> list[Any]:
    """A column as JSON-able values (NaN as None) for the warm-up buffer."""
    if values.dtype == object:
        return [None if isinstance(v, float) and v != v else v for v in values.tolist()]
    return [None if v != v else v for v in values.tolist()]


def _is_text(values: list[Any]) -> bool:
    return any(isinstance(v, str) for v in values)

