"""Drift statistics of a current sketch against a reference sketch with the same bins.

Each statistic is computed from bin counts only, so it works on merged window states. What the
binning costs is stated per statistic, against the same statistic of the raw rows:

- `psi`: population stability index on the sketch's bins,
  PSI = sum_b (q_b - p_b) ln(q_b / p_b), p = reference shares, q = current shares, a share of 0
  replaced by `eps` = 1e-4 (without it one empty bin makes PSI infinite). Evidently floors an
  empty share at min(1e-4, smallest nonzero share / 1e6) instead, which lets one empty tail bin
  dominate its PSI at large n; `mle-stream bench drift` applies Evidently's rule when it compares.
  PSI is defined on bins, so the raw-data value *is* the value on these bins: it equals numpy
  histogram shares of the raw data on the same edges up to float rounding (~1e-12).
- `jensen_shannon`: Jensen-Shannon distance in natural log, scipy.spatial.distance.jensenshannon
  with its default base, the one Evidently's 0.1 threshold is set for (in [0, sqrt(ln 2)]).
  Also defined on bins: equal to scipy on the raw data's histogram up to rounding.
- `wasserstein`: W1 = integral |F - G| dx between estimated CDFs that put each bin's mass
  uniformly on a sub-interval of the bin (clipped to the sample's [min, max]) chosen so that the
  bin keeps its exact mean (the sketch holds per-bin sums), integrated exactly (F - G is
  piecewise linear). Normalized (Evidently's "normed Wasserstein"): W1 / population std of the
  reference (exact, from the sketch's moments). Guaranteed bound, for any data:

      |W1_sketch - scipy.stats.wasserstein_distance(raw)| <= B_ref + B_cur,
      B = sum_b p_b min(2 min(d1_b, d2_b), max(d1_b, d2_b))

  with p_b the bin's share and d1_b, d2_b the distances of its mean to its clipped ends (see
  `_cdf_knots`; at most half the bin's width times its share, less in lopsided tail bins).
  The bound is worst case (~0.08 std for 100 quantile bins of a normal, 0.17 for a t(3)); the
  actual error is far smaller, because the errors of the two samples mostly cancel (the tests
  check 0.005 std; docs/drift.md gives measured errors). The decision uses the estimate; the
  bound is reported.
- `kolmogorov_smirnov`: the sketch knows each CDF exactly at every edge (the count of values
  strictly below it), so the largest CDF gap at the edges, D_lo, is a lower bound of the raw
  two-sample statistic D (scipy.stats.ks_2samp), and inside bin b, with the CDFs going from
  F_a to F_b and G_a to G_b, |F - G| <= max(F_b - G_a, G_b - F_a), so

      D_lo <= D_raw <= D_hi = max_b max(F_b - G_a, G_b - F_a).

  The p-value is the two-sample p-value of D_lo (`ks_p_value`: exact for small samples as
  ks_2samp(method="exact"), else scipy's asymptotic kstwo.sf(D, round(n m / (n + m))) as
  ks_2samp(method="asymp")). Since it decreases in D, it is >= the p-value scipy computes from
  the raw rows with the same method: the sketch can make drift look less significant, never
  more. That is the failure of whylogs #684 avoided: at 1M rows the critical D is ~0.004, below
  a KLL sketch's rank error (and below one 1% bin's mass here), so a p-value read from a point
  estimate of D flags unshifted columns (tests/test_drift_decision.py shows it with D_hi).
- `chi_square`: the two-sample test of homogeneity on the 2 x k contingency table of category
  counts (scipy.stats.chi2_contingency(correction=False); categories empty on both sides
  dropped). Not scipy.stats.chisquare of the current counts against the reference shares: that
  goodness-of-fit test treats the reference shares as exact, and with a 100k-row reference and a
  1M-row window the reference's own sampling noise is 10x the variance the test allows for, so
  unshifted features would be flagged. Category counts are exact: no sketch error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import rel_entr

from mle_stream.core.drift.sketch import CategoricalSketch, FloatArray, NumericSketch

PSI_EPS = 1e-4

Sketch = NumericSketch | CategoricalSketch


@dataclass(frozen=True)
class Estimate:
    """A statistic read from sketches and the largest difference from its raw-data value."""

    value: float
    error_bound: float


@dataclass(frozen=True)
class KSResult:
    """D_lo <= raw KS statistic <= D_hi; p_value is the two-sample p-value of D_lo (>= raw p)."""

    statistic: float
    statistic_upper: float
    p_value: float


@dataclass(frozen=True)
class ChiSquareResult:
    statistic: float
    dof: int
    p_value: float


@dataclass(frozen=True)
class NumericComparison:
    reference_count: int
    current_count: int
    psi: float
    jensen_shannon: float
    wasserstein: float | None  # normalized by the reference std; None when that std is 0
    wasserstein_error_bound: float | None
    ks_statistic: float
    ks_statistic_upper: float
    p_value: float  # the KS test's, conservative


@dataclass(frozen=True)
class CategoricalComparison:
    reference_count: int
    current_count: int
    psi: float
    jensen_shannon: float
    chi_square: float
    dof: int
    p_value: float  # the chi-square test's


def shares(reference: Sketch, current: Sketch) -> tuple[FloatArray, FloatArray]:
    """Bin (or category) shares of both sketches, after checking they share their bins."""
    _check_comparable(reference, current)
    n_ref, n_cur = reference.binned_count, current.binned_count
    if n_ref <= 0 or n_cur <= 0:
        raise ValueError(f"drift statistics need rows on both sides (reference: {n_ref}, current: {n_cur})")
    return reference.counts / n_ref, current.counts / n_cur


def psi(reference: Sketch, current: Sketch, eps: float = PSI_EPS) -> float:
    """Population stability index on the sketch bins; empty shares count as `eps`."""
    p, q = shares(reference, current)
    p, q = np.where(p == 0, eps, p), np.where(q == 0, eps, q)
    return float(((q - p) * np.log(q / p)).sum())


def jensen_shannon(reference: Sketch, current: Sketch) -> float:
    """Jensen-Shannon distance (natural log) of the bin shares, as scipy's jensenshannon."""
    p, q = shares(reference, current)
    m = (p + q) / 2.0
    divergence = (rel_entr(p, m).sum() + rel_entr(q, m).sum()) / 2.0
    return float(math.sqrt(max(float(divergence), 0.0)))


def wasserstein(reference: NumericSketch, current: NumericSketch) -> Estimate:
    """W1 between the two sketches' within-bin-linear CDFs, with the guaranteed bound (module doc).
    Infinite (value and bound) when either sketch holds an infinity."""
    _check_comparable(reference, current)
    if reference.finite_count <= 0 or current.finite_count <= 0:
        raise ValueError(f"wasserstein needs finite values on both sides (reference: "
                         f"{reference.finite_count}, current: {current.finite_count})")
    if reference.inf_count or current.inf_count:
        return Estimate(math.inf, math.inf)
    x_f, c_f, bound_f = _cdf_knots(reference)
    x_g, c_g, bound_g = _cdf_knots(current)
    grid = np.unique(np.concatenate([x_f, x_g]))
    a, b = grid[:-1], grid[1:]
    width = b - a
    if width.size == 0:  # both samples are the same single value
        return Estimate(0.0, 0.0)
    # F - G is linear between consecutive grid points; read it at the interval's thirds (never a
    # knot, so duplicate knots of a jump cannot confuse np.interp) and extrapolate to the ends.
    m1, m2 = a + width / 3.0, a + 2.0 * width / 3.0
    d1 = np.interp(m1, x_f, c_f) - np.interp(m1, x_g, c_g)
    d2 = np.interp(m2, x_f, c_f) - np.interp(m2, x_g, c_g)
    da, db = 2.0 * d1 - d2, 2.0 * d2 - d1
    abs_a, abs_b = np.abs(da), np.abs(db)
    same_sign = da * db >= 0
    total = abs_a + abs_b
    crossing = np.divide(da * da + db * db, 2.0 * total, out=np.zeros_like(total), where=total > 0)
    area = width * np.where(same_sign, total / 2.0, crossing)
    return Estimate(float(area.sum()), bound_f + bound_g)


def wasserstein_normed(reference: NumericSketch, current: NumericSketch) -> Estimate | None:
    """W1 / population std of the reference (Evidently's normed Wasserstein), with its bound
    scaled alike. None when the reference std is 0: a constant reference gives no scale."""
    w = wasserstein(reference, current)
    std = reference.std
    if std is None or std <= 0.0:
        return None
    return Estimate(w.value / std, w.error_bound / std)


def kolmogorov_smirnov(reference: NumericSketch, current: NumericSketch) -> KSResult:
    """Bounds of the raw two-sample KS statistic from the bins and the p-value of the lower bound."""
    _check_comparable(reference, current)
    n, m = reference.binned_count, current.binned_count
    if n <= 0 or m <= 0:
        raise ValueError(f"kolmogorov_smirnov needs rows on both sides (reference: {n}, current: {m})")
    # CDFs as integer numerators over n * m: exact, so D_lo is an exact lattice value.
    cf = np.concatenate([[0], np.cumsum(reference.counts)]) * m
    cg = np.concatenate([[0], np.cumsum(current.counts)]) * n
    d_lo_int = int(np.abs(cf[1:-1] - cg[1:-1]).max())  # at the edges: exact CDF values
    d_hi_int = int(np.maximum(cf[1:] - cg[:-1], cg[1:] - cf[:-1]).max())
    d_lo, d_hi = d_lo_int / (n * m), min(max(d_hi_int, d_lo_int) / (n * m), 1.0)
    return KSResult(d_lo, d_hi, ks_p_value(d_lo_int, n, m))


# Below these sizes the exact null distribution is computed (cost ~ (n + m) min(n, m), a fraction
# of a second at these limits: docs/performance-history.md); above them the asymptotic p-value is
# within a few percent of the exact one and on the conservative side (n = m = 1 001 at p = 0.05:
# 0.0500 vs 0.0486).
EXACT_KS_MAX_TOTAL, EXACT_KS_MAX_SMALLER = 10_000, 1_000


def ks_p_value(d_int: int, n: int, m: int) -> float:
    """P(D >= d_int / (n m)) for the two-sample KS statistic of n and m rows under no drift.

    Exact for small samples (n + m <= 10 000 and min(n, m) <= 1 000), where scipy's asymptotic
    formula is anti-conservative (n = 3, m = 5, D = 0.6: 0.32 instead of 0.46; n = m = 1: 0 instead
    of 1); it then equals scipy.stats.ks_2samp(method="exact"). Otherwise scipy's asymptotic
    p-value, kstwo.sf(D, round(n m / (n + m))), as ks_2samp(method="asymp")."""
    if d_int <= 0:
        return 1.0
    if n + m <= EXACT_KS_MAX_TOTAL and min(n, m) <= EXACT_KS_MAX_SMALLER:
        return _ks_exact_sf(d_int, n, m)
    en = max(1.0, float(np.round(n * m / (n + m))))
    return float(np.clip(stats.kstwo.sf(d_int / (n * m), en), 0.0, 1.0))


def _ks_exact_sf(d_int: int, n: int, m: int) -> float:
    """1 - the share of monotone lattice paths from (0, 0) to (n, m) that keep |i m - j n| < d_int
    (Hodges' path counting). Shares, not counts, so nothing overflows: the share of paths to (i, j)
    staying inside is (i f(i-1, j) + j f(i, j-1)) / (i + j); one anti-diagonal at a time,
    vectorised along it."""
    if n > m:
        n, m = m, n
    i = np.arange(n + 1)
    f = np.zeros(n + 1)
    f[0] = 1.0
    for s in range(1, n + m + 1):
        j = s - i
        from_left = np.concatenate([[0.0], f[:-1]])  # f(i - 1, j)
        inside = (j >= 0) & (j <= m) & (np.abs(i * m - j * n) < d_int)
        f = np.where(inside, (i * from_left + j * f) / s, 0.0)
    return float(min(1.0, max(0.0, 1.0 - f[n])))


def chi_square(reference: CategoricalSketch, current: CategoricalSketch) -> ChiSquareResult:
    """Chi-square test of homogeneity of the 2 x k table of counts ("other" included)."""
    _check_comparable(reference, current)
    table = np.vstack([reference.counts, current.counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if rows[0] <= 0 or rows[1] <= 0:
        raise ValueError(f"chi_square needs rows on both sides (reference: {int(rows[0])}, current: {int(rows[1])})")
    dof = table.shape[1] - 1
    if dof == 0:  # one category on both sides: nothing can differ
        return ChiSquareResult(0.0, 0, 1.0)
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return ChiSquareResult(statistic, dof, float(stats.chi2.sf(statistic, dof)))


def compare_numeric(reference: NumericSketch, current: NumericSketch) -> NumericComparison:
    """Every numeric statistic of one feature (or the prediction score) at once."""
    ks = kolmogorov_smirnov(reference, current)
    wn = wasserstein_normed(reference, current) if reference.finite_count and current.finite_count else None
    return NumericComparison(
        reference_count=reference.binned_count, current_count=current.binned_count,
        psi=psi(reference, current), jensen_shannon=jensen_shannon(reference, current),
        wasserstein=None if wn is None else wn.value, wasserstein_error_bound=None if wn is None else wn.error_bound,
        ks_statistic=ks.statistic, ks_statistic_upper=ks.statistic_upper, p_value=ks.p_value,
    )


def compare_categorical(reference: CategoricalSketch, current: CategoricalSketch) -> CategoricalComparison:
    """Every categorical statistic of one feature at once."""
    chi = chi_square(reference, current)
    return CategoricalComparison(
        reference_count=reference.binned_count, current_count=current.binned_count,
        psi=psi(reference, current), jensen_shannon=jensen_shannon(reference, current),
        chi_square=chi.statistic, dof=chi.dof, p_value=chi.p_value,
    )


def _cdf_knots(sketch: NumericSketch) -> tuple[FloatArray, FloatArray, float]:
    """Knots (positions, CDF values) of the sketch's estimated CDF, and its Wasserstein error bound.

    Bin b spans [a_b, c_b] = its edges clipped into the sample's [min, max] and holds share p_b
    with (exact) mean mu_b. Its mass is spread uniformly over the widest sub-interval of
    [a_b, c_b] centred on mu_b ([a_b, 2 mu_b - a_b] or [2 mu_b - c_b, c_b]): the estimate then
    has every bin's exact mean, which matters in the wide, lopsided tail bins of quantile edges
    (there a uniform spread over the whole bin is off by ~5% of W for a 0.2 std shift).

    Error of one bin, in area between the true and the estimated CDF: both rise by p_b over the
    bin and have the same integral (set by mu_b), so the area is <= 2 p_b min(d1, d2); and it is
    <= p_b w_b / 2 (true CDF to the chord) + p_b (w_b - s_b) / 2 (chord to the estimate, s_b the
    sub-interval's width) = p_b max(d1, d2); d1 = mu_b - a_b, d2 = c_b - mu_b."""
    lo, hi = sketch.min, sketch.max
    assert lo is not None and hi is not None  # callers check finite_count > 0
    positions = np.clip(np.concatenate([[lo], np.asarray(sketch.edges), [hi]]), lo, hi)
    a, c = positions[:-1], positions[1:]
    counts = sketch.counts
    mean = np.clip(np.divide(sketch.bin_sums, counts, out=a.copy(), where=counts > 0), a, c)
    d1, d2 = mean - a, c - mean
    start = np.where(d1 <= d2, a, mean - d2)
    end = np.where(d1 <= d2, mean + d1, c)
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    cdf[-1] = 1.0
    knots_x = np.column_stack([start, end]).ravel()
    knots_y = np.column_stack([cdf[:-1], cdf[1:]]).ravel()
    share = counts / counts.sum()
    bound = float(share @ np.minimum(2.0 * np.minimum(d1, d2), np.maximum(d1, d2)))
    return knots_x, knots_y, bound


def _check_comparable(reference: Sketch, current: Sketch) -> None:
    """Statistics compare bin b with bin b: refuse sketches whose bins differ, naming how."""
    if type(reference) is not type(current):
        raise TypeError(f"cannot compare a {type(reference).__name__} with a {type(current).__name__}")
    name = "edges" if isinstance(reference, NumericSketch) else "categories"
    mine, theirs = getattr(reference, name), getattr(current, name)
    if mine != theirs:
        first = next((i for i, (u, v) in enumerate(zip(mine, theirs)) if u != v), min(len(mine), len(theirs)))
        raise ValueError(f"cannot compare {type(reference).__name__}s with different {name} "
                         f"({len(mine)} vs {len(theirs)}; first difference at index {first})")
