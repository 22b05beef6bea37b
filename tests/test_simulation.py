"""The rollout simulator (core/simulation.py): its generator against scikit-learn and numpy on the
generated data, and the rates it reports for checks whose behaviour is known."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, mean_absolute_error, roc_auc_score

from mle_stream.core.simulation import (
    Degradation,
    Generator,
    Traffic,
    clopper_pearson,
    degrade,
    run_once,
    simulate_check,
)
from mle_stream.core.topology import parse_topology

TOPOLOGY = """\
model: m
task: {task}
baseline: {{version: "1"}}
candidate: {{version: "2"}}
windows: {{size: 1m, grace: 0s, retention: 10m}}
checks:
  - name: fixed
    metric: error_rate
    max: 0.16               # the generator's baseline error rate is 0.151
    min_samples: 50
    consecutive: 1
  - name: sequential
    metric: error_rate
    sequential: {{alpha: 0.05}}
"""
BINARY = parse_topology(TOPOLOGY.format(task="binary"), "simulated.yaml")
# 10 predictions/s, half to the candidate, labels within 20 s: ~300 labeled per side per window.
TRAFFIC = Traffic(per_s=10, share=0.5, label_delay_ms=(1_000, 20_000), unlabeled=0.0, windows=12)
N = 40_000


def _binary(gen: Generator, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    scores, truths = gen.outputs("binary", N, np.random.default_rng(seed))
    return np.asarray(scores), np.asarray(truths)


def _auc_se(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
                      + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives))


def test_generated_scores_have_the_stated_base_rate_and_auc() -> None:
    gen = Generator(base_rate=0.2, separation=1.5)
    scores, truth = _binary(gen)
    assert binomtest(int(truth.sum()), N, 0.2).pvalue > 0.001
    stated = float(ndtr(1.5 / math.sqrt(2)))  # AUC of the binormal model with unit variances
    auc = roc_auc_score(truth, scores)
    assert abs(auc - stated) < 4 * _auc_se(stated, int(truth.sum()), int((~truth).sum()))


@pytest.mark.parametrize("change, metric", [("roc_auc=-0.02", "roc_auc"), ("error_rate=2x", "error_rate")])
def test_a_stated_degradation_is_what_scikit_learn_measures_on_the_generated_data(change: str, metric: str) -> None:
    base = Generator()
    worse = degrade("binary", BINARY, base, Degradation.parse(change))
    (s0, y0), (s1, y1) = _binary(base, 2), _binary(worse, 3)
    if metric == "roc_auc":
        before, after = roc_auc_score(y0, s0), roc_auc_score(y1, s1)
        assert after - before == pytest.approx(-0.02, abs=4 * math.sqrt(2) * _auc_se(after, int(y1.sum()),
                                                                                        int((~y1).sum())))
    else:
        before, after = 1 - accuracy_score(y0, s0 >= 0.5), 1 - accuracy_score(y1, s1 >= 0.5)
        assert after / before == pytest.approx(2.0, abs=4 * math.sqrt(after * (1 - after) / N) / before + 0.05)


def test_latency_and_regression_degradations() -> None:
    regression = parse_topology(TOPOLOGY.format(task="regression").split("checks:")[0], "regression.yaml")
    base = Generator()
    slower = degrade("regression", regression, base, Degradation.parse("latency_p99_ms=+20%"))
    rng = np.random.default_rng(4)
    assert np.percentile(slower.latencies(N, rng), 99) / np.percentile(base.latencies(N, rng), 99) == \
        pytest.approx(1.2, rel=0.05)
    noisier = degrade("regression", regression, base, Degradation.parse("mae=+10%"))
    (p0, y0), (p1, y1) = (g.outputs("regression", N, np.random.default_rng(5)) for g in (base, noisier))
    assert mean_absolute_error(y1, p1) / mean_absolute_error(y0, p0) == pytest.approx(1.1, rel=0.03)


def test_a_fixed_limit_just_above_the_base_rate_is_flagged_with_a_fix() -> None:
    fixed = BINARY.checks[0]
    result = simulate_check(BINARY, fixed, TRAFFIC, Generator(), runs=20, seed=1, alpha=0.05,
                            degradations=(Degradation.parse("error_rate=2x"),))
    assert result.false_rollback.value > 0.5 and result.warning
    assert result.fix is not None and result.fix.startswith("use `sequential: {alpha: 0.05}`")


def test_the_sequential_check_stays_under_alpha_and_detects_a_degradation_after_a_delay() -> None:
    sequential = BINARY.checks[1]
    result = simulate_check(BINARY, sequential, TRAFFIC, Generator(), runs=30, seed=1, alpha=0.05,
                            degradations=(Degradation.parse("error_rate=1.5x"),))
    assert result.false_rollback.value <= 0.05 + 0.05 and not result.warning
    assert result.detection.value >= 0.8
    d = result.delay
    assert d.median_windows is not None and d.p95_windows is not None and d.median_samples is not None
    assert 1 <= d.median_windows <= d.p95_windows <= TRAFFIC.windows
    assert d.median_samples >= sequential.min_samples


def test_runs_are_reproducible_from_the_seed() -> None:
    single = replace(BINARY, checks=BINARY.checks[:1])
    first = [run_once(single, TRAFFIC, Generator(), Generator(), np.random.default_rng([7, i])) for i in range(3)]
    again = [run_once(single, TRAFFIC, Generator(), Generator(), np.random.default_rng([7, i])) for i in range(3)]
    assert first == again


@pytest.mark.parametrize("hits, runs", [(0, 200), (3, 200), (127, 400), (40, 40)])
def test_the_rate_interval_is_clopper_pearson(hits: int, runs: int) -> None:
    rate = clopper_pearson(hits, runs)
    expected = binomtest(hits, runs).proportion_ci(0.95, method="exact")
    assert (rate.low, rate.high) == pytest.approx((expected.low, expected.high), abs=1e-9)


@pytest.mark.parametrize("text", ["error_rate", "=2x", "roc_auc=-", "mae=ten%", "latency_p99_ms=2y"])
def test_a_malformed_degradation_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected METRIC=CHANGE|is not a number"):
        Degradation.parse(text)


def test_a_degradation_out_of_reach_says_so() -> None:
    with pytest.raises(ValueError, match="out of the simulator's reach|AUC is in"):
        degrade("binary", BINARY, Generator(), Degradation.parse("roc_auc=0.3"))


def test_the_last_window_of_the_horizon_is_judged() -> None:
    # No later prediction moves event time past the last window: the run closes it at its end.
    single = replace(BINARY, checks=BINARY.checks[:1])
    outcome = run_once(single, replace(TRAFFIC, windows=1), Generator(), Generator(flip=0.2),
                       np.random.default_rng(3))
    assert outcome.fired and outcome.window == 1 and outcome.failed_windows == 1
