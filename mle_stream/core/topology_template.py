"""A first topology file for a new model (`mle-stream init-topology`): the sections every model
needs, commented, with production-sized values to review; parse_topology accepts it as written.

Values that are the model's defaults (core/topology/model.py) are read from it; the rest (window
size, grace, retention, label delay, samples, rollout steps) are this template's own choices,
sized for production traffic rather than for the demo's quick windows.
"""

from __future__ import annotations

from mle_stream.core.topology.model import (
    ROUTING_BACKENDS,
    TASKS,
    RollbackShorthand,
    RolloutSteps,
    RoutingTarget,
    Topology,
    default_rollback_metric,
)
from mle_stream.core.topology.values import format_duration

TEMPLATE_MODES = ("canary", "ab")  # a shadow needs its own checks: start from topologies/credit-risk-shadow.yaml

_ROUTE = RoutingTarget()
_ROUTING = {
    "gitops": f"""\
routing:                  # the actuator commits this HTTPRoute manifest to its --gitops-repo
  backend: gitops
  manifest: "{_ROUTE.manifest}"
  service: "{_ROUTE.service}"   # the Service of each version
  namespace: ml
  gateway: {_ROUTE.gateway}
""",
    "gateway-api": f"""\
routing:                  # the actuator patches the weights of this existing HTTPRoute
  backend: gateway-api
  name: "{_ROUTE.name}"
  service: "{_ROUTE.service}"   # the backendRef (Service) of each version
  namespace: ml
""",
    "istio": f"""\
routing:                  # the actuator patches the weights of this existing VirtualService
  backend: istio
  name: "{_ROUTE.name}"
  host: "{_ROUTE.host}"
  subset: "{_ROUTE.subset}"    # the DestinationRule subset of each version
  namespace: ml
""",
    "kserve": f"""\
routing:                  # the actuator sets canaryTrafficPercent of this InferenceService
  backend: kserve
  name: "{_ROUTE.name}"
  namespace: ml
""",
}

_ROLLOUT = {
    "canary": f"""\
rollout:                  # candidate traffic steps; each after `windows` passing windows in a row
  steps: [5, 25, 50, 100] # 100: promoted (alias champion moves to the candidate)
  windows: {RolloutSteps.windows}
  samples: 1000           # candidate samples in those windows, at least
""",
    "ab": """\
rollout:                  # an A/B test: a fixed split, then promotion after `windows` passing windows
  steps: [50, 100]
  windows: 12
  samples: 20000
""",
}


def _alias_or_version(ref: str) -> str:
    """`{version: "3"}` for a version number, `{alias: champion}` for anything else."""
    return f'{{version: "{ref}"}}' if ref.isdigit() else f"{{alias: {ref}}}"


def topology_yaml(model: str, *, task: str = "binary", mode: str = Topology.mode, backend: str = RoutingTarget.backend,
                  baseline: str = "champion", candidate: str = "challenger") -> str:
    """The text of a topology file for `model`; ValueError for a choice it does not offer.

    `baseline` and `candidate` are MLflow version numbers ("3") or aliases ("champion").
    """
    for name, value, choices in (("task", task, TASKS), ("mode", mode, TEMPLATE_MODES),
                                 ("backend", backend, ROUTING_BACKENDS)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    for name, value in (("model", model), ("baseline", baseline), ("candidate", candidate)):
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError(f"{name} must be letters, digits, '-', '_' or '.', got {value!r}")
    metric = default_rollback_metric(task)
    rollback = RollbackShorthand(metric=metric)
    threshold = (f"threshold: {Topology.threshold}            # score >= threshold predicts the positive class\n"
                 if task == "binary" else "")
    limit = f"{rollback.max_increase * 100:g} points in {rollback.consecutive_windows} windows in a row"
    skew = format_duration(Topology.max_clock_skew_ms)
    return f"""\
# {mode} of {model}: the candidate against the baseline, rolled back when its {metric} is worse
# by more than {limit}. Written by `mle-stream init-topology`: review every
# value (docs/topologies.md), then `mle-stream validate` this file.
model: {model}
task: {task}
{threshold}mode: {mode}
baseline: {_alias_or_version(baseline)}    # MLflow alias or {{version: "N"}}, resolved when the worker starts
candidate: {_alias_or_version(candidate)}
windows:
  size: 5m                # event-time windows of the prediction timestamps
  grace: 10m              # judge a window this long after its end: longer than most labels take
  retention: 2d           # late labels still update a window until then
labels:
  max_delay: 2d           # a prediction without a label after this long counts as unlabeled
  max_clock_skew: {skew}      # records stamped further in the future are dead-lettered
rollback:
  name: {metric.replace("_", "-")}-vs-baseline
  metric: {metric}
  max_increase: {rollback.max_increase}      # absolute: candidate minus baseline
  consecutive_windows: {rollback.consecutive_windows}
  min_samples: 200        # labeled predictions per side per window; fewer is INCONCLUSIVE
{_ROLLOUT[mode]}{_ROUTING[backend]}"""


__all__ = ["ROUTING_BACKENDS", "TASKS", "TEMPLATE_MODES", "topology_yaml"]
