"""The topology as a model: what one YAML file says about one model, section by section.

Every default lives here once, on its dataclass field, and every key a file may hold is documented
on the field it fills (`Key`: its YAML name, kind, unit and meaning). The parser reads keys,
converters and defaults from these fields, and the reference table in docs/topologies.md is
rendered from them (`mle_stream.core.topology.reference`), so code, defaults and docs agree.

Sections whose values are objects of other modules (a check is a `CheckRule`, the drift section a
`DriftSettings`) keep their defaults there; their keys are documented in `EXTERNAL_KEYS` below.

Task, mode and action are `Literal` string types rather than enums: the values are the strings
YAML, the wire, snapshots and logs carry, and a plain str keeps them exactly that everywhere.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from typing import Any, Literal, get_args

from mle_stream.core.checks import SEQUENTIAL_METRICS, CheckRule, SequentialSpec
from mle_stream.core.drift.decision import DriftThresholds
from mle_stream.core.drift.live import DriftSettings
from mle_stream.core.kserve_logger import IngestMapping
from mle_stream.core.sequential import ErrorRateTest, MeanTest
from mle_stream.core.sequential_auc import AucTest
from mle_stream.core.tasks import TASKS as TASK_TYPES
from mle_stream.core.topology.values import (
    BOOL,
    DURATION,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    NUMBER,
    OPEN_FRACTION,
    PERCENT,
    POSITIVE,
    POSITIVE_INT,
    TEXT,
    TEXTS,
    Kind,
    choice,
    template,
)

Task = Literal["binary", "multiclass", "regression"]
# canary: the candidate takes rising traffic steps (rollout.steps) or keeps the deployment's split;
# ab: both versions serve a fixed split (rollout.steps: [split, 100]) until the gate promotes the
# candidate or a check rolls it back; shadow: the candidate answers mirrored requests and is never
# served, its predictions are paired with production's by prediction_id (core/shadow.py), and the
# gate, if any, promotes it straight to 100% (as Flagger's traffic mirroring does).
Mode = Literal["canary", "ab", "shadow"]
Action = Literal["rollback", "hold"]  # what a check's firing does
TASKS: tuple[Task, ...] = get_args(Task)
MODES: tuple[Mode, ...] = get_args(Mode)
ACTIONS: tuple[Action, ...] = get_args(Action)
SHADOW_STEPS = (0, 100)  # the shadow's rollout: 0% of live traffic, then promotion
ROLLBACK_METRICS = ("error_rate", "serving_error_rate")  # the `rollback:` shorthand's choices
SEQUENTIAL_CONSECUTIVE = 1  # a sequential test's FAIL is already conclusive: one window fires it

# Where a model's traffic split lives: a GitOps repository of HTTPRoute manifests, or an object the
# actuator patches on the API server (Gateway API HTTPRoute, Istio VirtualService, KServe
# InferenceService). Each backend reads only the fields it needs; naming another backend's field
# is an error, so a copied topology cannot silently route through the wrong object.
ROUTING_BACKENDS = ("gitops", "gateway-api", "istio", "kserve")
ROUTING_FIELDS = {
    "gitops": {"manifest", "service", "namespace", "gateway"},
    "gateway-api": {"name", "service", "namespace"},
    "istio": {"name", "subset", "host", "namespace"},
    "kserve": {"name", "namespace"},
}


@dataclass(frozen=True)
class Key:
    """How one YAML key fills a field, for the parser and the reference table.

    `name` is the key's path within its section ("size"; "label_coverage.floor" one level down).
    `default` replaces the field's own default in the reference where that needs words ("by
    metric"); "{}" in it stands for the field's default. Keys that hold mappings (`baseline`,
    `drift.concept`, `ingest`) are read by their own functions in parse.py: their Kind only names
    the type in the reference."""

    name: str
    kind: Kind
    meaning: str
    unit: str = ""
    default: str | None = None
    required: bool = False

    @property
    def leaf(self) -> str:
        """The key as it is written in its YAML mapping."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Section:
    """A field that holds a section: its keys are those of `model`, under `name`."""

    name: str
    model: type


def key(name: str, kind: Kind, meaning: str, unit: str = "", *, default: str | None = None,
        required: bool = False) -> dict[str, Any]:
    """Field metadata documenting the YAML key `name` (see Key)."""
    return {"topology": Key(name, kind, meaning, unit, default, required)}


def section(*sections: Section) -> dict[str, Any]:
    return {"topology": sections}


def default_of(model: type, name: str) -> Any:
    """The default of `model`'s field `name` (MISSING for a required one)."""
    f = _fields(model)[name]
    return f.default_factory() if f.default_factory is not MISSING else f.default


@cache
def _fields(model: type) -> dict[str, Field[Any]]:
    return {f.name: f for f in fields(model)}


def default_rollback_metric(task: str | None) -> str:
    """The `rollback` shorthand's metric when it names none: the serving error rate for a task
    without an error rate (regression)."""
    known = TASK_TYPES.get(task or "")
    return "serving_error_rate" if known is not None and "error_rate" not in known.metric_names else "error_rate"


@dataclass(frozen=True)
class RollbackShorthand:
    """The `rollback` section: one check of the candidate's error rate against the baseline's (the
    serving error rate for regression). Without `checks:`, it is the topology's only check."""

    metric: str | None = field(default=None, metadata=key(
        "metric", choice(ROLLBACK_METRICS), "the shorthand check, used when there is no `checks:`",
        default="`error_rate` (`serving_error_rate` for regression)"))
    max_increase: float = field(default=0.05, metadata=key(
        "max_increase", FRACTION, "how much worse than the baseline the candidate may be", "metric units"))
    consecutive_windows: int = field(default=CheckRule.consecutive, metadata=key(
        "consecutive_windows", POSITIVE_INT, "FAIL windows in a row that roll back", "windows"))
    min_samples: int = field(default=CheckRule.min_samples, metadata=key(
        "min_samples", POSITIVE_INT, "per side, else INCONCLUSIVE", "samples"))
    name: str = field(default="error-rate-vs-baseline", metadata=key(
        "name", TEXT, "the rule's name in commands"))

    def rule(self, task: str | None) -> CheckRule:
        return CheckRule(name=self.name, metric=self.metric or default_rollback_metric(task), worse="higher",
                         max_degradation=self.max_increase, consecutive=self.consecutive_windows,
                         min_samples=self.min_samples)


@dataclass(frozen=True)
class DecisionSettings:
    """The `decision` section: what holds for every check."""

    cooldown_ms: int = field(default=300_000, metadata=key(
        "cooldown", DURATION, "between two HOLD commands, and between two traffic steps", "event time"))
    outage_after_ms: int = field(default=300_000, metadata=key(
        "outage_after", DURATION, "a source silent this long makes the window ERROR", "worker clock"))
    # Labels gone quiet while predictions flow: `label_coverage_windows` closed windows in a row whose
    # candidate labeled/predictions is below `label_coverage_floor` get one HOLD saying so (a check
    # reading labeled samples would otherwise sit INCONCLUSIVE with nothing said). Floor 0: off.
    label_coverage_floor: float = field(default=0.05, metadata=key(
        "label_coverage.floor", FRACTION, "below it in `windows` closed windows in a row: one HOLD (0: off)",
        "labeled / predictions"))
    label_coverage_windows: int = field(default=3, metadata=key(
        "label_coverage.windows", POSITIVE_INT, "how many closed windows below `floor` make the HOLD", "windows"))


@dataclass(frozen=True)
class RolloutSteps:
    """The `rollout` section: the candidate's traffic steps (percent). The candidate starts at the
    first (the deployment's own split); it moves to the next once `windows` consecutive windows
    PASS every check in the current step with at least `samples` candidate samples in all, and
    the cooldown since the last step has passed; at 100 it is PROMOTEd (champion). A step listed in
    `approval` (`approval: true` lists every step after the first) then waits for an operator's
    APPROVE command."""

    steps: tuple[int, ...] = field(default=(5, 10, 25, 50, 100), metadata=key(
        "steps", PERCENT.list_of("list of percents"), "rising, ending at 100; `ab`: `[split, 100]`; not for `shadow`",
        "%"))
    windows: int = field(default=3, metadata=key(
        "windows", POSITIVE_INT, "the last `windows` windows of a step all PASS every check ...", "windows"))
    samples: int = field(default=500, metadata=key(
        "samples", NON_NEGATIVE_INT, "... with at least this many candidate samples between them", "samples"))
    approval: tuple[int, ...] = field(default=(), metadata=key(
        "approval", Kind("bool or list of steps", BOOL.convert),
        "these steps wait for an operator (`true`: every step after the first)", "%", default="`false`"))


@dataclass(frozen=True)
class RetrainRule:
    """When to ask for a retrain of the baseline (the version in production): any trigger that is
    set fires. The command names the event-time range of data to train on: `train_window` up to
    the end of the window that fired (never before the version's training time)."""

    drifted_share: float | None = field(default=None, metadata=key(
        "drifted_share", FRACTION,
        "retrain when this share of the baseline's features drifted in a closed window"))
    concept_drift: bool = field(default=False, metadata=key(
        "concept_drift", BOOL, "retrain on a concept-drift alarm on the baseline's errors"))
    new_labels: int | None = field(default=None, metadata=key(
        "new_labels", POSITIVE_INT, "retrain after this many labeled predictions since training", "labels"))
    train_window_ms: int = field(default=30 * 86_400_000, metadata=key(
        "train_window", DURATION, "the command names the data to train on: this far back", "event time"))
    cooldown_ms: int = field(default=86_400_000, metadata=key(
        "cooldown", DURATION, "between two retrain commands", "event time"))
    name: str = field(default="retrain", metadata=key("name", TEXT, "the rule's name in commands"))

    @property
    def enabled(self) -> bool:
        return self.drifted_share is not None or self.concept_drift or self.new_labels is not None


@dataclass(frozen=True)
class EstimateSettings:
    """The `estimates` section (binary and multiclass models): label-free estimates of accuracy,
    precision, recall, F1 and ROC AUC from calibrated scores ([estimates.md](estimates.md);
    multiclass: one-vs-rest per listed class, macro-averaged). The calibration is learned from the
    baseline's first labeled panes, each taken as it leaves retention (its late labels in), until it
    holds `reference_labels` labels; then it is frozen."""

    enabled: bool = False  # the section is present
    reference_labels: int = field(default=2000, metadata=key(
        "reference_labels", POSITIVE_INT, "the baseline's labeled predictions the calibration is learned from",
        "labels"))
    bins: int = field(default=64, metadata=key(
        "bins", POSITIVE_INT, "score bins of the calibration and the estimates (2 to 65536)", "bins"))
    classes: tuple[str, ...] = field(default=(), metadata=key(
        "classes", TEXTS, "multiclass models (required there): the classes estimated, one-vs-rest"))


@dataclass(frozen=True)
class RoutingTarget:
    """The `routing` section: the object whose traffic split the actuator moves (ROUTING_FIELDS
    says which keys each backend takes)."""

    backend: str = field(default="gitops", metadata=key(
        "backend", choice(ROUTING_BACKENDS),
        "where the actuator moves traffic ([actuator.md](actuator.md#routing-backends))"))
    manifest: str = field(default="routes/{model}.yaml", metadata=key(
        "manifest", template("model", allowed=("model",)), "gitops: the manifest's path in the repository"))
    service: str = field(default="{model}-v{version}", metadata=key(
        "service", template("version"), "gitops, gateway-api: the Service of one version"))
    namespace: str = field(default="default", metadata=key("namespace", TEXT, "the route's namespace"))
    gateway: str = field(default="ml-gateway", metadata=key(
        "gateway", TEXT, "gitops: parentRef of a new manifest"))
    name: str = field(default="{model}", metadata=key(
        "name", template(allowed=("model",)), "gateway-api, istio, kserve: the object's name"))
    subset: str = field(default="v{version}", metadata=key(
        "subset", template("version"), "istio: the DestinationRule subset of one version"))
    host: str = field(default="{model}", metadata=key(
        "host", template(allowed=("model",)), "istio: destination host of a new route entry"))


_WINDOW_MS = 60_000  # windows are tumbling by default: the hop is the size
VERSION_REF = Kind('`{version: "N"}` or `{alias: NAME}`', TEXT.convert)
_VERSION_MEANING = "MLflow version or alias, resolved when the worker starts; the two must differ"


@dataclass(frozen=True)
class Topology:
    """One topology file: the model, the versions compared, how they are windowed and judged, and
    the route the actuator moves. Fields documented with a Key are the file's keys."""

    source: str
    model: str = field(metadata=key(
        "model", TEXT, "the model's name, as in its records' `model` field and in MLflow", required=True))
    task: Task = field(metadata=key(
        "task", choice(TASKS), "which metrics the windows carry ([metrics.md](metrics.md))", required=True))
    # Versions named by MLflow alias instead: their *_version is "" until resolve_aliases fills it.
    baseline_version: str = field(metadata=key("baseline", VERSION_REF, _VERSION_MEANING, required=True))
    candidate_version: str = field(metadata=key("candidate", VERSION_REF, _VERSION_MEANING, required=True))
    mode: Mode = field(default="canary", metadata=key(
        "mode", choice(MODES),
        "how the candidate meets traffic ([concepts.md](concepts.md#canary-ab-and-shadow)); `ab` needs `rollout`"))
    threshold: float = field(default=0.5, metadata=key(
        "threshold", FRACTION, "binary: the decision is `score >= threshold` unless the record has `predicted_label`",
        "score"))
    baseline_alias: str | None = None
    candidate_alias: str | None = None
    window_size_ms: int = field(default=_WINDOW_MS, metadata=key(
        "windows.size", DURATION, "window length", "event time"))
    window_hop_ms: int = field(default=_WINDOW_MS, metadata=key(  # the parser's default: the size (tumbling)
        "windows.hop", DURATION, "hopping windows every `hop` (= size: tumbling); must divide the size evenly",
        "event time", default="= `size`"))
    window_grace_ms: int = field(default=30_000, metadata=key(
        "windows.grace", DURATION, "a window is judged once event time is this far past its end", "event time"))
    window_retention_ms: int = field(default=3_600_000, metadata=key(
        "windows.retention", DURATION, "late labels update a window until then; at least `grace`", "event time"))
    window_updates_ms: int = field(default=10_000, metadata=key(
        "windows.updates_every", DURATION, "publish OPEN/REVISED updates at most this often (`0s`: every batch)",
        "worker clock"))
    label_max_delay_ms: int = field(default=7 * 86_400_000, metadata=key(
        "labels.max_delay", DURATION, "a prediction without a label after this long counts as unlabeled",
        "event time"))
    max_clock_skew_ms: int = field(default=300_000, metadata=key(
        "labels.max_clock_skew", DURATION,
        "predictions and labels stamped further ahead of the worker's clock are dead-lettered", "worker clock"))
    # Close windows and expire predictions only once the labels, too, have passed in event time
    # (so a worker reading a backlog loses no label); off for labelers that stamp labels with the
    # prediction's time long after the fact, which would hold every window back.
    label_align: bool = field(default=True, metadata=key(
        "labels.align", BOOL, "windows wait for the labels' event time too ([catch-up.md](catch-up.md))"))
    thresholds: tuple[float, ...] = field(default=(), metadata=key(
        "metrics.thresholds", FRACTION.list_of("list of fractions"),
        "extra decision thresholds: `accuracy@t`, `precision@t`, `recall@t`, `f1@t`", "score"))
    segment_dimensions: tuple[str, ...] = field(default=(), metadata=key(
        "segments.dimensions", TEXTS, "also compute metrics per value of these `segment` keys"))
    segment_max_values: int = field(default=50, metadata=key(
        "segments.max_values", POSITIVE_INT, "per dimension; later values count as `__other__`", "values"))
    checks: tuple[CheckRule, ...] = field(default=(), metadata=section(
        Section("rollback", RollbackShorthand), Section("checks[]", CheckRule)))
    decision: DecisionSettings = field(default_factory=DecisionSettings,
                                       metadata=section(Section("decision", DecisionSettings)))
    # None: no progressive rollout (the deployment's split stays).
    rollout: RolloutSteps | None = field(default=None, metadata=section(Section("rollout", RolloutSteps)))
    shadow_pair_within_ms: int = field(default=60_000, metadata=key(
        "shadow.pair_within", DURATION, "`mode: shadow`: how long a side waits for its twin", "event time"))
    drift: DriftSettings = field(default_factory=DriftSettings, metadata=section(Section("drift", DriftSettings)))
    retrain: RetrainRule = field(default_factory=RetrainRule, metadata=section(Section("retrain", RetrainRule)))
    estimates: EstimateSettings = field(default_factory=EstimateSettings,
                                        metadata=section(Section("estimates", EstimateSettings)))
    routing: RoutingTarget = field(default_factory=RoutingTarget, metadata=section(Section("routing", RoutingTarget)))
    policy_version: str = ""
    ingest: IngestMapping = field(default_factory=IngestMapping, metadata=key(  # mle-stream ingest: KServe events
        "ingest.*", Kind("", TEXT.convert),
        "how `mle-stream ingest` maps KServe's logger events to records: [ingest.md](ingest.md)", default=""))


def _per_test(name: str) -> str:
    """A sequential test's default, which depends on the metric's test (core/sequential.py)."""
    return (f"{getattr(ErrorRateTest, name)} (rates, latency quantiles), {getattr(MeanTest, name)} (means)"
            + (f", {getattr(AucTest, name)} (`roc_auc`)" if name == "mixing_scale" else ""))


# Keys of sections whose dataclasses live with the code that uses them (their defaults stay there).
EXTERNAL_KEYS: dict[type, dict[str, Key | tuple[Section, ...]]] = {
    CheckRule: {
        "name": Key("name", TEXT, "unique per topology; the rule's name in commands", required=True),
        "metric": Key("metric", TEXT, "any metric of the task ([metrics.md](metrics.md))", required=True),
        "worse": Key("worse", choice(("higher", "lower")),
                     "required for metrics without a direction (`mean_score`, `positive_rate`)", default="by metric"),
        "max": Key("max", NUMBER, "absolute limit: FAIL above it", "metric units"),
        "min": Key("min", NUMBER, "absolute limit: FAIL below it", "metric units"),
        "max_degradation": Key("max_degradation", NON_NEGATIVE, "candidate vs baseline", "metric units"),
        "max_degradation_relative": Key("max_degradation_relative", NON_NEGATIVE, "candidate vs baseline",
                                        "fraction of the baseline"),
        "min_samples": Key("min_samples", POSITIVE_INT,
                           "labeled predictions (predictions for serving metrics) per side", "samples"),
        "consecutive": Key("consecutive", POSITIVE_INT, "FAIL windows in a row that fire the action", "windows",
                           default=f"{{}} ({SEQUENTIAL_CONSECUTIVE} with `sequential`)"),
        "cumulative": Key("cumulative", POSITIVE_INT, "... or FAIL windows in all", "windows"),
        "hysteresis": Key("hysteresis", NON_NEGATIVE, "once failing, PASS again only this far inside the limit",
                          "metric units"),
        "action": Key("action", choice(ACTIONS), "what the check's firing does",
                      default="`rollback` (`hold` for `estimated_*`)"),
        "allow_rollback_without_labels": Key(
            "allow_rollback_without_labels", BOOL,
            "lets a check on `estimated_*` roll back ([estimates.md](estimates.md#checks))", default="`false`"),
        "sequential": (Section("sequential", SequentialSpec),),
    },
    SequentialSpec: {
        "alpha": Key("alpha", OPEN_FRACTION, "false-rollback rate of the always-valid test, which checks on "
                     f"{', '.join(f'`{m}`' for m in SEQUENTIAL_METRICS)} take "
                     "([decisions.md](decisions.md#sequential-tests))", "probability"),
        "min_relative_increase": Key("min_relative_increase", NON_NEGATIVE,
                                     "no rollback for a smaller relative difference (not `roc_auc`)", "fraction",
                                     default=_per_test("min_relative_increase")),
        "mixing_scale": Key("mixing_scale", POSITIVE, "scale of the mixture's prior",
                            "log rate ratio; pooled std; AUC", default=_per_test("mixing_scale")),
        "min_difference": Key("min_difference", FRACTION, "`roc_auc` only: no rollback for a smaller AUC shortfall",
                              "AUC", default=str(AucTest.min_difference)),
    },
    DriftSettings: {
        "features": Key("features", TEXTS, "features compared ([drift.md](drift.md))",
                        default="every feature of the reference"),
        "bins": Key("bins", POSITIVE_INT, "quantile bins per numeric feature when learned without a profile", "bins"),
        "top_k": Key("top_k", POSITIVE_INT, "per categorical feature, idem", "categories"),
        "warmup": Key("warmup", POSITIVE_INT, "baseline predictions the bins are learned from", "predictions"),
        "thresholds": (Section("thresholds", DriftThresholds),),
        "concept": Key("concept", Kind("list of `{detector: ..., params}`", TEXT.convert),
                       "`adwin`, `page_hinkley`, `kswin` (river's parameters), `cusum` (`k`, `h`)"),
    },
    DriftThresholds: {
        "psi": Key("psi", POSITIVE, "effect size (population stability index) that can make a feature drifted"),
        "wasserstein": Key("wasserstein", POSITIVE, "idem, normed Wasserstein distance (numeric features)"),
        "jensen_shannon": Key("jensen_shannon", POSITIVE, "idem, Jensen–Shannon distance (categorical features)"),
        "alpha": Key("alpha", Kind("number in (0, 1)", POSITIVE.convert), "Benjamini–Hochberg level of the tests"),
    },
}


def documented(model: type) -> list[tuple[str, Key | tuple[Section, ...]]]:
    """(field name, its Key or the sections it holds) for every documented field of `model`, in
    the model's field order."""
    if model in EXTERNAL_KEYS:
        return list(EXTERNAL_KEYS[model].items())
    return [(f.name, f.metadata["topology"]) for f in fields(model) if "topology" in f.metadata]


@cache
def yaml_keys(model: type, within: str = "") -> frozenset[str]:
    """The keys a YAML mapping of `model` may hold (`within`: one level down, e.g. "windows")."""
    out: set[str] = set()
    for _, item in documented(model):
        if isinstance(item, tuple):
            out.update(s.name.removesuffix("[]") for s in item if not within)
        elif not within:
            out.add(item.name.split(".", 1)[0])
        elif item.name.startswith(within + "."):
            out.add(item.name[len(within) + 1:].split(".", 1)[0])
    return frozenset(out)


@cache
def key_of(model: type, name: str) -> Key:
    """The Key documenting `model`'s field `name`."""
    item = dict(documented(model))[name]
    if not isinstance(item, Key):
        raise TypeError(f"{model.__name__}.{name} holds sections, not a single key")
    return item
