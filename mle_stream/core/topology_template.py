"""A first topology file for a new model (`mle-stream init-topology`): the sections every model
needs, commented, with production-sized defaults to review; parse_topology accepts it as written.
"""

from __future__ import annotations

from mle_stream.core.topology import ROUTING_BACKENDS, TASKS

TEMPLATE_MODES = ("canary", "ab")  # a shadow needs its own checks: start from topologies/credit-risk-shadow.yaml

_ROUTING = {
    "gitops": """\
routing:                  # the actuator commits this HTTPRoute manifest to its --gitops-repo
  backend: gitops
  manifest: "routes/{model}.yaml"
  service: "{model}-v{version}"   # the Service of each version
  namespace: ml
  gateway: ml-gateway
""",
    "gateway-api": """\
routing:                  # the actuator patches the weights of this existing HTTPRoute
  backend: gateway-api
  name: "{model}"
  service: "{model}-v{version}"   # the backendRef (Service) of each version
  namespace: ml
""",
    "istio": """\
routing:                  # the actuator patches the weights of this existing VirtualService
  backend: istio
  name: "{model}"
  host: "{model}"
  subset: "v{version}"    # the DestinationRule subset of each version
  namespace: ml
""",
    "kserve": """\
routing:                  # the actuator sets canaryTrafficPercent of this InferenceService
  backend: kserve
  name: "{model}"
  namespace: ml
""",
}

_ROLLOUT = {
    "canary": """\
rollout:                  # candidate traffic steps; each after `windows` passing windows in a row
  steps: [5, 25, 50, 100] # 100: promoted (alias champion moves to the candidate)
  windows: 3
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


def topology_yaml(model: str, *, task: str = "binary", mode: str = "canary", backend: str = "gitops",
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
    metric = "serving_error_rate" if task == "regression" else "error_rate"
    threshold = ("threshold: 0.5            # score >= threshold predicts the positive class\n"
                 if task == "binary" else "")
    return f"""\
# {mode} of {model}: the candidate against the baseline, rolled back when its {metric} is worse
# by more than 5 points in 3 windows in a row. Written by `mle-stream init-topology`: review every
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
  max_clock_skew: 5m      # records stamped further in the future are dead-lettered
rollback:
  name: {metric.replace("_", "-")}-vs-baseline
  metric: {metric}
  max_increase: 0.05      # absolute: candidate minus baseline
  consecutive_windows: 3
  min_samples: 200        # labeled predictions per side per window; fewer is INCONCLUSIVE
{_ROLLOUT[mode]}{_ROUTING[backend]}"""


__all__ = ["ROUTING_BACKENDS", "TASKS", "TEMPLATE_MODES", "topology_yaml"]
