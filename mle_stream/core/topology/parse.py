"""Reading a topology file: one function per section, each reading its keys, converters and
defaults from the model (core/topology/model.py) and adding the checks that span several keys.

`load_topology(path)` validates the whole file and reports every problem at once, each with its
file:line, key path and what was expected, so a reviewer fixes a file in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from mle_stream.core.checks import (
    SEQUENTIAL_INPUTS,
    SHADOW_METRICS,
    AucInputs,
    CheckRule,
    SequentialSpec,
    base_metric,
    default_worse,
    metric_problem,
    sequential_problem,
)
from mle_stream.core.drift.concept import KINDS, DetectorSpec
from mle_stream.core.drift.decision import DriftThresholds
from mle_stream.core.drift.live import DriftSettings
from mle_stream.core.kserve_logger import IngestMapping, check_version_template
from mle_stream.core.topology.model import (
    ROUTING_FIELDS,
    SEQUENTIAL_CONSECUTIVE,
    SHADOW_STEPS,
    DecisionSettings,
    EstimateSettings,
    RetrainRule,
    RollbackShorthand,
    RolloutSteps,
    RoutingTarget,
    Topology,
    default_of,
    default_rollback_metric,
    yaml_keys,
)
from mle_stream.core.topology.reader import Reader
from mle_stream.core.topology.values import BOOL, NON_NEGATIVE_INT, PERCENT, TEXT, choice
from mle_stream.errors import ConfigError

Nodes = dict[str, yaml.Node]
_CHECK_LIMITS = ("max", "min", "max_degradation", "max_degradation_relative")


def _versions(r: Reader, top: Nodes) -> dict[str, Any]:
    """`baseline` and `candidate`: each a version or an MLflow alias, and not the same twice."""
    def version_of(key: str) -> tuple[str | None, str | None]:
        """(version, alias): exactly one of them."""
        node = top.get(key)
        if node is None:
            r.error(r.root, key, "is required, e.g. {version: \"1\"} or {alias: champion}")
            return None, None
        fields = r.mapping(node, key, {"version", "alias"})
        if ("version" in fields) == ("alias" in fields):
            r.error(node, key, "give either version (e.g. \"1\") or alias (an MLflow alias, e.g. champion)")
            return None, None
        if "alias" in fields:
            return "", r.value(fields, "alias", key, TEXT.convert, required=True, parent=node)
        return r.value(fields, "version", key, TEXT.convert, required=True, parent=node), None

    baseline, baseline_alias = version_of("baseline")
    candidate, candidate_alias = version_of("candidate")
    if baseline and baseline == candidate:
        r.error(top["candidate"], "candidate.version", f"must differ from baseline.version ({baseline!r})")
    if baseline_alias and baseline_alias == candidate_alias:
        r.error(top["candidate"], "candidate.alias", f"must differ from baseline.alias ({baseline_alias!r})")
    return {"baseline_version": baseline, "candidate_version": candidate,
            "baseline_alias": baseline_alias, "candidate_alias": candidate_alias}


def _windows(r: Reader, top: Nodes) -> dict[str, Any]:
    windows, node = r.section(top, "windows", yaml_keys(Topology, "windows"))
    size = r.field(windows, "windows", Topology, "window_size_ms")
    hop = r.field(windows, "windows", Topology, "window_hop_ms", default=size)
    updates_every = r.field(windows, "windows", Topology, "window_updates_ms")
    grace = r.field(windows, "windows", Topology, "window_grace_ms")
    retention = r.field(windows, "windows", Topology, "window_retention_ms")
    if size is not None and size <= 0:
        r.error(top["windows"], "windows.size", "must be longer than 0")
    if size and hop and (hop <= 0 or size % hop):
        r.error(windows.get("hop", node or r.root), "windows.hop",
                f"must be > 0 and divide windows.size ({size} ms) evenly, got {hop} ms")
    if grace is not None and retention is not None and retention < grace:
        r.error(top["windows"], "windows.retention", f"must be at least windows.grace ({grace} ms)")
    return {"window_size_ms": size, "window_hop_ms": hop, "window_grace_ms": grace,
            "window_updates_ms": updates_every, "window_retention_ms": retention}


def _simple_sections(r: Reader, top: Nodes) -> dict[str, Any]:
    """`labels`, `metrics` and `segments`: keys without checks that span them."""
    out: dict[str, Any] = {}
    for name, model_fields in (("labels", ("label_max_delay_ms", "max_clock_skew_ms", "label_align")),
                               ("metrics", ("thresholds",)),
                               ("segments", ("segment_dimensions", "segment_max_values"))):
        values, _ = r.section(top, name, yaml_keys(Topology, name))
        out.update({f: r.field(values, name, Topology, f) for f in model_fields})
    return out


def _rollback(r: Reader, top: Nodes, task: str | None) -> list[CheckRule]:
    """The `rollback` shorthand: its check, which is also the default when there are no `checks`."""
    rb, node = r.section(top, "rollback", yaml_keys(RollbackShorthand))
    if node is None and "checks" in top:
        return []
    metric = r.field(rb, "rollback", RollbackShorthand, "metric", default=default_rollback_metric(task))
    if metric == "error_rate" and default_rollback_metric(task) != "error_rate":
        r.error(node or r.root, "rollback.metric",
                f"error_rate needs a classification task; use serving_error_rate for {task}")
    shorthand = RollbackShorthand(metric=metric, **{
        name: r.field(rb, "rollback", RollbackShorthand, name)
        for name in ("name", "max_increase", "consecutive_windows", "min_samples")})
    return [shorthand.rule(task)]


def _sequential(r: Reader, c: Nodes, path: str, metric: str | None, task: str | None) -> SequentialSpec | None:
    if "sequential" not in c:
        return None
    path = f"{path}.sequential"
    sq = r.mapping(c["sequential"], path, yaml_keys(SequentialSpec))
    spec = SequentialSpec(**{f.name: r.field(sq, path, SequentialSpec, f.name) for f in fields(SequentialSpec)})
    problem = sequential_problem(task, metric or "")
    if problem:
        r.error(c["sequential"], path, problem)
    elif metric is not None:
        # The AUC test's margin is a difference in AUC units; every other test's is a ratio.
        auc = isinstance(SEQUENTIAL_INPUTS.get(base_metric(metric)), AucInputs)
        margin, other = ("min_difference", "min_relative_increase") if auc else (
            "min_relative_increase", "min_difference")
        if other in sq:
            r.error(sq[other], f"{path}.{other}", f"is not a setting of {metric}'s test: its margin is {margin}")
    if any(k in c for k in (*_CHECK_LIMITS, "hysteresis")):
        r.error(c["sequential"], path, "decides alone: give the limits (max, min, max_degradation...) to another check")
    return spec


def _check(r: Reader, item: yaml.Node, path: str, task: str | None, mode: str | None,
           thresholds: tuple[float, ...], taken: set[str]) -> CheckRule:
    """One item of `checks`; `taken`: the names of the checks before it."""
    c = r.mapping(item, path, yaml_keys(CheckRule))

    def read(name: str, default: Any = None) -> Any:
        return r.field(c, path, CheckRule, name, default=default, parent=item)

    name, metric = read("name"), read("metric")
    problem = None if metric is None or task is None else metric_problem(task, metric, thresholds, mode or "canary")
    if metric in SHADOW_METRICS and any(k in c for k in ("max_degradation", "max_degradation_relative")):
        r.error(c["metric"], f"{path}.metric", f"{metric} already compares the shadow with production: "
                                               "give it max or min, not max_degradation")
    if problem:
        r.error(c["metric"], f"{path}.metric", problem)
    worse = read("worse", None if metric is None else default_worse(metric))
    if worse is None and metric is not None and not problem:
        r.error(item, f"{path}.worse", f"say in which direction {metric} gets worse: higher or lower")
    sequential = _sequential(r, c, path, metric, task)
    estimated = (metric or "").startswith("estimated_")
    allow = read("allow_rollback_without_labels")
    action = read("action", "hold" if estimated else None)
    if estimated and action == "rollback" and not allow:
        r.error(c["action"], f"{path}.action", f"{metric} is estimated from scores, without labels: its firing holds "
                "by default; set allow_rollback_without_labels: true to roll back on it (docs/estimates.md says "
                "when an estimate cannot be trusted)")
    elif allow and not estimated:
        r.error(c["allow_rollback_without_labels"], f"{path}.allow_rollback_without_labels",
                "only applies to checks on estimated_* metrics")
    rule = CheckRule(
        sequential=sequential, name=name or "", metric=metric or "", worse=worse or "higher",
        **{limit: read(limit) for limit in _CHECK_LIMITS},
        min_samples=read("min_samples"),
        consecutive=read("consecutive", SEQUENTIAL_CONSECUTIVE if "sequential" in c else None),
        cumulative=read("cumulative"), hysteresis=read("hysteresis"), action=action,
        allow_rollback_without_labels=bool(allow))
    if not rule.limits():
        r.error(item, path, "sets no limit: give max, min, max_degradation or max_degradation_relative")
    if name in taken:
        r.error(c.get("name", item), f"{path}.name", f"{name!r} is already the name of another check")
    return rule


def _checks(r: Reader, top: Nodes, task: str | None, mode: str | None,
            thresholds: tuple[float, ...]) -> list[CheckRule]:
    checks = _rollback(r, top, task)
    node = top.get("checks")
    if node is not None and not isinstance(node, yaml.SequenceNode):
        r.error(node, "checks", "expected a list of checks, e.g. [{name: f1, metric: f1, min: 0.8}]")
    elif node is not None:
        for i, item in enumerate(node.value):
            checks.append(_check(r, item, f"checks[{i}]", task, mode, thresholds, {k.name for k in checks}))
    return checks


def _approval(r: Reader, rollout: Nodes, steps: tuple[int, ...]) -> tuple[int, ...]:
    """`rollout.approval`: true (every step the candidate moves to), false, or a list of those steps."""
    node = rollout.get("approval")
    if node is None:
        return default_of(RolloutSteps, "approval")
    if not isinstance(node, yaml.SequenceNode):
        every = r.value(rollout, "approval", "rollout", BOOL.convert)
        return steps[1:] if every else default_of(RolloutSteps, "approval")
    listed = r.sequence(rollout, "approval", "rollout", PERCENT.convert)
    unknown = [p for p in listed if p not in steps[1:]]
    if unknown:
        r.error(node, "rollout.approval", f"{unknown} are not steps the candidate moves to; expected some of "
                                          f"{list(steps[1:])} (rollout.steps after the first), or true")
    return tuple(p for p in steps[1:] if p in listed)


def _rollout(r: Reader, top: Nodes, mode: str | None) -> RolloutSteps | None:
    ro, node = r.section(top, "rollout", yaml_keys(RolloutSteps))
    if node is None:
        if mode == "ab":
            r.error(r.root, "rollout", "mode ab needs rollout: {steps: [<split>, 100], windows: N, samples: N}")
        return None
    steps = r.field(ro, "rollout", RolloutSteps, "steps")
    if mode == "shadow":
        if "steps" in ro:
            r.error(ro["steps"], "rollout.steps", "a shadow serves no traffic, so it has no steps: its gate "
                                                  "promotes it to 100%; for traffic steps after the shadow, "
                                                  "roll out with a canary topology")
        steps = SHADOW_STEPS
    elif list(steps) != sorted(set(steps)) or steps[-1] != 100:
        r.error(ro.get("steps", node), "rollout.steps", f"must rise strictly and end at 100, got {list(steps)}")
    elif mode == "ab" and len(steps) != 2:
        r.error(ro.get("steps", node), "rollout.steps",
                f"an A/B test has one split and the promotion, e.g. [50, 100]; got {list(steps)}")
    return RolloutSteps(steps=steps, windows=r.field(ro, "rollout", RolloutSteps, "windows"),
                        samples=r.field(ro, "rollout", RolloutSteps, "samples"), approval=_approval(r, ro, steps))


def _shadow(r: Reader, top: Nodes, mode: str | None) -> int:
    sh, node = r.section(top, "shadow", yaml_keys(Topology, "shadow"))
    if node is not None and mode != "shadow":
        r.error(node, "shadow", "is for mode: shadow")
    pair_within: int = r.field(sh, "shadow", Topology, "shadow_pair_within_ms")
    if pair_within is not None and pair_within <= 0:
        r.error(sh["pair_within"], "shadow.pair_within", "must be longer than 0")
    return pair_within


def _decision(r: Reader, top: Nodes) -> DecisionSettings:
    de, _ = r.section(top, "decision", yaml_keys(DecisionSettings))
    lc = (r.mapping(de["label_coverage"], "decision.label_coverage", yaml_keys(DecisionSettings, "label_coverage"))
          if "label_coverage" in de else {})
    return DecisionSettings(
        cooldown_ms=r.field(de, "decision", DecisionSettings, "cooldown_ms"),
        outage_after_ms=r.field(de, "decision", DecisionSettings, "outage_after_ms"),
        label_coverage_floor=r.field(lc, "decision.label_coverage", DecisionSettings, "label_coverage_floor"),
        label_coverage_windows=r.field(lc, "decision.label_coverage", DecisionSettings, "label_coverage_windows"))


def _concept(r: Reader, node: yaml.Node | None) -> tuple[DetectorSpec, ...]:
    """`drift.concept`: the online detectors, each validated by DetectorSpec.parse."""
    if node is None:
        return default_of(DriftSettings, "concept")
    if not isinstance(node, yaml.SequenceNode):
        r.error(node, "drift.concept", "expected a list of detectors, e.g. [{detector: adwin, delta: 0.002}]")
        return default_of(DriftSettings, "concept")
    concept: list[DetectorSpec] = []
    for i, item in enumerate(node.value):
        params = yaml.safe_load(yaml.serialize(item))
        if not isinstance(params, dict) or "detector" not in params:
            r.error(item, f"drift.concept[{i}]", f"expected a mapping with 'detector' (one of {', '.join(KINDS)})")
            continue
        try:
            concept.append(DetectorSpec.parse(str(params.pop("detector")), params))
        except ValueError as exc:
            r.error(item, f"drift.concept[{i}]", str(exc))
    return tuple(concept)


def _drift(r: Reader, top: Nodes) -> DriftSettings:
    dr, node = r.section(top, "drift", yaml_keys(DriftSettings))
    concept = _concept(r, dr.get("concept"))
    th = r.mapping(dr["thresholds"], "drift.thresholds", yaml_keys(DriftThresholds)) if "thresholds" in dr else {}
    limits = {f.name: r.field(th, "drift.thresholds", DriftThresholds, f.name) for f in fields(DriftThresholds)}
    if limits["alpha"] >= 1:
        r.error(th["alpha"], "drift.thresholds.alpha", f"must be below 1, got {limits['alpha']}")
        limits["alpha"] = default_of(DriftThresholds, "alpha")
    return DriftSettings(
        enabled=node is not None, features=r.field(dr, "drift", DriftSettings, "features"),
        **{name: r.field(dr, "drift", DriftSettings, name) for name in ("bins", "top_k", "warmup")},
        thresholds=DriftThresholds(**limits), concept=concept)


def _retrain(r: Reader, top: Nodes, drift: DriftSettings) -> RetrainRule:
    re_, node = r.section(top, "retrain", yaml_keys(RetrainRule))
    retrain = RetrainRule(**{f.name: r.field(re_, "retrain", RetrainRule, f.name) for f in fields(RetrainRule)})
    if node is not None and not retrain.enabled:
        r.error(node, "retrain", "names no trigger: set drifted_share, concept_drift: true or new_labels")
    if retrain.concept_drift and not drift.concept:
        r.error(node or r.root, "retrain.concept_drift", "needs detectors in drift.concept to raise alarms")
    if retrain.drifted_share is not None and not drift.enabled:
        r.error(node or r.root, "retrain.drifted_share", "needs a drift section (drift tables to count drifted "
                                                         "features in)")
    return retrain


def _estimates(r: Reader, top: Nodes, task: str | None, checks: list[CheckRule]) -> EstimateSettings:
    es, node = r.section(top, "estimates", yaml_keys(EstimateSettings))
    settings = EstimateSettings(enabled=node is not None, **{
        name: r.field(es, "estimates", EstimateSettings, name) for name in ("reference_labels", "bins", "classes")})
    if node is not None and task is not None and task not in ("binary", "multiclass"):
        r.error(node, "estimates", f"label-free estimates are for binary and multiclass models, not {task}")
    if node is not None and task == "multiclass" and (len(settings.classes) < 2
                                                       or len(set(settings.classes)) != len(settings.classes)):
        r.error(es.get("classes", node), "estimates.classes", "a multiclass model's estimates need the classes "
                "its scores name: at least 2, each once (e.g. classes: [cat, dog, bird])")
    if node is not None and task == "binary" and settings.classes:
        r.error(es["classes"], "estimates.classes", "only applies to multiclass models")
    if not 2 <= settings.bins <= 1 << 16:
        r.error(es.get("bins", node or r.root), "estimates.bins", f"must be between 2 and 65536, got {settings.bins}")
    if node is None:
        for rule in checks:
            if rule.metric.startswith("estimated_"):
                r.error(r.root, "estimates", f"check {rule.name!r} reads {rule.metric}: add an estimates section "
                        "(e.g. estimates: {reference_labels: 2000}) so the windows carry it")
    return settings


def _routing(r: Reader, top: Nodes) -> RoutingTarget:
    rt, _ = r.section(top, "routing", yaml_keys(RoutingTarget))
    backend = r.field(rt, "routing", RoutingTarget, "backend")
    for key in sorted(set(rt) - {"backend"} - ROUTING_FIELDS[backend]):
        r.error(rt[key], f"routing.{key}", f"does not apply to backend {backend}; it takes "
                                           f"{', '.join(sorted(ROUTING_FIELDS[backend]))}")
        del rt[key]  # reported once, not checked again as that backend's value
    return RoutingTarget(backend=backend, **{f.name: r.field(rt, "routing", RoutingTarget, f.name)
                                             for f in fields(RoutingTarget) if f.name != "backend"})


def _ingest(r: Reader, top: Nodes) -> IngestMapping:
    """The `ingest` section: how `mle-stream ingest` maps KServe logger events (docs/ingest.md)."""
    ig, _ = r.section(top, "ingest", {f.name for f in fields(IngestMapping)})

    def optional_text(key: str) -> str | None:
        return r.value(ig, key, "ingest", TEXT.convert, default=default_of(IngestMapping, key))

    def version_template(v: Any) -> str:
        return check_version_template(TEXT.convert(v))

    features: str | tuple[str, ...] = IngestMapping.features
    if isinstance(ig.get("features"), yaml.SequenceNode):
        features = tuple(r.sequence(ig, "features", "ingest", TEXT.convert)) or "none"
    elif "features" in ig:
        features = r.value(ig, "features", "ingest", choice(("auto", "none")).convert, default=IngestMapping.features)
    version = IngestMapping.version
    if isinstance(ig.get("version"), yaml.SequenceNode):
        version = tuple(r.sequence(ig, "version", "ingest", version_template))
    elif "version" in ig:
        version = (r.value(ig, "version", "ingest", version_template, default=""),)
    index = r.value(ig, "index", "ingest", NON_NEGATIVE_INT.convert, default=IngestMapping.index)
    return IngestMapping(
        inference_service=optional_text("inference_service"), namespace=optional_text("namespace"),
        output=optional_text("output"), index=index, label_output=optional_text("label_output"),
        classes=tuple(r.sequence(ig, "classes", "ingest", TEXT.convert)), features=features,
        inputs=tuple(r.sequence(ig, "inputs", "ingest", TEXT.convert)),
        version=tuple(v for v in version if v) or IngestMapping.version)


def _compose(text: str, source: str) -> yaml.Node:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if root is None:
        raise ConfigError(f"{source}: the file is empty; see topologies/ for an example")
    return root


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    """The topology `text` describes; ConfigError listing every problem (file:line: key: what)."""
    r = Reader(source, _compose(text, source))
    top = r.mapping(r.root, "", yaml_keys(Topology))
    model = r.field(top, "", Topology, "model")
    task = r.field(top, "", Topology, "task")
    mode = r.field(top, "", Topology, "mode")
    threshold = r.field(top, "", Topology, "threshold")
    versions = _versions(r, top)
    windows = _windows(r, top)
    simple = _simple_sections(r, top)
    checks = _checks(r, top, task, mode, simple["thresholds"])
    rollout = _rollout(r, top, mode)
    pair_within = _shadow(r, top, mode)
    decision = _decision(r, top)
    drift = _drift(r, top)
    retrain = _retrain(r, top, drift)
    estimates = _estimates(r, top, task, checks)
    routing = _routing(r, top)
    ingest = _ingest(r, top)
    if r.errors:
        raise ConfigError(f"{len(r.errors)} problem(s) in {source}:\n  " + "\n  ".join(r.errors))
    return Topology(
        source=source, model=model, task=task, mode=mode, threshold=threshold, **versions, **windows, **simple,
        checks=tuple(checks), decision=decision, rollout=rollout, shadow_pair_within_ms=pair_within, drift=drift,
        retrain=retrain, estimates=estimates, routing=routing, ingest=ingest,
        policy_version=hashlib.sha256(text.encode()).hexdigest()[:12])


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
