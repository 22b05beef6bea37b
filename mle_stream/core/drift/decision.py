"""Which features of one window (of one model version) have drifted from their reference.

A feature is drifted only when BOTH hold:

1. effect size: at least one of its effect-size statistics reaches its threshold. Numeric
   features (and the prediction score): normalized Wasserstein >= 0.1 or PSI >= 0.1.
   Categorical features: Jensen-Shannon >= 0.1 or PSI >= 0.1. (Evidently's defaults for large
   data.) "Any of" because they see different shifts: a 0.2 std mean shift of a normal feature
   has normalized Wasserstein ~0.2 but PSI only ~0.04 (PSI ~ shift^2 for a location shift), while
   a change of shape at the same mean moves PSI more than Wasserstein. Jensen-Shannon is
   reported but not used for numeric features: on ~100 quantile bins its sampling noise alone is
   ~sqrt((bins - 1) / (8 n)), 0.11 at n = 1000, so as a trigger it would mostly test n.
2. significance: the feature's p-value (KS lower bound for numeric, chi-square of homogeneity
   for categorical, see `statistics`) is <= alpha after Benjamini-Hochberg adjustment across the
   window's tested features (FDR control; under no drift at all it is also family-wise control,
   so at most ~alpha of unshifted windows flag anything).

Why both. The effect size alone is biased upward by sampling noise on small windows (E[PSI] ~
(bins - 1)(1/n_ref + 1/n_cur): 0.1 at 1000 current rows with no drift at all), which
significance rules out. Significance alone flags practically irrelevant shifts at 1M rows,
which the effect size rules out. Sketch error cannot make drift look significant: the KS
p-value is the one of a lower bound of the raw statistic. The effect sizes are the sketch
estimates: PSI and Jensen-Shannon are defined on the bins, and Wasserstein's worst-case bound is
reported (its actual error is far below the 0.1 threshold: docs/drift.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mle_stream.core.drift.sketch import CategoricalSketch, NumericSketch
from mle_stream.core.drift.statistics import compare_categorical, compare_numeric


@dataclass(frozen=True)
class DriftThresholds:
    """Effect-size thresholds (a statistic >= its threshold passes) and the BH level alpha."""

    psi: float = 0.1
    wasserstein: float = 0.1
    jensen_shannon: float = 0.1
    alpha: float = 0.05

    def __post_init__(self) -> None:
        for name in ("psi", "wasserstein", "jensen_shannon"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"DriftThresholds.{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"DriftThresholds.alpha must lie in (0, 1), got {self.alpha!r}")


@dataclass(frozen=True)
class FeatureDrift:
    """The decision for one feature in one window, with every number it was made from."""

    feature: str
    kind: str  # "numeric" or "categorical"
    reference_count: int
    current_count: int
    psi: float | None = None
    jensen_shannon: float | None = None
    wasserstein: float | None = None  # normalized by the reference std
    wasserstein_error_bound: float | None = None
    ks_statistic: float | None = None  # lower bound of the raw KS statistic
    ks_statistic_upper: float | None = None
    chi_square: float | None = None
    test: str | None = None  # "ks" or "chi_square": where p_value comes from
    p_value: float | None = None
    p_value_adjusted: float | None = None  # Benjamini-Hochberg across the window's features
    exceeded: tuple[str, ...] = field(default=())  # effect-size statistics at or over threshold
    drifted: bool = False
    reason: str = ""


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values, in the input order: p_(i) m / i made monotone from
    the largest down and capped at 1. A feature is significant at FDR level alpha when its
    adjusted p-value is <= alpha (the step-up procedure's rejections exactly)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"benjamini_hochberg takes a flat sequence of p-values, got shape {p.shape}")
    if p.size == 0:
        return []
    if np.any(~((p >= 0.0) & (p <= 1.0))):
        raise ValueError(f"benjamini_hochberg: p-values must lie in [0, 1], got {p.tolist()!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (m / np.arange(1, m + 1))  # m / rank >= 1, so never below p in floats
    adjusted_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return [float(v) for v in adjusted]


Sketches = tuple[NumericSketch, NumericSketch] | tuple[CategoricalSketch, CategoricalSketch]


def decide_drift(features: Mapping[str, Sketches],
                 thresholds: DriftThresholds = DriftThresholds()) -> dict[str, FeatureDrift]:
    """Decide drift for every feature of one window: `features` maps a feature name (the
    prediction score is one more name) to its (reference sketch, current sketch). Features with
    no rows on either side are not tested (and not counted in the BH family)."""
    partial: dict[str, FeatureDrift] = {}
    for name, (reference, current) in features.items():
        kind = "numeric" if isinstance(reference, NumericSketch) else "categorical"
        if reference.binned_count <= 0 or current.binned_count <= 0:
            side = "reference" if reference.binned_count <= 0 else "current window"
            partial[name] = FeatureDrift(name, kind, reference.binned_count, current.binned_count,
                                         reason=f"not tested: no rows in the {side}")
        elif isinstance(reference, NumericSketch) and isinstance(current, NumericSketch):
            c = compare_numeric(reference, current)
            partial[name] = FeatureDrift(
                name, kind, c.reference_count, c.current_count, psi=c.psi, jensen_shannon=c.jensen_shannon,
                wasserstein=c.wasserstein, wasserstein_error_bound=c.wasserstein_error_bound,
                ks_statistic=c.ks_statistic, ks_statistic_upper=c.ks_statistic_upper, test="ks", p_value=c.p_value,
                exceeded=_exceeded({"wasserstein": c.wasserstein, "psi": c.psi}, thresholds),
            )
        elif isinstance(reference, CategoricalSketch) and isinstance(current, CategoricalSketch):
            k = compare_categorical(reference, current)
            partial[name] = FeatureDrift(
                name, kind, k.reference_count, k.current_count, psi=k.psi, jensen_shannon=k.jensen_shannon,
                chi_square=k.chi_square, test="chi_square", p_value=k.p_value,
                exceeded=_exceeded({"jensen_shannon": k.jensen_shannon, "psi": k.psi}, thresholds),
            )
        else:
            raise TypeError(f"feature {name!r}: reference is a {type(reference).__name__} but current is a "
                            f"{type(current).__name__}")

    tested = [name for name, r in partial.items() if r.p_value is not None]
    adjusted = dict(zip(tested, benjamini_hochberg([partial[n].p_value or 0.0 for n in tested])))
    out: dict[str, FeatureDrift] = {}
    for name, r in partial.items():
        if name not in adjusted:
            out[name] = r
            continue
        p_adj = adjusted[name]
        significant = p_adj <= thresholds.alpha
        effect = bool(r.exceeded)
        sig_text = f"{r.test} p_adj {p_adj:.3g} {'<=' if significant else '>'} alpha {thresholds.alpha:g}"
        effect_text = _effect_text(r, thresholds)
        if significant and effect:
            reason = f"drifted: {effect_text}; {sig_text}"
        elif not effect:
            reason = f"not drifted: effect size below thresholds ({effect_text}); {sig_text}"
        else:
            reason = f"not drifted: not significant ({sig_text}); {effect_text}"
        out[name] = FeatureDrift(**{**r.__dict__, "p_value_adjusted": p_adj, "drifted": significant and effect,
                                    "reason": reason})
    return out


def _exceeded(effects: dict[str, float | None], thresholds: DriftThresholds) -> tuple[str, ...]:
    return tuple(name for name, value in effects.items() if value is not None and value >= getattr(thresholds, name))


def _effect_text(r: FeatureDrift, thresholds: DriftThresholds) -> str:
    names = ("wasserstein", "psi") if r.kind == "numeric" else ("jensen_shannon", "psi")
    parts = []
    for name in names:
        value = getattr(r, name)
        limit = getattr(thresholds, name)
        if value is None:
            parts.append(f"{name} undefined")
        else:
            parts.append(f"{name} {value:.3g} {'>=' if value >= limit else '<'} {limit:g}")
    return ", ".join(parts)
