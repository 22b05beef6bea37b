"""core/sequential.py against independent truth.

- the mixture likelihood ratios against scipy.integrate.quad of the mixture written out from its
  definition (scipy.stats.binom / norm densities, not our algebra);
- type-I error under continuous monitoring by simulation, next to a naive fixed-sample z-test
  re-checked after every window (which must exceed alpha: the reason for the sequential tests);
- state: snapshot/restore, merge, windows vs concatenated data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from mle_stream.core.sequential import (
    ErrorRateTest,
    MeanTest,
    Verdict,
    error_rate_log_lr,
    error_rate_window_terms,
    gaussian_msprt_log_lr,
    half_normal_grid,
)


def _half_normal_mixture(log_lr_of: object, scale: float) -> float:
    """log of the integral over u > 0 of exp(log_lr_of(u)) * 2 phi(u / scale) / scale, by quad."""
    f = log_lr_of  # type: ignore[assignment]
    value, _ = integrate.quad(lambda u: math.exp(f(u)) * 2 * stats.norm.pdf(u, scale=scale),  # type: ignore[operator]
                              0, 8 * scale, limit=200, epsabs=0, epsrel=1e-10)
    return math.log(value)


# --- the formulas ---

@pytest.mark.parametrize("theta_hat, variance, tau", [
    (0.3, 0.01, 0.2), (-0.05, 0.004, 0.1), (0.0, 1.0, 1.0), (0.02, 1e-4, 0.05), (1.5, 0.2, 0.3),
])
def test_gaussian_msprt_equals_the_integral_of_the_normal_likelihood_ratio(theta_hat, variance, tau) -> None:
    # LR(theta) = N(theta_hat; theta, V) / N(theta_hat; 0, V), mixed over theta ~ half-normal(tau).
    def log_lr(theta: float) -> float:
        return float(stats.norm.logpdf(theta_hat, loc=theta, scale=math.sqrt(variance))
                     - stats.norm.logpdf(theta_hat, loc=0, scale=math.sqrt(variance)))

    expected = _half_normal_mixture(log_lr, tau)
    assert float(gaussian_msprt_log_lr(theta_hat, variance, tau)) == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_mean_test_uses_the_plug_in_difference_and_variance() -> None:
    rng = np.random.default_rng(0)
    c, b = rng.normal(1.2, 0.5, 400), rng.normal(1.0, 0.6, 3000)
    t = MeanTest(alpha=0.01, min_relative_increase=0.05, mixing_scale=0.2)
    t.update_values(c, b)
    theta = c.mean() - 1.05 * b.mean()
    v = c.var(ddof=1) / c.size + 1.05**2 * b.var(ddof=1) / b.size
    pooled = ((c.size - 1) * c.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (c.size + b.size - 2)
    expected = float(gaussian_msprt_log_lr(theta, v, 0.2 * math.sqrt(pooled)))
    d = t.decide()
    assert d.log_likelihood_ratio == pytest.approx(expected, rel=1e-9)
    assert d.verdict is Verdict.FAIL and d.log_likelihood_ratio > math.log(100)
    assert d.p_value == pytest.approx(math.exp(-d.log_likelihood_ratio))


def test_error_rate_test_equals_the_integrated_binomial_mixture() -> None:
    # Windows with different traffic shares. Truth: per window, the conditional binomial likelihood
    # ratio of the candidate's errors given the window's errors, from scipy.stats.binom, multiplied
    # over windows and integrated over a half-normal prior on log(rho / rho0) by quad.
    windows = [(100, 5, 900, 20), (80, 3, 920, 15), (150, 9, 850, 21), (120, 6, 880, 17), (0, 0, 1000, 22)]
    rho0, scale = 1.1, 0.7

    def log_lr(u: float) -> float:
        total = 0.0
        for n_c, x_c, n_b, x_b in windows:
            share, k = n_c / (n_c + n_b), x_c + x_b

            def q(rho: float) -> float:
                return rho * share / (rho * share + 1 - share)  # noqa: B023 (called within the iteration)

            total += float(stats.binom.logpmf(x_c, k, q(rho0 * math.exp(u))) - stats.binom.logpmf(x_c, k, q(rho0)))
        return total

    t = ErrorRateTest(alpha=0.01, min_relative_increase=0.1, mixing_scale=scale, grid_points=128)
    for w in windows:
        t.update(*w)
    # The grid is a midpoint rule of the continuous mixture: close, not equal.
    assert t.log_likelihood_ratio() == pytest.approx(_half_normal_mixture(log_lr, scale), abs=2e-3)


def test_half_normal_grid_is_a_proper_prior() -> None:
    u, log_w = half_normal_grid(0.5, 64)
    assert np.all(u > 0) and u.max() < 2.5
    assert math.isclose(float(np.exp(log_w).sum()), 1.0, rel_tol=1e-12)


# --- type-I error under continuous monitoring ---

LOOKS, STREAMS, ALPHA = 50, 2000, 0.05


def _limit(alpha: float) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / STREAMS)


@pytest.mark.parametrize("rate", [0.02, 0.2])
def test_error_rate_test_keeps_alpha_under_continuous_monitoring_a_naive_z_test_does_not(rate) -> None:
    rng = np.random.default_rng(11)
    n_c = rng.binomial(1000, 0.1, size=(STREAMS, LOOKS))  # the split varies from window to window
    n_b = 1000 - n_c
    x_c, x_b = rng.binomial(n_c, rate), rng.binomial(n_b, rate)
    u, log_w = half_normal_grid(0.7, 128)
    d = np.cumsum(error_rate_window_terms(n_c, n_b, x_c + x_b, u, 1.0), axis=1)  # no margin: the exact case
    log_lr = error_rate_log_lr(np.cumsum(x_c, axis=1), d, u, log_w)
    sequential = float((log_lr >= math.log(1 / ALPHA)).any(axis=1).mean())
    assert sequential <= _limit(ALPHA)

    # The naive check: a one-sided pooled two-proportion z-test at level alpha on the data so far,
    # re-checked after every window.
    cn, cx, bn, bx = (np.cumsum(a, axis=1) for a in (n_c, x_c, n_b, x_b))
    pooled = (cx + bx) / (cn + bn)
    z = (cx / cn - bx / bn) / np.sqrt(pooled * (1 - pooled) * (1 / cn + 1 / bn))
    naive = float((z > stats.norm.ppf(1 - ALPHA)).any(axis=1).mean())
    assert naive > 3 * ALPHA, naive
    # The same z-test looked at once, at the end, is fine: peeking is what breaks it.
    assert float((z[:, -1] > stats.norm.ppf(1 - ALPHA)).mean()) <= _limit(ALPHA)


def test_mean_test_keeps_alpha_under_continuous_monitoring_a_naive_z_test_does_not() -> None:
    # Skewed per-prediction values (log-normal, like latencies or log losses), equal means.
    rng = np.random.default_rng(12)
    per_window_c, per_window_b = 100, 900
    sizes = (STREAMS, LOOKS)
    sums, sumsqs = [np.empty(sizes), np.empty(sizes)], [np.empty(sizes), np.empty(sizes)]
    for look in range(LOOKS):  # one window at a time: all of them at once would take ~700 MB
        for side, n in enumerate((per_window_c, per_window_b)):
            values = rng.lognormal(0.0, 0.5, size=(STREAMS, n))
            sums[side][:, look] = values.sum(axis=1)
            sumsqs[side][:, look] = (values**2).sum(axis=1)
    looks = np.arange(1, LOOKS + 1)
    nc, nb = looks * per_window_c, looks * per_window_b
    sc, sb = np.cumsum(sums[0], axis=1), np.cumsum(sums[1], axis=1)
    qc, qb = np.cumsum(sumsqs[0], axis=1), np.cumsum(sumsqs[1], axis=1)
    vc, vb = (qc - sc**2 / nc) / (nc - 1), (qb - sb**2 / nb) / (nb - 1)
    theta, v = sc / nc - sb / nb, vc / nc + vb / nb
    pooled = ((nc - 1) * vc + (nb - 1) * vb) / (nc + nb - 2)
    log_lr = gaussian_msprt_log_lr(theta, v, 0.1 * np.sqrt(pooled))
    assert float((log_lr >= math.log(1 / ALPHA)).any(axis=1).mean()) <= _limit(ALPHA)
    naive = float((theta / np.sqrt(v) > stats.norm.ppf(1 - ALPHA)).any(axis=1).mean())
    assert naive > 3 * ALPHA, naive

    # The class on a few of these streams gives the vectorised values.
    t = MeanTest(alpha=ALPHA, min_relative_increase=0.0, mixing_scale=0.1, min_samples=1)
    for j in range(5):
        t.update(per_window_c, sums[0][0, j], sumsqs[0][0, j], per_window_b, sums[1][0, j], sumsqs[1][0, j])
        assert t.log_likelihood_ratio() == pytest.approx(float(log_lr[0, j]), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("baseline, margin", [(0.02, 0.1), (0.2, 0.5)])
def test_error_rate_test_keeps_alpha_at_the_margin(baseline, margin) -> None:
    # H0 is "ratio <= 1 + margin"; at the boundary the binomial likelihood ratio is a Poisson-limit
    # approximation (see the module docstring), even at a 20% error rate it stays under alpha.
    rng = np.random.default_rng(13)
    n_c = rng.binomial(1000, 0.1, size=(STREAMS, LOOKS))
    x_c, x_b = rng.binomial(n_c, baseline * (1 + margin)), rng.binomial(1000 - n_c, baseline)
    u, log_w = half_normal_grid(0.7, 128)
    d = np.cumsum(error_rate_window_terms(n_c, 1000 - n_c, x_c + x_b, u, 1 + margin), axis=1)
    log_lr = error_rate_log_lr(np.cumsum(x_c, axis=1), d, u, log_w)
    assert float((log_lr >= math.log(1 / ALPHA)).any(axis=1).mean()) <= _limit(ALPHA)


def test_error_rate_test_detects_a_doubling_and_ignores_a_ratio_inside_the_margin() -> None:
    rng = np.random.default_rng(3)
    bad, within = ErrorRateTest(), ErrorRateTest(min_relative_increase=0.5)
    for _ in range(60):
        n_c = int(rng.binomial(1000, 0.1))
        bad.update(n_c, int(rng.binomial(n_c, 0.04)), 1000 - n_c, int(rng.binomial(1000 - n_c, 0.02)))
        within.update(n_c, int(rng.binomial(n_c, 0.024)), 1000 - n_c, int(rng.binomial(1000 - n_c, 0.02)))
    assert bad.decide().verdict is Verdict.FAIL
    assert within.decide().verdict is Verdict.PASS


def test_too_few_samples_is_inconclusive_never_fail() -> None:
    t = ErrorRateTest(min_samples=100)
    t.update(50, 50, 950, 0)  # overwhelming evidence, but only 50 candidate predictions
    d = t.decide()
    assert d.verdict is Verdict.INCONCLUSIVE and d.log_likelihood_ratio > d.threshold
    assert "too few" in d.reason
    m = MeanTest(min_samples=100)
    m.update_values(np.full(10, 5.0), np.ones(1000))
    assert m.decide().verdict is Verdict.INCONCLUSIVE
    m.update_values(np.full(200, 5.0), np.ones(1000))
    assert m.decide().verdict is Verdict.INCONCLUSIVE and "zero variance" in m.decide().reason


# --- state ---

def _error_windows(seed: int, count: int, share_varies: bool = True) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n_c = int(rng.binomial(1000, 0.1)) if share_varies else 100
        out.append((n_c, int(rng.binomial(n_c, 0.03)), 1000 - n_c, int(rng.binomial(1000 - n_c, 0.02))))
    return out


def test_error_rate_snapshot_restore_and_merge_round_trip() -> None:
    windows = _error_windows(5, 20)
    whole, first, second = ErrorRateTest(), ErrorRateTest(), ErrorRateTest()
    for i, w in enumerate(windows):
        whole.update(*w)
        (first if i < 7 else second).update(*w)
    restored = ErrorRateTest.restore(json.loads(json.dumps(whole.snapshot())))
    assert restored.snapshot() == whole.snapshot()
    assert restored.decide() == whole.decide()
    merged = first.merge(second)
    assert merged.log_likelihood_ratio() == pytest.approx(whole.log_likelihood_ratio(), rel=1e-12)
    assert (merged.candidate_n, merged.baseline_errors, merged.windows) == \
        (whole.candidate_n, whole.baseline_errors, whole.windows)
    with pytest.raises(ValueError, match="configurations differ"):
        first.merge(ErrorRateTest(alpha=0.05))
    with pytest.raises(ValueError, match="kind is 'mean'"):
        ErrorRateTest.restore(MeanTest().snapshot())
    broken = whole.snapshot()
    del broken["d"]
    with pytest.raises(ValueError, match="lacks 'd'"):
        ErrorRateTest.restore(broken)


def test_error_rate_windows_equal_their_concatenation_at_a_constant_share() -> None:
    windows = _error_windows(6, 15, share_varies=False)
    by_window, at_once = ErrorRateTest(), ErrorRateTest()
    for w in windows:
        by_window.update(*w)
    at_once.update(*(sum(w[i] for w in windows) for i in range(4)))
    assert by_window.log_likelihood_ratio() == pytest.approx(at_once.log_likelihood_ratio(), rel=1e-10)


def test_mean_snapshot_restore_merge_and_windows_equal_concatenation() -> None:
    rng = np.random.default_rng(8)
    chunks = [(rng.lognormal(0, 0.4, 90), rng.lognormal(0, 0.4, 800)) for _ in range(12)]
    by_window, first, second, at_once = MeanTest(), MeanTest(), MeanTest(), MeanTest()
    for i, (c, b) in enumerate(chunks):
        by_window.update_values(c, b)
        (first if i % 2 else second).update_values(c, b)
    at_once.update_values(np.concatenate([c for c, _ in chunks]), np.concatenate([b for _, b in chunks]))
    assert by_window.log_likelihood_ratio() == pytest.approx(at_once.log_likelihood_ratio(), rel=1e-9)
    assert first.merge(second).log_likelihood_ratio() == pytest.approx(at_once.log_likelihood_ratio(), rel=1e-9)
    restored = MeanTest.restore(json.loads(json.dumps(by_window.snapshot())))
    assert restored.snapshot() == by_window.snapshot() and restored.decide() == by_window.decide()


def test_bad_inputs_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        ErrorRateTest(alpha=1.0)
    with pytest.raises(ValueError, match="min_relative_increase"):
        MeanTest(min_relative_increase=-0.1)
    with pytest.raises(ValueError, match="candidate has 11 errors in 10"):
        ErrorRateTest().update(10, 11, 100, 1)
    with pytest.raises(ValueError, match="snapshot version"):
        MeanTest.restore({**MeanTest().snapshot(), "version": 99})
