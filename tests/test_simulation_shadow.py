"""The rollout simulator (core/simulation.py) in shadow mode: both versions answer every request,
paired by the evaluator as the worker pairs them. Agreement and paired quality rates against
hand-computed ones (bivariate normal decisions, binomial windows)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import binom, binomtest, multivariate_normal, poisson

from mle_stream.core.simulation import (
    Degradation,
    Generator,
    Traffic,
    baseline_generator,
    degrade,
    metric_value,
    simulate_check,
    simulate_rule,
)
from mle_stream.core.topology import Topology, parse_topology

SHADOW = parse_topology("""\
model: m
task: binary
mode: shadow
baseline: {version: "1"}
candidate: {version: "2"}
windows: {size: 1m, grace: 0s, retention: 10m}
shadow: {pair_within: 30s}
checks:
  - name: agree
    metric: agreement
    min: 0.97
    min_samples: 50
    consecutive: 1
  - name: errors
    metric: error_rate
    max_degradation: 0.01
    min_samples: 50
    consecutive: 1
""", "shadow.yaml")
# 5 requests/s, each answered by both; labels at once and for every request: ~300 pairs a window.
TRAFFIC = Traffic(per_s=5, label_delay_ms=(0, 0), unlabeled=0.0, windows=6)
SERVED = (1 - Generator().serving_error_rate) ** 2  # a request whose two answers both came
RUNS = 30


def _agreement(production: Generator, shadow: Generator) -> float:
    """P(both decide alike at threshold 0.5), by hand: given the truth y, each version's latent is
    N(separation * (the class it answers for), 1), the two correlated by rho; a version decides
    positive when its latent passes (separation^2 / 2 - logit(base rate)) / separation."""
    rho = production.shadow_correlation
    both = multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]])
    logit = math.log(production.base_rate / (1 - production.base_rate))

    def cut(s: float) -> float:
        return (s * s / 2 - logit) / s

    out = 0.0
    for y, p_y in ((1, production.base_rate), (0, 1 - production.base_rate)):
        for answered, p_a in ((y, 1 - shadow.flip), (1 - y, shadow.flip)):
            b = production.separation * y - cut(production.separation)
            c = shadow.separation * answered - cut(shadow.separation)
            out += p_y * p_a * (both.cdf([b, c]) + both.cdf([-b, -c]))
    return out


def test_two_equally_good_versions_agree_as_computed_by_hand() -> None:
    for rho in (0.9, 0.99):
        gen = Generator(shadow_correlation=rho)
        assert metric_value("binary", SHADOW, gen, "agreement") == pytest.approx(_agreement(gen, gen), abs=0.002)


def test_the_baseline_agreement_is_set_by_the_shared_noise() -> None:
    gen = baseline_generator(SHADOW, Generator(), (Degradation.parse("agreement=0.99"),))
    assert gen.shadow_correlation > Generator().shadow_correlation
    assert _agreement(gen, gen) == pytest.approx(0.99, abs=0.002)


def test_a_degraded_shadow_answers_for_the_wrong_class_and_agrees_less() -> None:
    base = Generator()
    worse = degrade("binary", SHADOW, base, Degradation.parse("agreement=-5%"), reference=base)
    assert worse.flip > 0 and worse.separation == base.separation
    assert _agreement(base, worse) == pytest.approx(0.95 * _agreement(base, base), abs=0.003)


def test_a_worse_error_rate_is_reached_on_the_labels_both_versions_share() -> None:
    # A flipped share of the shadow's answers is for the other class, while the label stays the
    # request's: then it errs when it decides as for that class, b Phi(c) + (1 - b)(1 - Phi(c - s)),
    # not 1 - e as when a canary's truth is flipped (its labels' base rate moves, a shadow's cannot).
    base = Generator()
    worse = degrade("binary", SHADOW, base, Degradation.parse("error_rate=+20%"), reference=base)
    s, b = base.separation, base.base_rate
    c = (s * s / 2 - math.log(b / (1 - b))) / s
    right = b * ndtr(c - s) + (1 - b) * (1 - ndtr(c))
    flipped = b * ndtr(c) + (1 - b) * (1 - ndtr(c - s))
    assert (1 - worse.flip) * right + worse.flip * flipped == pytest.approx(1.2 * right, rel=0.01)


def _window_failures(topology: Topology, check: str, candidate: Generator, seed: int) -> tuple[int, int]:
    """(FAILed, judged) windows of `check` over RUNS runs in which it never fires (consecutive far
    above the horizon): every window judged, independently of the others."""
    rule = replace(next(r for r in topology.checks if r.name == check), consecutive=99)
    outcomes = simulate_rule(topology, rule, TRAFFIC, Generator(), candidate, RUNS, seed)
    judged = sum(o.judged_windows for o in outcomes)
    assert judged == RUNS * TRAFFIC.windows  # type: ignore[operator]
    return sum(o.failed_windows for o in outcomes), judged


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    """The number of pairs in a window (Poisson: requests thinned by serving errors) and its probabilities."""
    mean = TRAFFIC.per_s * 60 * SERVED
    n = np.arange(int(mean - 8 * math.sqrt(mean)), int(mean + 8 * math.sqrt(mean)))
    return n, poisson.pmf(n, mean)


@pytest.mark.parametrize("degraded", [False, True])
def test_agreement_windows_fail_as_often_as_the_binomial_says(degraded: bool) -> None:
    base = Generator()
    shadow = degrade("binary", SHADOW, base, Degradation.parse("agreement=-2%"), reference=base) if degraded else base
    a = _agreement(base, shadow)
    n, p_n = _pairs()
    expected = float(p_n @ binom.cdf(np.ceil(0.97 * n) - 1, n, a))  # fewer than 97% of n pairs agree
    failed, judged = _window_failures(SHADOW, "agree", shadow, 1)
    assert binomtest(failed, judged, expected).pvalue > 0.001, (failed, judged, expected)


def test_quality_is_compared_on_the_same_labeled_requests() -> None:
    # Both versions are scored on the labels of the same requests: their error rates differ only
    # where their decisions do (then exactly one is right), so an A/A window's difference is
    # 2 B - K over n, K ~ Bin(n, 1 - agreement) disagreements of which B ~ Bin(K, 1/2) the shadow's
    # errors: far less spread than two independent samples' (P(FAIL) 0.37 per window here).
    base = Generator()
    disagree = 1 - _agreement(base, base)
    n, p_n = _pairs()
    expected = 0.0
    for size, p_size in zip(n.tolist(), p_n.tolist()):
        k = np.arange(size + 1)
        worse = 1 - binom.cdf(np.floor((0.01 * size + k) / 2), k, 0.5)  # 2 B - k > 0.01 n
        expected += p_size * float(binom.pmf(k, size, disagree) @ worse)
    failed, judged = _window_failures(SHADOW, "errors", base, 2)
    assert binomtest(failed, judged, expected).pvalue > 0.001, (failed, judged, expected)


def test_a_shadow_check_reports_its_a_and_a_rate_and_detects_its_default_degradation() -> None:
    agree = SHADOW.checks[0]
    result = simulate_check(SHADOW, agree, TRAFFIC, Generator(), runs=RUNS, seed=3, alpha=0.05, try_fixes=False)
    n, p_n = _pairs()
    per_window = float(p_n @ binom.cdf(np.ceil(0.97 * n) - 1, n, _agreement(Generator(), Generator())))
    expected = 1 - (1 - per_window) ** TRAFFIC.windows  # type: ignore[operator]  # the first FAIL rolls back
    assert binomtest(result.false_rollback.hits, RUNS, expected).pvalue > 0.001
    # The baseline's 0.982 sits 0.012 inside min 0.97: the candidate is simulated as far beyond.
    assert result.degradation.startswith("agreement=0.95")
    assert result.detection.value >= 0.9
