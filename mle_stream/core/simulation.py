"""Simulated rollouts: how often a topology's checks roll back a healthy candidate, and how fast
they catch a degraded one.

Synthetic prediction and label streams for the baseline and the candidate go through the real
ModelEvaluator (label join, windows, checks, policy) window by window, as `mle-stream replay`
feeds recorded ones, and each run records whether the check's action fired (a ROLLBACK, or a HOLD
for a check with action: hold), in which window and after how many candidate samples. Runs are
seeded: the same seed gives the same numbers.

The generator (docs/simulate.md says it for users):

- binary: truth ~ Bernoulli(base_rate); x ~ N(separation * truth, 1); the score is the calibrated
  posterior sigmoid(logit(base_rate) + separation * x - separation^2 / 2), so the AUC is
  Phi(separation / sqrt(2));
- multiclass: `classes` equally likely classes; logits N(separation * onehot(truth), 1), scores
  their softmax;
- regression: truth ~ N(100, 20), prediction = truth + N(0, noise);
- shadow mode: each request answered by both versions, on one truth; each version's standard
  noise is sqrt(rho) z + sqrt(1 - rho) e, z the request's and e its own (rho:
  shadow_correlation), so each version alone is the generator above and equally good versions
  still disagree now and then;
- every task: latencies log-normal (median, sigma); a serving error with probability
  `serving_error_rate` (no output, no label); each label delayed log-uniformly between the two
  stated delays, or never sent with probability `unlabeled`.

With an `estimates` section, each run starts with the calibration learned from `reference_labels`
of the baseline's labeled predictions, as after a reference period before the rollout.

A degradation names a metric and a change; it is reached by moving one knob of the candidate's
generator: latencies by scaling them (every quantile scales with the median), the serving error
rate by setting it, a classifier's error rate by flipping a share of truths, the binary AUC by
the separation (closed form), regression MAE and RMSE by scaling the noise, and any other
quality metric by the separation (the noise for regression), found by bisection on the metric as
the task's own window state computes it on a large sample; estimates read through the
calibration learned from the baseline. A shadow's agreement and score differences are reached by
flipping a share of its answers (the noise for regression), and a baseline's by rho.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any

import numpy as np
from scipy.special import expit, ndtri
from scipy.stats import beta as beta_distribution

from mle_stream.core.checks import (
    SEQUENTIAL_METRICS,
    SERVING_METRICS,
    SHADOW_METRICS,
    CheckRule,
    SequentialSpec,
    base_metric,
    metric_problem,
)
from mle_stream.core.columns import FeatureColumns, LabelColumns, PredictionColumns
from mle_stream.core.evaluator import Advance, ModelEvaluator
from mle_stream.core.events import CommandKind
from mle_stream.core.metrics.estimated import ReferenceCounts
from mle_stream.core.tasks import task_for
from mle_stream.core.topology import Topology
from mle_stream.core.verdict import Verdict
from mle_stream.core.window_state import WindowState, new_calibration

DEFAULT_RUNS = 200
DEFAULT_WINDOWS = 24  # the horizon of a topology without rollout steps
_CALIBRATION_SAMPLES = 100_000


@dataclass(frozen=True)
class Generator:
    """One version's synthetic traffic (see the module docstring)."""

    base_rate: float = 0.2
    separation: float = 1.5  # binary, multiclass: class separation; AUC = Phi(separation / sqrt 2)
    classes: int = 3
    noise: float = 10.0  # regression: prediction error's standard deviation
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.5
    serving_error_rate: float = 0.002
    flip: float = 0.0  # classification: share of predictions whose truth is another class than scored
    # Shadow mode: the correlation, given the truth, of the two versions' noise on one request (the
    # request's share of it; the rest is each version's own). Two equally good versions then
    # agree on most requests but not all, as two trainings of one model do.
    shadow_correlation: float = 0.99

    def outputs(self, task: str, n: int, rng: np.random.Generator) -> tuple[Any, list[Any]]:
        """(outputs, truths) of n predictions: binary scores, multiclass score maps or regression values."""
        truth = self._truths(task, n, rng)
        outputs = self._answers(task, truth, self._noise(task, n, rng))
        return outputs, self._names(task, self._swapped(task, truth, rng))

    def answer_pairs(self, task: str, shadow: Generator, n: int,
                     rng: np.random.Generator) -> tuple[Any, Any, list[Any]]:
        """Shadow mode: (production's outputs, the shadow's outputs, truths) of n requests, each
        answered by both: `self` (production) and `shadow` see the same truth, and their noise
        shares the request's part, sqrt(rho) z + sqrt(1 - rho) e (rho: self's
        shadow_correlation), so each version alone is its own generator's traffic. A version's
        flipped share answers for another class than the truth."""
        truth = self._truths(task, n, rng)
        shared = self._noise(task, n, rng)
        rho = self.shadow_correlation
        answered = []
        for gen in (self, shadow):
            noise = math.sqrt(rho) * shared + math.sqrt(1 - rho) * gen._noise(task, n, rng)
            answered.append(gen._answers(task, gen._swapped(task, truth, rng), noise))
        return answered[0], answered[1], self._names(task, truth)

    def _truths(self, task: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """Each request's truth: binary bools, multiclass class indices, regression values."""
        if task == "binary":
            return rng.random(n) < self.base_rate
        if task == "multiclass":
            return rng.integers(0, self.classes, n)
        return rng.normal(100.0, 20.0, n)

    def _noise(self, task: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """Standard normal noise: one per prediction, or one per class and prediction (multiclass)."""
        return rng.standard_normal((n, self.classes) if task == "multiclass" else n)

    def _answers(self, task: str, followed: np.ndarray, noise: np.ndarray) -> Any:
        """The outputs of a model that answers for the classes (values) `followed`, with standard noise `noise`."""
        if task == "binary":
            x = noise + self.separation * followed
            logit = math.log(self.base_rate / (1 - self.base_rate)) + self.separation * x - self.separation ** 2 / 2
            return expit(logit)
        if task == "multiclass":
            logits = noise.copy()
            logits[np.arange(len(followed)), followed] += self.separation
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            names = self._names(task, np.arange(self.classes))
            return [dict(zip(names, row)) for row in p.tolist()]
        return followed + self.noise * noise

    def _swapped(self, task: str, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`truth` with a share `flip` of its classes replaced by another (classification)."""
        if task == "binary":
            return truth ^ (rng.random(len(truth)) < self.flip)  # type: ignore[no-any-return]
        if task == "multiclass":
            n, k = len(truth), self.classes
            flipped = rng.random(n) < self.flip
            return np.where(flipped, (truth + rng.integers(1, k, n)) % k, truth)
        return truth

    def _names(self, task: str, truth: np.ndarray) -> list[Any]:
        """Truths as labels carry them: bools, class names, values."""
        if task == "multiclass":
            return [f"class{c}" for c in truth.tolist()]
        return truth.tolist()  # type: ignore[no-any-return]

    def latencies(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.latency_median_ms * np.exp(self.latency_sigma * rng.standard_normal(n))


@dataclass(frozen=True)
class Traffic:
    """What the stream looks like: predictions per second (both versions), the candidate's share
    (None: from the topology, following its rollout steps), label delays and the unlabeled share."""

    per_s: float = 20.0
    share: float | None = None
    label_delay_ms: tuple[int, int] = (1_000, 60_000)
    unlabeled: float = 0.05
    windows: int | None = None  # horizon; None: the rollout's length, or DEFAULT_WINDOWS

    def __post_init__(self) -> None:
        if not self.per_s > 0:
            raise ValueError(f"traffic must be above 0 predictions/s, got {self.per_s}")
        if self.share is not None and not 0 < self.share < 1:
            raise ValueError(f"the candidate's share must be between 0 and 1 (exclusive), got {self.share}")
        lo, hi = self.label_delay_ms
        if not 0 <= lo <= hi:
            raise ValueError(f"label delay range must be 0 <= low <= high, got {lo}..{hi} ms")
        if not 0 <= self.unlabeled < 1:
            raise ValueError(f"the unlabeled share must be in [0, 1), got {self.unlabeled}")


@dataclass(frozen=True)
class Recorded:
    """Traffic figures measured from recorded predictions and labels (`mle-stream replay`'s input)."""

    per_s: float
    label_delay_ms: tuple[int, int]  # 5th and 95th percentiles of label time - prediction time
    unlabeled: float  # predictions without a label
    predictions: int
    labels: int


def measure_recording(timestamps: np.ndarray, ids: Sequence[str], label_timestamps: np.ndarray,
                      label_ids: Sequence[str]) -> Recorded:
    """Traffic, label delays and the unlabeled share of a recording (one model's records)."""
    n = len(timestamps)
    if n < 2:
        raise ValueError(f"a recording needs at least 2 predictions to measure traffic, got {n}")
    span_s = max(float(timestamps.max() - timestamps.min()) / 1000, 1.0)
    at = dict(zip(ids, timestamps.tolist()))
    delays = np.array([lt - at[i] for i, lt in zip(label_ids, label_timestamps.tolist()) if i in at], dtype=float)
    delays = delays[delays >= 0]
    low, high = (int(np.percentile(delays, 5)), int(np.percentile(delays, 95))) if len(delays) else (0, 0)
    labeled = len(set(label_ids) & set(ids))
    return Recorded(n / span_s, (low, high), 1 - labeled / n, n, len(label_ids))


# -- degradations ---------------------------------------------------------------------------------

_CHANGE = re.compile(r"^(?:(?P<mult>[0-9.]+)x|(?P<pct>[+-][0-9.]+)%|(?P<delta>[+-][0-9.eE+-]+)|(?P<abs>[0-9.eE+-]+))$")


@dataclass(frozen=True)
class Degradation:
    """`metric=change`: `2x` (the baseline's value times 2), `+10%` / `-10%` (relative), `+0.02` /
    `-0.02` (in the metric's units), or a bare number (the candidate's value)."""

    metric: str
    kind: str  # "mult", "pct", "delta" or "abs"
    amount: float

    @classmethod
    def parse(cls, text: str) -> Degradation:
        metric, sep, change = text.partition("=")
        match = _CHANGE.match(change.strip())
        if not sep or not metric.strip() or match is None:
            raise ValueError(f"degradation {text!r}: expected METRIC=CHANGE, CHANGE one of 2x, +10%, -0.02 or 0.9 "
                             f"(e.g. error_rate=2x, roc_auc=-0.02, latency_p99_ms=+20%)")
        kind = next(k for k, v in match.groupdict().items() if v is not None)
        try:
            amount = float(match.group(kind))
        except ValueError:
            raise ValueError(f"degradation {text!r}: {match.group(kind)!r} is not a number") from None
        return cls(metric.strip(), kind, amount)

    def target(self, baseline: float) -> float:
        """The candidate's value of the metric, given the baseline's."""
        if self.kind == "mult":
            return baseline * self.amount
        if self.kind == "pct":
            return baseline * (1 + self.amount / 100)
        return baseline + self.amount if self.kind == "delta" else self.amount

    def __str__(self) -> str:
        shown = {"mult": f"{self.amount:g}x", "pct": f"{self.amount:+g}%", "delta": f"{self.amount:+g}",
                 "abs": f"{self.amount:g}"}[self.kind]
        return f"{self.metric}={shown}"


def default_degradation(rule: CheckRule, baseline_value: float) -> Degradation:
    """What a check is meant to catch: twice the degradation it allows (its margin, or a
    sequential test's min_relative_increase), or its absolute limit as far beyond as the baseline
    sits inside it."""
    up = rule.worse == "higher"
    sign = 1.0 if up else -1.0
    if rule.sequential is not None:
        # A test whose margin is a difference in the metric's units (an AUC test's min_difference)
        # rather than a relative increase.
        test = rule.sequential.new_test(rule.metric, rule.min_samples)
        difference = getattr(rule.sequential, "min_difference", None) or getattr(test, "min_difference", None)
        if difference:
            return Degradation(rule.metric, "delta", sign * 2 * float(difference))
        margin = _sequential_margin(rule.metric, rule.sequential)
        return Degradation(rule.metric, "pct", sign * 100 * max(2 * margin, 0.2))
    if rule.max_degradation is not None:
        return Degradation(rule.metric, "delta", sign * 2 * rule.max_degradation)
    if rule.max_degradation_relative is not None:
        return Degradation(rule.metric, "pct", sign * 200 * rule.max_degradation_relative)
    limit = rule.max if rule.max is not None else rule.min
    if limit is None:
        return Degradation(rule.metric, "pct", sign * 20)
    inside = (limit - baseline_value) * sign  # how far the baseline sits inside the limit
    if inside <= 0:  # the baseline already breaks it: 10% worse than the baseline
        return Degradation(rule.metric, "pct", sign * 10)
    return Degradation(rule.metric, "abs", limit + sign * inside)


def _sequential_margin(metric: str, spec: SequentialSpec) -> float:
    """The relative increase a sequential check tolerates: its own, or its test's default (10%
    for a test that states none)."""
    if spec.min_relative_increase is not None:
        return spec.min_relative_increase
    return float(getattr(spec.new_test(metric, 1), "min_relative_increase", 0.1))


def metric_value(task: str, topology: Topology, gen: Generator, metric: str, seed: int = 7,
                 n: int = _CALIBRATION_SAMPLES, reference: Generator | None = None) -> float | None:
    """`metric` of `gen`'s traffic, computed by the task's own window state on n labeled
    predictions. `reference`: the baseline `gen` is compared with (None: `gen` itself, as in an
    A/A test): estimates read the calibration the evaluator learns from the reference's labels
    (learned here from n of them: the calibration a long reference period converges to), and the
    shadow metrics pair `gen`'s answers with the reference's on the same requests."""
    reference = gen if reference is None else reference
    rng = np.random.default_rng(seed)
    if base_metric(metric) in SHADOW_METRICS:
        production, shadow, _ = reference.answer_pairs(task, gen, n, rng)
        state = WindowState.for_topology(topology)
        failed = [rng.random(n) < g.serving_error_rate for g in (reference, gen)]
        state.serve(gen.latencies(n, rng), failed[1])
        paired = np.flatnonzero(~failed[0] & ~failed[1])  # a failed side has no output: no pair
        assert state.shadow is not None
        state.shadow.update(*task_for(task).compare(
            *(_picked(outputs, paired) for outputs in (shadow, production)),
            *(_picked(_decisions(topology, outputs), paired) for outputs in (shadow, production))))
    else:
        outputs, truths = _labeled_answers(topology, gen, reference, n, rng)
        state = _scored_window(topology, outputs, truths, gen, _reference_calibration(topology, reference, seed, n),
                               rng)
    value = state.values(3600.0).get(metric)
    return None if value is None else float(value)


def _labeled_answers(topology: Topology, gen: Generator, reference: Generator, n: int,
                     rng: np.random.Generator) -> tuple[Any, list[Any]]:
    """`gen`'s outputs on n requests and their labels, as a run of `topology` draws them: in shadow
    mode `gen` answers beside `reference` (production), whose requests' truths are the labels, so
    a flipped share answers for another class than its label; else `gen`'s own traffic, whose
    flipped share has its label flipped (the two differ once `gen` flips: the labels' base rate
    stays in shadow mode, it moves in the other)."""
    if topology.mode == "shadow":
        _, answers, truths = reference.answer_pairs(topology.task, gen, n, rng)
        return answers, truths
    return gen.outputs(topology.task, n, rng)


def _picked(values: Any, rows: np.ndarray) -> list[Any]:
    return [values[i] for i in rows.tolist()]


def _decisions(topology: Topology, outputs: Any) -> Any:
    """Each output's decision as the task reads it when no predicted_label comes: a binary score
    at the threshold, a multiclass map's argmax; None for a regression."""
    if topology.task == "binary":
        return np.asarray(outputs) >= topology.threshold
    if topology.task == "multiclass":
        return np.fromiter((max(o, key=o.__getitem__) for o in outputs), dtype=object, count=len(outputs))
    return [None] * len(outputs)


def _scored_window(topology: Topology, outputs: Any, truths: list[Any], gen: Generator,
                   calibration: ReferenceCounts | None, rng: np.random.Generator) -> WindowState:
    """A window state holding these predictions, all served and labeled (with estimates: their
    scores and decisions as the task reads them for the evaluator, read through `calibration`)."""
    task, n = topology.task, len(truths)
    state = WindowState.for_topology(topology, calibration)
    spec = task_for(task)
    out = np.array(outputs, dtype=spec.output_dtype) if spec.output_dtype != object else \
        np.fromiter(outputs, dtype=object, count=n)
    decisions: Any = None if task == "regression" else _decisions(topology, outputs)
    y, score = spec.truths_and_scores(np.array(truths, dtype=object if task == "multiclass" else None), out)
    served: tuple[Any, Any] = (None, None)
    rows = None
    if state.estimate is not None:
        classes = topology.estimates.classes
        served = (spec.estimate_scores(out, classes), spec.estimate_codes(decisions, classes))
        rows = (*served, spec.estimate_codes(y, classes), np.ones(n))
    state.serve(gen.latencies(n, rng), rng.random(n) < gen.serving_error_rate, *served)
    state.score(spec.outcomes(y, score, decisions, np.ones(n)), rows)
    return state


@lru_cache(maxsize=8)
def _reference_calibration(topology: Topology, reference: Generator, seed: int, n: int) -> ReferenceCounts | None:
    """The calibration the evaluator learns from the reference's labels (None without estimates),
    frozen after n labeled predictions of `reference` rather than the topology's reference_labels:
    the one its noisy estimates scatter around. Cached: a bisection reads it some 30 times."""
    if not topology.estimates.enabled:
        return None
    calibration = new_calibration(replace(topology, estimates=replace(topology.estimates, reference_labels=n)))
    assert calibration is not None
    _learn_reference(topology, calibration, reference, np.random.default_rng([seed, 1]))
    return calibration


def _learn_reference(topology: Topology, calibration: ReferenceCounts, reference: Generator,
                    rng: np.random.Generator) -> None:
    """Freeze `calibration` on `reference_labels` labeled predictions of `reference`, counted as a
    window state counts them: a reference period of the baseline before the rollout."""
    outputs, truths = _labeled_answers(topology, reference, reference, calibration.reference_labels, rng)
    estimate = _scored_window(topology, outputs, truths, reference, None, rng).estimate
    assert estimate is not None  # the topology has estimates: it has a calibration
    calibration.add(estimate)
    if not calibration.frozen:
        raise AssertionError(f"a reference of {calibration.reference_labels} labels left the calibration unfrozen")


def degrade(task: str, topology: Topology, gen: Generator, degradation: Degradation,
            reference: Generator | None = None) -> Generator:
    """The generator whose `degradation.metric` is the stated change from `gen`'s (ValueError when
    the knob cannot get there). `reference`: the baseline a candidate is compared with (its
    calibration for estimates, its answers for the shadow metrics); None for a baseline's own
    setting, where the shadow metrics are those of two equally good versions (metric_value)."""
    metric = degradation.metric
    base = base_metric(metric)
    current = metric_value(task, topology, gen, metric, reference=reference)
    if current is None:
        raise ValueError(f"degradation {degradation}: {metric!r} is not a metric a {task} model's windows carry")
    target = degradation.target(current)
    if base.startswith("latency_"):
        if current <= 0 or target <= 0:
            raise ValueError(f"degradation {degradation}: a latency must stay above 0 ms (baseline {current:.4g})")
        return replace(gen, latency_median_ms=gen.latency_median_ms * target / current)
    if base == "serving_error_rate":
        if not 0 <= target < 1:
            raise ValueError(f"degradation {degradation}: a rate must stay in [0, 1), got {target:.4g}")
        return replace(gen, serving_error_rate=target)
    if base in SERVING_METRICS or base == "paired_rate":
        raise ValueError(f"degradation {degradation}: {metric!r} cannot be degraded in the simulation (it is the "
                         f"traffic's, not the model's); degrade a quality metric, latency_*_ms or serving_error_rate")
    if base in SHADOW_METRICS:
        return _shadow_degraded(task, topology, gen, degradation, reference, current, target)
    if task == "binary" and base == "roc_auc":
        if not 0.5 <= target < 1:
            raise ValueError(f"degradation {degradation}: the simulator's AUC is in [0.5, 1), got {target:.4g}")
        return replace(gen, separation=math.sqrt(2) * float(ndtri(target)))  # AUC = Phi(separation / sqrt 2)
    if task == "binary" and base in ("error_rate", "accuracy") and topology.mode != "shadow":
        # Each flipped truth turns a right answer wrong and a wrong one right: e' = e + flip (1 - 2e).
        # A better model (a baseline stated better than the default) is a wider separation, below.
        # In shadow mode a flip keeps the label and moves the answer: bisection, below.
        e, e_target = (current, target) if base == "error_rate" else (1 - current, 1 - target)
        if e_target >= 0.5:
            raise ValueError(f"degradation {degradation}: the simulator's binary error rate stays below 0.5, "
                             f"asked {e_target:.4g}")
        if e_target >= e:
            return replace(gen, flip=gen.flip + (e_target - e) / (1 - 2 * e))
    if task == "regression" and base in ("mae", "rmse"):
        if not target > 0:
            raise ValueError(f"degradation {degradation}: {metric} must stay above 0, got {target:.4g}")
        return replace(gen, noise=gen.noise * target / current)  # errors N(0, noise): both scale with it
    # A multiclass error rate made worse by wrong truths, like the binary one above: a weaker
    # separation cannot raise it past the majority class's complement.
    worse = target > current if base == "error_rate" else target < current
    knob = ("flip" if base in ("error_rate", "accuracy") and task != "regression" and worse
            else "noise" if task == "regression" else "separation")
    lo, hi = {"flip": (0.0, 0.5), "noise": (0.01, 20 * gen.noise),
              "separation": (0.0, 4 * max(gen.separation, 1.5))}[knob]
    return _bisected(task, topology, gen, degradation, reference, current, target, knob, lo, hi)


def _bisected(task: str, topology: Topology, gen: Generator, degradation: Degradation,
              reference: Generator | None, current: float, target: float, knob: str, lo: float,
              hi: float) -> Generator:
    """`gen` with `knob` set in [lo, hi] (where the metric is monotone) so that the metric, as
    metric_value reads it against `reference`, is `target`: 25 bisection steps."""
    metric = degradation.metric

    def turned(x: float) -> Generator:
        return replace(gen, **{knob: x})  # type: ignore[arg-type]

    def value(x: float) -> float:
        v = metric_value(task, topology, turned(x), metric, reference=reference)
        return math.nan if v is None else v

    v_lo, v_hi = value(lo), value(hi)
    if not (min(v_lo, v_hi) <= target <= max(v_lo, v_hi)):
        raise ValueError(f"degradation {degradation}: {metric} {target:.4g} is out of the simulator's reach "
                         f"(its {knob} gives {min(v_lo, v_hi):.4g}..{max(v_lo, v_hi):.4g}; baseline {current:.4g})")
    increasing = v_hi > v_lo
    for _ in range(25):
        mid = (lo + hi) / 2
        if (value(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return turned((lo + hi) / 2)


def _shadow_degraded(task: str, topology: Topology, gen: Generator, degradation: Degradation,
                     reference: Generator | None, current: float, target: float) -> Generator:
    """A shadow metric (agreement, score_abs_diff, score_diff) moved to `target`. A baseline's
    setting (no reference: two equally good versions) moves how much of the noise the two
    versions share; a candidate moves away from production as a worse model: a classifier by a
    share of requests answered as for another class (the flip of an error-rate degradation: its
    decisions differ from production's on them; a weaker separation cannot take agreement below
    production's negative rate), a regression by more noise."""
    if reference is None:
        return _bisected(task, topology, gen, degradation, None, current, target, "shadow_correlation", 0.0, 0.9999)
    if task == "regression":
        return _bisected(task, topology, gen, degradation, reference, current, target, "noise", gen.noise,
                         20 * gen.noise)
    return _bisected(task, topology, gen, degradation, reference, current, target, "flip", gen.flip, 0.5)


# -- runs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOutcome:
    fired: bool  # the check's action: a ROLLBACK, or a HOLD for a check with action: hold
    window: int | None  # 1-based index of the closed window whose judgement fired it
    candidate_samples: int | None  # what the check had read of the candidate until then
    failed_windows: int  # windows the check FAILed
    judged_windows: int  # windows judged in the run
    first_failure: int | None  # 1-based index of the first FAIL window
    inconclusive_windows: int = 0  # windows the check could not judge: too few samples
    samples_read: int = 0  # candidate samples the check read over the judged windows


def horizon(topology: Topology, traffic: Traffic) -> int:
    """Windows to simulate: the flag's, or a rollout's length (every step's windows), or DEFAULT_WINDOWS."""
    if traffic.windows is not None:
        return traffic.windows
    if topology.rollout is not None:
        return max(DEFAULT_WINDOWS, topology.rollout.windows * (len(topology.rollout.steps) + 1))
    return DEFAULT_WINDOWS


def initial_share(topology: Topology, traffic: Traffic) -> float:
    """The candidate's share at the start: the flag's, or the first rollout step, or 10%."""
    if traffic.share is not None:
        return traffic.share
    if topology.rollout is not None and topology.rollout.steps:
        return topology.rollout.steps[0] / 100  # for mode ab, the split
    return 0.1


def run_once(topology: Topology, traffic: Traffic, baseline: Generator, candidate: Generator,
             rng: np.random.Generator) -> RunOutcome:
    """One rollout of `topology` (one check, as simulate gives it) over the horizon."""
    t = topology
    rule = t.checks[0]
    size = t.window_size_ms
    windows = horizon(t, traffic)
    share = initial_share(t, traffic)
    follow = traffic.share is None
    ev = ModelEvaluator(t)
    if ev.calibration is not None:
        # Estimates: the rollout starts on a worker that has watched the baseline long enough to
        # calibrate (learned in the run, the calibration would wait for the baseline's panes to
        # leave retention, and every estimate before that is INCONCLUSIVE).
        _learn_reference(t, ev.calibration, baseline, rng)
    lo, hi = traffic.label_delay_ms
    pending_ts: list[np.ndarray] = []
    pending_ids: list[np.ndarray] = []
    pending_truth: list[list[Any]] = []
    model = t.model
    next_id = 0
    judged = 0
    samples = 0
    failed = inconclusive = 0
    first_failure: int | None = None
    start0 = 1_000 * size  # any aligned start: event time is all that matters
    end = start0 + (windows + 1) * size + t.window_grace_ms + hi

    def _take(advance: Advance) -> bool | None:
        """Count the judged windows; True when the check's action fired, False when the candidate
        was promoted (the run is over), None while it goes on. Follows the traffic steps."""
        nonlocal judged, samples, failed, inconclusive, share, first_failure
        for j in advance.judgements:
            judged += 1
            result = j.check(rule.name)
            samples += result.candidate_samples
            if result.verdict is Verdict.FAIL:
                failed += 1
                first_failure = first_failure or judged
            inconclusive += result.verdict is Verdict.INCONCLUSIVE
        for command in advance.commands:
            if command.kind is CommandKind.ROLLBACK or (command.kind is CommandKind.HOLD and command.rule == rule.name):
                return True
            if command.kind is CommandKind.PROMOTE:
                return False
            if command.kind is CommandKind.SET_TRAFFIC and follow:
                share = min(0.99, max(0.01, command.traffic.get(t.candidate_version, 0) / 100))
        return None

    for step in range(-(-(end - start0) // size)):
        t0 = start0 + step * size
        t1 = t0 + size
        if step < windows:
            n = int(rng.poisson(traffic.per_s * size / 1000))
            ts = np.sort(rng.integers(t0, t1, n)).astype(np.int64)
            ids = np.arange(next_id, next_id + n)
            next_id += n
            if t.mode == "shadow":  # every request to both: no share
                cols, truth, labeled = _shadow_predictions(t, ts, ids, baseline, candidate, rng)
            else:
                is_cand = rng.random(n) < share
                cols, truth, labeled = _predictions(t, ts, is_cand, ids, baseline, candidate, rng)
            delay = _delays(lo, hi, n, rng)
            keep = labeled & (rng.random(n) >= traffic.unlabeled)
            pending_ts.append(ts[keep] + delay[keep])
            pending_ids.append(ids[keep])
            pending_truth.append([truth[i] for i in np.flatnonzero(keep).tolist()])
            ev.add_prediction_columns(cols, t1)
        if pending_ts:
            all_ts = np.concatenate(pending_ts)
            all_ids = np.concatenate(pending_ids)
            all_truth = [x for part in pending_truth for x in part]
            due = all_ts < t1
            if due.any():
                idx = np.flatnonzero(due)
                idx = idx[np.argsort(all_ts[idx], kind="stable")]
                ev.add_label_columns(LabelColumns([str(i) for i in all_ids[idx].tolist()], [model] * len(idx),
                                                  all_ts[idx], [all_truth[i] for i in idx.tolist()]), t1)
            rest = np.flatnonzero(~due)
            pending_ts = [all_ts[rest]]
            pending_ids = [all_ids[rest]]
            pending_truth = [[all_truth[i] for i in rest.tolist()]]
        else:
            ev.labels_idle = True
        fired = _take(ev.advance(t1))
        if fired is not None or judged >= windows:
            break
    else:
        fired = _take(ev.close_all(end))  # the last windows: no later prediction moves event time past them
    return RunOutcome(bool(fired), judged if fired else None, samples if fired else None, failed, judged,
                      first_failure, inconclusive, samples)


def _delays(lo: int, hi: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Log-uniform label delays in [lo, hi] ms (uniform when lo is 0)."""
    if hi == lo:
        return np.full(n, lo, dtype=np.int64)
    if lo == 0:
        return rng.integers(0, hi + 1, n).astype(np.int64)
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n)).astype(np.int64)


def _predictions(t: Topology, ts: np.ndarray, is_cand: np.ndarray, ids: np.ndarray, baseline: Generator,
                 candidate: Generator, rng: np.random.Generator) -> tuple[PredictionColumns, list[Any], np.ndarray]:
    """Canary and A/B: each request answered by one version. The predictions' columns, each one's
    truth, and which can be labeled (those that did not fail)."""
    n = len(ts)
    columns = _Columns(t, n)
    truth: list[Any] = [None] * n
    for gen, rows in ((baseline, np.flatnonzero(~is_cand)), (candidate, np.flatnonzero(is_cand))):
        if len(rows) == 0:
            continue
        outputs, truths = gen.outputs(t.task, len(rows), rng)
        columns.answer(rows, outputs, gen, rng)
        for i, y in zip(rows.tolist(), truths):
            truth[i] = y
    versions = [t.candidate_version if c else t.baseline_version for c in is_cand.tolist()]
    return columns.build(ids, ts, versions), truth, ~columns.failed


def _shadow_predictions(t: Topology, ts: np.ndarray, ids: np.ndarray, baseline: Generator, candidate: Generator,
                        rng: np.random.Generator) -> tuple[PredictionColumns, list[Any], np.ndarray]:
    """Shadow mode: each request answered by production (the baseline) and, mirrored, by the
    shadow (the candidate), both published under the request's id at its time, production's
    first. The columns (two rows a request), each request's truth, and which requests can be
    labeled: production's answer did not fail (the label is production's; a shadow that failed
    just has no pair and no label)."""
    n = len(ts)
    production, shadow, truth = baseline.answer_pairs(t.task, candidate, n, rng)
    columns = _Columns(t, 2 * n)
    first = 2 * np.arange(n)
    columns.answer(first, production, baseline, rng)
    columns.answer(first + 1, shadow, candidate, rng)
    versions = [t.baseline_version, t.candidate_version] * n
    return columns.build(np.repeat(ids, 2), np.repeat(ts, 2), versions), truth, ~columns.failed[first]


class _Columns:
    """Prediction columns being filled, group of rows by group of rows, from the generators' answers."""

    def __init__(self, t: Topology, n: int) -> None:
        self.t = t
        self.score = np.full(n, np.nan)
        self.value = np.full(n, np.nan)
        self.latency = np.empty(n)
        self.scores: list[Any] | None = [None] * n if t.task == "multiclass" else None
        self.failed = np.zeros(n, dtype=bool)

    def answer(self, rows: np.ndarray, outputs: Any, gen: Generator, rng: np.random.Generator) -> None:
        """`gen`'s outputs at `rows`, with its latencies and serving errors."""
        m = len(rows)
        self.latency[rows] = gen.latencies(m, rng)
        self.failed[rows] = rng.random(m) < gen.serving_error_rate
        if self.t.task == "binary":
            self.score[rows] = outputs
        elif self.t.task == "regression":
            self.value[rows] = outputs
        else:
            assert self.scores is not None
            for i, o in zip(rows.tolist(), outputs):
                self.scores[i] = o

    def build(self, ids: np.ndarray, ts: np.ndarray, versions: list[str]) -> PredictionColumns:
        """The columns; a failed prediction has an error and no output."""
        failed = self.failed
        error: list[str | None] | None = None
        if failed.any():
            error = [("simulated serving error" if f else None) for f in failed.tolist()]
            self.score[failed] = np.nan
            self.value[failed] = np.nan
            if self.scores is not None:
                for i in np.flatnonzero(failed).tolist():
                    self.scores[i] = None
        return PredictionColumns([str(i) for i in ids.tolist()], [self.t.model] * len(ts), versions, ts, self.score,
                                 self.value, self.latency, self.scores, None, None, error, FeatureColumns())


# -- per-check estimates --------------------------------------------------------------------------

@dataclass(frozen=True)
class Rate:
    hits: int
    runs: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.hits / self.runs if self.runs else math.nan


def clopper_pearson(hits: int, runs: int, confidence: float = 0.95) -> Rate:
    """The exact binomial confidence interval of hits / runs."""
    a = (1 - confidence) / 2
    low = 0.0 if hits == 0 else float(beta_distribution.ppf(a, hits, runs - hits + 1))
    high = 1.0 if hits == runs else float(beta_distribution.ppf(1 - a, hits + 1, runs - hits))
    return Rate(hits, runs, low, high)


@dataclass(frozen=True)
class Delay:
    median_windows: float | None
    p95_windows: float | None
    median_samples: float | None
    p95_samples: float | None


@dataclass(frozen=True)
class CheckSimulation:
    check: str
    metric: str
    action: str  # what firing does: "rollback" or "hold"
    false_rollback: Rate  # A/A (both versions from the same generator): runs where the check fired
    detection: Rate  # under `degradation`
    delay: Delay
    degradation: str
    alpha: float
    fix: str | None = None  # the change that brings the A/A rate under alpha, when it is above
    window_failures: float | None = None  # A/A: the share of judged windows the check FAILed
    # A/A: the share of judged windows with too few samples to judge (INCONCLUSIVE), and the candidate
    # samples the check read per judged window: a check that is mostly INCONCLUSIVE at this traffic can
    # neither roll back a bad candidate nor pass a good one
    window_inconclusive: float | None = None
    samples_per_window: float | None = None
    min_samples: int | None = None  # the check's

    @property
    def warning(self) -> bool:
        return self.false_rollback.value > self.alpha


# How the runs are carried out: `map` runs them one after another; the CLI passes a process pool's map
# (its order kept), which gives the same outcomes since each run draws from its own seed.
Mapper = Callable[[Callable[[int], "RunOutcome"], range], Iterable["RunOutcome"]]


def _seeded_run(topology: Topology, traffic: Traffic, baseline: Generator, candidate: Generator, seed: int,
                i: int) -> RunOutcome:
    return run_once(topology, traffic, baseline, candidate, np.random.default_rng([seed, i]))


def simulate_rule(topology: Topology, rule: CheckRule, traffic: Traffic, baseline: Generator,
                  candidate: Generator, runs: int, seed: int, mapper: Mapper = map) -> list[RunOutcome]:
    """`runs` rollouts of `topology` judged by `rule` alone (the other checks would end some runs
    first, hiding this one's rate). Run i uses seed (seed, i): the same runs for every variant of
    the rule, so that their rates differ by the rule, not by the draw, and the same runs whatever
    `mapper` carries them out."""
    single = replace(topology, checks=(rule,))
    return list(mapper(partial(_seeded_run, single, traffic, baseline, candidate, seed), range(runs)))


def _delay(outcomes: Sequence[RunOutcome]) -> Delay:
    fired = [o for o in outcomes if o.fired]
    if not fired:
        return Delay(None, None, None, None)
    w = np.array([o.window for o in fired], dtype=float)
    s = np.array([o.candidate_samples for o in fired], dtype=float)
    return Delay(float(np.median(w)), float(np.percentile(w, 95)), float(np.median(s)), float(np.percentile(s, 95)))


def _rate(outcomes: Sequence[RunOutcome]) -> Rate:
    return clopper_pearson(sum(o.fired for o in outcomes), len(outcomes))


def fixes(rule: CheckRule, alpha: float) -> list[tuple[str, CheckRule]]:
    """Changes to try, gentlest first: a sequential test at `alpha` where the metric has one, then
    more samples, more windows in a row, a wider margin."""
    out: list[tuple[str, CheckRule]] = []
    if rule.sequential is None and rule.metric in SEQUENTIAL_METRICS:
        spec = SequentialSpec(alpha=alpha)
        # One FAIL of the test fires it: the parser's default for a sequential check.
        window = "" if rule.consecutive == 1 and rule.cumulative is None else " and `consecutive: 1`"
        out.append((f"use `sequential: {{alpha: {spec.alpha:g}}}` instead of fixed limits{window}",
                    replace(rule, sequential=spec, max=None, min=None, max_degradation=None,
                            max_degradation_relative=None, consecutive=1, cumulative=None)))
    if rule.sequential is not None:
        return out
    for k in (2, 4):
        out.append((f"`min_samples: {rule.min_samples * k}`", replace(rule, min_samples=rule.min_samples * k)))
    for extra in (1, 2):
        c = rule.consecutive + extra
        out.append((f"`consecutive: {c}`", replace(rule, consecutive=c)))
    for factor in (1.5, 2.0):
        widened: dict[str, float] = {}
        if rule.max_degradation is not None:
            widened["max_degradation"] = rule.max_degradation * factor
        if rule.max_degradation_relative is not None:
            widened["max_degradation_relative"] = rule.max_degradation_relative * factor
        if widened:
            shown = ", ".join(f"{key}: {v:g}" for key, v in widened.items())
            out.append((f"`{shown}`", replace(rule, **widened)))  # type: ignore[arg-type]
    return out


def simulate_check(topology: Topology, rule: CheckRule, traffic: Traffic, baseline: Generator, runs: int,
                   seed: int, alpha: float, degradations: Sequence[Degradation] = (),
                   try_fixes: bool = True, mapper: Mapper = map) -> CheckSimulation:
    """A/A false-rollback rate, detection rate and delay of one check; a fix when the rate is above alpha."""
    if rule.sequential is not None:
        alpha = rule.sequential.alpha
    aa = simulate_rule(topology, rule, traffic, baseline, baseline, runs, seed, mapper)
    try:
        candidate, shown = _degraded(topology, rule, baseline, degradations)
        bad = simulate_rule(topology, rule, traffic, baseline, candidate, runs, seed + 1, mapper)
    except ValueError as exc:
        if degradations:
            raise  # the user's: say so rather than report half
        bad, shown = [], f"no detection simulated: {exc}"  # e.g. a check on throughput_per_s
    false_rollback = _rate(aa)
    fix = None
    if try_fixes and false_rollback.value > alpha:
        fix = _fix(topology, rule, traffic, baseline, min(runs, FIX_RUNS), seed, alpha, degradations, mapper)
    judged = sum(o.judged_windows for o in aa)

    def per_judged(count: int) -> float | None:
        return count / judged if judged else None

    return CheckSimulation(rule.name, rule.metric, rule.action, false_rollback, _rate(bad), _delay(bad), shown,
                           alpha, fix, window_failures=per_judged(sum(o.failed_windows for o in aa)),
                           window_inconclusive=per_judged(sum(o.inconclusive_windows for o in aa)),
                           samples_per_window=per_judged(sum(o.samples_read for o in aa)),
                           min_samples=rule.min_samples)


FIX_RUNS = 100  # runs per fix tried: enough to tell a rate near alpha from one far above it


def _degraded(topology: Topology, rule: CheckRule, baseline: Generator,
              degradations: Sequence[Degradation]) -> tuple[Generator, str]:
    """The candidate's generator: the stated degradations, or the rule's default one; and how to say it."""
    if not degradations:
        current = metric_value(topology.task, topology, baseline, rule.metric)
        degradations = (default_degradation(rule, 0.0 if current is None else current),)
    candidate = baseline
    for d in degradations:
        candidate = degrade(topology.task, topology, candidate, d, reference=baseline)
    return candidate, ", ".join(map(str, degradations))


def _fix(topology: Topology, rule: CheckRule, traffic: Traffic, baseline: Generator, runs: int, seed: int,
         alpha: float, degradations: Sequence[Degradation], mapper: Mapper = map) -> str:
    """The first change of `fixes` that brings the A/A rate under alpha and still catches the
    degradation (the stated one, else the changed rule's own default) in half the runs; else the
    first that brings the rate under alpha, saying how rarely it detects; else that none does.
    A change that makes the check never judge (min_samples above a window's traffic) never rolls
    back a healthy candidate either, nor a broken one: hence the detection rate."""
    weak = None
    for text, variant in fixes(rule, alpha):
        trial = _rate(simulate_rule(topology, variant, traffic, baseline, baseline, runs, seed, mapper))
        if trial.value > alpha:
            continue
        try:
            candidate, shown = _degraded(topology, variant, baseline, degradations)
        except ValueError:
            return f"{text} (simulated over {runs} runs: false {rule.action}s {trial.value:.1%})"
        caught = _rate(simulate_rule(topology, variant, traffic, baseline, candidate, runs, seed + 1, mapper))
        said = (f"{text} (simulated over {runs} runs: false {rule.action}s {trial.value:.1%} "
                f"[{trial.low:.1%}, {trial.high:.1%}], {shown} detected in {caught.value:.1%})")
        if caught.value >= 0.5:
            return said
        weak = weak or said
    if weak is not None:
        return f"{weak}; no change tried both stays under alpha and detects in half the runs"
    return "none of " + "; ".join(text for text, _ in fixes(rule, alpha)) + " brings the rate under alpha"


def topology_alpha(topology: Topology, default: float = 0.05) -> float:
    """The false-rollback rate a topology states: the smallest alpha of its sequential checks, or `default`."""
    alphas = [r.sequential.alpha for r in topology.checks if r.sequential is not None]
    return min(alphas) if alphas else default


def applicable(topology: Topology, changes: Sequence[Degradation]) -> tuple[Degradation, ...]:
    """The changes whose metric a window of `topology` carries (a --degrade roc_auc=-0.02 says
    nothing about a regression model)."""
    return tuple(d for d in changes
                 if metric_problem(topology.task, d.metric, topology.thresholds, topology.mode) is None)


def baseline_generator(topology: Topology, generator: Generator, settings: Sequence[Degradation]) -> Generator:
    """`generator` moved so that each stated metric has the stated value (settings that apply)."""
    for d in applicable(topology, settings):
        generator = degrade(topology.task, topology, generator, d)
    return generator


@dataclass(frozen=True)
class Scenario:
    """Everything a simulation of a topology takes besides the topology."""

    traffic: Traffic = field(default_factory=Traffic)
    baseline: Generator = field(default_factory=Generator)
    baseline_settings: tuple[Degradation, ...] = ()  # the baseline's metrics, e.g. roc_auc=0.9
    degradations: tuple[Degradation, ...] = ()
    runs: int = DEFAULT_RUNS
    seed: int = 0
    alpha: float | None = None  # None: topology_alpha
    try_fixes: bool = True


def simulate_topology(topology: Topology, scenario: Scenario, progress: Callable[[str], None] | None = None,
                      mapper: Mapper = map) -> list[CheckSimulation]:
    alpha = scenario.alpha if scenario.alpha is not None else topology_alpha(topology)
    baseline = baseline_generator(topology, scenario.baseline, scenario.baseline_settings)
    degradations = applicable(topology, scenario.degradations)
    out = []
    for rule in topology.checks:
        if progress is not None:
            progress(rule.name)
        out.append(simulate_check(topology, rule, scenario.traffic, baseline, scenario.runs,
                                  scenario.seed, alpha, degradations, scenario.try_fixes, mapper))
    return out


__all__ = ["CheckSimulation", "Degradation", "Generator", "Mapper", "Rate", "Recorded", "RunOutcome", "Scenario",
           "Traffic", "applicable", "baseline_generator", "clopper_pearson", "default_degradation", "degrade",
           "horizon", "initial_share", "measure_recording", "metric_value", "run_once", "simulate_check",
           "simulate_topology", "topology_alpha"]
