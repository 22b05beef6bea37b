"""`mle-stream bench decisions`: the vectorised methods against plain loops, the report's keys, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mle_stream.bench.decisions import (
    FAMILIES,
    _delong,
    _page,
    _vector_mean_log_lr,
    cusum_paths,
    cusum_threshold,
    flagger,
    format_decisions_report,
    onto_boundary,
    ours,
    run_decisions_bench,
    run_family,
    simulate,
)
from mle_stream.cli import main
from mle_stream.core.sequential import ErrorRateTest, MeanTest, Verdict
from mle_stream.core.sequential_auc import delong

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
    result = run_decisions_bench(families=(), rollouts=200, windows=30, cusum_calibration_streams=1000, seed=1)
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
    assert main(["bench", "decisions", "--json", "--rollouts", "100", "--windows", "20", "--alpha", "0.05",
                 "--family", "recall", "--family", "recall"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= out.keys() and out["alpha"] == 0.05 and out["settings"]["windows"] == 20
    assert list(out["families"]) == ["recall"]
    for other_modes_flag in (["bench", "decisions", "--rows", "5"], ["bench", "drift", "--rollouts", "5"]):
        with pytest.raises(SystemExit) as exit_:
            main(other_modes_flag)
        assert exit_.value.code == 2
    capsys.readouterr()
    assert main(["bench", "decisions", "--alpha", "1.5"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main(["bench", "decisions", "--family", "f1"]) == 2
    assert "unknown family f1; choose from error_rate, accuracy" in capsys.readouterr().err


def test_page_cusum_on_a_hand_computed_case() -> None:
    # S_n = max(0, S_{n-1} + z_n): 0.5, max(0, -0.5) = 0, 2, 1.7, max(0, -1.3) = 0, 1
    assert _page(np.array([0.5, -1.0, 2.0, -0.3, -3.0, 1.0])) == pytest.approx([0.5, 0, 2, 1.7, 0, 1])
    # Bernoulli 0.25 -> 0.5: a failure adds log 2, a success log(0.5 / 0.75); two failures then a success
    up, down = math.log(2.0), math.log(2.0 / 3.0)
    assert _page(np.array([up, up, down])) == pytest.approx([math.log(2), math.log(4), math.log(8 / 3)])


def test_vectorised_auc_and_mean_statistics_equal_the_core_ones() -> None:
    rng = np.random.default_rng(5)
    score, y = rng.normal(size=(3, 400)) + 0, rng.random((3, 400)) < 0.3
    score += y * 1.2
    side = rng.random((3, 400)) < 0.5
    auc, variance, pos, neg = _delong(score, y, side)
    for r in range(3):
        order = np.argsort(score[r][side[r]])
        expected = delong(y[r][side[r]][order].astype(int), (~y[r][side[r]][order]).astype(int))
        assert expected is not None
        assert (auc[r], variance[r], pos[r], neg[r]) == pytest.approx(
            (expected.auc, expected.variance, expected.positives, expected.negatives), rel=1e-9)
    test = MeanTest()
    c, b = rng.exponential(1.1, 300), rng.exponential(1.0, 500)
    test.update_values(c, b)
    stats = [np.array([x.size, x.sum(), (x * x).sum()]) for x in (c, b)]
    assert float(_vector_mean_log_lr(*stats, test)) == pytest.approx(test.log_likelihood_ratio(), rel=1e-9)


@pytest.fixture(scope="module")
def families():
    return run_decisions_bench(rollouts=150, windows=20, alpha=0.05, cusum_calibration_streams=300, seed=3)


def test_every_family_reports_every_method_and_target(families) -> None:
    assert list(families["families"]) == list(FAMILIES)
    json.dumps(families)
    report = format_decisions_report(families)
    for name, family in families["families"].items():
        assert name in report and family["degradation"] in report
        methods = ["sequential", "fixed_threshold", "fixed_threshold_at_alpha"]
        methods += [] if name == "roc_auc" else ["oracle_cusum"]
        for method in methods:
            assert {"false_rollback_rate", "power", "median_delay_samples", "p95_delay_samples"} <= \
                family[method].keys(), (name, method)
        methods += [] if name == "roc_auc" else ["oracle_cusum_same_margin"]
        assert set(family["target_met"]) == {"false_rollback_rate_le_alpha", "false_rollback_rate_at_margin_le_alpha",
                                             "median_delay_le_1.5x_cusum"}
        assert "rollback at 5 failed checks" in family["fixed_threshold"]["check"]
    auc = families["families"]["roc_auc"]
    assert auc["oracle_cusum"] is None and auc["oracle_cusum_same_margin"] is None
    assert auc["target_met"]["median_delay_le_1.5x_cusum"] is None
    assert "no per-sample likelihood ratio" in auc["oracle_note"]


def test_sequential_false_rollbacks_stay_within_a_binomial_bound_of_alpha(families) -> None:
    from scipy.stats import binom

    # P(X > bound) < 0.001 for X ~ Binomial(150, 0.05): a test that rolls back more than alpha fails this
    bound = binom.ppf(0.999, 150, 0.05) / 150
    for name, family in families["families"].items():
        assert family["sequential"]["false_rollback_rate"] <= bound, name
        # calibrated on these A/A rollouts, so at most alpha by construction; the fixed check as a
        # user writes it, re-checked every window, rolls back far more often than alpha
        assert family["fixed_threshold_at_alpha"]["false_rollback_rate"] <= 0.05, name
        if name != "latency_mean_ms":  # its 1.1 x limit is far above a window mean's noise
            assert family["fixed_threshold"]["false_rollback_rate"] > 0.1, name


def test_the_sequential_checks_hold_alpha_on_the_nulls_boundary_too(families) -> None:
    from scipy.stats import binom

    # The promise is for every candidate within the margin, and the boundary is where it is tightest
    bound = binom.ppf(0.999, 150, 0.05) / 150
    for name, family in families["families"].items():
        assert family["sequential"]["false_rollback_rate_at_margin"] <= bound, name


def test_the_oracle_of_the_same_hypotheses_is_slower_than_the_one_without_a_margin(families) -> None:
    # Telling a degraded canary from one at the null's boundary is harder than from an equal one: an
    # oracle that must not fire at the boundary needs more samples (a comparison that could not tell the
    # two CUSUMs apart, or mixed up their streams, would not show this for every family).
    for name, family in families["families"].items():
        if name != "roc_auc":
            plain, same = family["oracle_cusum"], family["oracle_cusum_same_margin"]
            assert same["median_delay_samples"] >= plain["median_delay_samples"], name
            if name != "rmse":  # heavy-tailed squared errors: one huge error crosses both thresholds at once
                assert same["median_delay_samples"] > plain["median_delay_samples"], name
            assert same["true_parameters"] == plain["true_parameters"]


def test_onto_boundary_moves_a_failure_rate_to_the_stated_one() -> None:
    from scipy.stats import binom

    rng = np.random.default_rng(11)
    n, p0, pb = 200_000, 0.1, 0.11
    fail = rng.random(n) < p0
    eligible = rng.random(n) < 0.5
    after = fail | onto_boundary(rng, eligible, p0, pb)
    # the eligible predictions' rate is pb, the others' is unchanged (each within a 1e-4 binomial tail)
    for mask, rate in ((eligible, pb), (~eligible, p0)):
        k, m = int(after[mask].sum()), int(mask.sum())
        assert binom.ppf(5e-5, m, rate) <= k <= binom.ppf(1 - 5e-5, m, rate), (rate, k / m)
    assert not (after[~eligible] ^ fail[~eligible]).any()


def test_sequential_beats_the_alpha_controlled_fixed_check_where_it_should(families) -> None:
    fam = families["families"]
    # A noisy per-window statistic (a window's p99 from ~100 canary requests) is where a fixed check
    # held to alpha loses power: the sequential test pools every window's counts.
    p99 = fam["latency_p99_ms"]
    assert p99["sequential"]["power"] > p99["fixed_threshold_at_alpha"]["power"] + 0.1
    for name in ("error_rate", "latency_mean_ms"):
        assert fam[name]["sequential"]["median_delay_samples"] < \
            fam[name]["fixed_threshold_at_alpha"]["median_delay_samples"], name


def test_family_margin_reaches_the_rate_and_mean_checks() -> None:
    # Accuracy's errors x 1.38 and MAE x 1.15: above the null with no margin, inside it with a margin
    # of 0.5 (no rollback for a ratio below 1.5), so the same draws are detected or not at all.
    for name in ("accuracy", "mae"):
        free = run_family(name, rollouts=150, windows=20, alpha=0.05, seed=3, family_margin=0.0)["sequential"]
        wide = run_family(name, rollouts=150, windows=20, alpha=0.05, seed=3, family_margin=0.5)["sequential"]
        assert free["power"] > 0.9 and wide["power"] == 0.0, (name, free, wide)


def test_fewer_windows_than_failed_checks_never_roll_back_on_the_fixed_check() -> None:
    family = run_family("error_rate", rollouts=20, windows=3, seed=4)
    for method in ("fixed_threshold", "fixed_threshold_at_alpha"):
        assert family[method]["false_rollback_rate"] == 0.0 and family[method]["power"] == 0.0, method
    assert family["fixed_threshold_at_alpha"]["threshold"] is None
    json.dumps(family, allow_nan=False)
