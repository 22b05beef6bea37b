"""Every drift statistic from sketches against scipy on the raw rows, within the tolerance the
binning allows (documented in mle_stream/core/drift/statistics.py):

- PSI, Jensen-Shannon: defined on the bins, so equal to the raw rows' histogram on the same bins
  (scipy's jensenshannon / rel_entr) up to rounding.
- Wasserstein: |sketch - scipy.stats.wasserstein_distance| <= the reported error bound, always;
  and within 0.005 reference std for smooth distributions with 100 quantile bins.
- KS: D_lo <= scipy's D <= D_hi, and the p-value >= scipy's asymptotic p-value; equal when every
  distinct value is an edge.
- chi-square: equal to scipy.stats.chi2_contingency(correction=False) and to chisquare on the
  flattened table with its expected counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from mle_stream.core.drift.sketch import (
    CategoricalSketch,
    NumericSketch,
    quantile_edges,
)
from mle_stream.core.drift.statistics import (
    EXACT_KS_MAX_SMALLER,
    EXACT_KS_MAX_TOTAL,
    PSI_EPS,
    chi_square,
    compare_categorical,
    compare_numeric,
    jensen_shannon,
    kolmogorov_smirnov,
    psi,
    wasserstein,
    wasserstein_normed,
)

DISTRIBUTIONS = ["normal", "exponential", "uniform", "lognormal", "poisson", "student_t", "bimodal"]


def _draw(rng: np.random.Generator, name: str, size: int, shift: float, scale: float = 1.0) -> np.ndarray:
    if name == "normal":
        x = rng.normal(size=size)
    elif name == "exponential":
        x = rng.exponential(size=size)
    elif name == "uniform":
        x = rng.uniform(size=size)
    elif name == "lognormal":
        x = rng.lognormal(size=size)
    elif name == "poisson":  # ties: many rows on each edge
        x = rng.poisson(3.0, size=size).astype(np.float64)
    elif name == "student_t":
        x = rng.standard_t(3, size=size)
    else:
        x = np.where(rng.random(size) < 0.3, rng.normal(-3, 0.5, size), rng.normal(2, 1, size))
    return x * scale + shift


def _sketches(ref: np.ndarray, cur: np.ndarray, edges: list[float]) -> tuple[NumericSketch, NumericSketch]:
    a, b = NumericSketch(edges), NumericSketch(edges)
    a.update(ref)
    b.update(cur)
    return a, b


def _scipy_ks(ref: np.ndarray, cur: np.ndarray):  # type: ignore[no-untyped-def]
    """scipy's KS on the raw rows with the p-value method the sketch uses at these sizes."""
    n, m = ref.size, cur.size
    exact = n + m <= EXACT_KS_MAX_TOTAL and min(n, m) <= EXACT_KS_MAX_SMALLER
    return stats.ks_2samp(ref, cur, method="exact" if exact else "asymp")


def _raw_shares(x: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
    return counts / x.size


cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "dist": st.sampled_from(DISTRIBUTIONS),
    "n_ref": st.integers(5, 3000),
    "n_cur": st.integers(1, 3000),
    "shift": st.sampled_from([0.0, 0.05, 0.2, 0.5, 2.0]),
    "scale": st.sampled_from([1.0, 1.5, 0.5]),
    "bins": st.integers(1, 60),
})


@given(cases)
@settings(max_examples=120, deadline=None)
@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")
def test_statistics_against_scipy_on_raw_rows(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    ref = _draw(rng, case["dist"], case["n_ref"], 0.0)
    cur = _draw(rng, case["dist"], case["n_cur"], case["shift"], case["scale"])
    edges = quantile_edges(ref, case["bins"])
    a, b = _sketches(ref, cur, edges)

    # PSI and JS: the raw rows' histogram on the same bins.
    p, q = _raw_shares(ref, edges), _raw_shares(cur, edges)
    pe, qe = np.where(p == 0, PSI_EPS, p), np.where(q == 0, PSI_EPS, q)
    assert psi(a, b) == pytest.approx(float((rel_entr(qe, pe) + rel_entr(pe, qe)).sum()), rel=1e-9, abs=1e-12)
    assert jensen_shannon(a, b) == pytest.approx(float(jensenshannon(p, q)), rel=1e-7, abs=1e-7)

    # Wasserstein: within the guaranteed bound; normalized by np.std of the reference.
    w = wasserstein(a, b)
    raw_w = stats.wasserstein_distance(ref, cur)
    assert abs(w.value - raw_w) <= w.error_bound + 1e-9 * (1 + raw_w)
    wn = wasserstein_normed(a, b)
    if np.std(ref) > 0:
        assert wn is not None
        assert wn.value == pytest.approx(w.value / np.std(ref), rel=1e-9)
        assert a.std == pytest.approx(np.std(ref), rel=1e-9)
    else:
        assert wn is None

    # KS: bounds of the raw statistic, and a p-value never below the raw one.
    ks = kolmogorov_smirnov(a, b)
    raw = _scipy_ks(ref, cur)
    assert ks.statistic <= raw.statistic + 1e-12 <= ks.statistic_upper + 2e-12
    assert ks.p_value >= raw.pvalue - 1e-12


@given(st.integers(0, 2**32 - 1), st.sampled_from(["poisson", "normal"]), st.integers(1, 400), st.integers(1, 400))
@settings(max_examples=40, deadline=None)
def test_ks_is_exact_when_every_value_is_an_edge(seed: int, dist: str, n_ref: int, n_cur: int) -> None:
    rng = np.random.default_rng(seed)
    ref, cur = _draw(rng, dist, n_ref, 0.0), _draw(rng, dist, n_cur, 0.3)
    edges = [float(v) for v in np.unique(np.concatenate([ref, cur]))]
    ks = kolmogorov_smirnov(*_sketches(ref, cur, edges))
    raw = _scipy_ks(ref, cur)
    assert ks.statistic == pytest.approx(raw.statistic, abs=1e-12)
    assert ks.p_value == pytest.approx(raw.pvalue, rel=1e-7, abs=1e-14)


@pytest.mark.parametrize(("n", "m"), [(1, 1), (3, 5), (20, 50), (999, 9001), (1001, 5000), (2000, 100_000)])
def test_ks_p_value_matches_scipy_method_at_each_size(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    ref, cur = rng.normal(size=n), rng.normal(0.1, size=m)
    edges = [float(v) for v in np.unique(np.concatenate([ref, cur]))]
    ks = kolmogorov_smirnov(*_sketches(ref, cur, edges))
    exact = n + m <= EXACT_KS_MAX_TOTAL and min(n, m) <= EXACT_KS_MAX_SMALLER
    raw = stats.ks_2samp(ref, cur, method="exact" if exact else "asymp")
    assert ks.p_value == pytest.approx(raw.pvalue, rel=1e-7, abs=1e-14)


@pytest.mark.parametrize("dist", ["normal", "exponential", "lognormal", "bimodal", "uniform"])
@pytest.mark.parametrize("shift", [0.0, 0.2, 0.5])
def test_tight_tolerance_with_100_quantile_bins(dist: str, shift: float) -> None:
    """The practical tolerance, well inside the worst-case bound: 100 reference quantile bins,
    100k reference rows, 10k current rows."""
    rng = np.random.default_rng(7)
    ref = _draw(rng, dist, 100_000, 0.0)
    cur = _draw(rng, dist, 10_000, shift * np.std(ref))
    a, b = _sketches(ref, cur, quantile_edges(ref, 100))
    sd = np.std(ref)
    wn = wasserstein_normed(a, b)
    assert wn is not None
    assert wn.value == pytest.approx(stats.wasserstein_distance(ref, cur) / sd, abs=0.005)
    assert wn.error_bound < 0.25
    ks = kolmogorov_smirnov(a, b)
    assert ks.statistic_upper - ks.statistic <= 0.025  # about two bins' mass
    assert stats.ks_2samp(ref, cur).statistic - ks.statistic <= 0.0125


def test_wasserstein_of_point_masses_and_infinities() -> None:
    a, b = _sketches(np.full(10, 0.5), np.full(5, 0.7), [0.0, 1.0])
    assert wasserstein(a, b).value == pytest.approx(0.2)
    assert wasserstein(a, b).error_bound == 0.0
    assert wasserstein_normed(a, b) is None  # the reference std is 0: no scale
    c, d = _sketches(np.array([0.0, 1.0]), np.array([0.0, np.inf]), [0.5])
    assert wasserstein(c, d).value == np.inf


def test_statistics_refuse_different_bins_and_empty_sides() -> None:
    a, b = NumericSketch([0.0, 1.0]), NumericSketch([0.0, 2.0])
    a.update(np.array([0.5]))
    b.update(np.array([0.5]))
    with pytest.raises(ValueError, match="edges"):
        psi(a, b)
    with pytest.raises(ValueError, match="rows on both sides"):
        compare_numeric(a, NumericSketch([0.0, 1.0]))
    with pytest.raises(TypeError):
        psi(a, CategoricalSketch(["a"]))


categorical_cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "k": st.integers(1, 12),
    "n_ref": st.integers(1, 2000),
    "n_cur": st.integers(1, 2000),
    "tilt": st.sampled_from([0.0, 0.3, 1.0]),
})


@given(categorical_cases)
@settings(max_examples=80, deadline=None)
def test_chi_square_psi_js_against_scipy(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    k = case["k"]
    names = np.array([f"c{i}" for i in range(k + 3)])  # 3 categories the reference list lacks
    p_ref = rng.dirichlet(np.ones(k + 3))
    p_cur = rng.dirichlet(np.ones(k + 3)) * case["tilt"] + p_ref * (1 - case["tilt"])
    ref = rng.choice(names, size=case["n_ref"], p=p_ref)
    cur = rng.choice(names, size=case["n_cur"], p=p_cur / p_cur.sum())
    categories = list(names[:k])
    a, b = CategoricalSketch(categories), CategoricalSketch(categories)
    a.update(ref)
    b.update(cur)

    def counts(x: np.ndarray) -> np.ndarray:
        known = np.array([(x == c).sum() for c in categories] + [(~np.isin(x, categories)).sum()])
        return known

    table = np.vstack([counts(ref), counts(cur)])
    table = table[:, table.sum(axis=0) > 0]
    result = chi_square(a, b)
    if table.shape[1] < 2:
        assert (result.statistic, result.dof, result.p_value) == (0.0, 0, 1.0)
    else:
        stat, pval, dof, expected = stats.chi2_contingency(table, correction=False)
        assert result.statistic == pytest.approx(stat, rel=1e-9, abs=1e-9)
        assert result.p_value == pytest.approx(pval, rel=1e-7, abs=1e-12)
        assert result.dof == dof
        gof = stats.chisquare(table.ravel(), expected.ravel(), ddof=table.shape[1])  # dof 2k-1-k = k-1
        assert result.p_value == pytest.approx(gof.pvalue, rel=1e-7, abs=1e-12)
    p, q = counts(ref) / ref.size, counts(cur) / cur.size
    assert jensen_shannon(a, b) == pytest.approx(float(jensenshannon(p, q)), rel=1e-7, abs=1e-7)
    pe, qe = np.where(p == 0, PSI_EPS, p), np.where(q == 0, PSI_EPS, q)
    assert psi(a, b) == pytest.approx(float(((qe - pe) * np.log(qe / pe)).sum()), rel=1e-9, abs=1e-12)
    comparison = compare_categorical(a, b)
    assert comparison.p_value == result.p_value and comparison.current_count == case["n_cur"]


def test_goodness_of_fit_would_flag_an_unshifted_large_window() -> None:
    """Why the contingency test: scipy.stats.chisquare of a 1M-row window against the shares of
    a 100k-row reference ignores the reference's sampling noise and rejects far too often."""
    rng = np.random.default_rng(3)
    p = np.full(20, 1 / 20)
    gof_rejections = contingency_rejections = 0
    for _ in range(40):
        ref, cur = rng.multinomial(100_000, p), rng.multinomial(1_000_000, p)
        gof = stats.chisquare(cur, ref / ref.sum() * cur.sum())
        gof_rejections += gof.pvalue <= 0.05
        a, b = CategoricalSketch([str(i) for i in range(19)]), CategoricalSketch([str(i) for i in range(19)])
        a._counts, b._counts = ref.astype(np.int64), cur.astype(np.int64)  # the counts the sketch would hold
        contingency_rejections += chi_square(a, b).p_value <= 0.05
    assert gof_rejections >= 15  # ~55% in theory (variance 11x what the test assumes)
    assert contingency_rejections <= 6  # ~5%
