"""`mle-stream bench decisions`: the vectorised methods against plain loops, the report's keys, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mle_stream.bench.decisions import (
    cusum_paths,
    cusum_threshold,
    flagger,
    format_decisions_report,
    ours,
    run_decisions_bench,
    simulate,
)
from mle_stream.cli import main
from mle_stream.core.sequential import ErrorRateTest, Verdict

KEYS = {"alpha", "false_rollback_rate", "power", "median_delay_samples", "p95_delay_samples",
        "cusum_median_delay_samples", "fixed_threshold_false_rollback_rate", "fixed_threshold_median_delay_samples"}


@pytest.fixture(scope="module")
def traffic():
    return simulate(np.random.default_rng(4), 40, 25, 1000, 0.1, 0.04, 0.02)


def test_simulated_windows_add_up_to_the_canary_samples(traffic) -> None:
    assert np.array_equal(traffic.n_c + traffic.n_b, np.full_like(traffic.n_c, 1000))
    assert np.array_equal(traffic.x_c.sum(axis=1), traffic.canary.sum(axis=1))
    assert np.all(traffic.x_c <= traffic.n_c) and np.all(traffic.x_b <= traffic.n_b)


def test_vectorised_test_equals_the_error_rate_test_window_by_window(traffic) -> None:
    rollback, log_lr = ours(traffic, alpha=0.01, min_relative_increase=0.1, mixing_scale=0.7, min_samples=100)
    for r in range(8):
        t, first = ErrorRateTest(alpha=0.01, min_relative_increase=0.1, mixing_scale=0.7, min_samples=100), -1
        for w in range(traffic.n_c.shape[1]):
            t.update(int(traffic.n_c[r, w]), int(traffic.x_c[r, w]), int(traffic.n_b[r, w]), int(traffic.x_b[r, w]))
            assert t.log_likelihood_ratio() == pytest.approx(float(log_lr[r, w]), rel=1e-9, abs=1e-9)
            if first < 0 and t.decide().verdict is Verdict.FAIL:
                first = w
        assert rollback[r] == first


def test_cusum_and_flagger_equal_plain_loops(traffic) -> None:
    lengths = traffic.bounds[:, -1]
    paths = cusum_paths(traffic.canary, lengths, 0.02, 0.04)
    up, down = math.log(2.0), math.log(0.96 / 0.98)
    for r in range(5):
        s = 0.0
        for i in range(int(lengths[r])):
            s = max(0.0, s + (up if traffic.canary[r, i] else down))
            assert paths[r, i] == pytest.approx(s, abs=1e-9)
    rollback = flagger(traffic, 0.03, 5)
    for r in range(len(rollback)):
        failed, expected = 0, -1
        for w in range(traffic.n_c.shape[1]):
            failed += traffic.x_c[r, w] / traffic.n_c[r, w] > 0.03  # cumulative, as Flagger counts
            if failed >= 5:
                expected = w
                break
        assert rollback[r] == expected


def test_cusum_threshold_allows_at_most_the_rate() -> None:
    maxima = np.random.default_rng(0).exponential(size=10_000)
    for rate in (0.001, 0.01, 0.2):
        h = cusum_threshold(maxima, rate)
        assert (maxima >= h).mean() <= rate
        assert (maxima >= np.sort(maxima)[::-1][int(rate * maxima.size) - 1]).mean() >= rate * 0.99


def test_small_run_reports_the_keys_and_sane_values() -> None:
    result = run_decisions_bench(rollouts=200, windows=30, cusum_calibration_streams=1000, seed=1)
    assert KEYS <= result.keys()
    json.dumps(result)  # JSON-safe
    assert result["alpha"] == 0.01 and result["settings"]["rollouts"] == 200
    assert result["false_rollback_rate"] <= 0.03
    assert result["power"] > 0.9 and result["median_delay_samples"] < 2000
    # Flagger-style checks every window with no statistics: most A/A rollouts are rolled back.
    assert result["fixed_threshold_false_rollback_rate"] > 0.5
    assert 0 < result["cusum_median_delay_samples"] < 3000
    assert "sequential (ours)" in format_decisions_report(result)
    with pytest.raises(ValueError, match="unknown settings"):
        run_decisions_bench(rollout=3)


def test_cli_bench_decisions_json(capsys) -> None:
    assert main(["bench", "decisions", "--json", "--rollouts", "100", "--windows", "20", "--alpha", "0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= out.keys() and out["alpha"] == 0.05 and out["settings"]["windows"] == 20
    for other_modes_flag in (["bench", "decisions", "--rows", "5"], ["bench", "drift", "--rollouts", "5"]):
        with pytest.raises(SystemExit) as exit_:
            main(other_modes_flag)
        assert exit_.value.code == 2
    capsys.readouterr()
    assert main(["bench", "decisions", "--alpha", "1.5"]) == 2
    assert "alpha" in capsys.readouterr().err
