"""`mle-stream bench decisions`: false rollbacks, power and detection delay of the sequential error-rate
test, next to a Flagger-style fixed threshold and the oracle CUSUM, on the same simulated windows.

The model. A rollout is a sequence of `windows` analysis windows (Flagger's
interval, e.g. one minute) of `window_size` labeled predictions each; each prediction goes to the
canary with probability `canary_share` (so a window's split is binomial, ~100 / ~900 by default),
and its label arrives within the window. The baseline's error rate is `baseline_error_rate` (2%).
A/A rollouts: the canary has the same error rate. A/B rollouts: the canary's error rate is
`degraded_error_rate` (4%) from the start of the rollout (no change point: the canary version
is bad from its first prediction, which is the canary case). Delays are counted in canary samples
(labeled canary predictions) from the start of the rollout to the end of the window at which a
method rolls back (the CUSUM: to the sample at which it alarms). The horizon (60 windows, ~6000
canary samples by default) is several times the delays in question (~1000 canary samples), so
the power says whether a method detects at all, not whether it beats a clock.

Every method sees the same windows, in the same run:

- ours: `ErrorRateTest` (core/sequential.py, vectorised here through the same functions), looked
  at after every window once both sides have `min_samples` labeled predictions; roll back at the
  first FAIL.
- Flagger-style: after every window, a check fails when the canary's window error rate is above
  `flagger_max_error_rate` (3% by default: the baseline's 2% plus one point, what a user who
  knows the baseline would write as `thresholdRange.max`); roll back when the failed checks reach
  `flagger_threshold` (5, the `threshold` of Flagger's documented examples). Flagger's counter
  (`status.failedChecks`) is cumulative over the analysis, not consecutive: it is reset only when a
  new revision restarts the analysis (flagger pkg/controller/scheduler.go).
- the oracle CUSUM: Page's CUSUM on the canary's samples one at a time, with the log likelihood
  ratio increments of the true rates (log(p1/p0) for an error, log((1-p1)/(1-p0)) otherwise): the
  optimal detector (Lorden 1971, Moustakides 1986) for a method that knows both rates and the
  baseline. Its threshold is calibrated by simulation to the same false-alarm rate over the same
  horizon as ours measured in this run (on the run's A/A canary streams plus
  `cusum_calibration_streams` more from the same traffic model, because our rate is small and its
  quantile needs many streams). If ours had no false rollback at all, the calibration uses
  1 / rollouts (a larger rate than ours, so a shorter CUSUM delay: the comparison stays
  conservative). It is also calibrated to alpha itself and reported as `cusum_median_delay_at_alpha`.

Delay quantiles are over all A/B rollouts, a rollout that never rolled back counting as infinitely
late: a quantile that falls on those is reported as null.

Every metric family (`families` in the result; `run_family`): the same windows for a sequential check,
a fixed threshold of that metric and the oracle CUSUM where one exists, under A/A and under the
family's named degradation (FAMILIES).

Each family draws raw predictions (rollouts x windows x window_size) from a seeded generator; each
goes to the canary with probability `canary_share`. A family is one of three kinds:

- rate: the check counts failures among relevant predictions (errors among labeled ones, false
  positives among predicted positives, misses among actual positives, requests above the pooled
  window p99). Sequential: ErrorRateTest on the window counts (vectorised as above). Oracle: Page's
  CUSUM of the canary's relevant predictions with the true failure rates.
- mean: per-prediction values (absolute error, squared error, Brier term, latency). Sequential:
  MeanTest (its statistic vectorised). Oracle: the Gaussian CUSUM with the true means and the
  baseline's standard deviation (the optimal detector of a mean shift when the values are normal).
- auc: per window DeLong AUC a side. Sequential: AucTest (vectorised). No oracle: an AUC is not a
  per-prediction quantity, so there is no likelihood ratio of one sample to accumulate.

The true parameters (failure rates, means, standard deviation) are measured on TRUTH_DRAWS
predictions of the same generator: the oracle knows them, the sequential test and the fixed check
do not. There are two oracles (rate and mean families):

- `oracle_cusum`: from the baseline's parameters to the degraded ones; its threshold set on this
  run's A/A maxima, as in the error-rate comparison, to the false-rollback rate the family's
  sequential check achieved on them (at least 1 / rollouts).
- `oracle_cusum_same_margin`, the delay target's: the sequential check's own hypotheses. The check
  promises at most alpha rollbacks for every candidate within its margin, so the oracle must not
  fire on a candidate at the margin's boundary either: its increments are the log likelihood ratio
  of the degraded parameters against the boundary's (the baseline's rate x rho0, its mean x (1 +
  margin)), and its threshold is set on a third case of rollouts whose canary sits on that boundary
  (CASES, `_chunk`), to the sequential check's false rollbacks there (at least 1 / rollouts).

Each oracle's median delay with its threshold at alpha is reported next to it
(`median_delay_samples_at_alpha`).

The sequential checks run at `alpha` with their classes' default margins (`family_margin` sets one
for every rate and mean check; 0.1 for rates, 0.05 for
means, 0.01 of AUC; error_rate: the settings above). The fixed check fails a window when the
canary's window value is worse than the baseline's true value by the family's stated factor (AUC:
when the canary's window AUC is more than 0.01 below the baseline's), and rolls back at 5 failed
checks, counted as Flagger counts them; `fixed_threshold_at_alpha` is the same check with its
threshold raised until at most alpha of this run's A/A rollouts roll back: the best a fixed check
can do at our promise, over this horizon only, and only with A/A data in hand to calibrate it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mle_stream.core.sequential import (
    ErrorRateTest,
    MeanTest,
    error_rate_log_lr,
    error_rate_window_terms,
    gaussian_msprt_log_lr,
    half_normal_grid,
)
from mle_stream.core.sequential_auc import AucTest

DEFAULTS: dict[str, Any] = {
    "rollouts": 1000, "windows": 60, "window_size": 1000, "canary_share": 0.1,
    "baseline_error_rate": 0.02, "degraded_error_rate": 0.04, "alpha": 0.01,
    "min_relative_increase": 0.1, "mixing_scale": 0.7, "min_samples": 100,
    "flagger_max_error_rate": 0.03, "flagger_threshold": 5, "cusum_calibration_streams": 20_000,
    "seed": 20261129, "family_margin": None,
}


@dataclass
class Traffic:
    """Per-window counts of `rollouts` rollouts (arrays rollouts x windows) and the canary's samples
    (rollouts x max canary samples, errors as booleans; past a rollout's own length: False)."""

    n_c: np.ndarray
    n_b: np.ndarray
    x_c: np.ndarray
    x_b: np.ndarray
    bounds: np.ndarray  # canary samples through the end of each window
    canary: np.ndarray


def simulate(rng: np.random.Generator, rollouts: int, windows: int, window_size: int, canary_share: float,
             canary_rate: float, baseline_rate: float, with_baseline: bool = True) -> Traffic:
    n_c = rng.binomial(window_size, canary_share, size=(rollouts, windows))
    bounds = np.cumsum(n_c, axis=1)
    length = int(bounds[:, -1].max())
    canary = rng.random((rollouts, length), dtype=np.float32) < canary_rate
    canary &= np.arange(length) < bounds[:, -1:]
    cum = np.concatenate([np.zeros((rollouts, 1), np.int64), np.cumsum(canary, axis=1, dtype=np.int64)], axis=1)
    x_c = np.diff(np.take_along_axis(cum, bounds, axis=1), axis=1, prepend=0)
    n_b = window_size - n_c
    x_b = rng.binomial(n_b, baseline_rate) if with_baseline else np.zeros_like(n_b)
    return Traffic(n_c, n_b, x_c, x_b, bounds, canary)


def first_true(flags: np.ndarray) -> np.ndarray:
    """Index of the first True along the last axis, -1 where there is none."""
    idx = np.argmax(flags, axis=-1)
    return np.where(flags.any(axis=-1), idx, -1)


def ours(t: Traffic, alpha: float, min_relative_increase: float, mixing_scale: float,
         min_samples: int, grid_points: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(rollback window index or -1, log LR after each window) of ErrorRateTest on every rollout."""
    u, log_w = half_normal_grid(mixing_scale, grid_points)
    terms = error_rate_window_terms(t.n_c, t.n_b, t.x_c + t.x_b, u, 1.0 + min_relative_increase)
    log_lr = error_rate_log_lr(np.cumsum(t.x_c, axis=1), np.cumsum(terms, axis=1), u, log_w)
    enough = np.minimum(np.cumsum(t.n_c, axis=1), np.cumsum(t.n_b, axis=1)) >= min_samples
    return first_true(enough & (log_lr >= math.log(1.0 / alpha))), log_lr


def flagger(t: Traffic, max_error_rate: float, threshold: int) -> np.ndarray:
    """Rollback window index (or -1): a check fails when the canary's window error rate exceeds
    max_error_rate, or when the window has no canary sample (Flagger treats a query that returns
    no value as a failed check); rollback when the cumulative failed checks reach `threshold`."""
    rate = np.divide(t.x_c, t.n_c, out=np.full(t.x_c.shape, np.inf), where=t.n_c > 0)
    return first_true(np.cumsum(rate > max_error_rate, axis=1) >= threshold)


def cusum_paths(canary: np.ndarray, lengths: np.ndarray, p0: float, p1: float) -> np.ndarray:
    """Page's CUSUM S_n = max(0, S_{n-1} + z_n) on each row, as R_n - min(0, min_{k<=n} R_k) with R the
    random walk of the increments; 0 past each row's length."""
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    walk = np.cumsum(np.where(canary, up, down), axis=1)
    s = walk - np.minimum(np.minimum.accumulate(walk, axis=1), 0.0)
    s[np.arange(canary.shape[1]) >= lengths[:, None]] = 0.0
    return s


def cusum_threshold(maxima: np.ndarray, false_alarm_rate: float) -> float:
    """The smallest threshold h that at most floor(rate x N) of the A/A maxima reach."""
    ranked = np.sort(maxima)[::-1]
    allowed = int(math.floor(false_alarm_rate * ranked.size))
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < ranked.size else 0.0


def _quantile(delays: np.ndarray, q: float) -> float | None:
    value = float(np.quantile(delays, q, method="inverted_cdf"))
    return None if math.isinf(value) else value


def _window_delays(rollback: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    at = np.take_along_axis(bounds, np.maximum(rollback, 0)[:, None], axis=1)[:, 0].astype(float)
    return np.where(rollback >= 0, at, np.inf)


def run_decisions_bench(families: list[str] | tuple[str, ...] | None = None, **settings: Any) -> dict[str, Any]:
    """The error-rate comparison above (the top-level keys), and with `families` (default: all of
    FAMILIES; empty: none) each family's methods under `families` in the result."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"run_decisions_bench: unknown settings {sorted(unknown)}")
    chosen = list(FAMILIES) if families is None else list(dict.fromkeys(families))
    wrong = [f for f in chosen if f not in FAMILIES]
    if wrong:
        raise ValueError(f"bench decisions: unknown family {', '.join(wrong)}; choose from {', '.join(FAMILIES)}")
    s = {**DEFAULTS, **settings}
    for name in ("rollouts", "windows", "window_size", "flagger_threshold", "min_samples"):
        if int(s[name]) < 1:
            raise ValueError(f"bench decisions: {name} must be >= 1, got {s[name]}")
    if not 0 < s["alpha"] < 1 or not 0 < s["canary_share"] < 1:
        raise ValueError(f"bench decisions: alpha and canary_share must be in (0, 1), got {s['alpha']}, "
                         f"{s['canary_share']}")
    p0, p1 = float(s["baseline_error_rate"]), float(s["degraded_error_rate"])
    if not 0 < p0 < p1 < 1:
        raise ValueError(f"bench decisions: need 0 < baseline_error_rate < degraded_error_rate < 1, got {p0}, {p1}")
    started = time.perf_counter()
    rng = np.random.default_rng(s["seed"])
    r, w, n, share = int(s["rollouts"]), int(s["windows"]), int(s["window_size"]), float(s["canary_share"])
    test = {k: s[k] for k in ("alpha", "min_relative_increase", "mixing_scale", "min_samples")}

    aa = simulate(rng, r, w, n, share, p0, p0)
    ab = simulate(rng, r, w, n, share, p1, p0)
    ours_aa, _ = ours(aa, **test)
    ours_ab, _ = ours(ab, **test)
    false_rollbacks = int((ours_aa >= 0).sum())
    false_rollback_rate = false_rollbacks / r
    ours_delays = _window_delays(ours_ab, ab.bounds)

    fl_aa = flagger(aa, s["flagger_max_error_rate"], int(s["flagger_threshold"]))
    fl_ab = flagger(ab, s["flagger_max_error_rate"], int(s["flagger_threshold"]))
    fl_delays = _window_delays(fl_ab, ab.bounds)

    # The CUSUM's A/A maxima: this run's A/A canary streams, then more from the same traffic model.
    maxima = [cusum_paths(aa.canary, aa.bounds[:, -1], p0, p1).max(axis=1)]
    extra, chunk = int(s["cusum_calibration_streams"]), 1000
    for start in range(0, extra, chunk):
        c = simulate(rng, min(chunk, extra - start), w, n, share, p0, p0, with_baseline=False)
        maxima.append(cusum_paths(c.canary, c.bounds[:, -1], p0, p1).max(axis=1))
    aa_maxima = np.concatenate(maxima)
    cusum_rate = max(false_rollback_rate, 1.0 / r)
    h = cusum_threshold(aa_maxima, cusum_rate)
    h_alpha = cusum_threshold(aa_maxima, float(s["alpha"]))
    ab_paths = cusum_paths(ab.canary, ab.bounds[:, -1], p0, p1)

    def cusum_delays(threshold: float) -> np.ndarray:
        first = first_true(ab_paths >= threshold)
        return np.where(first >= 0, first + 1.0, np.inf)

    cu_delays, cu_alpha_delays = cusum_delays(h), cusum_delays(h_alpha)
    family_results = {name: run_family(name, **s) for name in chosen}

    median, cusum_median = _quantile(ours_delays, 0.5), _quantile(cu_delays, 0.5)
    ratio = None if median is None or cusum_median is None else median / cusum_median
    return {
        "alpha": s["alpha"],
        "false_rollback_rate": false_rollback_rate,
        "false_rollbacks": false_rollbacks,
        "false_rollback_rate_standard_error": math.sqrt(max(false_rollback_rate * (1 - false_rollback_rate), 0) / r),
        "power": float(np.isfinite(ours_delays).mean()),
        "median_delay_samples": median,
        "p95_delay_samples": _quantile(ours_delays, 0.95),
        "cusum_median_delay_samples": cusum_median,
        "cusum_p95_delay_samples": _quantile(cu_delays, 0.95),
        "cusum_threshold": h,
        "cusum_false_alarm_rate": cusum_rate,
        "cusum_false_alarm_rate_achieved": float((aa_maxima >= h).mean()),
        "cusum_power": float(np.isfinite(cu_delays).mean()),
        "cusum_median_delay_at_alpha": _quantile(cu_alpha_delays, 0.5),
        "cusum_threshold_at_alpha": h_alpha,
        "delay_ratio_to_cusum": ratio,
        "fixed_threshold_false_rollback_rate": float((fl_aa >= 0).mean()),
        "fixed_threshold_power": float(np.isfinite(fl_delays).mean()),
        "fixed_threshold_median_delay_samples": _quantile(fl_delays, 0.5),
        "fixed_threshold_p95_delay_samples": _quantile(fl_delays, 0.95),
        "targets": {
            "false_rollback_rate_le_alpha": false_rollback_rate <= s["alpha"],
            "median_delay_le_1.5x_cusum": ratio is not None and ratio <= 1.5,
        },
        "settings": {**s, "aa_rollouts": r, "ab_rollouts": r,
                     "horizon_canary_samples_mean": float(aa.bounds[:, -1].mean()),
                     "cusum_calibration_streams_total": int(aa_maxima.size),
                     "degradation": "from the start of the rollout"},
        "families": family_results,
        "seconds": round(time.perf_counter() - started, 2),
    }


def format_decisions_report(result: dict[str, Any]) -> str:
    s = result["settings"]

    def num(value: float | None, fmt: str = "{:,.0f}") -> str:
        return "never" if value is None else fmt.format(value)

    lines = [
        f"{s['rollouts']} A/A + {s['rollouts']} A/B rollouts, {s['windows']} windows of {s['window_size']} "
        f"predictions, {s['canary_share']:.0%} to the canary (~{s['horizon_canary_samples_mean']:,.0f} canary "
        f"samples), error rate {s['baseline_error_rate']:.1%} -> {s['degraded_error_rate']:.1%} from the start; "
        f"alpha {result['alpha']}, seed {s['seed']}",
        "",
        f"{'method':<34} {'false rollbacks':>15} {'power':>7} {'median delay':>13} {'p95 delay':>10}",
        f"{'sequential (ours)':<34} {result['false_rollback_rate']:>15.4f} {result['power']:>7.3f} "
        f"{num(result['median_delay_samples']):>13} {num(result['p95_delay_samples']):>10}",
        f"{'fixed threshold, Flagger-style':<34} {result['fixed_threshold_false_rollback_rate']:>15.4f} "
        f"{result['fixed_threshold_power']:>7.3f} {num(result['fixed_threshold_median_delay_samples']):>13} "
        f"{num(result['fixed_threshold_p95_delay_samples']):>10}",
        f"{'oracle CUSUM (same false alarms)':<34} {result['cusum_false_alarm_rate_achieved']:>15.4f} "
        f"{result['cusum_power']:>7.3f} {num(result['cusum_median_delay_samples']):>13} "
        f"{num(result['cusum_p95_delay_samples']):>10}",
        "",
        f"delays in canary samples; median delay / CUSUM's: {num(result['delay_ratio_to_cusum'], '{:.2f}')} "
        f"(CUSUM at alpha: median {num(result['cusum_median_delay_at_alpha'])})",
        f"targets: false rollbacks <= alpha: {result['targets']['false_rollback_rate_le_alpha']}; "
        f"median delay <= 1.5 x CUSUM: {result['targets']['median_delay_le_1.5x_cusum']}  ({result['seconds']} s)",
    ]
    for name, family in result.get("families", {}).items():
        lines += ["", f"{name}: {family['degradation']}, {family['canary_share']:.0%} to the canary "
                      f"({family['seconds']} s)",
                  f"  {'method':<34} {'false rollbacks':>15} {'power':>7} {'median delay':>13} {'p95 delay':>10}"]
        for method, label in (("sequential", "sequential"), ("fixed_threshold", "fixed threshold"),
                              ("fixed_threshold_at_alpha", "fixed threshold at alpha"),
                              ("oracle_cusum", "oracle CUSUM (same false alarms)"),
                              ("oracle_cusum_same_margin", "oracle CUSUM (same margin) *")):
            m = family[method]
            if m is None:
                if method == "oracle_cusum":
                    lines.append(f"  {label:<34} {family['oracle_note']}")
                continue
            lines.append(f"  {label:<34} {m['false_rollback_rate']:>15.4f} {m['power']:>7.3f} "
                         f"{num(m['median_delay_samples']):>13} {num(m['p95_delay_samples']):>10}")
        targets, oracle = family["target_met"], family["oracle_cusum_same_margin"]
        if oracle is None:
            delay_target = "no oracle"
        else:
            ratios = [num(family[f"delay_ratio_to_cusum{key}"], "{:.2f}") for key in ("_same_margin", "")]
            delay_target = (f"{targets['median_delay_le_1.5x_cusum']} (ratio {ratios[0]}; to the CUSUM without the "
                            f"margin: {ratios[1]})")
            lines.append(f"  * false rollbacks at the null's boundary; the sequential check's there: "
                         f"{family['sequential']['false_rollback_rate_at_margin']:.4f}")
        lines += [f"  fixed threshold: {family['fixed_threshold']['check']}",
                  f"  targets: false rollbacks <= alpha: {targets['false_rollback_rate_le_alpha']}; median delay "
                  f"<= 1.5 x CUSUM of the same hypotheses: {delay_target}"]
    return "\n".join(lines)


TRUTH_DRAWS = 1_000_000
FIXED_FAILED_CHECKS = 5  # Flagger's documented `threshold`: cumulative failed checks that roll back
FAMILY_CHUNK = 100  # rollouts simulated at once (memory: chunk x windows x window_size values)

# (rng, shape, worse) -> per-prediction arrays of that shape, from the good or the degraded model
Draw = Callable[[np.random.Generator, tuple[int, ...], bool], dict[str, np.ndarray]]


def binary_draw(fpr: float = 0.05, tpr: float = 0.8, noise: float = 0.1) -> Draw:
    """30% positives; predicted positive with the false-positive rate / recall; the score is 0.8 or 0.2
    by the prediction plus normal noise, clipped to [0, 1]."""
    def draw(rng: np.random.Generator, shape: tuple[int, ...], worse: bool) -> dict[str, np.ndarray]:
        f, t, s = (fpr, tpr, noise) if worse else (0.05, 0.8, 0.1)
        y = rng.random(shape, dtype=np.float32) < 0.3
        predicted = np.where(y, rng.random(shape, dtype=np.float32) < t, rng.random(shape, dtype=np.float32) < f)
        score = np.clip(np.where(predicted, 0.8, 0.2) + rng.normal(0, s, shape), 0, 1)
        return {"y": y, "predicted": predicted, "score": score}
    return draw


def error_draw(rate: float, worse_rate: float) -> Draw:
    def draw(rng: np.random.Generator, shape: tuple[int, ...], worse: bool) -> dict[str, np.ndarray]:
        return {"relevant": np.ones(shape, bool),
                "failure": rng.random(shape, dtype=np.float32) < (worse_rate if worse else rate)}
    return draw


def student_t_draw(scale: float) -> Draw:
    def draw(rng: np.random.Generator, shape: tuple[int, ...], worse: bool) -> dict[str, np.ndarray]:
        return {"error": rng.standard_t(5, shape) * (scale if worse else 1.0)}
    return draw


def latency_draw(slower: float) -> Draw:
    """Lognormal latencies, median 50 ms, sigma 0.5; the degraded canary's all `slower` times longer."""
    def draw(rng: np.random.Generator, shape: tuple[int, ...], worse: bool) -> dict[str, np.ndarray]:
        return {"latency": rng.lognormal(math.log(50.0), 0.5, shape) * (slower if worse else 1.0)}
    return draw


def binormal_draw(auc: float, worse_auc: float) -> Draw:
    """30% positives; logit scores N(0, 1) for negatives, N(sqrt2 Phi^-1(AUC), 1) for positives."""
    from scipy.stats import norm

    def draw(rng: np.random.Generator, shape: tuple[int, ...], worse: bool) -> dict[str, np.ndarray]:
        y = rng.random(shape, dtype=np.float32) < 0.3
        shift = math.sqrt(2.0) * float(norm.ppf(worse_auc if worse else auc))
        return {"y": y, "score": rng.normal(0.0, 1.0, shape) + y * shift}
    return draw


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # rate | mean | auc
    draw: Draw
    degradation: str
    fixed_check: str
    fixed_factor: float  # rate, mean: a window's canary value above (true baseline value) x this fails
    canary_share: float | None = None  # None: the bench's
    # the canary's model on the sequential check's null boundary, where the draws cannot be moved onto it
    # afterwards (an AUC is not a per-prediction value); None: moved by _chunk's margin case
    boundary: Draw | None = None


def _rate_view(name: str, v: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(relevant, failure) per prediction for a rate family."""
    if "relevant" in v:
        return v["relevant"], v["failure"]
    if name == "accuracy":
        return np.ones(v["y"].shape, bool), v["y"] != v["predicted"]
    if name == "precision":
        return v["predicted"], v["predicted"] & ~v["y"]
    if name == "recall":
        return v["y"], v["y"] & ~v["predicted"]
    raise ValueError(name)


def _mean_view(name: str, v: dict[str, np.ndarray]) -> np.ndarray:
    if name == "mae":
        return np.abs(v["error"])
    if name == "rmse":
        return v["error"] ** 2  # the check tests the mean squared error
    if name == "brier_score":
        return (v["score"] - v["y"]) ** 2
    return v["latency"]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("error_rate", "rate", error_draw(0.02, 0.04), "error rate 0.02 -> 0.04",
           "a window's canary error rate above 1.5 x the baseline's (0.03)", 1.5),
    Family("accuracy", "rate", binary_draw(fpr=0.08, tpr=0.75), "accuracy 0.905 -> 0.869 (false-positive rate "
           "0.05 -> 0.08, recall 0.80 -> 0.75)", "a window's canary error rate (1 - accuracy) above 1.25 x the "
           "baseline's", 1.25),
    Family("precision", "rate", binary_draw(fpr=0.08), "precision 0.87 -> 0.81 (false-positive rate 0.05 -> 0.08)",
           "a window's canary false-discovery rate (1 - precision) above 1.25 x the baseline's", 1.25),
    Family("recall", "rate", binary_draw(tpr=0.72), "recall 0.80 -> 0.72", "a window's canary miss rate "
           "(1 - recall) above 1.25 x the baseline's", 1.25),
    Family("brier_score", "mean", binary_draw(noise=0.18), "brier score: score noise 0.10 -> 0.18",
           "a window's canary brier score above 1.1 x the baseline's", 1.1),
    Family("mae", "mean", student_t_draw(1.15), "mae: Student-t(5) errors x 1.15",
           "a window's canary mae above 1.1 x the baseline's", 1.1),
    Family("rmse", "mean", student_t_draw(1.15), "rmse: Student-t(5) errors x 1.15 (mean squared error x 1.32)",
           "a window's canary mean squared error above 1.2 x the baseline's (rmse x 1.1)", 1.2),
    Family("latency_mean_ms", "mean", latency_draw(1.15), "latency_mean_ms: lognormal latencies x 1.15",
           "a window's canary mean latency above 1.1 x the baseline's", 1.1),
    Family("latency_p99_ms", "rate", latency_draw(1.2), "latency_p99_ms: lognormal latencies x 1.2 (p99 +20%)",
           "a window's canary p99 above 1.1 x the baseline's", 1.1),
    Family("roc_auc", "auc", binormal_draw(0.80, 0.77), "roc_auc 0.80 -> 0.77 (binormal scores)",
           "the canary's window AUC more than 0.01 below the baseline's window AUC", 0.01, canary_share=0.5,
           boundary=binormal_draw(0.80, 0.80 - AucTest().min_difference)),
)}


def _vector_mean_log_lr(c: np.ndarray, b: np.ndarray, test: Any) -> np.ndarray:
    """MeanTest.log_likelihood_ratio on cumulative (n, sum, sumsq) arrays (last axis of size 3)."""
    def mean_var(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = np.maximum(s[..., 0], 2.0)
        mean = s[..., 1] / n
        return mean, np.maximum(s[..., 2] - s[..., 1] * mean, 0.0) / (n - 1.0)
    mc, vc = mean_var(c)
    mb, vb = mean_var(b)
    nc, nb = c[..., 0], b[..., 0]
    rho0 = 1.0 + test.min_relative_increase
    variance = vc / np.maximum(nc, 1) + rho0**2 * vb / np.maximum(nb, 1)
    pooled = ((nc - 1) * vc + (nb - 1) * vb) / np.maximum(nc + nb - 2, 1)
    ok = (nc >= 2) & (nb >= 2) & (variance > 0) & (pooled > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = gaussian_msprt_log_lr(mc - rho0 * mb, np.where(ok, variance, 1.0),
                                       test.mixing_scale * np.sqrt(np.where(ok, pooled, 1.0)))
    return np.where(ok, log_lr, -np.inf)


def _delong(score: np.ndarray, y: np.ndarray,
            side: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(AUC, DeLong variance, positives, negatives) of the predictions in `side` along the last axis
    (sequential_auc.delong, vectorised; continuous scores, so no ties)."""
    order = np.argsort(np.where(side, score, np.inf), axis=-1)
    m = np.take_along_axis(side, order, axis=-1)
    ys = np.take_along_axis(y, order, axis=-1)
    pos, neg = (m & ys).astype(np.float64), (m & ~ys).astype(np.float64)
    p, n = pos.sum(axis=-1), neg.sum(axis=-1)
    ps, ns = np.maximum(p, 2.0)[..., None], np.maximum(n, 2.0)[..., None]
    v10 = (np.cumsum(neg, axis=-1) - neg) / ns
    v01 = (p[..., None] - np.cumsum(pos, axis=-1) + pos) / ps - 0.5 * pos / ps
    auc = (pos * v10).sum(axis=-1) / ps[..., 0]
    s10 = (pos * (v10 - auc[..., None]) ** 2).sum(axis=-1) / (ps[..., 0] - 1)
    s01 = (neg * (v01 - auc[..., None]) ** 2).sum(axis=-1) / (ns[..., 0] - 1)
    return auc, s10 / ps[..., 0] + s01 / ns[..., 0], p, n


def _page(increments: np.ndarray) -> np.ndarray:
    """Page's CUSUM max(0, S + z) along the last axis (as in cusum_paths)."""
    walk = np.cumsum(increments, axis=-1)
    return walk - np.minimum(np.minimum.accumulate(walk, axis=-1), 0.0)


CASES = ("aa", "margin", "ab")  # the canary as good as the baseline, at the null's boundary, degraded
# The CUSUM paths each case needs: its false alarms on the A/A and the margin cases, both delays under A/B
PATHS = {"aa": ("cusum",), "margin": ("cusum_margin",), "ab": ("cusum", "cusum_margin")}


def _chunk(family: Family, rng: np.random.Generator, rollouts: int, s: dict[str, Any], case: str,
           truth: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Simulate `rollouts` rollouts of one family in one of CASES; returns (sequential rollback window
    or -1, the fixed check's statistic per window (higher is worse; a window without the canary's value
    is +inf, a failed check as in Flagger), canary samples through each window, the case's PATHS of
    the CUSUM (rollouts x predictions; none for AUC): "cusum" from the baseline's parameters to the
    degraded ones, "cusum_margin" from the null's boundary (the baseline's parameters times the
    check's margin) to the degraded ones, and canary samples through each prediction).

    The margin case is the A/A draw with the canary's values moved onto the sequential check's null
    boundary, where its false-rollback promise is tightest: a rate's canary failures raised to rho0 x
    the baseline's true rate (relevant canary successes turned into failures at random), a mean's
    canary values multiplied by 1 + margin; for AUC, the canary drawn from the family's `boundary`."""
    worse = case == "ab"
    w, n = int(s["windows"]), int(s["window_size"])
    share = family.canary_share or float(s["canary_share"])
    alpha = float(s["alpha"])
    # family_margin: one margin for every rate and mean check instead of each class's default
    margin: dict[str, Any] = {} if s["family_margin"] is None else {"min_relative_increase": float(s["family_margin"])}
    canary = rng.random((rollouts, w, n), dtype=np.float32) < share
    v = family.draw(rng, (rollouts, w, n), False)
    canary_model = family.draw if worse else family.boundary if case == "margin" else None
    if canary_model is not None:  # the canary's predictions from another model, the baseline's from the good one
        other = canary_model(rng, (rollouts, w, n), True)
        v = {k: np.where(canary, other[k], v[k]) for k in v}
    n_canary = canary.sum(axis=-1)
    bounds = np.cumsum(n_canary, axis=1)
    increments: dict[str, np.ndarray] = {}
    if family.kind == "rate":
        if family.name == "latency_p99_ms":
            # The check's threshold: the window's pooled p99 (the worker takes it from both versions'
            # sketches); the oracle's and the fixed check's: the baseline's true p99.
            lat = v["latency"]
            pooled = np.quantile(lat, 0.99, axis=-1, method="inverted_cdf")[..., None]
            rel, fail = np.ones(lat.shape, bool), lat > pooled
            cusum_fail = lat > truth["p99"]
            # the canary's window p99 (inverted cdf): its ceil(0.99 n_c)-th smallest latency
            ranked = np.sort(np.where(canary, lat, -np.inf), axis=-1)
            k = np.ceil(0.99 * n_canary).astype(np.int64)
            at = np.clip(n - n_canary + k - 1, 0, n - 1)
            p99 = np.take_along_axis(ranked, at[..., None], axis=-1)[..., 0]
            fixed_stat = np.where(n_canary > 0, p99 / truth["p99"], np.inf)
        else:
            rel, fail = _rate_view(family.name, v)
            cusum_fail = fail
        own = {} if family.name != "error_rate" else {
            k: s[k] for k in ("min_relative_increase", "mixing_scale", "min_samples")}
        test = ErrorRateTest(alpha=alpha, **{**own, **margin})
        p0, p1, pb = truth["p0"], truth["p1"], test.rho0 * truth["p0"]
        if case == "margin":
            turned = onto_boundary(rng, canary & rel, p0, pb)
            fail, cusum_fail = fail | turned, cusum_fail | turned
        if family.name != "latency_p99_ms":
            c_rel = np.sum(rel & canary, axis=-1)
            fixed_stat = np.divide(np.sum(fail & canary, axis=-1), c_rel * p0,
                                   out=np.full(c_rel.shape, np.inf), where=c_rel > 0)
        n_c, x_c = np.sum(rel & canary, axis=-1), np.sum(fail & canary, axis=-1)
        n_b, x_b = np.sum(rel & ~canary, axis=-1), np.sum(fail & ~canary, axis=-1)
        u, log_w = half_normal_grid(test.mixing_scale, test.grid_points)
        terms = error_rate_window_terms(n_c, n_b, x_c + x_b, u, test.rho0)
        log_lr = error_rate_log_lr(np.cumsum(x_c, axis=1), np.cumsum(terms, axis=1), u, log_w)
        enough = np.minimum(np.cumsum(n_c, axis=1), np.cumsum(n_b, axis=1)) >= test.min_samples
        increments = {
            key: np.where(canary & rel, np.where(cusum_fail, math.log(p1 / before), math.log((1 - p1) / (1 - before))),
                          0.0)
            for key, before in (("cusum", p0), ("cusum_margin", pb)) if key in PATHS[case]}
    elif family.kind == "mean":
        mtest = MeanTest(alpha=alpha, **margin)
        rho0 = 1.0 + mtest.min_relative_increase
        x = _mean_view(family.name, v)
        if case == "margin":
            x = np.where(canary, x * rho0, x)

        def sums(side: np.ndarray) -> np.ndarray:
            return np.stack([side.sum(axis=-1), np.where(side, x, 0).sum(axis=-1),
                             np.where(side, x * x, 0).sum(axis=-1)], axis=-1).astype(float)
        c, b = sums(canary), sums(~canary)
        log_lr = _vector_mean_log_lr(np.cumsum(c, axis=1), np.cumsum(b, axis=1), mtest)
        enough = np.minimum(np.cumsum(c[..., 0], axis=1), np.cumsum(b[..., 0], axis=1)) >= mtest.min_samples
        fixed_stat = np.divide(c[..., 1], c[..., 0] * truth["mu0"], out=np.full(c.shape[:-1], np.inf),
                               where=c[..., 0] > 0)
        mu0, mu1, sd = truth["mu0"], truth["mu1"], truth["sigma"]
        increments = {key: np.where(canary, (mu1 - before) / sd**2 * (x - 0.5 * (before + mu1)), 0.0)
                      for key, before in (("cusum", mu0), ("cusum_margin", rho0 * mu0)) if key in PATHS[case]}
    else:
        atest = AucTest(alpha=alpha)
        auc_c, var_c, pos_c, neg_c = _delong(v["score"], v["y"], canary)
        auc_b, var_b, pos_b, neg_b = _delong(v["score"], v["y"], ~canary)
        variance = var_c + var_b
        counted = (np.minimum.reduce([pos_c, neg_c, pos_b, neg_b]) >= atest.min_samples) & (variance > 0)
        shortfall = auc_b - auc_c
        info = np.cumsum(np.where(counted, 1.0 / np.where(counted, variance, 1.0), 0.0), axis=1)
        weighted = np.cumsum(np.where(counted, shortfall / np.where(counted, variance, 1.0), 0.0), axis=1)
        enough = info > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            log_lr = np.where(enough, gaussian_msprt_log_lr(
                np.where(enough, weighted / np.where(enough, info, 1.0), 0.0) - atest.min_difference,
                1.0 / np.where(enough, info, 1.0), atest.mixing_scale), -np.inf)
        fixed_stat = np.where(counted, shortfall, np.inf)
    sequential = first_true(enough & (log_lr >= math.log(1.0 / alpha)))
    paths = {key: _page(inc.reshape(rollouts, -1)) for key, inc in increments.items()}
    return sequential, fixed_stat, bounds, paths, np.cumsum(canary.reshape(rollouts, -1), axis=1)


def onto_boundary(rng: np.random.Generator, eligible: np.ndarray, p0: float, pb: float) -> np.ndarray:
    """Which `eligible` predictions to turn into failures so that a failure rate of p0 becomes pb: each with
    probability (pb - p0) / (1 - p0), so that P(failure) = p0 + (1 - p0) x that = pb."""
    return eligible & (rng.random(eligible.shape, dtype=np.float32) < (pb - p0) / (1.0 - p0))


def _family_truth(family: Family, rng: np.random.Generator) -> dict[str, float]:
    base, worse = family.draw(rng, (TRUTH_DRAWS,), False), family.draw(rng, (TRUTH_DRAWS,), True)
    if family.name == "latency_p99_ms":
        p99 = float(np.quantile(base["latency"], 0.99))
        return {"p99": p99, "p0": float((base["latency"] > p99).mean()), "p1": float((worse["latency"] > p99).mean())}
    if family.kind == "rate":
        (rel0, fail0), (rel1, fail1) = _rate_view(family.name, base), _rate_view(family.name, worse)
        return {"p0": float(fail0.sum() / rel0.sum()), "p1": float(fail1.sum() / rel1.sum())}
    if family.kind == "mean":
        x0, x1 = _mean_view(family.name, base), _mean_view(family.name, worse)
        return {"mu0": float(x0.mean()), "mu1": float(x1.mean()), "sigma": float(x0.std())}
    return {}


def _fixed_rollbacks(stat: np.ndarray, threshold: float) -> np.ndarray:
    """The window at which the failed checks (statistic >= threshold) reach FIXED_FAILED_CHECKS, or -1."""
    return first_true(np.cumsum(stat >= threshold, axis=1) >= FIXED_FAILED_CHECKS)


def run_family(name: str, **settings: Any) -> dict[str, Any]:
    """One family's methods under A/A and under its degradation (settings: as run_decisions_bench's)."""
    family = FAMILIES[name]
    s = {**DEFAULTS, **settings}
    started = time.perf_counter()
    rng = np.random.default_rng([int(s["seed"]), list(FAMILIES).index(name)])
    truth = _family_truth(family, rng)
    r, alpha = int(s["rollouts"]), float(s["alpha"])
    runs: dict[str, dict[str, np.ndarray]] = {}
    thresholds: dict[str, float] = {}
    for case in CASES:
        out: dict[str, list[np.ndarray]] = {"seq": [], "stat": [], "bounds": [], "maxima": []}
        crossings: dict[str, list[np.ndarray]] = {key: [] for key in thresholds} if case == "ab" else {}
        for start in range(0, r, FAMILY_CHUNK):
            seq, stat, bounds, paths, canary_so_far = _chunk(family, rng, min(FAMILY_CHUNK, r - start), s, case, truth)
            out["seq"].append(seq)
            out["stat"].append(stat)
            out["bounds"].append(bounds)
            if case != "ab" and paths:
                out["maxima"].append(paths["cusum" if case == "aa" else "cusum_margin"].max(axis=1))
            elif case == "ab":  # the delay: canary samples through the first crossing
                for key, h in thresholds.items():
                    first = first_true(paths[key.removesuffix("_at_alpha")] >= h)
                    at = np.take_along_axis(canary_so_far, np.maximum(first, 0)[:, None], axis=1)[:, 0]
                    crossings[key].append(np.where(first >= 0, at.astype(float), np.inf))
        runs[case] = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
        runs[case].update({k: np.concatenate(v) for k, v in crossings.items()})
        if case != "ab" and out["maxima"]:
            # Each CUSUM held to the false-alarm rate the sequential check achieved on the same streams
            # (at least 1 / rollouts), and to alpha itself: the plain one on the A/A streams, the one
            # from the null's boundary on the margin streams.
            key = "cusum" if case == "aa" else "cusum_margin"
            maxima = runs[case]["maxima"]
            achieved = max(float((runs[case]["seq"] >= 0).mean()), 1.0 / r)
            thresholds[key] = cusum_threshold(maxima, achieved)
            thresholds[f"{key}_at_alpha"] = cusum_threshold(maxima, alpha)
    aa, ab, margin_run = runs["aa"], runs["ab"], runs["margin"]

    def method(aa_rollback: np.ndarray, ab_rollback: np.ndarray) -> dict[str, Any]:
        delays = _window_delays(ab_rollback, ab["bounds"])
        return {"false_rollback_rate": float((aa_rollback >= 0).mean()), "power": float(np.isfinite(delays).mean()),
                "median_delay_samples": _quantile(delays, 0.5), "p95_delay_samples": _quantile(delays, 0.95)}

    # The fixed check as a user would write it, and the same check with its threshold raised until at
    # most alpha of the A/A rollouts roll back (a rollout rolls back iff its FIXED_FAILED_CHECKS-th
    # largest window statistic reaches the threshold): the fixed check's best power at our promise.
    if aa["stat"].shape[1] >= FIXED_FAILED_CHECKS:
        calibrated: float | None = cusum_threshold(np.sort(aa["stat"], axis=1)[:, -FIXED_FAILED_CHECKS], alpha)
    else:
        calibrated = None  # fewer windows than failed checks to roll back: no threshold ever does
    fixed = {**method(_fixed_rollbacks(aa["stat"], family.fixed_factor),
                      _fixed_rollbacks(ab["stat"], family.fixed_factor)),
             "check": f"{family.fixed_check}; rollback at {FIXED_FAILED_CHECKS} failed checks (cumulative, as "
                      "Flagger counts them)"}
    limit = math.inf if calibrated is None else calibrated
    fixed_calibrated = {**method(_fixed_rollbacks(aa["stat"], limit), _fixed_rollbacks(ab["stat"], limit)),
                        "threshold": calibrated, "check": "the same check, its threshold (in the same units) "
                        "calibrated on this run's A/A rollouts to false rollbacks <= alpha"}
    methods: dict[str, Any] = {"sequential": method(aa["seq"], ab["seq"]), "fixed_threshold": fixed,
                               "fixed_threshold_at_alpha": fixed_calibrated, "oracle_cusum": None,
                               "oracle_cusum_same_margin": None}
    sequential = methods["sequential"]
    sequential["false_rollback_rate_at_margin"] = float((margin_run["seq"] >= 0).mean())
    for key, false_alarms in (("cusum", aa["maxima"]), ("cusum_margin", margin_run["maxima"])):
        if not false_alarms.size:
            continue
        delays, h = ab[key], thresholds[key]
        methods["oracle_cusum" if key == "cusum" else "oracle_cusum_same_margin"] = {
            "false_rollback_rate": float((false_alarms >= h).mean()), "power": float(np.isfinite(delays).mean()),
            "median_delay_samples": _quantile(delays, 0.5), "p95_delay_samples": _quantile(delays, 0.95),
            "threshold": h, "median_delay_samples_at_alpha": _quantile(ab[f"{key}_at_alpha"], 0.5),
            "threshold_at_alpha": thresholds[f"{key}_at_alpha"], "true_parameters": truth}

    def ratio_to(oracle: dict[str, Any] | None) -> float | None:
        if oracle is None or sequential["median_delay_samples"] is None or not oracle["median_delay_samples"]:
            return None
        return float(sequential["median_delay_samples"] / oracle["median_delay_samples"])

    ratio, ratio_same_margin = ratio_to(methods["oracle_cusum"]), ratio_to(methods["oracle_cusum_same_margin"])
    has_oracle = methods["oracle_cusum"] is not None
    return {
        "degradation": family.degradation, "canary_share": family.canary_share or float(s["canary_share"]),
        **methods,
        "oracle_note": ("none: an AUC is not a per-prediction quantity, so there is no per-sample likelihood "
                        "ratio to accumulate" if not has_oracle else "Page's CUSUM with the true parameters "
                        "(measured on 1,000,000 draws). oracle_cusum: from the baseline's parameters to the "
                        "degraded ones, its threshold set on this run's A/A maxima to the sequential check's false "
                        "rollbacks there (at least 1 / rollouts). oracle_cusum_same_margin: the same hypotheses "
                        "as the sequential check, from the null's boundary (the baseline's parameters times the "
                        "margin) to the degraded ones, its threshold set on this run's rollouts at that boundary "
                        "to the sequential check's false rollbacks there (false_rollback_rate: at the boundary). "
                        "median_delay_samples_at_alpha: either threshold set to alpha"),
        "delay_ratio_to_cusum": ratio,
        "delay_ratio_to_cusum_same_margin": ratio_same_margin,
        "target_met": {"false_rollback_rate_le_alpha": sequential["false_rollback_rate"] <= alpha,
                       "false_rollback_rate_at_margin_le_alpha": sequential["false_rollback_rate_at_margin"] <= alpha,
                       # met too when the oracle detects in fewer than half the rollouts and ours in half or more
                       "median_delay_le_1.5x_cusum": None if not has_oracle else sequential["median_delay_samples"]
                       is not None and (ratio_same_margin is None or ratio_same_margin <= 1.5)},
        "seconds": round(time.perf_counter() - started, 2),
    }
