"""Sequential tests "candidate worse than baseline" that stay valid under continuous monitoring.

Each test's statistic Lambda_n is a nonnegative supermartingale under the null hypothesis (a
likelihood ratio mixed over the alternatives), so by Ville's inequality

    P_H0( there is a look n with Lambda_n >= 1/alpha ) <= alpha,

however often the caller looks and whenever it stops. `decide` compares log(Lambda_n) with
log(1/alpha); min(1, 1/Lambda_n) is the p-value at this look, and its running minimum over the
looks is the always-valid p-value of Johari et al. The derivations at length, the limits of the
guarantees and the comparison with the Gaussian mSPRT that made us choose these tests are in
docs/decisions.md (Sequential tests).

**Error rate: `ErrorRateTest`** - a conditional mixture SPRT on the rate ratio rho = p_c / p_b,
against rho0 = 1 + min_relative_increase. Conditioned on window t's k_t errors in all, the
candidate's x_t of them are Binomial(k_t, q(rho)), so the baseline's own rate drops out:

    q(rho) = rho pi_t / (rho pi_t + 1 - pi_t),   pi_t = n_c / (n_c + n_b)   (the window's traffic share),
    LR_t(rho) = (rho/rho0)^x_t [ (rho0 pi_t + 1 - pi_t) / (rho pi_t + 1 - pi_t) ]^k_t.

At rho0 = 1 this is exact: the true conditional law, hypergeometric, is dominated in convex order
by the binomial (Hoeffding 1963, Thm 4), so E[LR_t] <= 1, and less for a better candidate; at
rho0 > 1 the binomial approximates Fisher's noncentral hypergeometric, with an error of the order
of the error rate. The product over windows is mixed over u = log(rho/rho0) > 0 with a
half-normal(`mixing_scale`) prior on a midpoint grid (a discrete prior is a prior: the guarantee
holds for the grid itself):

    log Lambda_n = logsumexp_j( log w_j + X_c u_j - D_j ),   D_j = sum_t k_t log((rho_j pi_t + 1 - pi_t)
                                                                              / (rho0 pi_t + 1 - pi_t)),

X_c = the candidate's errors over all windows. (X_c, D) add up over windows, so the state updates
once per closed window and merges across disjoint sets of windows.

**Continuous metric: `MeanTest`** - the one-sided normal-mixture mSPRT on theta = mu_c - rho0 mu_b.
With theta_hat = mean_c - rho0 mean_b, V = s_c^2/n_c + rho0^2 s_b^2/n_b (plug-in variances) and a
half-normal(tau) prior on theta > 0, tau = `mixing_scale` x the pooled standard deviation:

    Lambda = 2 sqrt(V / (V + tau^2)) exp( tau^2 theta_hat^2 / (2 V (V + tau^2)) )
             * Phi( theta_hat tau / sqrt(V (V + tau^2)) ).

Valid asymptotically (central limit theorem): `min_samples` per side keeps it INCONCLUSIVE until
the normal approximation is reasonable.

**Evidence: anytime-valid confidence bounds.** Each test also reads as a confidence sequence: the
effect values its martingale does not reject at alpha. The mixture is over effects above the null,
so the set is one-sided, (lower, inf), and the test FAILs exactly when its lower bound reaches the
margin. For `ErrorRateTest` the effect is the rate ratio rho and the null moves with it: the state
keeps, besides D, the window terms at u = i step/2 for i = -2M .. 2M + 2 grid_points - 1
(`lattice`), so that the null rho0 e^(m step), |m| <= M, reads its D_j as lattice[2m + 2j + 1] -
lattice[2m]; the bound is the largest lattice null still rejected (conservative: the exact bound
lies between it and the next).
For `MeanTest` the effect is theta = mu_c - rho0 mu_b; log Lambda is increasing in theta_hat, so
lower = theta_hat - z/b, with b = tau / sqrt(V (V + tau^2)) and z solving log Lambda = log(1/alpha).

References: J. Ville, "Etude critique de la notion de collectif" (1939); H. Robbins, "Statistical
methods related to the law of the iterated logarithm", Ann. Math. Statist. 41(5), 1970 (the normal
mixture); R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Always valid inference: continuous
monitoring of A/B tests", Operations Research 70(3), 2022 (arXiv 1512.04922); W. Hoeffding,
"Probability inequalities for sums of bounded random variables", JASA 58, 1963; M. Kulldorff et
al., "A maximized sequential probability ratio test for drug and vaccine safety surveillance",
Sequential Analysis 30, 2011 (the conditional, binomial form of a two-group sequential test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_ndtr, logsumexp

from mle_stream.core.verdict import Verdict

SNAPSHOT_VERSION = 1  # MeanTest's; ErrorRateTest's is 2 (v2: the lattice for its confidence bound)
_ERROR_RATE_VERSION = 2
# The lattice of nulls for ErrorRateTest's confidence bound spans rho0 e^(+-3) (ratios from 0.05 to
# 20 x rho0), in whole grid steps, at most this many steps a side (a small mixing_scale makes the
# steps small; the bound is then clipped at the lattice's end, which stays conservative).
_LATTICE_LOG_RANGE = 3.0
_LATTICE_MAX_STEPS = 256


@dataclass(frozen=True)
class SequentialDecision:
    verdict: Verdict
    log_likelihood_ratio: float  # log Lambda_n (mixture likelihood ratio, this look)
    threshold: float  # log(1/alpha): FAIL when log_likelihood_ratio >= threshold
    p_value: float  # min(1, 1/Lambda_n); its running minimum over looks is the always-valid p-value
    candidate_samples: int | float
    baseline_samples: int | float
    candidate_value: float | None  # error rate or mean
    baseline_value: float | None
    reason: str
    effect: str = ""  # what estimate and lower_bound are of: "rate ratio" or "mean_c - rho0 mean_b"
    estimate: float | None = None  # the effect's point estimate over all windows so far
    lower_bound: float | None = None  # anytime-valid (1 - alpha) lower confidence bound of the effect
    null: float = 1.0  # the effect's value on H0's boundary: FAIL when lower_bound >= null

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "log_likelihood_ratio": self.log_likelihood_ratio,
                "threshold": self.threshold, "p_value": self.p_value,
                "candidate_samples": self.candidate_samples, "baseline_samples": self.baseline_samples,
                "candidate_value": self.candidate_value, "baseline_value": self.baseline_value,
                "effect": self.effect, "estimate": self.estimate, "lower_bound": self.lower_bound,
                "null": self.null, "reason": self.reason}



def _check_common(where: str, alpha: float, min_relative_increase: float, mixing_scale: float,
                  min_samples: int) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"{where}: alpha must be in (0, 1), got {alpha!r}")
    if not min_relative_increase >= 0:
        raise ValueError(f"{where}: min_relative_increase must be >= 0, got {min_relative_increase!r}")
    if not mixing_scale > 0:
        raise ValueError(f"{where}: mixing_scale must be > 0, got {mixing_scale!r}")
    if min_samples < 1:
        raise ValueError(f"{where}: min_samples must be >= 1, got {min_samples!r}")


# --- error rate: vectorised building blocks (the bench runs thousands of rollouts through these) ---

def half_normal_grid(mixing_scale: float, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint grid u_j on (0, 5 tau] and log prior weights of a half-normal(tau) on it, normalised
    to sum 1 (the truncated tail holds 6e-7 of the mass). Returns (u, log_w)."""
    if points < 2:
        raise ValueError(f"half_normal_grid: points must be >= 2, got {points}")
    step = 5.0 * mixing_scale / points
    u = (np.arange(points) + 0.5) * step
    log_w = -0.5 * (u / mixing_scale) ** 2
    return u, log_w - logsumexp(log_w)


def error_rate_window_terms(n_candidate: np.ndarray | float, n_baseline: np.ndarray | float,
                            errors: np.ndarray | float, u: np.ndarray, rho0: float) -> np.ndarray:
    """k_t log((rho_j pi_t + 1 - pi_t) / (rho0 pi_t + 1 - pi_t)) for each window (any leading shape)
    and grid point j (last axis): one window's contribution to D. A window without traffic on one
    side has no information (the term is 0 where n_candidate = 0, and cancels with X_c's term where
    n_baseline = 0)."""
    n_c = np.asarray(n_candidate, dtype=float)[..., None]
    n_b = np.asarray(n_baseline, dtype=float)[..., None]
    k = np.asarray(errors, dtype=float)[..., None]
    total = n_c + n_b
    share = np.divide(n_c, total, out=np.zeros_like(total), where=total > 0)
    rho = rho0 * np.exp(u)
    return k * (np.log1p(share * (rho - 1.0)) - np.log1p(share * (rho0 - 1.0)))


def error_rate_log_lr(candidate_errors: np.ndarray | float, d: np.ndarray, u: np.ndarray,
                      log_w: np.ndarray) -> np.ndarray:
    """log Lambda = logsumexp_j(log w_j + X_c u_j - D_j); d's last axis is the grid."""
    x = np.asarray(candidate_errors, dtype=float)[..., None]
    return np.asarray(logsumexp(log_w + x * u - d, axis=-1))


# --- continuous metric: the one-sided normal-mixture mSPRT ---

def gaussian_msprt_log_lr(theta_hat: np.ndarray | float, variance: np.ndarray | float,
                          tau: np.ndarray | float) -> np.ndarray:
    """log of Lambda = 2 sqrt(V/(V+tau^2)) exp(tau^2 theta^2 / (2V(V+tau^2))) Phi(theta tau / sqrt(V(V+tau^2))),
    the normal likelihood ratio of an estimate theta_hat ~ N(theta, V), theta = 0 against theta > 0,
    mixed over a half-normal(tau) prior on theta. Vectorised; V > 0 and tau > 0 required."""
    th = np.asarray(theta_hat, dtype=float)
    v = np.asarray(variance, dtype=float)
    t2 = np.asarray(tau, dtype=float) ** 2
    # Factored so that no product of two variances is formed: metrics near a double's range (squared
    # regression errors) would overflow it.
    shrink = t2 / (v + t2)
    return np.asarray(math.log(2.0) + 0.5 * np.log(v / (v + t2)) + 0.5 * (th / np.sqrt(v)) ** 2 * shrink
                      + log_ndtr(th / np.sqrt(v) * np.sqrt(shrink)))


def gaussian_msprt_lower_bound(theta_hat: float, variance: float, tau: float, alpha: float) -> float:
    """The smallest theta that `gaussian_msprt_log_lr(theta_hat - theta, V, tau)` does not reject at
    alpha: log Lambda = c0 + z^2/2 + log Phi(z) with z = b (theta_hat - theta), increasing in z,
    negative at z = 0 (c0 <= log 2), so the root z* is positive and the bound theta_hat - z*/b."""
    t2 = tau * tau
    b = tau / (math.sqrt(variance) * math.sqrt(variance + t2))
    c0 = math.log(2.0) + 0.5 * math.log(variance / (variance + t2))
    target = math.log(1.0 / alpha)

    def excess(z: float) -> float:
        return c0 + 0.5 * z * z + float(log_ndtr(z)) - target

    lo, hi = 0.0, math.sqrt(2.0 * (target - c0 + math.log(2.0))) + 1.0  # excess(lo) < 0 < excess(hi)
    for _ in range(60):  # bisection: the bracket shrinks to 2^-60 of its width (< 1e-16 of z*)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return theta_hat - hi / b


def _evidence(alpha: float, effect: str, estimate: float | None, lower: float | None, null: float) -> str:
    """The estimate, its confidence bound and the boundary, in words."""
    if estimate is None:
        return f"{effect} not estimable yet"
    if lower is None:
        return f"{effect} {estimate:.4g}, no anytime-valid lower bound yet"
    return (f"{effect} {estimate:.4g}, anytime-valid {1 - alpha:g} interval ({lower:.4g}, inf) "
            f"{'excludes' if lower >= null else 'contains'} {null:g}")


def make_decision(where: str, log_lr: float, alpha: float, verdict: Verdict | None, n_c: float, n_b: float,
              c_value: float | None, b_value: float | None, detail: str,
              effect: tuple[str, float | None, float | None, float]) -> SequentialDecision:
    threshold = math.log(1.0 / alpha)
    p_value = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    if verdict is None:
        verdict = Verdict.FAIL if log_lr >= threshold else Verdict.PASS
        word = ">=" if verdict is Verdict.FAIL else "<"
        detail = (f"{where}: log LR {log_lr:.3f} {word} log(1/alpha) {threshold:.3f} (p <= {p_value:.3g}); "
                  f"{_evidence(alpha, *effect)}; " + detail)
    return SequentialDecision(verdict, float(log_lr), threshold, p_value, n_c, n_b, c_value, b_value, detail, *effect)


@dataclass(eq=False)  # d is an array: compare snapshots instead
class ErrorRateTest:
    """One-sided conditional mixture SPRT "candidate's error rate > (1 + min_relative_increase) x
    baseline's" (see the module docstring for the formulas). Update once per closed window with the
    window's labeled counts per version; `decide` at any time."""

    alpha: float = 0.01
    min_relative_increase: float = 0.1  # do not roll back for a ratio of error rates below 1.1
    mixing_scale: float = 0.7  # half-normal prior on log(rho / rho0): a doubling sits at ~1 scale
    min_samples: int = 100  # INCONCLUSIVE while either side has fewer labeled predictions
    grid_points: int = 128
    candidate_n: int = 0
    candidate_errors: int = 0
    baseline_n: int = 0
    baseline_errors: int = 0
    windows: int = 0
    d: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # empty: a fresh test
    # The window terms at u = i step/2 for i in -2M .. 2M + 2 grid_points - 1 (the module docstring):
    # empty for a fresh test, None when restored from a state that did not keep it (no bound then).
    lattice: np.ndarray | None = field(default_factory=lambda: np.zeros(0), repr=False)

    def __post_init__(self) -> None:
        _check_common("ErrorRateTest", self.alpha, self.min_relative_increase, self.mixing_scale,
                      self.min_samples)
        self._u, self._log_w = half_normal_grid(self.mixing_scale, self.grid_points)
        self.d = np.asarray(self.d, dtype=float)
        if self.d.size == 0:
            self.d = np.zeros(self.grid_points)
        if self.d.shape != (self.grid_points,):
            raise ValueError(f"ErrorRateTest: d has shape {self.d.shape}, expected ({self.grid_points},)")
        step = self._u[1] - self._u[0]
        self._steps = min(math.ceil(_LATTICE_LOG_RANGE / step), _LATTICE_MAX_STEPS)  # M
        self._lattice_u = np.arange(-2 * self._steps, 2 * self._steps + 2 * self.grid_points) * (step / 2)
        if self.lattice is not None:
            self.lattice = np.asarray(self.lattice, dtype=float)
            if self.lattice.size == 0:
                self.lattice = np.zeros(self._lattice_u.size)
            if self.lattice.shape != self._lattice_u.shape:
                raise ValueError(f"ErrorRateTest: lattice has shape {self.lattice.shape}, "
                                 f"expected {self._lattice_u.shape}")

    @property
    def rho0(self) -> float:
        return 1.0 + self.min_relative_increase

    def update(self, candidate_n: int, candidate_errors: int, baseline_n: int, baseline_errors: int) -> None:
        """Add one closed window: labeled predictions and errors per version."""
        for name, n, e in (("candidate", candidate_n, candidate_errors), ("baseline", baseline_n, baseline_errors)):
            if n < 0 or e < 0 or e > n:
                raise ValueError(f"ErrorRateTest.update: {name} has {e} errors in {n} predictions")
        self.d = self.d + error_rate_window_terms(candidate_n, baseline_n, candidate_errors + baseline_errors,
                                                  self._u, self.rho0)
        if self.lattice is not None:
            self.lattice = self.lattice + error_rate_window_terms(
                candidate_n, baseline_n, candidate_errors + baseline_errors, self._lattice_u, self.rho0)
        self.candidate_n += int(candidate_n)
        self.candidate_errors += int(candidate_errors)
        self.baseline_n += int(baseline_n)
        self.baseline_errors += int(baseline_errors)
        self.windows += 1

    def _config(self) -> tuple[float, float, float, int, int]:
        return (self.alpha, self.min_relative_increase, self.mixing_scale, self.min_samples, self.grid_points)

    def merge(self, other: ErrorRateTest) -> ErrorRateTest:
        """The state of both tests' windows together (the windows must be disjoint)."""
        if self._config() != other._config():
            raise ValueError(f"ErrorRateTest.merge: configurations differ: {self._config()} vs {other._config()}")
        return ErrorRateTest(*self._config(), self.candidate_n + other.candidate_n,
                             self.candidate_errors + other.candidate_errors, self.baseline_n + other.baseline_n,
                             self.baseline_errors + other.baseline_errors, self.windows + other.windows,
                             self.d + other.d,
                             None if self.lattice is None or other.lattice is None else self.lattice + other.lattice)

    def log_likelihood_ratio(self) -> float:
        return float(error_rate_log_lr(self.candidate_errors, self.d, self._u, self._log_w))

    def null_ratios(self) -> np.ndarray:
        """The lattice's null rate ratios rho0 e^(m step), m = -M .. M."""
        step = self._u[1] - self._u[0]
        return np.asarray(self.rho0 * np.exp(np.arange(-self._steps, self._steps + 1) * step))

    def null_log_likelihood_ratios(self) -> np.ndarray | None:
        """log Lambda_n against each null of `null_ratios()` (the one at rho0 is the test's own), or
        None when the state does not keep the lattice."""
        if self.lattice is None:
            return None
        m = np.arange(2 * self._steps + 1)[:, None] * 2  # offsets of the nulls' own terms
        d = self.lattice[m + 2 * np.arange(self.grid_points)[None, :] + 1] - self.lattice[m]
        return error_rate_log_lr(self.candidate_errors, d, self._u, self._log_w)

    def lower_bound(self) -> float | None:
        """The largest lattice null the test rejects at alpha, all smaller ones being rejected too
        (the statistic falls as the null rises): a conservative anytime-valid lower confidence
        bound on the rate ratio. None when no null is rejected or the lattice is unknown."""
        log_lrs = self.null_log_likelihood_ratios()
        if log_lrs is None:
            return None
        kept = np.flatnonzero(log_lrs < math.log(1.0 / self.alpha))
        first_kept = int(kept[0]) if kept.size else log_lrs.size
        return None if first_kept == 0 else float(self.null_ratios()[first_kept - 1])

    def _effect(self) -> tuple[str, float | None, float | None, float]:
        estimate = None
        if self.candidate_n and self.baseline_n and self.baseline_errors:
            estimate = (self.candidate_errors / self.candidate_n) / (self.baseline_errors / self.baseline_n)
        return "rate ratio", estimate, self.lower_bound(), self.rho0

    def decide(self, failures: str = "errors") -> SequentialDecision:
        """The verdict at this look; `failures` names what the counts count in the reason."""
        c_rate = self.candidate_errors / self.candidate_n if self.candidate_n else None
        b_rate = self.baseline_errors / self.baseline_n if self.baseline_n else None
        log_lr = self.log_likelihood_ratio()
        counts = (f"candidate {self.candidate_errors}/{self.candidate_n}, "
                  f"baseline {self.baseline_errors}/{self.baseline_n} {failures}")
        if min(self.candidate_n, self.baseline_n) < self.min_samples:
            return make_decision("rate", log_lr, self.alpha, Verdict.INCONCLUSIVE, self.candidate_n,
                             self.baseline_n, c_rate, b_rate,
                             f"too few trials ({counts}), need {self.min_samples} a side", self._effect())
        return make_decision("rate", log_lr, self.alpha, None, self.candidate_n, self.baseline_n, c_rate,
                         b_rate, f"{counts}; H0: ratio <= {self.rho0:g}", self._effect())

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "error_rate", "version": _ERROR_RATE_VERSION, "alpha": self.alpha,
                "min_relative_increase": self.min_relative_increase, "mixing_scale": self.mixing_scale,
                "min_samples": self.min_samples, "grid_points": self.grid_points,
                "candidate_n": self.candidate_n, "candidate_errors": self.candidate_errors,
                "baseline_n": self.baseline_n, "baseline_errors": self.baseline_errors,
                "windows": self.windows, "d": [float(v) for v in self.d],
                "lattice": None if self.lattice is None else [float(v) for v in self.lattice]}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ErrorRateTest:
        # v1 did not keep the lattice: its test goes on deciding the same, without a confidence bound.
        check_snapshot("ErrorRateTest.restore", data, "error_rate", (1, _ERROR_RATE_VERSION))
        try:
            lattice = data["lattice"] if data["version"] > 1 else None
            return cls(float(data["alpha"]), float(data["min_relative_increase"]), float(data["mixing_scale"]),
                       int(data["min_samples"]), int(data["grid_points"]), int(data["candidate_n"]),
                       int(data["candidate_errors"]), int(data["baseline_n"]), int(data["baseline_errors"]),
                       int(data["windows"]), np.asarray(data["d"], dtype=float),
                       None if lattice is None else np.asarray(lattice, dtype=float))
        except KeyError as exc:
            raise ValueError(f"ErrorRateTest.restore: snapshot lacks {exc}") from None


@dataclass
class MeanTest:
    """One-sided normal-mixture mSPRT "candidate's mean > (1 + min_relative_increase) x baseline's"
    for a per-prediction metric where higher is worse (log loss, latency). Update once per closed
    window with (n, sum, sum of squares) per version."""

    alpha: float = 0.01
    min_relative_increase: float = 0.05
    mixing_scale: float = 0.1  # half-normal prior scale of theta, in pooled standard deviations
    min_samples: int = 100
    candidate_n: float = 0.0
    candidate_sum: float = 0.0
    candidate_sumsq: float = 0.0
    baseline_n: float = 0.0
    baseline_sum: float = 0.0
    baseline_sumsq: float = 0.0
    windows: int = 0

    def __post_init__(self) -> None:
        _check_common("MeanTest", self.alpha, self.min_relative_increase, self.mixing_scale, self.min_samples)

    @property
    def rho0(self) -> float:
        return 1.0 + self.min_relative_increase

    def update(self, candidate_n: float, candidate_sum: float, candidate_sumsq: float,
               baseline_n: float, baseline_sum: float, baseline_sumsq: float) -> None:
        """Add one closed window: (count, sum, sum of squares) of the metric per version."""
        for name, n, ss in (("candidate", candidate_n, candidate_sumsq), ("baseline", baseline_n, baseline_sumsq)):
            if n < 0 or ss < 0 or not (math.isfinite(n) and math.isfinite(ss)):
                raise ValueError(f"MeanTest.update: {name} has n={n}, sum of squares={ss}")
        if not (math.isfinite(candidate_sum) and math.isfinite(baseline_sum)):
            raise ValueError(f"MeanTest.update: sums must be finite, got {candidate_sum}, {baseline_sum}")
        self.candidate_n += candidate_n
        self.candidate_sum += candidate_sum
        self.candidate_sumsq += candidate_sumsq
        self.baseline_n += baseline_n
        self.baseline_sum += baseline_sum
        self.baseline_sumsq += baseline_sumsq
        self.windows += 1

    def update_values(self, candidate: np.ndarray, baseline: np.ndarray) -> None:
        """Add one closed window from the raw per-prediction values."""
        c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
        self.update(c.size, float(c.sum()), float((c * c).sum()), b.size, float(b.sum()), float((b * b).sum()))

    def _config(self) -> tuple[float, float, float, int]:
        return (self.alpha, self.min_relative_increase, self.mixing_scale, self.min_samples)

    def merge(self, other: MeanTest) -> MeanTest:
        """The state of both tests' windows together (sums add up, so any split of the data works)."""
        if self._config() != other._config():
            raise ValueError(f"MeanTest.merge: configurations differ: {self._config()} vs {other._config()}")
        return MeanTest(*self._config(), self.candidate_n + other.candidate_n,
                        self.candidate_sum + other.candidate_sum, self.candidate_sumsq + other.candidate_sumsq,
                        self.baseline_n + other.baseline_n, self.baseline_sum + other.baseline_sum,
                        self.baseline_sumsq + other.baseline_sumsq, self.windows + other.windows)

    @staticmethod
    def _mean_var(n: float, s: float, ss: float) -> tuple[float, float]:
        mean = s / n
        # sum of squares minus n mean^2 can go slightly negative by rounding: clamp
        return mean, max(ss - s * mean, 0.0) / (n - 1.0)

    def log_likelihood_ratio(self) -> float:
        """log Lambda, or -inf when it is undefined (fewer than 2 values a side, zero variance)."""
        stats = self._statistics()
        return -math.inf if stats is None else float(gaussian_msprt_log_lr(*stats))

    def _statistics(self) -> tuple[float, float, float] | None:
        if self.candidate_n < 2 or self.baseline_n < 2:
            return None
        mc, vc = self._mean_var(self.candidate_n, self.candidate_sum, self.candidate_sumsq)
        mb, vb = self._mean_var(self.baseline_n, self.baseline_sum, self.baseline_sumsq)
        variance = vc / self.candidate_n + self.rho0**2 * vb / self.baseline_n
        pooled = ((self.candidate_n - 1) * vc + (self.baseline_n - 1) * vb) / (self.candidate_n + self.baseline_n - 2)
        if not (variance > 0 and pooled > 0 and math.isfinite(variance) and math.isfinite(pooled)):
            return None  # no spread, or one beyond a double's range
        return mc - self.rho0 * mb, variance, self.mixing_scale * math.sqrt(pooled)

    def lower_bound(self) -> float | None:
        """Anytime-valid (1 - alpha) lower confidence bound of theta = mu_c - rho0 mu_b (the set of
        thetas the test does not reject is (bound, inf)); None while the statistic is undefined."""
        stats = self._statistics()
        return None if stats is None else gaussian_msprt_lower_bound(*stats, self.alpha)

    def decide(self) -> SequentialDecision:
        c_mean = self.candidate_sum / self.candidate_n if self.candidate_n else None
        b_mean = self.baseline_sum / self.baseline_n if self.baseline_n else None
        counts = (f"candidate mean {c_mean:.6g} (n={self.candidate_n:g}), " if c_mean is not None
                  else "no candidate values, ") + (f"baseline mean {b_mean:.6g} (n={self.baseline_n:g})"
                                                   if b_mean is not None else "no baseline values")
        stats = self._statistics()
        effect = ("mean_c - mean_b" if self.rho0 == 1 else f"mean_c - {self.rho0:g} mean_b",
                  None if stats is None else stats[0], self.lower_bound(), 0.0)
        if min(self.candidate_n, self.baseline_n) < self.min_samples:
            return make_decision("mean", -math.inf if stats is None else float(gaussian_msprt_log_lr(*stats)),
                             self.alpha, Verdict.INCONCLUSIVE, self.candidate_n, self.baseline_n, c_mean, b_mean,
                             f"mean: too few values ({counts}), need {self.min_samples} a side", effect)
        if stats is None:
            return make_decision("mean", -math.inf, self.alpha, Verdict.INCONCLUSIVE, self.candidate_n,
                             self.baseline_n, c_mean, b_mean,
                             f"mean: zero variance, or one beyond a double's range ({counts})", effect)
        return make_decision("mean", float(gaussian_msprt_log_lr(*stats)), self.alpha, None, self.candidate_n,
                         self.baseline_n, c_mean, b_mean, f"{counts}; H0: ratio of means <= {self.rho0:g}", effect)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "mean", "version": SNAPSHOT_VERSION, "alpha": self.alpha,
                "min_relative_increase": self.min_relative_increase, "mixing_scale": self.mixing_scale,
                "min_samples": self.min_samples, "candidate_n": self.candidate_n,
                "candidate_sum": self.candidate_sum, "candidate_sumsq": self.candidate_sumsq,
                "baseline_n": self.baseline_n, "baseline_sum": self.baseline_sum,
                "baseline_sumsq": self.baseline_sumsq, "windows": self.windows}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> MeanTest:
        check_snapshot("MeanTest.restore", data, "mean")
        try:
            sums = {k: float(data[k]) for k in ("candidate_n", "candidate_sum", "candidate_sumsq", "baseline_n",
                                                "baseline_sum", "baseline_sumsq")}
            return cls(alpha=float(data["alpha"]), min_relative_increase=float(data["min_relative_increase"]),
                       mixing_scale=float(data["mixing_scale"]), min_samples=int(data["min_samples"]),
                       windows=int(data["windows"]), **sums)
        except KeyError as exc:
            raise ValueError(f"MeanTest.restore: snapshot lacks {exc}") from None


def check_snapshot(where: str, data: dict[str, Any], kind: str,
                    versions: tuple[int, ...] = (SNAPSHOT_VERSION,)) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict, got {type(data).__name__}")
    if data.get("kind") != kind:
        raise ValueError(f"{where}: snapshot kind is {data.get('kind')!r}, expected {kind!r}")
    if data.get("version") not in versions:
        raise ValueError(f"{where}: snapshot version {data.get('version')!r}, this code reads "
                         f"{', '.join(map(str, versions))}")
