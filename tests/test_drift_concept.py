"""Concept-drift detectors on the error stream.

Independent truths: river's detector classes used directly (with river's own after-alarm
behaviour, and, for ADWIN's forced restarts, a fresh river ADWIN made by hand), the CUSUM recursion
computed by hand and by a plain reference loop, and uninterrupted runs for snapshot/restore.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import drift

from mle_stream.core.drift.concept import (
    CUSUM,
    ConceptAlarm,
    ConceptDriftMonitor,
    DetectorSpec,
    pane_sequence,
    pane_values_sequence,
)


def binary_stream(rates: list[float], length: int, seed: int) -> np.ndarray:
    """0/1 errors, `length` outcomes at each rate in turn."""
    rng = np.random.default_rng(seed)
    return np.concatenate([(rng.random(length) < p).astype(np.float64) for p in rates])


@functools.cache
def change_stream() -> np.ndarray:
    """A step in the error rate: 0.05, then 0.25 from position 5000 on."""
    return binary_stream([0.05, 0.25], 5000, seed=20240501)


def river_positions(detector: drift.base.DriftDetector, values: np.ndarray) -> list[int]:
    positions = []
    for i, x in enumerate(values.tolist()):
        detector.update(x)
        if detector.drift_detected:
            positions.append(i)
    return positions


def monitor_positions(spec: DetectorSpec, values: np.ndarray, chunk: int = 777) -> list[int]:
    monitor = ConceptDriftMonitor([spec])
    alarms = [a for start in range(0, len(values), chunk) for a in monitor.update(values[start:start + chunk])]
    assert monitor.count == len(values)
    assert all(a.detector == spec.kind and a.params == spec.params for a in alarms)
    return [a.position for a in alarms]


# -- the wrapper is river ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, params, river_class", [
    ("adwin", {}, drift.ADWIN),
    ("adwin", {"delta": 0.05, "clock": 1, "grace_period": 50}, drift.ADWIN),
    ("page_hinkley", {}, drift.PageHinkley),
    ("page_hinkley", {"mode": "up", "threshold": 20.0, "delta": 0.01}, drift.PageHinkley),
])
def test_alarm_positions_equal_river_used_directly(kind: str, params: dict, river_class: type) -> None:
    spec = DetectorSpec.parse(kind, params)
    values = change_stream()
    expected = river_positions(river_class(**params), values)
    assert expected, "the stream must make the detector alarm, or the comparison shows little"
    assert any(p >= 5000 for p in expected)
    assert monitor_positions(spec, values) == expected


def test_kswin_alarm_positions_equal_river_used_directly() -> None:
    # KSWIN's seed is ours (42) by default; river's default None would not be reproducible.
    spec = DetectorSpec.parse("kswin", {})
    assert spec.params["seed"] == 42
    # The 0/1 error stream (n = 30 subsamples of 0/1 values rarely reach alpha = 0.005: few or no
    # alarms), shortened around the change to keep the test fast (KSWIN costs ~300 us an outcome).
    values = change_stream()[3500:6500]
    assert monitor_positions(spec, values) == river_positions(drift.KSWIN(seed=42), values)
    # And a regression-like stream where KSWIN does alarm (several times: after each, river resets).
    rng = np.random.default_rng(7)
    floats = np.abs(np.concatenate([rng.normal(0, 1, 700), rng.normal(1.5, 1, 700), rng.normal(0, 3, 600)]))
    spec = DetectorSpec.parse("kswin", {"alpha": 0.001, "seed": 3})
    expected = river_positions(drift.KSWIN(alpha=0.001, seed=3), floats)
    assert len(expected) >= 2
    assert monitor_positions(spec, floats, chunk=313) == expected


def adwin_with_forced_restarts(values: np.ndarray, max_history: int, **params: float) -> list[int]:
    """The documented ADWIN behaviour built by hand from river: a fresh river ADWIN after every
    alarm and whenever the current one has seen max_history outcomes."""
    positions, detector, seen = [], drift.ADWIN(**params), 0
    for i, x in enumerate(values.tolist()):
        if seen == max_history:
            detector, seen = drift.ADWIN(**params), 0
        detector.update(x)
        seen += 1
        if detector.drift_detected:
            positions.append(i)
            detector, seen = drift.ADWIN(**params), 0
    return positions


def test_adwin_forced_restart_is_a_fresh_river_adwin() -> None:
    values = change_stream()
    expected = adwin_with_forced_restarts(values, 1200)
    assert expected != river_positions(drift.ADWIN(), values), "the restarts should change something"
    assert monitor_positions(DetectorSpec.parse("adwin", {"max_history": 1200}), values, chunk=500) == expected


def test_river_restarts_after_an_alarm() -> None:
    """What the module docstring says about river 0.26: after an alarm, the next update restarts
    the detector from scratch (so ADWIN's state then depends on nothing earlier)."""
    values = change_stream()
    for make in (drift.ADWIN, drift.PageHinkley):
        positions = river_positions(make(), values)
        first = positions[0]
        restarted = [first + 1 + p for p in river_positions(make(), values[first + 1:])]
        assert restarted == positions[1:]


# -- snapshot / restore ---------------------------------------------------------------------------

FAST_SPECS = [
    DetectorSpec.parse("adwin", {"max_history": 400}),
    DetectorSpec.parse("adwin", {"delta": 0.01, "clock": 4}),
    DetectorSpec.parse("page_hinkley", {"threshold": 15.0}),
    DetectorSpec.parse("cusum", {"warmup": 100, "h": 12.0}),
    DetectorSpec.parse("cusum", {"mu0": 0.05, "sigma": 0.25, "k": 0.5, "h": 8.0}),
]


@functools.cache
def restore_stream(kind: str) -> np.ndarray:
    if kind == "binary":
        return binary_stream([0.05, 0.3, 0.05, 0.4], 700, seed=11)
    rng = np.random.default_rng(12)  # absolute errors of a regression model, whose scale changes
    return np.abs(np.concatenate([rng.normal(0, s, 700) for s in (0.2, 0.5, 0.2, 0.8)]))


@functools.cache
def uninterrupted(kind: str, specs: tuple[DetectorSpec, ...]) -> tuple[tuple[str, int], ...]:
    monitor = ConceptDriftMonitor(specs)
    return tuple((a.detector, a.position) for a in monitor.update(restore_stream(kind)))


def run_with_restart(specs: tuple[DetectorSpec, ...], values: np.ndarray, cut: int, splits: list[int],
                     ) -> list[tuple[str, int]]:
    """Feed values in chunks (split at `splits`), snapshot at `cut` through JSON, restore, go on."""
    bounds = sorted({0, cut, len(values), *splits})
    monitor = ConceptDriftMonitor(specs)
    seen: list[tuple[str, int]] = []
    for a, b in zip(bounds, bounds[1:]):
        if a == cut:
            data = json.loads(json.dumps(monitor.snapshot()))
            monitor = ConceptDriftMonitor.restore(specs, data)
            assert monitor.count == cut
        seen += [(x.detector, x.position) for x in monitor.update(values[a:b], {"pane": a})]
    return seen


def test_restore_streams_exercise_every_path() -> None:
    for kind in ("binary", "float"):
        alarms = uninterrupted(kind, tuple(FAST_SPECS))
        for d in ("adwin", "page_hinkley", "cusum"):
            assert sum(1 for k, _ in alarms if k == d) >= 2, (kind, d, alarms)
    assert len(restore_stream("binary")) > 5 * 400  # several forced ADWIN restarts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["binary", "float"]), cut=st.integers(0, 2800),
       splits=st.lists(st.integers(0, 2800), max_size=6))
def test_restore_gives_the_same_future_alarms(kind: str, cut: int, splits: list[int]) -> None:
    specs = tuple(FAST_SPECS)
    assert run_with_restart(specs, restore_stream(kind), cut, splits) == list(uninterrupted(kind, specs))


def test_restore_right_after_each_alarm() -> None:
    """The snapshot taken when the last outcome fed raised an alarm (river's detectors still have
    drift_detected set and restart at the next update)."""
    specs = tuple(FAST_SPECS)
    expected = list(uninterrupted("binary", specs))
    for _, position in expected[::2]:
        assert run_with_restart(specs, restore_stream("binary"), position + 1, []) == expected


@functools.cache
def kswin_case() -> tuple[np.ndarray, tuple[DetectorSpec, ...], tuple[tuple[str, int], ...]]:
    rng = np.random.default_rng(5)
    values = np.abs(np.concatenate([rng.normal(0, 1, 200), rng.normal(2, 1, 200), rng.normal(0, 1, 200)]))
    specs = (DetectorSpec.parse("kswin", {"alpha": 0.01, "window_size": 60, "stat_size": 20}),)
    alarms = tuple((a.detector, a.position) for a in ConceptDriftMonitor(specs).update(values))
    assert len(alarms) >= 2
    return values, specs, alarms


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 600), splits=st.lists(st.integers(0, 600), max_size=3))
def test_kswin_restore_gives_the_same_future_alarms(cut: int, splits: list[int]) -> None:
    values, specs, alarms = kswin_case()
    assert run_with_restart(specs, values, cut, splits) == list(alarms)


def test_kswin_restore_right_after_an_alarm() -> None:
    values, specs, alarms = kswin_case()
    assert run_with_restart(specs, values, alarms[0][1] + 1, []) == list(alarms)


def test_snapshot_is_compact_json_and_refuses_other_specs() -> None:
    specs = [DetectorSpec.parse("adwin"), DetectorSpec.parse("cusum", {"warmup": 50})]
    monitor = ConceptDriftMonitor(specs)
    monitor.update(binary_stream([0.02], 80_000, seed=3))
    data = monitor.snapshot()
    text = json.dumps(data)
    assert data["detectors"][0]["history"]["n"] > 0
    assert "bits" in data["detectors"][0]["history"]  # 0/1 errors: one bit each
    assert len(text) < 80_000 / 8 * 4 / 3 + 2000
    with pytest.raises(ValueError, match="written for detectors"):
        ConceptDriftMonitor.restore([DetectorSpec.parse("adwin", {"delta": 0.01}), specs[1]], json.loads(text))
    with pytest.raises(ValueError, match="written for detectors"):
        ConceptDriftMonitor.restore(specs[:1], json.loads(text))
    ConceptDriftMonitor.restore(specs, json.loads(text))


def test_alarm_carries_detector_params_position_and_context() -> None:
    spec = DetectorSpec.parse("cusum", {"mu0": 0.0, "sigma": 1.0, "h": 1.0})
    monitor = ConceptDriftMonitor([spec])
    assert monitor.update(np.zeros(5)) == []
    [alarm] = monitor.update(np.array([0.0, 1.0, 1.0]), {"pane_start_ms": 60_000})
    assert alarm == ConceptAlarm("cusum", spec.params, 7, {"pane_start_ms": 60_000})  # S: 0.75, 1.5
    assert json.loads(json.dumps(alarm.to_json())) == {
        "detector": "cusum", "position": 7, "context": {"pane_start_ms": 60_000},
        "params": {"k": 0.25, "h": 1.0, "mu0": 0.0, "sigma": 1.0, "warmup": 1000}}


def test_update_rejects_non_finite_and_non_1d_errors() -> None:
    monitor = ConceptDriftMonitor([DetectorSpec.parse("adwin")])
    with pytest.raises(ValueError, match=r"finite.*offset 1 \(position 1\)"):
        monitor.update(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        monitor.update(np.zeros((2, 2)))


# -- CUSUM ----------------------------------------------------------------------------------------

def test_cusum_hand_computed() -> None:
    # mu0 = 0, sigma = 1, k = 0.25, h = 1: S += x - 0.25, floored at 0; alarm when S > 1 (strictly).
    xs = [0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0.5, 0.25, 0.5]
    trace = [0, .75, 0, 0, .75, .5, .25, 0, .75, 0, 0, 0, 0, 0, .75, 1.0, 1.0, 0]
    cusum = CUSUM(k=0.25, h=1.0, mu0=0.0, sigma=1.0)
    seen_trace, alarms = [], []
    for i, x in enumerate(xs):
        cusum.update(x)
        seen_trace.append(cusum.s)
        if cusum.drift_detected:
            alarms.append(i)
    assert alarms == [2, 9, 17]  # at 15 and 16 S == h exactly: no alarm
    assert seen_trace == trace


def test_cusum_hand_computed_warmup_and_reestimation() -> None:
    # Warm-up [0, 1, 0, 1]: mu0 = 0.5, sigma = 0.5; k = 0.5, h = 2: reference 0.75, limit 1.0.
    cusum = CUSUM(k=0.5, h=2.0, warmup=4)
    assert cusum.feed([0, 1, 0, 1]) == [] and cusum.reference == (0.75, 1.0)
    # S: 0.25, 0.5, 0.75, 1.0 (not > 1), 1.25: alarm at offset 4.
    assert cusum.feed([1, 1, 1, 1, 1]) == [4]
    # After the alarm, a new warm-up: [1, 1, 1, 1] has sigma 0, floored at sqrt(3) / 4.
    assert cusum.in_warmup
    assert cusum.feed([1, 1, 1, 1]) == []
    assert cusum.reference == pytest.approx((1 + 0.5 * math.sqrt(3) / 4, 2 * math.sqrt(3) / 4))


def reference_cusum(xs: list[float], k: float, h: float, mu0: float | None, sigma: float | None,
                    warmup: int) -> list[int]:
    """The recursion written out plainly, estimating with numpy."""
    alarms, s, buffer, ref, limit = [], 0.0, [], None, None
    for i, x in enumerate(xs):
        if ref is None:
            if mu0 is not None and sigma is not None:
                ref, limit = mu0 + k * sigma, h * sigma
            else:
                buffer.append(x)
                if len(buffer) == warmup:
                    n = len(buffer)
                    m = float(np.mean(buffer)) if mu0 is None else mu0
                    sd = max(float(np.std(buffer)), math.sqrt(n - 1) / n) if sigma is None else sigma
                    ref, limit, buffer = m + k * sd, h * sd, []
                continue
        s = max(0.0, s + x - ref)
        if s > limit:
            alarms.append(i)
            s = 0.0
            if mu0 is None or sigma is None:
                ref = None
    return alarms


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.floats(0.0, 1.0), h=st.floats(0.5, 20.0),
       mu0=st.none() | st.floats(0.0, 0.5), sigma=st.none() | st.floats(0.05, 1.0), warmup=st.integers(2, 300),
       binary=st.booleans())
def test_cusum_equals_reference_loop(seed: int, k: float, h: float, mu0: float | None, sigma: float | None,
                                     warmup: int, binary: bool) -> None:
    rng = np.random.default_rng(seed)
    p = np.repeat(rng.uniform(0.0, 0.5, 6), 500)
    xs = ((rng.random(3000) < p) * 1.0 if binary else rng.exponential(p + 0.01)).tolist()
    cusum = CUSUM(k=k, h=h, mu0=mu0, sigma=sigma, warmup=warmup)
    assert cusum.feed(xs) == reference_cusum(xs, k, h, mu0, sigma, warmup)


def increment_tilt(p: float, k: float) -> tuple[float, float]:
    """For 0/1 errors at rate p with the CUSUM in sigma units: the jump `a` an error makes and
    theta > 0 solving E[exp(theta X)] = 1 for the increment X (Lundberg's exponent)."""
    sd = math.sqrt(p * (1 - p))
    a, b = (1 - p) / sd - k, -p / sd - k
    lo, hi = 1e-9, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if p * math.exp(mid * a) + (1 - p) * math.exp(mid * b) > 1:
            hi = mid
        else:
            lo = mid
    return a, lo


def false_alarm_bound(n: int, p: float, k: float, h: float) -> float:
    """An upper bound on the expected number of alarms in n in-control outcomes (mu0, sigma exact).

    An alarm ends an excursion of the statistic that started from 0 with an error (a jump of a);
    by Lundberg's inequality the walk from a ever exceeds h with probability <= exp(-theta (h - a)),
    and at most n p excursions start (one per error). So E[alarms] <= n p exp(-theta (h - a))."""
    a, theta = increment_tilt(p, k)
    return n * p * math.exp(-theta * (h - a))


def test_cusum_stationary_stream_false_alarms_within_the_bound() -> None:
    p, n = 0.02, 100_000
    values = binary_stream([p], n, seed=99).tolist()
    sd = math.sqrt(p * (1 - p))
    # Defaults (k = 0.25, h = 50): E[alarms] <= 0.03, so by Markov P(any alarm) <= 0.03: expect none.
    bound = false_alarm_bound(n, p, 0.25, 50.0)
    assert bound < 0.05
    assert CUSUM(mu0=p, sigma=sd).feed(values) == []
    # A low threshold alarms, and no more often than the bound says (it is ~3x the measured rate).
    bound = false_alarm_bound(n, p, 0.25, 20.0)
    alarms = CUSUM(h=20.0, mu0=p, sigma=sd).feed(values)
    assert 0 < len(alarms) <= bound, (len(alarms), bound)


def test_cusum_detects_a_jump_from_2_to_8_percent() -> None:
    values = binary_stream([0.02, 0.08], 20_000, seed=4).tolist()
    # Known in-control values: no alarm before the jump, then within ~280 outcomes on average.
    alarms = CUSUM(mu0=0.02, sigma=math.sqrt(0.02 * 0.98)).feed(values)
    assert alarms and all(a >= 20_000 for a in alarms) and alarms[0] < 21_500
    # Estimated from the default warm-up of 1000 outcomes: the same.
    alarms = CUSUM().feed(values)
    assert alarms and alarms[0] >= 20_000 and alarms[0] < 21_500


# -- canonical pane order -----------------------------------------------------------------------

@pytest.mark.parametrize("n, e", [(0, 0), (1, 0), (1, 1), (10, 3), (1000, 1000), (5000, 123)])
def test_pane_sequence_has_exactly_the_errors(n: int, e: int) -> None:
    seq = pane_sequence(n, e, "fraud/v2/1700000000000")
    assert seq.dtype == np.float64 and seq.shape == (n,)
    assert set(seq.tolist()) <= {0.0, 1.0} and int(seq.sum()) == e


def test_pane_sequence_is_deterministic_spread_and_keyed() -> None:
    a = pane_sequence(2000, 100, "v2/pane-1")
    np.random.seed(1)
    random.seed(2)  # global generators play no part
    assert np.array_equal(a, pane_sequence(2000, 100, "v2/pane-1"))
    assert not np.array_equal(a, pane_sequence(2000, 100, "v2/pane-2"))
    # Not bunched the way sorting would bunch them: errors over the whole pane.
    ones = np.flatnonzero(a)
    assert ones[0] < 200 and ones[-1] > 1800 and 700 < ones.mean() < 1300


def test_pane_sequence_does_not_depend_on_the_process() -> None:
    """Python's str hash is salted per process; the seed must not come from it."""
    code = ("from mle_stream.core.drift.concept import pane_sequence, pane_values_sequence;"
            "print(pane_sequence(50, 7, 'k').nonzero()[0].tolist(), pane_values_sequence([3., 1., 2., 5.], "
            "'k').tolist())")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # not this process's
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout
    assert output.strip() == (f"{pane_sequence(50, 7, 'k').nonzero()[0].tolist()} "
                              f"{pane_values_sequence([3., 1., 2., 5.], 'k').tolist()}")


def test_pane_values_sequence_ignores_arrival_order() -> None:
    rng = np.random.default_rng(8)
    values = rng.exponential(1.0, 1000)
    seq = pane_values_sequence(values, "reg/v1/pane")
    assert np.array_equal(np.sort(seq), np.sort(values))
    assert np.array_equal(seq, pane_values_sequence(rng.permutation(values), "reg/v1/pane"))
    assert not np.array_equal(seq, np.sort(values))
    assert not np.array_equal(seq, pane_values_sequence(values, "reg/v1/other"))


def test_pane_sequence_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n_errors"):
        pane_sequence(5, 6, "k")
    with pytest.raises(ValueError, match="n_outcomes"):
        pane_sequence(-1, 0, "k")


# -- parsing ------------------------------------------------------------------------------------

def test_parse_fills_river_defaults() -> None:
    assert dict(DetectorSpec.parse("adwin").params) == {
        "delta": 0.002, "clock": 32, "max_buckets": 5, "min_window_length": 5, "grace_period": 10,
        "max_history": 1_000_000}
    assert dict(DetectorSpec.parse("page_hinkley").params) == {
        "min_instances": 30, "delta": 0.005, "threshold": 50.0, "alpha": 1 - 0.0001, "mode": "both"}
    assert dict(DetectorSpec.parse("kswin").params) == {"alpha": 0.005, "window_size": 100, "stat_size": 30,
                                                        "seed": 42}
    assert DetectorSpec.parse("cusum", {"h": 30}).params["h"] == 30.0
    assert DetectorSpec.parse("adwin", {"delta": 0.01}) == DetectorSpec.parse("adwin", {"delta": 0.01})
    assert len({DetectorSpec.parse("adwin"), DetectorSpec.parse("adwin")}) == 1


@pytest.mark.parametrize("kind, params, message", [
    ("adwin", {"delta": 0}, r"'adwin': parameter 'delta' must be a finite number in \(0.0, 1.0\)"),
    ("adwin", {"clock": 0}, r"'adwin': parameter 'clock' must be an integer >= 1, got 0"),
    ("adwin", {"clock": 2.5}, r"'clock' must be an integer"),
    ("adwin", {"grace_period": True}, r"'grace_period' must be an integer"),
    ("adwin", {"deltaa": 0.1}, r"'adwin': unknown parameter 'deltaa'; allowed: delta, clock, max_buckets, "
                                r"min_window_length, grace_period, max_history"),
    ("page_hinkley", {"mode": "sideways"}, r"'page_hinkley': parameter 'mode' must be one of 'up', 'down', 'both'"),
    ("page_hinkley", {"threshold": float("nan")}, r"'threshold' must be a finite number"),
    ("kswin", {"alpha": 1.5}, r"'kswin': parameter 'alpha'"),
    ("kswin", {"window_size": 50, "stat_size": 30}, r"'kswin': parameter 'window_size' must be at least"),
    ("kswin", {"window": [1, 2]}, r"unknown parameter 'window'; allowed: alpha, window_size, stat_size, seed"),
    ("cusum", {"h": "5"}, r"'cusum': parameter 'h' must be a finite number"),
    ("cusum", {"sigma": 0}, r"'cusum': parameter 'sigma' must be a finite number in \(0.0, inf\) or null"),
    ("cusum", {"warmup": 1}, r"'cusum': parameter 'warmup' must be an integer >= 2"),
    ("ddm", {}, r"unknown concept drift detector 'ddm'; expected one of adwin, page_hinkley, kswin, cusum"),
])
def test_parse_errors_name_the_detector_and_parameter(kind: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorSpec.parse(kind, params)
