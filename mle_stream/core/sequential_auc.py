"""An always-valid test "the candidate's ROC AUC is below the baseline's by more than a margin".

Per closed window t, from the two versions' score histograms (positive and negative label counts
per score bin, core/metrics/binary.py), `auc_window` computes each version's AUC and its DeLong
variance (DeLong, DeLong & Clarke-Pearson 1988; a bin counts as a tie, as scikit-learn counts
equal scores): with P positives, N negatives, the placement of a positive in bin b is
V10_b = (negatives below b + negatives in b / 2) / N, of a negative V01_b = (positives above b +
positives in b / 2) / P, AUC = mean V10 over the positives and

    Var(AUC) = S10 / P + S01 / N,   S10, S01 = the sample variances of V10 (positives), V01 (negatives).

The versions serve different requests, so the shortfall d_t = AUC_b - AUC_c has variance
v_t = Var(AUC_b) + Var(AUC_c). `AucTest` treats the windows as independent Gaussian increments
in information time: S = sum_t (d_t - margin) / v_t, I = sum_t 1 / v_t, so that S ~ N(theta I, I)
with theta the shortfall beyond the margin, and mixes the likelihood ratio exp(theta S - theta^2 I/2)
over theta > 0 with a half-normal(`mixing_scale`) prior: the one-sided normal-mixture mSPRT of
core/sequential.py (`gaussian_msprt_log_lr` at theta_hat = S / I, V = 1 / I). Ville's inequality
bounds its false-rollback rate by alpha at any stopping time, asymptotically: the AUC's normal
approximation and the plug-in variance need enough of each class, so a window counts only with
`min_samples` positives and negatives on each side.

The same mixture, read for every margin at once, gives an anytime-valid lower confidence bound on
the shortfall (`lower_bound`): the smallest margin the test would not reject at alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

from mle_stream.core.sequential import (
    SNAPSHOT_VERSION,
    SequentialDecision,
    check_snapshot,
    gaussian_msprt_log_lr,
    make_decision,
)
from mle_stream.core.verdict import Verdict


@dataclass(frozen=True)
class RankSample:
    """One version's AUC in one window, with its DeLong variance and class counts."""

    auc: float
    variance: float
    positives: int
    negatives: int


def delong(positives: npt.ArrayLike, negatives: npt.ArrayLike) -> RankSample | None:
    """AUC and DeLong variance from label counts per score bin (bins in rising score order); None
    without two positives and two negatives (no sample variance)."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    p, n = float(pos.sum()), float(neg.sum())
    if p < 2 or n < 2:
        return None
    neg_below = np.cumsum(neg) - neg
    pos_above = p - np.cumsum(pos)
    v10 = (neg_below + 0.5 * neg) / n  # each positive's share of negatives it outranks
    v01 = (pos_above + 0.5 * pos) / p  # each negative's share of positives that outrank it
    auc = float(pos @ v10) / p
    s10 = float(pos @ (v10 - auc) ** 2) / (p - 1)
    s01 = float(neg @ (v01 - auc) ** 2) / (n - 1)
    return RankSample(auc, s10 / p + s01 / n, int(p), int(n))


@dataclass(frozen=True)
class AucWindow:
    """Both versions' AUC in one window: what `AucTest.update` takes."""

    candidate: RankSample
    baseline: RankSample

    @property
    def shortfall(self) -> float:
        """How far the candidate's AUC is below the baseline's (negative: above it)."""
        return self.baseline.auc - self.candidate.auc

    @property
    def variance(self) -> float:
        return self.baseline.variance + self.candidate.variance


def auc_window(candidate: tuple[npt.ArrayLike, npt.ArrayLike],
               baseline: tuple[npt.ArrayLike, npt.ArrayLike]) -> AucWindow | None:
    """From each version's (positives, negatives) per score bin; None when a side has no AUC."""
    c, b = delong(*candidate), delong(*baseline)
    return None if c is None or b is None else AucWindow(c, b)


@dataclass
class AucTest:
    """One-sided normal-mixture mSPRT "candidate's AUC < baseline's - min_difference" over windows
    (see the module docstring). Update once per closed window; `decide` at any time."""

    alpha: float = 0.01
    min_difference: float = 0.01  # do not roll back for an AUC shortfall below this (AUC units)
    mixing_scale: float = 0.01  # half-normal prior scale of the shortfall beyond the margin (AUC units)
    min_samples: int = 100  # positives and negatives each version needs in a window for it to count
    information: float = 0.0  # sum of 1 / v_t over the windows that counted
    weighted_shortfall: float = 0.0  # sum of d_t / v_t
    windows: int = 0  # windows that counted
    skipped: int = 0  # windows with too few of a class (or no AUC) on a side
    candidate_positives: int = 0
    candidate_negatives: int = 0
    baseline_positives: int = 0
    baseline_negatives: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"AucTest: alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 <= self.min_difference <= 1:
            raise ValueError(f"AucTest: min_difference must be in [0, 1], got {self.min_difference!r}")
        if not self.mixing_scale > 0:
            raise ValueError(f"AucTest: mixing_scale must be > 0, got {self.mixing_scale!r}")
        if self.min_samples < 2:
            raise ValueError(f"AucTest: min_samples must be >= 2 (a variance needs two of each class), "
                             f"got {self.min_samples!r}")

    def update(self, window: AucWindow | None) -> bool:
        """Add one closed window; returns whether it counted (enough of each class on both sides,
        and a positive variance: two perfect rankings carry no information)."""
        sides = () if window is None else (window.candidate, window.baseline)
        if window is None or min(min(s.positives, s.negatives) for s in sides) < self.min_samples \
                or not window.variance > 0:
            self.skipped += 1
            return False
        self.information += 1.0 / window.variance
        self.weighted_shortfall += window.shortfall / window.variance
        self.windows += 1
        self.candidate_positives += window.candidate.positives
        self.candidate_negatives += window.candidate.negatives
        self.baseline_positives += window.baseline.positives
        self.baseline_negatives += window.baseline.negatives
        return True

    @property
    def shortfall(self) -> float | None:
        """The information-weighted mean shortfall of the windows so far."""
        return self.weighted_shortfall / self.information if self.information > 0 else None

    def log_likelihood_ratio(self, margin: float | None = None) -> float:
        """log Lambda against "shortfall <= margin" (default: min_difference); -inf before a window counts."""
        if self.information <= 0:
            return -math.inf
        margin = self.min_difference if margin is None else margin
        return float(gaussian_msprt_log_lr(self.weighted_shortfall / self.information - margin,
                                           1.0 / self.information, self.mixing_scale))

    def lower_bound(self) -> float | None:
        """Anytime-valid lower confidence bound (level 1 - alpha) on the shortfall: the margin at which
        log Lambda is exactly log(1/alpha). FAIL is this bound above min_difference."""
        estimate = self.shortfall
        if estimate is None:
            return None
        target, spread = math.log(1.0 / self.alpha), 1.0 / math.sqrt(self.information)
        lo, hi = estimate - spread, estimate + spread
        while self.log_likelihood_ratio(lo) < target:  # log Lambda falls as the margin rises
            lo -= 2.0 * (hi - lo)
        while self.log_likelihood_ratio(hi) > target:
            hi += 2.0 * (hi - lo)
        return float(brentq(lambda m: self.log_likelihood_ratio(m) - target, lo, hi, xtol=1e-9))

    def decide(self) -> SequentialDecision:
        log_lr = self.log_likelihood_ratio()
        estimate = self.shortfall
        c_n = self.candidate_positives + self.candidate_negatives
        b_n = self.baseline_positives + self.baseline_negatives
        effect = ("baseline AUC - candidate AUC", estimate, self.lower_bound(), self.min_difference)
        if estimate is None:
            return make_decision("roc_auc", log_lr, self.alpha, Verdict.INCONCLUSIVE, c_n, b_n, None, None,
                                 f"no window yet with {self.min_samples} positives and negatives a side "
                                 f"({self.skipped} with fewer)", effect)
        return make_decision("roc_auc", log_lr, self.alpha, None, c_n, b_n, None, None,
                             f"H0: the candidate's AUC below the baseline's by at most {self.min_difference:g}",
                             effect)

    def summary(self) -> dict[str, Any]:
        """The evidence a reader needs beyond the log LR: estimate, bound and the counts behind them."""
        return {"shortfall": self.shortfall, "shortfall_lower_bound": self.lower_bound(),
                "min_difference": self.min_difference, "skipped_windows": self.skipped,
                "candidate": {"positives": self.candidate_positives, "negatives": self.candidate_negatives},
                "baseline": {"positives": self.baseline_positives, "negatives": self.baseline_negatives}}

    def _config(self) -> tuple[float, float, float, int]:
        return (self.alpha, self.min_difference, self.mixing_scale, self.min_samples)

    def merge(self, other: AucTest) -> AucTest:
        """The state of both tests' windows together (the windows must be disjoint)."""
        if self._config() != other._config():
            raise ValueError(f"AucTest.merge: configurations differ: {self._config()} vs {other._config()}")
        return AucTest(*self._config(), self.information + other.information,
                       self.weighted_shortfall + other.weighted_shortfall, self.windows + other.windows,
                       self.skipped + other.skipped, self.candidate_positives + other.candidate_positives,
                       self.candidate_negatives + other.candidate_negatives,
                       self.baseline_positives + other.baseline_positives,
                       self.baseline_negatives + other.baseline_negatives)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "roc_auc", "version": SNAPSHOT_VERSION, **vars(self)}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> AucTest:
        check_snapshot("AucTest.restore", data, "roc_auc")
        try:
            return cls(float(data["alpha"]), float(data["min_difference"]), float(data["mixing_scale"]),
                       int(data["min_samples"]), float(data["information"]), float(data["weighted_shortfall"]),
                       *(int(data[k]) for k in ("windows", "skipped", "candidate_positives", "candidate_negatives",
                                                "baseline_positives", "baseline_negatives")))
        except KeyError as exc:
            raise ValueError(f"AucTest.restore: snapshot lacks {exc}") from None
