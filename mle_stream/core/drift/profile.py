"""A reference profile: the training data of one model version, reduced to drift sketches.

Built once from the rows a version was trained on (`build_profile`), stored as JSON next to the
version in MLflow, and read by the worker, which compares each live window against it: for every
feature the worker asks `feature(name)` for an empty sketch with the reference's own bins, feeds
the window's values into it, and compares the two with `statistics`.

What each column becomes:

- numeric (numpy int/uint/float dtype, or an object array/list whose non-missing values are all
  numbers, bool excluded): a `NumericSketch` on `quantile_edges(column, bins)`, filled with the
  column (NaN counted apart, +-inf in the end bins).
- categorical (strings, bools, anything else, mixed types): a `CategoricalSketch` of the column's
  `top_categories(column, top_k)`; every rarer category counts in "other". Bools become the
  categories "True" / "False"; numbers in a mixed column count as their text.
- the score column (`score_column`, default "score"; optional: a profile without it has
  `score = None`): a `NumericSketch` like a numeric feature, kept apart from the features. It
  must be numeric.
- a column named in `exclude` (label, id, timestamp columns): left out, listed in `skipped`.
- a column without one usable value (all missing, or numeric without a finite value): left out,
  listed in `skipped` with the reason, since no bin edges can be derived from it.

No pandas, no I/O: `mle_stream.profiles` reads files and talks to MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from mle_stream.core.drift.sketch import CategoricalSketch, NumericSketch, quantile_edges, top_categories

Sketch = NumericSketch | CategoricalSketch

KIND, VERSION = "reference_profile", 1
DEFAULT_BINS, DEFAULT_TOP_K, DEFAULT_SCORE_COLUMN = 100, 20, "score"

EXCLUDED = "excluded"
ALL_MISSING = "no value: every row is missing"
NO_FINITE = "no finite value"


@dataclass(eq=False)
class ReferenceProfile:
    """Sketches of one model version's reference (training) data. Compare with `==` (same JSON)."""

    model: str
    version: str
    created_at: str  # ISO 8601, UTC
    rows: int
    features: dict[str, Sketch]
    score: NumericSketch | None = None
    score_column: str | None = DEFAULT_SCORE_COLUMN
    bins: int = DEFAULT_BINS
    top_k: int = DEFAULT_TOP_K
    skipped: dict[str, str] = field(default_factory=dict)  # column -> why it has no sketch

    # --- for live windows --------------------------------------------------------------
    def feature(self, name: str) -> Sketch:
        """A new, empty sketch with the bins (edges or categories) of feature `name`'s reference
        sketch: what a live window updates and then compares with `features[name]`."""
        reference = self.features.get(name)
        if reference is None:
            why = f" ({self.skipped[name]})" if name in self.skipped else ""
            raise KeyError(f"the reference profile of {self.model} v{self.version} has no feature {name!r}{why}; "
                           f"features: {', '.join(self.features) or 'none'}")
        return empty_like(reference)

    def score_sketch(self) -> NumericSketch | None:
        """A new, empty score sketch with the reference score's edges; None without a score."""
        return None if self.score is None else NumericSketch(self.score.edges)

    @property
    def numeric_features(self) -> list[str]:
        return [n for n, s in self.features.items() if isinstance(s, NumericSketch)]

    @property
    def categorical_features(self) -> list[str]:
        return [n for n, s in self.features.items() if isinstance(s, CategoricalSketch)]

    # --- persistence -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": KIND, "v": VERSION, "model": self.model, "version": self.version,
            "created_at": self.created_at, "rows": self.rows, "bins": self.bins, "top_k": self.top_k,
            "score_column": self.score_column,
            "score": None if self.score is None else self.score.snapshot(),
            "features": {name: sketch.snapshot() for name, sketch in self.features.items()},
            "skipped": dict(self.skipped),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.snapshot(), indent=indent, allow_nan=False)

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        if not isinstance(data, Mapping) or data.get("kind") != KIND:
            got = data.get("kind") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not a {KIND} (kind={got!r})")
        if data.get("v") != VERSION:
            raise ValueError(f"{KIND} format v{data.get('v')!r} is not supported (expected v{VERSION})")
        try:
            features_data = data["features"]
            if not isinstance(features_data, Mapping):
                raise ValueError("field 'features' must be an object")
            features = {str(name): restore_sketch(snap, f"feature {name!r}") for name, snap in features_data.items()}
            score = None
            if data.get("score") is not None:
                restored = restore_sketch(data["score"], "score")
                if not isinstance(restored, NumericSketch):
                    raise ValueError("the score must be a numeric sketch")
                score = restored
            return cls(model=str(data["model"]), version=str(data["version"]), created_at=str(data["created_at"]),
                       rows=int(data["rows"]), features=features, score=score,
                       score_column=None if data.get("score_column") is None else str(data["score_column"]),
                       bins=int(data["bins"]), top_k=int(data["top_k"]),
                       skipped={str(k): str(v) for k, v in dict(data.get("skipped") or {}).items()})
        except KeyError as exc:
            raise ValueError(f"{KIND}: missing field {exc.args[0]!r}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{KIND}: not JSON ({exc})") from None
        return cls.restore(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReferenceProfile):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def summary(self) -> str:
        """One line for people: what the profile holds."""
        parts = [f"model {self.model} v{self.version}", f"{self.rows} rows",
                 f"{len(self.numeric_features)} numeric + {len(self.categorical_features)} categorical features",
                 f"score {self.score_column!r}" if self.score is not None else "no score"]
        if self.skipped:
            parts.append("skipped: " + ", ".join(f"{n} ({why})" for n, why in self.skipped.items()))
        return ", ".join(parts)


def build_profile(
    columns: Mapping[str, npt.ArrayLike | Iterable[Any]],
    *,
    model: str,
    version: str | int,
    score_column: str | None = DEFAULT_SCORE_COLUMN,
    exclude: Iterable[str] = (),
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    created_at: str | None = None,
) -> ReferenceProfile:
    """The reference profile of `columns` (name -> one value per row, all of the same length).

    Raises ValueError when the columns are empty or of different lengths, when a name in
    `exclude` is not a column (a typo would otherwise profile the label as a feature), when the
    score column is not numeric, or for a column of a dtype with no meaning here (datetime,
    complex: exclude it)."""
    if not str(model):
        raise ValueError("model must not be empty")
    if not str(version):
        raise ValueError("version must not be empty")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not columns:
        raise ValueError("no columns to profile")
    excluded = list(dict.fromkeys(exclude))
    unknown = [name for name in excluded if name not in columns]
    if unknown:
        raise ValueError(f"excluded column(s) {', '.join(map(repr, unknown))} not in the data; "
                         f"columns: {', '.join(columns)}")

    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for name, values in columns.items():
        array: np.ndarray[Any, Any] = values if isinstance(values, np.ndarray) else np.empty(0, dtype=object)
        if not isinstance(values, np.ndarray):
            items = list(values)  # type: ignore[arg-type]  # an iterable of values, one per row
            array = np.empty(len(items), dtype=object)
            array[:] = items
        if array.ndim != 1:
            raise ValueError(f"column {name!r}: expected one value per row (1-D), got shape {array.shape}")
        arrays[name] = array
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("columns have different lengths: " + ", ".join(f"{n}={k}" for n, k in lengths.items()))
    rows = next(iter(lengths.values()))
    if rows == 0:
        raise ValueError("no rows to profile")

    skipped = {name: EXCLUDED for name in excluded}
    features: dict[str, Sketch] = {}
    score: NumericSketch | None = None
    for name, array in arrays.items():
        if name in skipped:
            continue
        kind, typed = _classify(name, array)
        if kind == "missing":
            skipped[name] = ALL_MISSING
            continue
        if name == score_column and kind != "numeric":
            raise ValueError(f"score column {name!r} is not numeric (found e.g. {_example(typed)!r}); "
                             f"name the score column with score_column, or None for no score")
        if kind == "numeric":
            if not np.isfinite(typed).any():
                skipped[name] = NO_FINITE
                continue
            sketch = NumericSketch(quantile_edges(typed, bins))
            sketch.update(typed)
            if name == score_column:
                score = sketch
            else:
                features[name] = sketch
        else:
            cat = CategoricalSketch(top_categories(typed, top_k))
            cat.update(typed)
            features[name] = cat

    stamp = created_at or datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return ReferenceProfile(model=str(model), version=str(version), created_at=stamp, rows=int(rows),
                            features=features, score=score, score_column=score_column, bins=bins, top_k=top_k,
                            skipped=skipped)


def _classify(name: str, array: np.ndarray[Any, Any]) -> tuple[str, np.ndarray[Any, Any]]:
    """("numeric", float64 array) | ("categorical", array) | ("missing", array) for one column."""
    kind = array.dtype.kind
    if kind in "iuf":
        values = array.astype(np.float64, copy=False)
        return ("missing" if np.isnan(values).all() else "numeric"), values
    if kind in "bUS":
        return "categorical", array
    if kind != "O":
        raise ValueError(f"column {name!r} has dtype {array.dtype}, which a profile cannot sketch: exclude it "
                         f"or convert it to numbers or text")
    present = [v for v in array.tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return "missing", array
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
           for v in present):
        return "numeric", np.asarray([math.nan if v is None else float(v) for v in array.tolist()], dtype=np.float64)
    return "categorical", array


def _example(array: np.ndarray[Any, Any]) -> Any:
    for value in array.tolist():
        if value is not None:
            return value
    return None


def empty_like(sketch: Sketch) -> Sketch:
    if isinstance(sketch, NumericSketch):
        return NumericSketch(sketch.edges)
    return CategoricalSketch(sketch.categories)


def restore_sketch(data: Any, what: str) -> Sketch:
    kind = data.get("kind") if isinstance(data, Mapping) else None
    try:
        if kind == "drift_numeric_sketch":
            return NumericSketch.restore(dict(data))
        if kind == "drift_categorical_sketch":
            return CategoricalSketch.restore(dict(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{KIND}: {what}: {exc}") from None
    raise ValueError(f"{KIND}: {what} is not a drift sketch (kind={kind!r})")
