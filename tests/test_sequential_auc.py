"""core/sequential_auc.py against independent truth.

- each window's AUC and DeLong variance, from the binary metric state's score histogram, against
  scikit-learn's roc_auc_score and DeLong's placement values computed pair by pair on the raw scores;
- the test's mixture likelihood ratio against scipy.integrate.quad of the product of the windows'
  normal likelihood ratios, written out from their densities;
- the false-rollback rate of A/A rollouts looked at after every window (<= alpha, where the fixed
  AUC check of the A/B example rolls back often), its power on an AUC drop of 0.02, and the
  anytime-valid bound's coverage;
- a replayed stream through ModelEvaluator and the policy: a candidate whose ranking degrades is
  rolled back by the sequential roc_auc check, an equal one never, through a checkpoint each window.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score

from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import CommandKind, Label, Prediction
from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.metrics.outcomes import BinaryOutcomes
from mle_stream.core.policy import PolicyState
from mle_stream.core.sequential_auc import AucTest, AucWindow, RankSample, auc_window, delong
from mle_stream.core.topology import parse_topology
from mle_stream.core.verdict import Verdict
from mle_stream.errors import ConfigError


def histogram(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The score histogram as the window's binary metric state keeps it."""
    state = BinaryMetrics()
    state.update(BinaryOutcomes(y, score, score >= 0.5))
    return state.score_histogram


def direct_delong(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) from its definition: the kernel psi over every (positive, negative) pair."""
    pos, neg = score[y], score[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), float(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


def binormal(rng: np.random.Generator, n: int, auc: float, positives: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """n labeled predictions whose scores' AUC is `auc` in expectation (binormal, equal variances)."""
    y = rng.random(n) < positives
    logit = rng.normal(0.0, 1.0, n) + y * math.sqrt(2.0) * stats.norm.ppf(auc)
    return y, 1.0 / (1.0 + np.exp(-logit))


@pytest.mark.parametrize("n, decimals", [(300, None), (1000, 2), (50, 1)])  # ties: rounded scores share a bin
def test_auc_and_delong_variance_from_the_histogram_equal_sklearn_and_the_pairwise_definition(n, decimals) -> None:
    rng = np.random.default_rng(n)
    y, score = binormal(rng, n, 0.75)
    if decimals is not None:
        score = np.round(score, decimals)
    sample = delong(*histogram(y, score))
    assert sample is not None
    auc, variance = direct_delong(y, score)
    assert sample.auc == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert sample.auc == pytest.approx(auc, abs=1e-12)
    assert sample.variance == pytest.approx(variance, rel=1e-9)
    assert (sample.positives, sample.negatives) == (int(y.sum()), int((~y).sum()))


def test_a_window_without_two_of_each_class_has_no_auc() -> None:
    assert delong([0, 1, 0], [3, 0, 5]) is None
    assert auc_window(([1, 1], [1, 1]), ([0, 2], [0, 0])) is None
    window = auc_window(([0, 2, 1], [2, 1, 0]), ([1, 2], [2, 1]))
    assert window is not None and window.variance == window.candidate.variance + window.baseline.variance
    assert window.shortfall == window.baseline.auc - window.candidate.auc


def test_the_mixture_equals_the_integral_of_the_windows_normal_likelihood_ratios() -> None:
    windows = [(0.012, 4e-4), (-0.004, 2.5e-4), (0.03, 6e-4)]  # (shortfall, variance)
    margin, scale = 0.01, 0.02
    test = AucTest(alpha=0.05, min_difference=margin, mixing_scale=scale, min_samples=2)
    for d, v in windows:
        test.update(AucWindow(RankSample(0.8 - d, v / 2, 50, 50), RankSample(0.8, v / 2, 50, 50)))

    def likelihood_ratio(theta: float) -> float:  # each window's d ~ N(margin + theta, v) against N(margin, v)
        return math.exp(sum(stats.norm.logpdf(d, margin + theta, math.sqrt(v))
                            - stats.norm.logpdf(d, margin, math.sqrt(v)) for d, v in windows))

    mixture, _ = integrate.quad(lambda th: likelihood_ratio(th) * 2 * stats.norm.pdf(th, scale=scale), 0, 10 * scale,
                                epsabs=0, epsrel=1e-10, limit=200)
    assert test.log_likelihood_ratio() == pytest.approx(math.log(mixture), rel=1e-7)
    bound = test.lower_bound()
    assert bound is not None and test.log_likelihood_ratio(bound) == pytest.approx(math.log(1 / 0.05), abs=1e-6)
    assert (test.decide().verdict is Verdict.FAIL) == (bound > margin)


def test_windows_with_too_few_of_a_class_do_not_count() -> None:
    rng = np.random.default_rng(1)
    test = AucTest(min_samples=100)
    thin = auc_window(histogram(*binormal(rng, 200, 0.8, positives=0.2)), histogram(*binormal(rng, 2000, 0.8)))
    assert test.update(thin) is False and test.update(None) is False
    decision = test.decide()
    assert decision.verdict is Verdict.INCONCLUSIVE and "(2 with fewer)" in decision.reason
    assert test.update(auc_window(histogram(*binormal(rng, 2000, 0.8)), histogram(*binormal(rng, 2000, 0.8))))
    assert test.decide().verdict is Verdict.PASS and test.windows == 1 and test.skipped == 2


def test_snapshot_restores_and_merge_equals_updating_with_every_window() -> None:
    rng = np.random.default_rng(2)
    windows = [auc_window(histogram(*binormal(rng, 600, 0.78)), histogram(*binormal(rng, 600, 0.8))) for _ in range(6)]
    whole, first, second = AucTest(), AucTest(), AucTest()
    for i, w in enumerate(windows):
        whole.update(w)
        (first if i < 3 else second).update(w)
    restored = AucTest.restore(json.loads(json.dumps(whole.snapshot())))
    assert restored == whole and restored.decide() == whole.decide()
    merged = first.merge(second)
    assert merged.log_likelihood_ratio() == pytest.approx(whole.log_likelihood_ratio(), rel=1e-12)
    with pytest.raises(ValueError, match="snapshot kind is 'error_rate'"):
        AucTest.restore({**whole.snapshot(), "kind": "error_rate"})
    with pytest.raises(ValueError, match="configurations differ"):
        whole.merge(AucTest(min_difference=0.02))


def rollout(rng: np.random.Generator, windows: int, labeled: int, candidate_auc: float,
            alpha: float) -> tuple[int | None, int | None, list[float], float]:
    """(window the sequential test FAILs, window the A/B example's fixed check fires, the test's
    bounds, the standardised sum of the windows' shortfalls beyond the margin at the end)."""
    test = AucTest(alpha=alpha, min_difference=0.01, min_samples=100)
    sequential = fixed = None
    streak, bounds = 0, []
    for t in range(windows):
        window = auc_window(histogram(*binormal(rng, labeled, candidate_auc)), histogram(*binormal(rng, labeled, 0.8)))
        test.update(window)
        bounds.append(test.lower_bound())
        if sequential is None and test.decide().verdict is Verdict.FAIL:
            sequential = t
        streak = streak + 1 if window is not None and window.shortfall > 0.01 else 0
        fixed = t if fixed is None and streak >= 3 else fixed
    z = (test.weighted_shortfall - 0.01 * test.information) / math.sqrt(test.information)
    return sequential, fixed, bounds, z


def test_equal_candidates_are_rarely_rolled_back_where_the_fixed_check_often_is() -> None:
    rng = np.random.default_rng(11)
    runs = [rollout(rng, 20, 400, 0.79, alpha=0.1) for _ in range(150)]  # the null's edge: 0.01 below
    sequential = sum(s is not None for s, *_ in runs)
    fixed = sum(f is not None for _, f, *_ in runs)
    assert sequential <= 15 and fixed >= 3 * max(sequential, 10)  # alpha = 0.1 over 150 runs: 15 at most
    # The anytime-valid bound on the shortfall (0.01 here) stays below it in >= 1 - alpha of the runs.
    assert sum(max(b for b in bounds if b is not None) > 0.01 for _, _, bounds, _ in runs) == sequential
    # What the guarantee rests on: the windows' shortfalls weighted by their DeLong variances add up to
    # a standard normal at the null's edge (a variance half the truth's gives a spread of ~1.4).
    z = np.array([z for *_, z in runs])
    assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.2 and stats.kstest(z, "norm").pvalue > 0.01


def test_a_drop_of_0_02_in_auc_is_rolled_back() -> None:
    rng = np.random.default_rng(12)
    runs = [rollout(rng, 40, 3000, 0.78, alpha=0.01)[0] for _ in range(20)]
    assert sum(r is not None for r in runs) >= 16  # 0.9 of 150 runs in a bigger simulation


TOPOLOGY = """\
model: ranker
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 10s, grace: 1s, retention: 30s}
checks:
  - name: auc
    metric: roc_auc
    min_samples: 100
    sequential: {alpha: 0.01, min_difference: 0.01}
  - name: p99
    metric: latency_p99_ms
    action: hold
    sequential: {alpha: 0.01}
"""


def test_a_replayed_stream_rolls_back_a_candidate_whose_ranking_degrades_and_never_an_equal_one() -> None:
    topology = parse_topology(TOPOLOGY)
    for candidate_auc, slower in ((0.85, 1.0), (0.75, 1.5)):  # the worse candidate is also 50% slower
        rng, draw = np.random.default_rng(21), random.Random(21)
        evaluator, commands, verdicts = ModelEvaluator(topology), [], []
        for w in range(12):
            predictions, labels = [], []
            for version, auc, factor in (("1", 0.85, 1.0), ("2", candidate_auc, slower)):
                y, score = binormal(rng, 800, auc)
                latency = factor * rng.lognormal(math.log(40), 0.5, 800)
                for i in range(800):
                    ts = w * 10_000 + draw.randrange(10_000)
                    pid = f"{w}-{version}-{i}"
                    predictions.append(Prediction(prediction_id=pid, model="ranker", version=version, timestamp=ts,
                                                  score=float(score[i]), latency_ms=float(latency[i])))
                    labels.append(Label(prediction_id=pid, model="ranker", timestamp=ts + 100, label=bool(y[i])))
            evaluator.add_predictions(predictions, 10**12)
            evaluator.add_labels(labels, 10**12)
            out = evaluator.advance(10**12)
            commands += out.commands
            verdicts += [(j.check("auc").verdict, j.check("p99").verdict) for j in out.judgements]
            # through a checkpoint every window: the test's state is the policy's
            evaluator.policy_state = PolicyState.restore(json.loads(json.dumps(evaluator.policy_state.snapshot())))
        if candidate_auc == 0.85:
            assert commands == [] and verdicts.count((Verdict.PASS, Verdict.PASS)) == len(verdicts) >= 11
        else:
            hold, rollback = commands  # the p99 check holds the rollout, then the AUC check rolls it back
            assert (hold.kind, hold.rule, rollback.kind, rollback.rule) == (
                CommandKind.HOLD, "p99", CommandKind.ROLLBACK, "auc")
            assert "requests above the pooled p99" in hold.reason and verdicts[-1][0] is Verdict.FAIL
            evidence = json.loads(rollback.evidence)["windows"][-1]["checks"][0]["sequential"]
            assert evidence["log_likelihood_ratio"] >= evidence["threshold"] == pytest.approx(math.log(100))
            assert evidence["shortfall_lower_bound"] > 0.01 and 0.05 < evidence["shortfall"] < 0.15
            assert "anytime-valid 0.99 interval (" in rollback.reason and "excludes 0.01" in rollback.reason


def test_the_margins_are_checked_per_test() -> None:
    head = TOPOLOGY.split("checks:")[0] + "checks:\n"
    with pytest.raises(ConfigError, match=r"checks\[0\]\.sequential\.min_relative_increase: is not a setting of "
                                          r"roc_auc's test: its margin is min_difference"):
        parse_topology(head + "  - {name: a, metric: roc_auc, sequential: {min_relative_increase: 0.1}}\n")
    with pytest.raises(ConfigError, match=r"sequential\.min_difference: is not a setting of error_rate's test"):
        parse_topology(head + "  - {name: a, metric: error_rate, sequential: {min_difference: 0.1}}\n")
    (rule,) = parse_topology(head + "  - {name: a, metric: roc_auc, sequential: {}}\n").checks
    assert rule.sequential is not None and rule.consecutive == 1
    test = rule.sequential.new_test(rule.metric, rule.min_samples)
    assert isinstance(test, AucTest) and (test.min_difference, test.mixing_scale) == (0.01, 0.01)
