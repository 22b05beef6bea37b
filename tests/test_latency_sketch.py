import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mle_stream.core.latency_sketch import LatencySketch

latencies = st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), min_size=1, max_size=300)


def sketch_of(values: list[float], a: float = 0.01) -> LatencySketch:
    s = LatencySketch(a)
    for v in values:
        s.add(v)
    return s


@settings(max_examples=200, deadline=None)
@given(latencies, st.sampled_from([0.0, 0.01, 0.5, 0.95, 0.99, 1.0]))
def test_quantile_is_within_relative_accuracy_of_numpy(values: list[float], q: float) -> None:
    a = 0.01
    # The sketch answers for the element at rank floor(q * (n - 1)), numpy's method="lower".
    truth = float(np.quantile(np.array(values), q, method="lower"))
    got = sketch_of(values, a).quantile(q)
    assert got is not None
    if truth <= 1e-9:
        assert got == 0.0
    else:
        assert abs(got - truth) <= a * truth * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(latencies, latencies, latencies)
def test_merge_is_associative_and_equals_update_of_the_union(a: list[float], b: list[float], c: list[float]) -> None:
    sa, sb, sc = sketch_of(a), sketch_of(b), sketch_of(c)
    assert sa.merge(sb).merge(sc) == sa.merge(sb.merge(sc))
    assert sa.merge(sb) == sketch_of(a + b)


@given(latencies)
def test_snapshot_restore_round_trips(values: list[float]) -> None:
    s = sketch_of(values)
    restored = LatencySketch.restore(s.snapshot())
    assert restored == s and restored.count == len(values)
    assert restored.quantile(0.99) == s.quantile(0.99)


def test_empty_sketch_and_bad_arguments() -> None:
    assert LatencySketch().quantile(0.5) is None
    with pytest.raises(ValueError, match="relative_accuracy"):
        LatencySketch(0.0)
    with pytest.raises(ValueError, match="q must be"):
        LatencySketch().quantile(1.5)
    with pytest.raises(ValueError, match="different relative accuracy"):
        LatencySketch(0.01).merge(LatencySketch(0.02))


def test_hand_computed_buckets() -> None:
    # a = 1/3 gives gamma = 2: 3 ms falls in (2, 4] and reads back as 2 * 4 / 3.
    s = sketch_of([3.0], a=1 / 3)
    assert math.isclose(s.quantile(0.5), 8 / 3)
