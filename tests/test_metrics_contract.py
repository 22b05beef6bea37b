"""One contract, run over every metric state (as river's checks/common.py runs over every estimator).

Merging must be associative and equal to updating from the union, snapshots must survive JSON,
weight -1 must take rows back out, and hyperparameters are checked at construction and at merge.
The batch strategies here are shared with the per-metric tests.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mle_stream.core.metrics.base import MetricState
from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.multiclass import MulticlassMetrics
from mle_stream.core.metrics.outcomes import BinaryOutcomes, MulticlassOutcomes, RegressionOutcomes
from mle_stream.core.metrics.regression import RegressionMetrics
from mle_stream.core.metrics.serving import ServingMetrics

SETTINGS = settings(max_examples=40, deadline=None)

# ---------------------------------------------------------------------------------------------
# Batch strategies: empty batches, single-class batches, scores exactly 0, 1 and on thresholds.

EDGE_SCORES = [0.0, 1.0, 0.5, 0.3, 0.7, 0.1, 0.2, 0.30000000000000004, 0.6000000000000001, 0.9]
scores = st.one_of(st.sampled_from(EDGE_SCORES), st.floats(0.0, 1.0))


@st.composite
def binary_batches(draw: st.DrawFn, max_size: int = 30) -> BinaryOutcomes:
    n = draw(st.integers(0, max_size))
    labels = draw(st.sampled_from(["mixed", "all positive", "all negative"]))
    y = draw(arrays(np.bool_, n)) if labels == "mixed" else np.full(n, labels == "all positive")
    score = draw(arrays(np.float64, n, elements=scores))
    # The pod's decision is usually score >= its threshold, but may be anything (predicted_label).
    predicted = score >= 0.5 if draw(st.booleans()) else draw(arrays(np.bool_, n))
    return BinaryOutcomes(y_true=y, score=score, predicted=predicted)


CLASSES = ["a", "b", "c", "d", "e"]


@st.composite
def multiclass_batches(draw: st.DrawFn, max_size: int = 30, classes: list[str] = CLASSES) -> MulticlassOutcomes:
    n = draw(st.integers(0, max_size))
    names = st.sampled_from(classes)
    true = np.array(draw(st.lists(names, min_size=n, max_size=n)), dtype=object)
    pred = np.array(draw(st.lists(names, min_size=n, max_size=n)), dtype=object)
    p_true = draw(arrays(np.float64, n, elements=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))))
    return MulticlassOutcomes(y_true=true, predicted=pred, p_true=p_true)


# Labels on a 1/4 grid (ties, exact errors, constant labels) or any float of a wide range.
grid_values = st.one_of(st.integers(-2000, 2000).map(lambda k: k / 4), st.floats(-1e4, 1e4))


@st.composite
def regression_batches(draw: st.DrawFn, max_size: int = 30) -> RegressionOutcomes:
    n = draw(st.integers(0, max_size))
    offset = draw(st.sampled_from([0.0, 1e6]))
    y = draw(arrays(np.float64, n, elements=grid_values)) + offset
    y_pred = draw(arrays(np.float64, n, elements=grid_values)) + offset
    return RegressionOutcomes(y_true=y, y_pred=y_pred)


@dataclass(frozen=True)
class ServingBatch:
    """ServingMetrics takes plain prediction columns plus a count of labels: bundled for tests."""

    latency_ms: np.ndarray
    serving_error: np.ndarray
    labeled: int
    weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.latency_ms)

    def weights(self) -> np.ndarray:
        return np.ones(len(self)) if self.weight is None else self.weight


@st.composite
def serving_batches(draw: st.DrawFn, max_size: int = 30) -> ServingBatch:
    n = draw(st.integers(0, max_size))
    latency = st.one_of(st.just(float("nan")), st.just(0.0), st.floats(0.0, 1e4))
    return ServingBatch(
        latency_ms=draw(arrays(np.float64, n, elements=latency)),
        serving_error=draw(arrays(np.bool_, n)),
        labeled=draw(st.integers(0, n)),
    )


# ---------------------------------------------------------------------------------------------
# How each state is driven, and what it promises.

def concat(a: Any, b: Any) -> Any:
    """The batch holding a's rows then b's."""
    columns = {f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)])
               for f in dataclasses.fields(a) if f.name not in ("weight", "labeled")}
    if isinstance(a, ServingBatch):
        columns["labeled"] = a.labeled + b.labeled
    return type(a)(**columns, weight=np.concatenate([a.weights(), b.weights()]))


def negate(batch: Any) -> Any:
    """The same rows with weight -1: takes them back out."""
    changes: dict[str, Any] = {"weight": -batch.weights()}
    if isinstance(batch, ServingBatch):
        changes["labeled"] = -batch.labeled
    return dataclasses.replace(batch, **changes)


def apply(state: Any, batch: Any) -> None:
    if isinstance(batch, ServingBatch):
        state.update(batch.latency_ms, batch.serving_error, batch.weight)
        state.add_labeled(batch.labeled)
    else:
        state.update(batch)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Any]
    batches: st.SearchStrategy[Any]
    # Two states whose hyperparameters differ, and the hyperparameter the error must name.
    mismatched: tuple[Callable[[], Any], Callable[[], Any], str] | None
    bad_constructors: list[Callable[[], Any]] = field(default_factory=list)
    # Values that return exactly after update(b), update(-b); None: all of them. Folding classes
    # and coarsening the score histogram cannot be undone (documented on the classes).
    reversible_values: tuple[str, ...] | None = None


CASES = [
    Case("binary", lambda: BinaryMetrics(thresholds=(0.3, 0.5, 0.7), calibration_bins=5), binary_batches(),
         (lambda: BinaryMetrics(thresholds=(0.5,)), lambda: BinaryMetrics(thresholds=(0.4,)), "thresholds"),
         [lambda: BinaryMetrics(thresholds=(1.5,)), lambda: BinaryMetrics(thresholds=(float("nan"),)),
          lambda: BinaryMetrics(thresholds=(0.5, 0.5)), lambda: BinaryMetrics(score_bins=1),
          lambda: BinaryMetrics(score_bins=10.5), lambda: BinaryMetrics(calibration_bins=0)]),
    # Four bins: most batches coarsen the histogram, so merges across levels get exercised.
    Case("binary, coarse histogram", lambda: BinaryMetrics(score_bins=4, calibration_bins=3), binary_batches(),
         (lambda: BinaryMetrics(score_bins=4), lambda: BinaryMetrics(score_bins=8), "score_bins"),
         [lambda: BinaryMetrics(calibration_bins=True)],
         reversible_values=("count", "accuracy", "precision", "recall", "f1", "log_loss", "brier_score",
                            "expected_calibration_error", "positive_rate", "label_rate", "mean_score")),
    Case("multiclass", lambda: MulticlassMetrics(), multiclass_batches(),
         (lambda: MulticlassMetrics(10), lambda: MulticlassMetrics(20), "max_classes"),
         [lambda: MulticlassMetrics(0), lambda: MulticlassMetrics(2.0)]),  # type: ignore[arg-type]
    Case("multiclass, overflowing classes", lambda: MulticlassMetrics(max_classes=2), multiclass_batches(),
         None, reversible_values=("count", "accuracy", "micro_f1", "log_loss")),
    Case("regression", RegressionMetrics, regression_batches(), None),
    Case("serving", lambda: ServingMetrics(relative_accuracy=0.02), serving_batches(),
         (lambda: ServingMetrics(0.01), lambda: ServingMetrics(0.02), "relative_accuracy"),
         [lambda: ServingMetrics(0.0), lambda: ServingMetrics(1.0)]),
]
ids = [c.name for c in CASES]


def state_of(case: Case, *batches: Any) -> Any:
    state = case.make()
    for batch in batches:
        apply(state, batch)
    return state


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_is_a_documented_metric_state(case: Case) -> None:
    state = case.make()
    assert isinstance(state, MetricState)
    assert type(state).__doc__ and type(state).__module__.startswith("mle_stream.core.metrics.")
    assert state.count == 0
    json.dumps(state.values())


@pytest.mark.parametrize("case", CASES, ids=ids)
@SETTINGS
@given(data=st.data())
def test_merge_is_associative_and_leaves_its_inputs_alone(case: Case, data: st.DataObject) -> None:
    a, b, c = (state_of(case, data.draw(case.batches)) for _ in range(3))
    before = [s.snapshot() for s in (a, b, c)]
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    # Exactly: counts are integers and float sums exact sums (core/exact_sum.py).
    assert left.snapshot() == right.snapshot()
    assert left.values() == right.values()
    assert left.count == right.count == a.count + b.count + c.count
    assert [s.snapshot() for s in (a, b, c)] == before


@pytest.mark.parametrize("case", CASES, ids=ids)
@SETTINGS
@given(data=st.data())
def test_update_from_the_union_equals_merging_the_updates(case: Case, data: st.DataObject) -> None:
    a, b = data.draw(case.batches), data.draw(case.batches)
    union = state_of(case, concat(a, b))
    # Bit for bit, whatever the grouping: what makes a restarted worker's windows equal an
    # uninterrupted run's.
    assert union.snapshot() == state_of(case, a).merge(state_of(case, b)).snapshot() == state_of(case, a, b).snapshot()
    assert union.values() == state_of(case, a).merge(state_of(case, b)).values() == state_of(case, a, b).values()


@pytest.mark.parametrize("case", CASES, ids=ids)
@SETTINGS
@given(data=st.data())
def test_snapshot_survives_json_and_restores_an_equal_state(case: Case, data: st.DataObject) -> None:
    state = state_of(case, data.draw(case.batches), data.draw(case.batches))
    restored = type(state).restore(json.loads(json.dumps(state.snapshot())))
    assert json.loads(json.dumps(state.values())) == state.values()
    assert restored.values() == state.values()
    assert restored.snapshot() == state.snapshot()
    # A restored state keeps working like the original.
    more = data.draw(case.batches)
    apply(state, more)
    apply(restored, more)
    assert restored.values() == state.values()


@pytest.mark.parametrize("case", CASES, ids=ids)
@SETTINGS
@given(data=st.data())
def test_weight_minus_one_takes_rows_back_out(case: Case, data: st.DataObject) -> None:
    a, b = data.draw(case.batches), data.draw(case.batches)
    state = state_of(case, a)
    before, values_before = state.snapshot(), state.values()
    apply(state, b)
    apply(state, negate(b))
    # Exactly as before: the sums are exact, so taking rows back out leaves no rounding behind.
    if case.reversible_values is None:
        assert state.snapshot() == before
        assert state.values() == values_before
    else:
        after = state.values()
        assert {k: after[k] for k in case.reversible_values} == {k: values_before[k] for k in case.reversible_values}
    # Taking everything back out leaves an empty state.
    apply(state, negate(a))
    assert state.count == 0
    emptied = state.values()
    assert all(emptied[k] in (None, 0) for k in (case.reversible_values or emptied) if k != "classes_overflowed")


@pytest.mark.parametrize("case", [c for c in CASES if c.mismatched], ids=[c.name for c in CASES if c.mismatched])
def test_merging_different_hyperparameters_raises_naming_them(case: Case) -> None:
    assert case.mismatched is not None
    make_a, make_b, name = case.mismatched
    with pytest.raises(ValueError, match=name):
        make_a().merge(make_b())


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_merging_another_kind_of_state_raises(case: Case) -> None:
    state = case.make()
    other = RegressionMetrics() if not isinstance(state, RegressionMetrics) else ServingMetrics()
    with pytest.raises(TypeError, match="cannot merge"):
        state.merge(other)


@pytest.mark.parametrize("case", [c for c in CASES if c.bad_constructors],
                         ids=[c.name for c in CASES if c.bad_constructors])
def test_bad_hyperparameters_raise_at_construction(case: Case) -> None:
    for make in case.bad_constructors:
        with pytest.raises(ValueError):
            make()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_restore_refuses_another_kind_or_format(case: Case) -> None:
    state = case.make()
    other = MulticlassMetrics() if not isinstance(state, MulticlassMetrics) else RegressionMetrics()
    with pytest.raises(ValueError, match="snapshot"):
        type(state).restore(other.snapshot())
    with pytest.raises(ValueError, match="format"):
        type(state).restore(state.snapshot() | {"v": 99})
