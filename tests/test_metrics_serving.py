"""ServingMetrics, and the vectorised, signed LatencySketch.add_many it relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mle_stream.core.latency_sketch import LatencySketch
from mle_stream.core.metrics.serving import ServingMetrics

latencies = arrays(np.float64, st.integers(1, 200), elements=st.one_of(
    st.floats(0.0, 1e5), st.just(0.0), st.just(1.0), st.just(1.02)))


def test_hand_computed_case() -> None:
    state = ServingMetrics()
    state.update(np.array([10.0, 20.0, np.nan, 40.0]), np.array([False, True, True, False]))
    state.add_labeled(3)
    v = state.values(window_s=2.0)
    assert (v["predictions"], v["serving_errors"], v["error_rate"]) == (4, 2, 0.5)
    assert (v["labeled"], v["label_coverage"], v["latency_samples"]) == (3, 0.75, 3)
    assert v["throughput_per_s"] == 2.0
    assert v["latency_p50_ms"] == pytest.approx(20.0, rel=0.01)  # rank floor(0.5 * 2) = 1 of 10, 20, 40
    assert v["latency_p99_ms"] == pytest.approx(20.0, rel=0.01)
    assert state.values()["throughput_per_s"] is None  # no window length, no throughput
    assert state.count == 4


def test_empty_state() -> None:
    v = ServingMetrics().values(window_s=60.0)
    assert (v["predictions"], v["throughput_per_s"], v["latency_samples"]) == (0, 0.0, 0)
    assert v["error_rate"] is None and v["label_coverage"] is None and v["latency_p99_ms"] is None


@settings(max_examples=60, deadline=None)
@given(latencies, st.sampled_from([0.5, 0.95, 0.99]))
def test_quantiles_are_within_relative_accuracy_with_unreported_latencies_ignored(values: np.ndarray, q: float) -> None:
    a = 0.01
    with_gaps = np.concatenate([values, np.full(7, np.nan)])
    state = ServingMetrics(relative_accuracy=a)
    state.update(with_gaps, np.zeros(len(with_gaps), dtype=bool))
    got = state.values()[f"latency_p{round(q * 100)}_ms"]
    truth = float(np.quantile(values, q, method="lower"))
    assert got is not None
    assert got == 0.0 if truth <= 1e-9 else abs(got - truth) <= a * truth * (1 + 1e-9)


@settings(max_examples=60, deadline=None)
@given(latencies)
def test_add_many_equals_adding_one_by_one_and_minus_one_takes_values_out(values: np.ndarray) -> None:
    one_by_one = LatencySketch()
    for v in values:
        one_by_one.add(float(v))
    many = LatencySketch()
    many.add_many(values)
    assert many == one_by_one and many.count == len(values)
    empty = LatencySketch().snapshot()
    many.add_many(values, -np.ones(len(values)))
    assert many.snapshot() == empty and many.count == 0


def test_bad_inputs_are_refused_before_anything_is_counted() -> None:
    state = ServingMetrics()
    for latency in (-1.0, math.inf):
        with pytest.raises(ValueError, match="latency_ms"):
            state.update(np.array([1.0, latency]), np.array([False, False]))
    with pytest.raises(ValueError, match="weight"):
        state.update(np.array([1.0]), np.array([False]), np.array([0.5]))
    with pytest.raises(ValueError, match="same length"):
        state.update(np.array([1.0]), np.array([False, True]))
    with pytest.raises(ValueError, match="integer"):
        state.add_labeled(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_s"):
        state.values(window_s=0.0)
    assert state.values()["predictions"] == 0 and state.values()["latency_samples"] == 0
    with pytest.raises(ValueError, match="finite"):
        LatencySketch().add_many(np.array([np.nan]))


def test_merged_windows_take_their_span_from_the_caller() -> None:
    minute_1, minute_2 = ServingMetrics(), ServingMetrics()
    minute_1.update(np.full(120, 5.0), np.zeros(120, dtype=bool))
    minute_2.update(np.full(60, 5.0), np.ones(60, dtype=bool))
    both = minute_1.merge(minute_2).values(window_s=120.0)
    assert both["throughput_per_s"] == 1.5 and both["error_rate"] == pytest.approx(1 / 3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=0, max_size=60), st.integers(0, 10))
def test_latency_mean_and_std_equal_numpy_and_a_correction_takes_a_value_out(values: list[float], gaps: int) -> None:
    latency = np.array(values + [np.nan] * gaps)
    state = ServingMetrics()
    state.update(latency, np.zeros(len(latency), dtype=bool))
    state.update(np.array([123.0]), np.zeros(1, dtype=bool))
    state.update(np.array([123.0]), np.zeros(1, dtype=bool), weight=np.array([-1.0]))  # taken back out
    v = ServingMetrics.restore(state.snapshot()).values()
    if not values:
        assert v["latency_mean_ms"] is None and v["latency_std_ms"] is None
        return
    assert v["latency_mean_ms"] == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-9)
    if len(values) < 2:
        assert v["latency_std_ms"] is None
    else:
        assert v["latency_std_ms"] == pytest.approx(float(np.std(values, ddof=1)), rel=1e-6, abs=1e-6)
