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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mle_stream.core.sequential import error_rate_log_lr, error_rate_window_terms, half_normal_grid

DEFAULTS: dict[str, Any] = {
    "rollouts": 1000, "windows": 60, "window_size": 1000, "canary_share": 0.1,
    "baseline_error_rate": 0.02, "degraded_error_rate": 0.04, "alpha": 0.01,
    "min_relative_increase": 0.1, "mixing_scale": 0.7, "min_samples": 100,
    "flagger_max_error_rate": 0.03, "flagger_threshold": 5, "cusum_calibration_streams": 20_000,
    "seed": 20261129,
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


def run_decisions_bench(**settings: Any) -> dict[str, Any]:
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"run_decisions_bench: unknown settings {sorted(unknown)}")
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
    return "\n".join(lines)
