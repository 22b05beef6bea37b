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
caused by low traffic). A check with `sequential` (the metrics of SEQUENTIAL_INPUTS) FAILs instead
when its always-valid test (core/sequential.py, core/sequential_auc.py, core/sequential_tail.py)
concludes, over every window of the rollout so far, that the candidate is worse than the baseline
by more than the test's margin: its false rollback rate stays below `alpha` however many windows
are looked at, which a fixed limit re-checked every window cannot promise. `hysteresis` makes a
failing check PASS again only once the value is that far inside its limits (in each limit's units:
a fraction for max_degradation_relative), so a metric sitting on a limit does not flap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mle_stream.core.metrics.binary import BinaryMetrics
from mle_stream.core.sequential import ErrorRateTest, MeanTest
from mle_stream.core.sequential_auc import AucTest, AucWindow, auc_window
from mle_stream.core.sequential_tail import TailCounts, tail_counts
from mle_stream.core.tasks import TASKS, Task
from mle_stream.core.verdict import Verdict

if TYPE_CHECKING:
    from mle_stream.core.window_state import WindowState

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


@dataclass(frozen=True)
class RateInputs:
    """How ErrorRateTest reads a window: per version, trials and failures among them. trials = the
    window's `count` x the `share` metric (every labeled prediction when None), failures = trials x
    the checked metric (`failing`) or x its complement. Both are ratios of integer counts, so
    rounding the products gives the counts back exactly (the error of a double, 2^-52 relative, is
    far below 1/2 for any count below 2^50)."""

    failures: str  # what a failure is, for reasons: "false positives among predicted positives"
    share: str | None = None  # a template over the metric's suffix: "positive_rate{at}{cls}"
    failing: bool = False  # the metric is the failure rate itself (error_rate), not a success rate
    n: str = "count"
    tasks: frozenset[str] | None = None  # None: any task

    def counts(self, values: Mapping[str, Any], metric: str) -> tuple[int, int]:
        match = _VARIANT.match(metric)
        at, cls = (match.group("at"), match.group("cls")) if match else (None, None)
        n, rate = values.get(self.n), values.get(metric)
        share = 1.0 if self.share is None else values.get(
            self.share.format(at=f"@{at}" if at else "", cls=f"[{cls}]" if cls else ""))
        if not n or rate is None or share is None:
            return 0, 0
        trials = round(share * n)
        failures = round(rate * trials) if self.failing else trials - round(rate * trials)
        return trials, failures


@dataclass(frozen=True)
class MeanInputs:
    """How MeanTest reads a window: per version, the count (`samples_of` the metric), the mean of
    the per-prediction values (the metric, or its square when `squared`: rmse's test is on the mean
    squared error) and their sample standard deviation (the `std` metric)."""

    std: str
    squared: bool = False
    tasks: frozenset[str] | None = None


@dataclass(frozen=True)
class AucInputs:
    """AucTest reads the versions' score histograms (paired_window): the AUC difference and its
    DeLong variance, which the windows' AUC values alone do not give."""

    tasks: frozenset[str] | None = frozenset({"binary"})


@dataclass(frozen=True)
class TailInputs:
    """ErrorRateTest on the requests above the pooled `quantile` of both versions' latencies in the
    window (paired_window reads the sketches): exact under equal latency distributions."""

    quantile: float
    tasks: frozenset[str] | None = None


SequentialInputs = RateInputs | MeanInputs | AucInputs | TailInputs
_CLASSIFICATION = frozenset({"binary", "multiclass"})
# Which sequential test each metric takes, and how it reads a window.
SEQUENTIAL_INPUTS: dict[str, SequentialInputs] = {
    "error_rate": RateInputs("errors among labeled predictions", failing=True, tasks=_CLASSIFICATION),
    "serving_error_rate": RateInputs("failed predictions", failing=True, n="predictions"),
    "log_loss": MeanInputs("log_loss_std", tasks=frozenset({"binary"})),
    "latency_mean_ms": MeanInputs("latency_std_ms"),
    "accuracy": RateInputs("errors among labeled predictions", tasks=_CLASSIFICATION),
    "precision": RateInputs("false positives among predicted positives", "positive_rate{at}",
                            tasks=frozenset({"binary"})),
    "recall": RateInputs("misses among actual positives", "label_rate{cls}", tasks=_CLASSIFICATION),
    "mae": MeanInputs("mae_std", tasks=frozenset({"regression"})),
    "rmse": MeanInputs("squared_error_std", squared=True, tasks=frozenset({"regression"})),
    "brier_score": MeanInputs("brier_score_std", tasks=frozenset({"binary"})),
    "roc_auc": AucInputs(),
    "latency_p95_ms": TailInputs(0.95),
    "latency_p99_ms": TailInputs(0.99),
}
SEQUENTIAL_METRICS = tuple(SEQUENTIAL_INPUTS)


def sequential_problem(task: str | None, metric: str) -> str | None:
    """Why a check on `metric` of a `task` model cannot take `sequential`, naming those that can."""
    inputs = SEQUENTIAL_INPUTS.get(base_metric(metric))
    if inputs is not None and (task is None or inputs.tasks is None or task in inputs.tasks):
        return None
    names = [m for m, i in SEQUENTIAL_INPUTS.items() if task is None or i.tasks is None or task in i.tasks]
    whose = "" if task is None else f" of a {task} model"
    variants = " (and their @threshold or [<class>] variants)" if task != "regression" else ""
    return f"is for {', '.join(names)}{whose}{variants}, not {metric}"


@dataclass(frozen=True)
class SequentialSpec:
    """The always-valid test's settings (core/sequential.py); None takes the test's default."""

    alpha: float = 0.01
    min_relative_increase: float | None = None
    mixing_scale: float | None = None
    min_difference: float | None = None  # AucTest's margin (AUC units); the others take min_relative_increase

    def new_test(self, metric: str, min_samples: int) -> ErrorRateTest | MeanTest | AucTest:
        inputs = SEQUENTIAL_INPUTS[base_metric(metric)]
        test: type[ErrorRateTest | MeanTest | AucTest] = (
            AucTest if isinstance(inputs, AucInputs) else
            ErrorRateTest if isinstance(inputs, (RateInputs, TailInputs)) else MeanTest)
        defaults = test()
        margin = "min_difference" if test is AucTest else "min_relative_increase"
        chosen: float | None = getattr(self, margin)
        return test(self.alpha, getattr(defaults, margin) if chosen is None else chosen,
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


def paired_window(metric: str, baseline: WindowState, candidate: WindowState) -> AucWindow | TailCounts | None:
    """What a sequential check on `metric` reads from both versions' window states beyond their
    values (AucInputs, TailInputs); None for other metrics or when the window has none."""
    inputs = SEQUENTIAL_INPUTS.get(metric)
    if isinstance(inputs, AucInputs) and isinstance(baseline.task, BinaryMetrics) \
            and isinstance(candidate.task, BinaryMetrics):
        return auc_window(candidate.task.score_histogram, baseline.task.score_histogram)
    if isinstance(inputs, TailInputs):
        return tail_counts(candidate.serving.latency_sketch, baseline.serving.latency_sketch, inputs.quantile)
    return None


def judge_check(rule: CheckRule, baseline: Mapping[str, Any], candidate: Mapping[str, Any],
                failing: bool = False, test_state: Mapping[str, Any] | None = None,
                paired: AucWindow | TailCounts | None = None) -> CheckResult:
    """One check on one window: `baseline` and `candidate` are the versions' window metrics
    (WindowState.values()); `failing`: the check FAILed the window before (hysteresis);
    `test_state`: a sequential check's state before this window (None: the rollout's first);
    `paired`: paired_window's reading of the window, for the sequential checks that need it."""
    samples = samples_of(rule.metric)
    b, c = baseline.get(rule.metric), candidate.get(rule.metric)
    b_n, c_n = int(baseline.get(samples) or 0), int(candidate.get(samples) or 0)
    what = samples.replace("_", " ")

    def result(verdict: Verdict, reason: str) -> CheckResult:
        return CheckResult(rule.name, rule.metric, verdict, b, c, b_n, c_n, reason)

    if rule.sequential is not None:
        return _judge_sequential(rule, rule.sequential, baseline, candidate, test_state, paired)

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


def _sums(n: int, mean: float | None, std: float | None) -> tuple[float, float, float] | None:
    """(n, sum, sum of squares) of n values with this mean and sample standard deviation; a
    window without a mean adds nothing, one whose spread is unknown (std None for n >= 2, as from
    a window restored from an older snapshot) or overflows a double is left out (None)."""
    if mean is None or n <= 0:
        return 0.0, 0.0, 0.0
    if std is None and n >= 2:
        return None
    variance = 0.0 if std is None else std * std
    sums = float(n), n * mean, (n - 1) * variance + n * mean * mean
    return sums if all(math.isfinite(v) for v in sums) else None


def _mean(n: float, total: float) -> float | None:
    return total / n if n else None


def _judge_sequential(rule: CheckRule, spec: SequentialSpec, baseline: Mapping[str, Any],
                      candidate: Mapping[str, Any], test_state: Mapping[str, Any] | None,
                      paired: AucWindow | TailCounts | None = None) -> CheckResult:
    """Add this window to the rollout's test, then read its decision."""
    inputs = SEQUENTIAL_INPUTS[base_metric(rule.metric)]
    samples = samples_of(rule.metric)
    b, c = baseline.get(rule.metric), candidate.get(rule.metric)
    b_n, c_n = int(baseline.get(samples) or 0), int(candidate.get(samples) or 0)
    test = spec.new_test(rule.metric, rule.min_samples)
    if test_state:
        test = type(test).restore(dict(test_state))
    totals: dict[str, Any]
    left_out = ""
    if isinstance(inputs, RateInputs):
        assert isinstance(test, ErrorRateTest)
        (c_trials, c_failures), (b_trials, b_failures) = (inputs.counts(v, rule.metric) for v in (candidate, baseline))
        if b_trials or c_trials:
            test.update(c_trials, c_failures, b_trials, b_failures)
        decision = test.decide(inputs.failures)
        totals = {"candidate": {"samples": test.candidate_n, "errors": test.candidate_errors},
                  "baseline": {"samples": test.baseline_n, "errors": test.baseline_errors}}
    elif isinstance(inputs, TailInputs):  # ErrorRateTest, a "failure" being a request above the pooled quantile
        assert isinstance(test, ErrorRateTest)
        threshold = None
        if isinstance(paired, TailCounts):
            test.update(paired.candidate_n, paired.candidate_above, paired.baseline_n, paired.baseline_above)
            threshold = paired.threshold_ms
        above = test.candidate_errors + test.baseline_errors
        where = "" if threshold is None else f" ({threshold:.4g} ms in this window)"
        decision = test.decide(f"requests above the pooled p{inputs.quantile * 100:g}{where}")
        totals = {"candidate": {"samples": test.candidate_n, "above": test.candidate_errors},
                  "baseline": {"samples": test.baseline_n, "above": test.baseline_errors},
                  "tail": {"quantile": inputs.quantile, "threshold_ms": threshold,
                           "candidate_share": _mean(test.candidate_n, test.candidate_errors),
                           "expected_share": _mean(test.candidate_n + test.baseline_n, above)}}
    elif isinstance(inputs, AucInputs):
        assert isinstance(test, AucTest)
        test.update(paired if isinstance(paired, AucWindow) else None)
        decision = test.decide()
        totals = test.summary()
    else:
        assert isinstance(test, MeanTest)
        # Count, sum and sum of squares per version back from the window's mean and sample std.
        sums = [_sums(int(v.get(samples) or 0), None if v.get(rule.metric) is None
                      else v[rule.metric] ** 2 if inputs.squared else v[rule.metric], v.get(inputs.std))
                for v in (candidate, baseline)]
        if sums[0] is None or sums[1] is None:
            left_out = f" (this window left out: its {inputs.std} is unknown or too large)"
        elif sums[0][0] or sums[1][0]:
            test.update(*sums[0], *sums[1])
        totals = {"candidate": {"samples": test.candidate_n, "mean": _mean(test.candidate_n, test.candidate_sum)},
                  "baseline": {"samples": test.baseline_n, "mean": _mean(test.baseline_n, test.baseline_sum)}}
        decision = test.decide()
    lower = decision.lower_bound
    summary = {"log_likelihood_ratio": decision.log_likelihood_ratio, "threshold": decision.threshold,
               "p_value": decision.p_value, "windows": test.windows,
               "effect": ("of the squared errors: " if isinstance(inputs, MeanInputs) and inputs.squared else "")
               + decision.effect,
               "estimate": decision.estimate, "confidence": 1 - spec.alpha,
               "confidence_interval": [lower, None],  # one-sided: (lower, inf)
               "null": decision.null, **totals}
    return CheckResult(rule.name, rule.metric, decision.verdict, b, c, b_n, c_n,
                       f"sequential test over {test.windows} windows{left_out}: {decision.reason}",
                       test=summary, test_state=test.snapshot())
