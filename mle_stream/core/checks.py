"""Checks: the rules a topology judges each closed window of the candidate by, and their verdicts.

A check watches one window metric (any name a MetricSnapshot carries: `error_rate`, `f1`,
`roc_auc`, `latency_p99_ms`, `mape`, `precision@0.3`, `recall[cat]`, ...) and FAILs a window when
the candidate's value crosses any of the limits it sets:

- absolute: `max` / `min` on the candidate's value;
- relative to the baseline's value in the same window: `max_degradation` (in the metric's units)
  and `max_degradation_relative` (a fraction of the baseline's value), where "degradation" is
  the difference in the metric's worse direction (higher for error rates, losses and latencies,
  lower for accuracy, F1, AUC, R²; `worse:` says it for metrics where it is not obvious).

A window with fewer than `min_samples` samples (labeled predictions for quality metrics,
predictions for serving metrics, latency reports for latencies) on a side the check reads is
INCONCLUSIVE: it never counts toward an action (flagger #1035, argo-rollouts #1466 are rollbacks
caused by low traffic). A check with `sequential` (error rates only) FAILs instead when the
always-valid test of core/sequential.py concludes, over every window of the rollout so far, that
the candidate's rate exceeds the baseline's by more than `min_relative_increase`: its false
rollback rate stays below `alpha` however many windows are looked at, which a fixed limit
re-checked every window cannot promise. `hysteresis` makes a failing check PASS again only once the value is that
far inside its limits (in each limit's units: a fraction for max_degradation_relative), so a
metric sitting on a limit does not flap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mle_stream.core.sequential import ErrorRateTest, MeanTest
from mle_stream.core.tasks import TASKS, Task
from mle_stream.core.verdict import Verdict

SERVING_METRICS = frozenset({"serving_error_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                             "latency_mean_ms", "latency_std_ms", "label_coverage", "throughput_per_s"})
# Shadow mode only: the shadow's agreement with production on the same requests (core/shadow.py).
SHADOW_METRICS = frozenset({"agreement", "score_abs_diff", "score_diff", "paired_rate"})
HIGHER_IS_WORSE = frozenset({"score_abs_diff", "error_rate", "log_loss", "brier_score", "expected_calibration_error",
                             "mae", "rmse",
                             "mape", "serving_error_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                             "latency_mean_ms"})
LOWER_IS_WORSE = frozenset({"agreement", "paired_rate", "accuracy", "precision", "recall", "f1", "roc_auc",
                            "average_precision", "micro_f1",
                            "macro_f1", "r2", "label_coverage", "throughput_per_s"})
_VARIANT = re.compile(r"^(?P<base>[a-z_0-9]+?)(?:@(?P<at>[0-9.]+)|\[(?P<cls>[^\]]+)\])?$")


def base_metric(metric: str) -> str:
    match = _VARIANT.match(metric)
    return match.group("base") if match else metric


def metric_problem(task: str, metric: str, thresholds: tuple[float, ...] = (), mode: str = "canary") -> str | None:
    """Why `metric` cannot be checked for a model of `task` in rollout `mode`, or None when it can."""
    match = _VARIANT.match(metric)
    base = match.group("base") if match else metric
    spec = TASKS.get(task)
    if metric in SHADOW_METRICS:
        if mode != "shadow":
            return f"{metric!r} compares a shadow with production: only a topology with mode: shadow has it"
        if metric == "agreement" and spec is not None and not spec.has_decisions:
            return f"'agreement' compares decisions, which a {task} model has none of; check score_abs_diff"
        return None
    if base in SERVING_METRICS:
        return None if match and not match.group("at") and not match.group("cls") else f"{metric!r} takes no suffix"
    known = frozenset() if spec is None else spec.metric_names
    if base not in known:
        names = sorted(known | SERVING_METRICS)
        return f"{metric!r} is not a metric of a {task} model; expected one of {', '.join(names)}"
    if match and match.group("at"):
        if spec is None or base not in spec.threshold_metrics:
            return f"{metric!r}: only {_listing(TASKS, 'threshold_metrics')} take @threshold"
        if float(match.group("at")) not in thresholds:
            return f"{metric!r}: add {match.group('at')} to metrics.thresholds to have it computed"
    per_class = () if spec is None else spec.per_class_metrics
    if match and match.group("cls") and base not in per_class:
        return f"{metric!r}: only {_listing(TASKS, 'per_class_metrics')} is per class (recall[<class>])"
    if base in per_class and not (match and match.group("cls")):
        return f"a {task} model's {base} is per class: {base}[<class>]"
    return None


def _listing(tasks: Mapping[str, Task], kind: str) -> str:
    """Which metrics of which tasks have a `kind` variant, e.g. "recall of a multiclass model"."""
    parts = []
    for name, task in tasks.items():
        metrics = getattr(task, kind)
        if metrics:
            listed = metrics[0] if len(metrics) == 1 else f"{', '.join(metrics[:-1])} and {metrics[-1]}"
            parts.append(f"{listed} of a {name} model")
    return " or ".join(parts)


def default_worse(metric: str) -> str | None:
    """"higher" or "lower": the direction in which `metric` gets worse, when it is obvious."""
    base = base_metric(metric).removeprefix("estimated_")  # an estimate worsens as what it estimates
    return "higher" if base in HIGHER_IS_WORSE else "lower" if base in LOWER_IS_WORSE else None


def samples_of(metric: str) -> str:
    """The count a window's value of `metric` rests on."""
    base = base_metric(metric)
    if base.startswith("latency_"):
        return "latency_samples"
    if base in SHADOW_METRICS:
        return "paired"
    if base.startswith("estimated_"):  # from the scores of every prediction (docs/estimates.md)
        return "predictions"
    return "predictions" if base in SERVING_METRICS else "labeled"


# Rates get ErrorRateTest (counts); means of a per-prediction quantity get MeanTest (count, mean,
# standard deviation: the window metric named here, its "_std" twin, and its sample count).
RATE_METRICS = ("error_rate", "serving_error_rate")
MEAN_METRICS = {"log_loss": "log_loss_std", "latency_mean_ms": "latency_std_ms"}
SEQUENTIAL_METRICS = RATE_METRICS + tuple(MEAN_METRICS)


@dataclass(frozen=True)
class SequentialSpec:
    """The always-valid test's settings (core/sequential.py); None takes the test's default."""

    alpha: float = 0.01
    min_relative_increase: float | None = None
    mixing_scale: float | None = None

    def new_test(self, metric: str, min_samples: int) -> ErrorRateTest | MeanTest:
        test = ErrorRateTest if metric in RATE_METRICS else MeanTest
        defaults = test()
        return test(self.alpha, defaults.min_relative_increase if self.min_relative_increase is None
                    else self.min_relative_increase,
                    defaults.mixing_scale if self.mixing_scale is None else self.mixing_scale, min_samples)


@dataclass(frozen=True)
class CheckRule:
    name: str
    metric: str
    worse: str  # "higher" or "lower"
    max: float | None = None
    min: float | None = None
    max_degradation: float | None = None  # candidate vs baseline, in the metric's units
    max_degradation_relative: float | None = None  # candidate vs baseline, a fraction of the baseline's value
    min_samples: int = 100
    consecutive: int = 3  # FAIL windows in a row that fire the action
    cumulative: int | None = None  # FAIL windows in all that fire it, in a row or not
    hysteresis: float = 0.0
    action: str = "rollback"  # or "hold"
    allow_rollback_without_labels: bool = False  # a check on estimated_* may roll back
    sequential: SequentialSpec | None = None

    @property
    def relative(self) -> bool:
        return (self.max_degradation is not None or self.max_degradation_relative is not None
                or self.sequential is not None)

    def limits(self) -> dict[str, Any]:
        limits: dict[str, Any] = {k: v for k, v in (("max", self.max), ("min", self.min),
                                                   ("max_degradation", self.max_degradation),
                                                   ("max_degradation_relative", self.max_degradation_relative))
                                  if v is not None}
        if self.sequential is not None:
            limits["sequential"] = vars(self.sequential).copy()
        return limits


@dataclass(frozen=True)
class CheckResult:
    check: str
    metric: str
    verdict: Verdict
    baseline_value: float | None
    candidate_value: float | None
    baseline_samples: int
    candidate_samples: int
    reason: str
    test: Mapping[str, Any] | None = None  # a sequential check's decision: log LR, threshold, p-value, totals
    test_state: Mapping[str, Any] | None = field(default=None, compare=False)  # its state after this window

    def evidence(self) -> dict[str, Any]:
        out = {"check": self.check, "metric": self.metric, "verdict": self.verdict.value,
               "baseline": {"value": self.baseline_value, "samples": self.baseline_samples},
               "candidate": {"value": self.candidate_value, "samples": self.candidate_samples},
               "reason": self.reason}
        if self.test is not None:
            out["sequential"] = dict(self.test)
        return out


def judge_check(rule: CheckRule, baseline: Mapping[str, Any], candidate: Mapping[str, Any],
                failing: bool = False, test_state: Mapping[str, Any] | None = None) -> CheckResult:
    """One check on one window: `baseline` and `candidate` are the versions' window metrics
    (WindowState.values()); `failing`: the check FAILed the window before (hysteresis);
    `test_state`: a sequential check's state before this window (None: the rollout's first)."""
    samples = samples_of(rule.metric)
    b, c = baseline.get(rule.metric), candidate.get(rule.metric)
    b_n, c_n = int(baseline.get(samples) or 0), int(candidate.get(samples) or 0)
    what = samples.replace("_", " ")

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(rule.name, rule.metric, verdict, b, c, b_n, c_n, reason)

    if rule.sequential is not None:
        std = MEAN_METRICS.get(rule.metric)
        return _judge_sequential(rule, rule.sequential, b, c, b_n, c_n, test_state,
                                 None if std is None else baseline.get(std),
                                 None if std is None else candidate.get(std))

    if c_n < rule.min_samples or (rule.relative and b_n < rule.min_samples):
        sides = f"baseline {b_n}, candidate {c_n}" if rule.relative else f"candidate {c_n}"
        return result(Verdict.INCONCLUSIVE, f"too few {what}: {sides}, need {rule.min_samples}"
                                            + (" on each side" if rule.relative else ""))
    if c is None or (rule.relative and b is None):
        return result(Verdict.INCONCLUSIVE, f"{rule.metric} is undefined in this window "
                                            f"(baseline {b}, candidate {c})")
    slack = rule.hysteresis if failing else 0.0  # a failing check must come back this far inside
    higher = rule.worse == "higher"
    broken: list[str] = []
    if rule.max is not None and c > rule.max - slack:
        broken.append(f"{c:.6g} > max {rule.max:g}" + (f" - hysteresis {slack:g}" if slack else ""))
    if rule.min is not None and c < rule.min + slack:
        broken.append(f"{c:.6g} < min {rule.min:g}" + (f" + hysteresis {slack:g}" if slack else ""))
    if b is not None:
        degradation = (c - b) if higher else (b - c)
        if rule.max_degradation is not None and degradation > rule.max_degradation - slack:
            broken.append(f"{degradation:+.6g} worse than the baseline's {b:.6g} (allowed {rule.max_degradation:g})")
        if (rule.max_degradation_relative is not None and b != 0
                and degradation / abs(b) > rule.max_degradation_relative - slack):
            broken.append(f"{degradation / abs(b):+.2%} worse than the baseline's {b:.6g} "
                          f"(allowed {rule.max_degradation_relative:.2%})")
    counts = f"(n={c_n}" + (f", baseline n={b_n})" if rule.relative else ")")
    if broken:
        return result(Verdict.FAIL, f"{rule.metric} {c:.6g} {counts}: " + "; ".join(broken))
    versus = f" vs baseline {b:.6g}" if b is not None and rule.relative else ""
    return result(Verdict.PASS, f"{rule.metric} {c:.6g}{versus} {counts}: within {rule.limits()}")


def _sums(n: int, mean: float | None, std: float | None) -> tuple[float, float, float]:
    """(n, sum, sum of squares) of n values with this mean and sample standard deviation; a
    window without a mean adds nothing (n counted only with a mean)."""
    if mean is None or n <= 0:
        return 0.0, 0.0, 0.0
    variance = 0.0 if std is None else std * std
    return float(n), n * mean, (n - 1) * variance + n * mean * mean


def _mean(n: float, total: float) -> float | None:
    return total / n if n else None


def _judge_sequential(rule: CheckRule, spec: SequentialSpec, b: float | None, c: float | None, b_n: int, c_n: int,
                      test_state: Mapping[str, Any] | None, b_std: float | None = None,
                      c_std: float | None = None) -> CheckResult:
    """Add this window to the rollout's test, then read its decision."""
    test: ErrorRateTest | MeanTest
    totals: dict[str, dict[str, Any]]
    if rule.metric in RATE_METRICS:
        test = ErrorRateTest.restore(dict(test_state)) if test_state else spec.new_test(rule.metric, rule.min_samples)
        assert isinstance(test, ErrorRateTest)
        if b_n or c_n:
            test.update(c_n, round((c or 0.0) * c_n), b_n, round((b or 0.0) * b_n))
        totals = {"candidate": {"samples": test.candidate_n, "errors": test.candidate_errors},
                  "baseline": {"samples": test.baseline_n, "errors": test.baseline_errors}}
    else:
        test = MeanTest.restore(dict(test_state)) if test_state else spec.new_test(rule.metric, rule.min_samples)
        assert isinstance(test, MeanTest)
        # Count, sum and sum of squares per version back from the window's mean and sample std.
        sums = [_sums(n, mean, std) for n, mean, std in ((c_n, c, c_std), (b_n, b, b_std))]
        if sums[0][0] or sums[1][0]:
            test.update(*sums[0], *sums[1])
        totals = {"candidate": {"samples": test.candidate_n, "mean": _mean(test.candidate_n, test.candidate_sum)},
                  "baseline": {"samples": test.baseline_n, "mean": _mean(test.baseline_n, test.baseline_sum)}}
    decision = test.decide()
    summary = {"log_likelihood_ratio": decision.log_likelihood_ratio, "threshold": decision.threshold,
               "p_value": decision.p_value, "windows": test.windows, **totals}
    return CheckResult(rule.name, rule.metric, decision.verdict, b, c, b_n, c_n,
                       f"sequential test over {test.windows} windows: {decision.reason}; "
                       f"log LR {decision.log_likelihood_ratio:.3g} vs {decision.threshold:.3g} (alpha {spec.alpha:g})",
                       test=summary, test_state=test.snapshot())
