"""Topology files: what to watch for one model and what to do about it, reviewed in Git as YAML.

`load_topology(path)` validates the whole file and reports every problem at once, each with its
file:line and what was expected, so a reviewer fixes a file in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mle_stream.core.checks import (
    SEQUENTIAL_METRICS,
    SHADOW_METRICS,
    CheckRule,
    SequentialSpec,
    default_worse,
    metric_problem,
)
from mle_stream.core.drift.concept import KINDS, DetectorSpec
from mle_stream.core.drift.decision import DriftThresholds
from mle_stream.core.drift.live import DriftSettings
from mle_stream.core.durations import parse_duration_ms
from mle_stream.core.kserve_logger import IngestMapping, check_version_template
from mle_stream.errors import ConfigError

TASKS = ("binary", "multiclass", "regression")
# canary: the candidate takes rising traffic steps (rollout.steps) or keeps the deployment's split;
# ab: both versions serve a fixed split (rollout.steps: [split, 100]) until the gate promotes the
# candidate or a check rolls it back; shadow: the candidate answers mirrored requests and is never
# served, its predictions are paired with production's by prediction_id (core/shadow.py), and the
# gate, if any, promotes it straight to 100% (as Flagger's traffic mirroring does).
MODES = ("canary", "ab", "shadow")
SHADOW_STEPS = (0, 100)  # the shadow's rollout: 0% of live traffic, then promotion
ROLLBACK_METRICS = ("error_rate", "serving_error_rate")  # the `rollback:` shorthand's choices
CHECK_KEYS = {"name", "metric", "worse", "max", "min", "max_degradation", "max_degradation_relative", "min_samples",
              "consecutive", "cumulative", "hysteresis", "action", "sequential"}

@dataclass(frozen=True)
class RolloutSteps:
    """The `rollout` section: the candidate's traffic steps (percent). The candidate starts at the
    first (the deployment's own split); it moves to the next once `windows` consecutive windows
    PASS every check in the current step with at least `samples` candidate samples in all, and
    the cooldown since the last step has passed; at 100 it is PROMOTEd (champion). A step listed in
    `approval` (`approval: true` lists every step after the first) then waits for an operator's
    APPROVE command."""

    steps: tuple[int, ...] = (5, 10, 25, 50, 100)
    windows: int = 3
    samples: int = 500
    approval: tuple[int, ...] = ()


@dataclass(frozen=True)
class DecisionSettings:
    """The `decision` section: what holds for every check."""

    cooldown_ms: int = 300_000  # event time after a HOLD before the next HOLD
    outage_after_ms: int = 300_000  # no predictions (or, with label checks, no labels) for this long: ERROR
    # Labels gone quiet while predictions flow: `label_coverage_windows` closed windows in a row whose
    # candidate labeled/predictions is below `label_coverage_floor` get one HOLD saying so (a check
    # reading labeled samples would otherwise sit INCONCLUSIVE with nothing said). Floor 0: off.
    label_coverage_floor: float = 0.05
    label_coverage_windows: int = 3


@dataclass(frozen=True)
class RetrainRule:
    """When to ask for a retrain of the baseline (the version in production): any trigger that is
    set fires. The command names the event-time range of data to train on: `train_window` up to
    the end of the window that fired (never before the version's training time)."""

    drifted_share: float | None = None  # this share of the baseline's tested features drifted in a closed window
    concept_drift: bool = False  # a concept-drift alarm on the baseline's errors
    new_labels: int | None = None  # labeled predictions of the baseline since it was trained
    train_window_ms: int = 30 * 86_400_000
    cooldown_ms: int = 86_400_000  # event time after a retrain command before the next one
    name: str = "retrain"

    @property
    def enabled(self) -> bool:
        return self.drifted_share is not None or self.concept_drift or self.new_labels is not None


# Where a model's traffic split lives: a GitOps repository of HTTPRoute manifests, or an object the
# actuator patches on the API server (Gateway API HTTPRoute, Istio VirtualService, KServe
# InferenceService). Each backend reads only the fields it needs; naming another backend's field
# is an error, so a copied topology cannot silently route through the wrong object.
ROUTING_BACKENDS = ("gitops", "gateway-api", "istio", "kserve")
_ROUTING_FIELDS = {
    "gitops": {"manifest", "service", "namespace", "gateway"},
    "gateway-api": {"name", "service", "namespace"},
    "istio": {"name", "subset", "host", "namespace"},
    "kserve": {"name", "namespace"},
}


@dataclass(frozen=True)
class RoutingTarget:
    backend: str = "gitops"
    manifest: str = "routes/{model}.yaml"  # gitops: manifest path in the repository
    service: str = "{model}-v{version}"  # gitops, gateway-api: the Service of one version
    namespace: str = "default"
    gateway: str = "ml-gateway"  # gitops: parentRef of a newly written HTTPRoute
    name: str = "{model}"  # gateway-api, istio, kserve: metadata.name of the object
    subset: str = "v{version}"  # istio: DestinationRule subset of one version
    host: str = "{model}"  # istio: destination host (the model's Service) of a new route entry


def _template(*required: str, allowed: tuple[str, ...] = ("model", "version")) -> Callable[[Any], str]:
    """A non-empty format string using every field in `required` and none outside `allowed`."""
    import string  # kept local: this block is the routing section's own code

    def convert(v: Any) -> str:
        text = _text(v)
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid template ({exc})") from None
        fields = ", ".join("{" + a + "}" for a in allowed)
        missing = [n for n in required if n not in names]
        if missing:
            raise ValueError(f"template {text!r} must use {', '.join('{' + n + '}' for n in missing)}")
        unknown = sorted(names - set(allowed))
        if unknown:
            raise ValueError(f"template {text!r} may use only {fields}, not "
                             f"{', '.join('{' + n + '}' for n in unknown)}")
        return text
    return convert


@dataclass(frozen=True)
class Topology:
    source: str
    model: str
    task: str
    baseline_version: str
    candidate_version: str
    mode: str = "canary"
    threshold: float = 0.5
    window_size_ms: int = 60_000
    window_hop_ms: int = 60_000  # == size: tumbling windows
    window_grace_ms: int = 30_000
    window_updates_ms: int = 10_000  # how often the worker publishes updates of open/revised windows
    window_retention_ms: int = 3_600_000
    label_max_delay_ms: int = 7 * 86_400_000
    max_clock_skew_ms: int = 300_000
    # Close windows and expire predictions only once the labels, too, have passed in event time
    # (so a worker reading a backlog loses no label); off for labelers that stamp labels with the
    # prediction's time long after the fact, which would hold every window back.
    label_align: bool = True
    shadow_pair_within_ms: int = 60_000  # shadow mode: how long a side waits for its counterpart
    thresholds: tuple[float, ...] = ()  # extra decision thresholds to report precision/recall/f1 at
    segment_dimensions: tuple[str, ...] = ()
    segment_max_values: int = 50  # per dimension; later values are counted as "__other__"
    checks: tuple[CheckRule, ...] = ()
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    rollout: RolloutSteps | None = None  # None: no progressive rollout (the deployment's split stays)
    # Versions named by MLflow alias instead: their *_version is "" until resolve_aliases fills it.
    baseline_alias: str | None = None
    candidate_alias: str | None = None
    drift: DriftSettings = field(default_factory=DriftSettings)
    retrain: RetrainRule = field(default_factory=RetrainRule)
    routing: RoutingTarget = field(default_factory=RoutingTarget)
    policy_version: str = ""
    ingest: IngestMapping = field(default_factory=IngestMapping)  # mle-stream ingest: KServe logger events


class _Reader:
    """Walks the YAML node tree so every error can name its line."""

    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source = source
        self.errors: list[str] = []
        self.root = root

    def where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        self.errors.append(f"{self.where(node)}: {path}: {message}")

    def mapping(self, node: yaml.Node, path: str, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path or "(top level)", "expected a mapping of keys to values")
            return {}
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key not in allowed:
                self.error(key_node, f"{path}.{key}" if path else key,
                           f"unknown key; expected one of {', '.join(sorted(allowed))}")
            elif key in out:
                self.error(key_node, f"{path}.{key}" if path else key, "duplicate key")
            else:
                out[key] = value_node
        return out

    def value(self, fields: dict[str, yaml.Node], key: str, path: str, convert: Callable[[Any], Any],
              default: Any = None, required: bool = False, parent: yaml.Node | None = None) -> Any:
        full = f"{path}.{key}" if path else key
        node = fields.get(key)
        if node is None:
            if required:
                self.error(parent or self.root, full, "is required")
            return default
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, full, "expected a single value")
            return default
        try:
            return convert(yaml.safe_load(yaml.serialize(node)))
        except (ValueError, TypeError) as exc:
            self.error(node, full, str(exc))
            return default

    def sequence(self, fields: dict[str, yaml.Node], key: str, path: str, convert: Callable[[Any], Any]) -> list[Any]:
        """A YAML list of single values, each converted; an error names the item and its line."""
        node = fields.get(key)
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{path}.{key}", "expected a list, e.g. [a, b]")
            return []
        out = []
        for i, item in enumerate(node.value):
            value = self.value({f"{key}[{i}]": item}, f"{key}[{i}]", path, convert)
            if value is not None:
                out.append(value)
        return out


def _text(v: Any) -> str:
    if v is None or isinstance(v, (dict, list)) or str(v) == "":
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return str(v)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)
    return convert


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ValueError(f"expected a number between 0 and 1, got {v!r}")
    return float(v)


def _positive_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
        raise ValueError(f"expected a number > 0, got {v!r}")
    return float(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {v!r}")
    return float(v)


def _open_fraction(v: Any) -> float:
    value = _number(v)
    if not 0 < value < 1:
        raise ValueError(f"expected a number between 0 and 1 (exclusive), got {v!r}")
    return value


def _percent(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 100:
        raise ValueError(f"expected a whole percentage in 1..100, got {v!r}")
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a whole number >= 0, got {v!r}")
    return v


def _non_negative(v: Any) -> float:
    value = _number(v)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {v!r}")
    return value


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a whole number >= 1, got {v!r}")
    return v


def _duration(v: Any) -> int:
    return parse_duration_ms(v)


def _approval(r: _Reader, rollout: dict[str, yaml.Node], steps: tuple[int, ...]) -> tuple[int, ...]:
    """`rollout.approval`: true (every step the candidate moves to), false, or a list of those steps."""
    node = rollout.get("approval")
    if node is None:
        return ()
    if not isinstance(node, yaml.SequenceNode):
        return steps[1:] if r.value(rollout, "approval", "rollout", _bool, default=False) else ()
    listed = r.sequence(rollout, "approval", "rollout", _percent)
    unknown = [p for p in listed if p not in steps[1:]]
    if unknown:
        r.error(node, "rollout.approval", f"{unknown} are not steps the candidate moves to; expected some of "
                                          f"{list(steps[1:])} (rollout.steps after the first), or true")
    return tuple(p for p in steps[1:] if p in listed)


def _ingest(r: _Reader, ig: dict[str, yaml.Node]) -> IngestMapping:
    """The `ingest` section: how `mle-stream ingest` maps KServe logger events (docs/ingest.md)."""
    def optional_text(key: str) -> str | None:
        return r.value(ig, key, "ingest", _text, default=None)

    features: str | tuple[str, ...] = "auto"
    if isinstance(ig.get("features"), yaml.SequenceNode):
        features = tuple(r.sequence(ig, "features", "ingest", _text)) or "none"
    elif "features" in ig:
        features = r.value(ig, "features", "ingest", _choice(("auto", "none")), default="auto")
    version = IngestMapping.version
    if isinstance(ig.get("version"), yaml.SequenceNode):
        version = tuple(r.sequence(ig, "version", "ingest", lambda v: check_version_template(_text(v))))
    elif "version" in ig:
        version = (r.value(ig, "version", "ingest", lambda v: check_version_template(_text(v)), default=""),)
    index = r.value(ig, "index", "ingest", _non_negative_int, default=None)
    return IngestMapping(
        inference_service=optional_text("inference_service"), namespace=optional_text("namespace"),
        output=optional_text("output"), index=index, label_output=optional_text("label_output"),
        classes=tuple(r.sequence(ig, "classes", "ingest", _text)), features=features,
        inputs=tuple(r.sequence(ig, "inputs", "ingest", _text)),
        version=tuple(v for v in version if v) or IngestMapping.version)


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if root is None:
        raise ConfigError(f"{source}: the file is empty; see topologies/ for an example")
    r = _Reader(source, root)
    top = r.mapping(root, "", {"model", "task", "mode", "threshold", "baseline", "candidate",
                               "windows", "labels", "metrics", "segments", "rollback", "routing",
                               "drift", "retrain", "checks", "decision", "rollout", "shadow",
                               "ingest"})
    model = r.value(top, "model", "", _text, required=True)
    task = r.value(top, "task", "", _choice(TASKS), required=True)
    mode = r.value(top, "mode", "", _choice(MODES), default="canary")
    threshold = r.value(top, "threshold", "", _fraction, default=0.5)

    def version_of(key: str) -> tuple[str | None, str | None]:
        """(version, alias): exactly one of them."""
        node = top.get(key)
        if node is None:
            r.error(root, key, "is required, e.g. {version: \"1\"} or {alias: champion}")
            return None, None
        fields = r.mapping(node, key, {"version", "alias"})
        if ("version" in fields) == ("alias" in fields):
            r.error(node, key, "give either version (e.g. \"1\") or alias (an MLflow alias, e.g. champion)")
            return None, None
        if "alias" in fields:
            return "", r.value(fields, "alias", key, _text, required=True, parent=node)
        return r.value(fields, "version", key, _text, required=True, parent=node), None

    baseline, baseline_alias = version_of("baseline")
    candidate, candidate_alias = version_of("candidate")
    if baseline and baseline == candidate:
        r.error(top["candidate"], "candidate.version", f"must differ from baseline.version ({baseline!r})")
    if baseline_alias and baseline_alias == candidate_alias:
        r.error(top["candidate"], "candidate.alias", f"must differ from baseline.alias ({baseline_alias!r})")

    def section(key: str, allowed: set[str]) -> tuple[dict[str, yaml.Node], yaml.Node | None]:
        node = top.get(key)
        return (r.mapping(node, key, allowed), node) if node is not None else ({}, None)

    windows, _ = section("windows", {"size", "hop", "grace", "retention", "updates_every"})
    size = r.value(windows, "size", "windows", _duration, default=60_000)
    hop = r.value(windows, "hop", "windows", _duration, default=size)
    updates_every = r.value(windows, "updates_every", "windows", _duration, default=10_000)
    grace = r.value(windows, "grace", "windows", _duration, default=30_000)
    retention = r.value(windows, "retention", "windows", _duration, default=3_600_000)
    if size is not None and size <= 0:
        r.error(top["windows"], "windows.size", "must be longer than 0")
    if size and hop and (hop <= 0 or size % hop):
        r.error(windows.get("hop", top.get("windows", root)), "windows.hop",
                f"must be > 0 and divide windows.size ({size} ms) evenly, got {hop} ms")
    if grace is not None and retention is not None and retention < grace:
        r.error(top["windows"], "windows.retention", f"must be at least windows.grace ({grace} ms)")

    labels, _ = section("labels", {"max_delay", "max_clock_skew", "align"})
    max_delay = r.value(labels, "max_delay", "labels", _duration, default=7 * 86_400_000)
    skew = r.value(labels, "max_clock_skew", "labels", _duration, default=300_000)
    label_align = r.value(labels, "align", "labels", _bool, default=True)

    metrics, _ = section("metrics", {"thresholds"})
    thresholds = r.sequence(metrics, "thresholds", "metrics", _fraction)

    segments, _ = section("segments", {"dimensions", "max_values"})
    dimensions = r.sequence(segments, "dimensions", "segments", _text)
    max_values = r.value(segments, "max_values", "segments", _positive_int, default=50)

    checks: list[CheckRule] = []
    rb, rb_node = section("rollback", {"name", "metric", "max_increase", "consecutive_windows", "min_samples"})
    if rb_node is not None or "checks" not in top:
        # The shorthand (and the default without any checks): the candidate's error rate (serving
        # error rate for regression) vs the baseline's.
        fallback = "serving_error_rate" if task == "regression" else "error_rate"
        metric = r.value(rb, "metric", "rollback", _choice(ROLLBACK_METRICS), default=fallback)
        if task == "regression" and metric == "error_rate":
            r.error(rb_node or root, "rollback.metric",
                    "error_rate needs a classification task; use serving_error_rate for regression")
        checks.append(CheckRule(
            name=r.value(rb, "name", "rollback", _text, default="error-rate-vs-baseline"), metric=metric,
            worse="higher", max_degradation=r.value(rb, "max_increase", "rollback", _fraction, default=0.05),
            consecutive=r.value(rb, "consecutive_windows", "rollback", _positive_int, default=3),
            min_samples=r.value(rb, "min_samples", "rollback", _positive_int, default=100)))
    checks_node = top.get("checks")
    if checks_node is not None and not isinstance(checks_node, yaml.SequenceNode):
        r.error(checks_node, "checks", "expected a list of checks, e.g. [{name: f1, metric: f1, min: 0.8}]")
    elif checks_node is not None:
        for i, item in enumerate(checks_node.value):
            path = f"checks[{i}]"
            c = r.mapping(item, path, CHECK_KEYS)
            name = r.value(c, "name", path, _text, required=True, parent=item)
            metric = r.value(c, "metric", path, _text, required=True, parent=item)
            problem = (None if metric is None or task is None
                       else metric_problem(task, metric, tuple(thresholds), mode or "canary"))
            if metric in SHADOW_METRICS and any(k in c for k in ("max_degradation", "max_degradation_relative")):
                r.error(c["metric"], f"{path}.metric", f"{metric} already compares the shadow with production: "
                                                       "give it max or min, not max_degradation")
            if problem:
                r.error(c["metric"], f"{path}.metric", problem)
            worse = r.value(c, "worse", path, _choice(("higher", "lower")),
                            default=None if metric is None else default_worse(metric))
            if worse is None and metric is not None and not problem:
                r.error(item, f"{path}.worse", f"say in which direction {metric} gets worse: higher or lower")
            sequential = None
            if "sequential" in c:
                sq = r.mapping(c["sequential"], f"{path}.sequential",
                               {"alpha", "min_relative_increase", "mixing_scale"})
                sequential = SequentialSpec(
                    alpha=r.value(sq, "alpha", f"{path}.sequential", _open_fraction, default=SequentialSpec.alpha),
                    min_relative_increase=r.value(sq, "min_relative_increase", f"{path}.sequential", _non_negative,
                                                  default=None),
                    mixing_scale=r.value(sq, "mixing_scale", f"{path}.sequential", _positive_float, default=None))
                if metric not in SEQUENTIAL_METRICS:
                    r.error(c["sequential"], f"{path}.sequential",
                            f"is for {', '.join(SEQUENTIAL_METRICS)}, not {metric}")
                if any(k in c for k in ("max", "min", "max_degradation", "max_degradation_relative", "hysteresis")):
                    r.error(c["sequential"], f"{path}.sequential",
                            "decides alone: give the limits (max, min, max_degradation...) to another check")
            rule = CheckRule(
                sequential=sequential,
                name=name or "", metric=metric or "", worse=worse or "higher",
                max=r.value(c, "max", path, _number, default=None), min=r.value(c, "min", path, _number, default=None),
                max_degradation=r.value(c, "max_degradation", path, _non_negative, default=None),
                max_degradation_relative=r.value(c, "max_degradation_relative", path, _non_negative, default=None),
                min_samples=r.value(c, "min_samples", path, _positive_int, default=100),
                # A sequential test's FAIL is already conclusive: one window fires it by default.
                consecutive=r.value(c, "consecutive", path, _positive_int, default=1 if "sequential" in c else 3),
                cumulative=r.value(c, "cumulative", path, _positive_int, default=None),
                hysteresis=r.value(c, "hysteresis", path, _non_negative, default=0.0),
                action=r.value(c, "action", path, _choice(("rollback", "hold")), default="rollback"),
            )
            if not rule.limits():
                r.error(item, path, "sets no limit: give max, min, max_degradation or max_degradation_relative")
            if name in {k.name for k in checks}:
                r.error(c.get("name", item), f"{path}.name", f"{name!r} is already the name of another check")
            checks.append(rule)
    ro, ro_node = section("rollout", {"steps", "windows", "samples", "approval"})
    rollout = None
    if ro_node is not None:
        steps = tuple(r.sequence(ro, "steps", "rollout", _percent)) or RolloutSteps.steps
        if mode == "shadow":
            if "steps" in ro:
                r.error(ro["steps"], "rollout.steps", "a shadow serves no traffic, so it has no steps: its gate "
                                                      "promotes it to 100%; for traffic steps after the shadow, "
                                                      "roll out with a canary topology")
            steps = SHADOW_STEPS
        elif list(steps) != sorted(set(steps)) or steps[-1] != 100:
            r.error(ro.get("steps", ro_node), "rollout.steps", f"must rise strictly and end at 100, got {list(steps)}")
        elif mode == "ab" and len(steps) != 2:
            r.error(ro.get("steps", ro_node), "rollout.steps",
                    f"an A/B test has one split and the promotion, e.g. [50, 100]; got {list(steps)}")
        rollout = RolloutSteps(steps, r.value(ro, "windows", "rollout", _positive_int, default=RolloutSteps.windows),
                               r.value(ro, "samples", "rollout", _non_negative_int, default=RolloutSteps.samples),
                               _approval(r, ro, steps))
    elif mode == "ab":
        r.error(root, "rollout", "mode ab needs rollout: {steps: [<split>, 100], windows: N, samples: N}")
    sh, sh_node = section("shadow", {"pair_within"})
    if sh_node is not None and mode != "shadow":
        r.error(sh_node, "shadow", "is for mode: shadow")
    pair_within = r.value(sh, "pair_within", "shadow", _duration, default=Topology.shadow_pair_within_ms)
    if pair_within is not None and pair_within <= 0:
        r.error(sh["pair_within"], "shadow.pair_within", "must be longer than 0")
    de, _ = section("decision", {"cooldown", "outage_after", "label_coverage"})
    lc = r.mapping(de["label_coverage"], "decision.label_coverage",
                   {"floor", "windows"}) if "label_coverage" in de else {}
    decision = DecisionSettings(
        cooldown_ms=r.value(de, "cooldown", "decision", _duration, default=DecisionSettings.cooldown_ms),
        outage_after_ms=r.value(de, "outage_after", "decision", _duration, default=DecisionSettings.outage_after_ms),
        label_coverage_floor=r.value(lc, "floor", "decision.label_coverage", _fraction,
                                     default=DecisionSettings.label_coverage_floor),
        label_coverage_windows=r.value(lc, "windows", "decision.label_coverage", _positive_int,
                                       default=DecisionSettings.label_coverage_windows),
    )

    dr, dr_node = section("drift", {"features", "bins", "top_k", "warmup", "thresholds", "concept"})
    concept: list[DetectorSpec] = []
    concept_node = dr.get("concept")
    if concept_node is not None and not isinstance(concept_node, yaml.SequenceNode):
        r.error(concept_node, "drift.concept", "expected a list of detectors, e.g. [{detector: adwin, delta: 0.002}]")
    elif concept_node is not None:
        for i, item in enumerate(concept_node.value):
            params = yaml.safe_load(yaml.serialize(item))
            if not isinstance(params, dict) or "detector" not in params:
                r.error(item, f"drift.concept[{i}]", f"expected a mapping with 'detector' (one of {', '.join(KINDS)})")
                continue
            try:
                concept.append(DetectorSpec.parse(str(params.pop("detector")), params))
            except ValueError as exc:
                r.error(item, f"drift.concept[{i}]", str(exc))
    th = r.mapping(dr["thresholds"], "drift.thresholds", {"psi", "wasserstein", "jensen_shannon", "alpha"}) \
        if "thresholds" in dr else {}
    limits = {name: r.value(th, name, "drift.thresholds", _positive_float, default=getattr(DriftThresholds, name))
              for name in ("psi", "wasserstein", "jensen_shannon", "alpha")}
    if limits["alpha"] >= 1:
        r.error(th["alpha"], "drift.thresholds.alpha", f"must be below 1, got {limits['alpha']}")
        limits["alpha"] = DriftThresholds.alpha
    drift = DriftSettings(
        enabled=dr_node is not None,
        features=tuple(r.sequence(dr, "features", "drift", _text)),
        bins=r.value(dr, "bins", "drift", _positive_int, default=DriftSettings.bins),
        top_k=r.value(dr, "top_k", "drift", _positive_int, default=DriftSettings.top_k),
        warmup=r.value(dr, "warmup", "drift", _positive_int, default=DriftSettings.warmup),
        thresholds=DriftThresholds(**limits),
        concept=tuple(concept),
    )

    re_, re_node = section("retrain", {"name", "drifted_share", "concept_drift", "new_labels", "train_window",
                                       "cooldown"})
    retrain = RetrainRule(
        name=r.value(re_, "name", "retrain", _text, default=RetrainRule.name),
        drifted_share=r.value(re_, "drifted_share", "retrain", _fraction, default=None),
        concept_drift=r.value(re_, "concept_drift", "retrain", _bool, default=False),
        new_labels=r.value(re_, "new_labels", "retrain", _positive_int, default=None),
        train_window_ms=r.value(re_, "train_window", "retrain", _duration, default=RetrainRule.train_window_ms),
        cooldown_ms=r.value(re_, "cooldown", "retrain", _duration, default=RetrainRule.cooldown_ms),
    )
    if re_node is not None and not retrain.enabled:
        r.error(re_node, "retrain", "names no trigger: set drifted_share, concept_drift: true or new_labels")
    if retrain.concept_drift and not drift.concept:
        r.error(re_node or root, "retrain.concept_drift", "needs detectors in drift.concept to raise alarms")
    if retrain.drifted_share is not None and not drift.enabled:
        r.error(re_node or root, "retrain.drifted_share",
                "needs a drift section (drift tables to count drifted features in)")

    rt, _ = section("routing", set().union(*_ROUTING_FIELDS.values(), {"backend"}))
    routing_backend = r.value(rt, "backend", "routing", _choice(ROUTING_BACKENDS), default="gitops")
    for key in sorted(set(rt) - {"backend"} - _ROUTING_FIELDS.get(routing_backend, set(rt))):
        r.error(rt[key], f"routing.{key}", f"does not apply to backend {routing_backend}; it takes "
                                           f"{', '.join(sorted(_ROUTING_FIELDS[routing_backend]))}")
        del rt[key]  # reported once, not checked again as that backend's value
    routing = RoutingTarget(
        backend=routing_backend or "gitops",
        manifest=r.value(rt, "manifest", "routing", _template("model", allowed=("model",)),
                         default=RoutingTarget.manifest),
        service=r.value(rt, "service", "routing", _template("version"), default=RoutingTarget.service),
        namespace=r.value(rt, "namespace", "routing", _text, default="default"),
        gateway=r.value(rt, "gateway", "routing", _text, default="ml-gateway"),
        name=r.value(rt, "name", "routing", _template(allowed=("model",)), default=RoutingTarget.name),
        subset=r.value(rt, "subset", "routing", _template("version"), default=RoutingTarget.subset),
        host=r.value(rt, "host", "routing", _template(allowed=("model",)), default=RoutingTarget.host),
    )

    ingest = _ingest(r, section("ingest", {"inference_service", "namespace", "output", "index", "classes",
                                           "label_output", "features", "inputs", "version"})[0])

    if r.errors:
        raise ConfigError(f"{len(r.errors)} problem(s) in {source}:\n  " + "\n  ".join(r.errors))
    return Topology(
        source=source, model=model, task=task, mode=mode, threshold=threshold,
        baseline_version=baseline, candidate_version=candidate,  # type: ignore[arg-type]
        baseline_alias=baseline_alias, candidate_alias=candidate_alias,
        window_size_ms=size, window_hop_ms=hop, window_grace_ms=grace, window_updates_ms=updates_every,
            window_retention_ms=retention,
        label_max_delay_ms=max_delay, max_clock_skew_ms=skew, label_align=label_align, thresholds=tuple(thresholds),
        segment_dimensions=tuple(dimensions), segment_max_values=max_values, checks=tuple(checks), decision=decision,
            rollout=rollout, routing=routing,
        shadow_pair_within_ms=pair_within,
        drift=drift, retrain=retrain, ingest=ingest,
        policy_version=hashlib.sha256(text.encode()).hexdigest()[:12],
    )


def resolve_aliases(topology: Topology, aliases: Callable[[str], Mapping[str, str]]) -> Topology:
    """`topology` with the versions its aliases point at; `aliases(model)` gives alias -> version
    (the registry's, read once when a component starts: a worker follows a moved alias when it
    restarts). A topology without aliases comes back as it is."""
    if topology.baseline_alias is None and topology.candidate_alias is None:
        return topology
    known = aliases(topology.model)

    def version(alias: str | None, given: str, side: str) -> str:
        if alias is None:
            return given
        if alias not in known:
            listed = ", ".join(f"{a} -> v{v}" for a, v in sorted(known.items())) or "none"
            raise ConfigError(f"{topology.source}: {side}.alias {alias!r}: model {topology.model!r} has no such alias "
                              f"in the registry (its aliases: {listed})")
        return known[alias]

    baseline = version(topology.baseline_alias, topology.baseline_version, "baseline")
    candidate = version(topology.candidate_alias, topology.candidate_version, "candidate")
    if baseline == candidate:
        raise ConfigError(f"{topology.source}: baseline and candidate are both version {baseline!r} of model "
                          f"{topology.model!r} in the registry: nothing to compare")
    return replace(topology, baseline_version=baseline, candidate_version=candidate)


def load_topology(path: str | Path) -> Topology:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read topology {path}: {exc.strerror}") from exc
    return parse_topology(text, str(path))


def load_topologies(paths: list[str | Path]) -> dict[str, Topology]:
    """Files or directories of *.yaml; one topology per model name."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.y*ml")) if p.is_dir() else [p])
    if not files:
        raise ConfigError(f"no topology files found in {', '.join(map(str, paths))}")
    by_model: dict[str, Topology] = {}
    for f in files:
        t = load_topology(f)
        if t.model in by_model:
            raise ConfigError(f"{f}: model {t.model!r} is already described by {by_model[t.model].source}")
        by_model[t.model] = t
    return by_model
