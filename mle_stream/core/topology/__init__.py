"""Topology files: what to watch for one model and what to do about it, reviewed in Git as YAML.

`model` holds the dataclasses (with every default and the documentation of every key), `parse`
reads a file into them, `reference` renders the key table of docs/topologies.md from the model.
"""

from mle_stream.core.durations import parse_duration_ms
from mle_stream.core.topology.model import (
    ACTIONS,
    MODES,
    ROLLBACK_METRICS,
    ROUTING_BACKENDS,
    SHADOW_STEPS,
    TASKS,
    Action,
    DecisionSettings,
    Mode,
    RetrainRule,
    RollbackShorthand,
    RolloutSteps,
    RoutingTarget,
    Task,
    Topology,
)
from mle_stream.core.topology.parse import load_topologies, load_topology, parse_topology, resolve_aliases

__all__ = [
    "ACTIONS", "MODES", "ROLLBACK_METRICS", "ROUTING_BACKENDS", "SHADOW_STEPS", "TASKS", "Action",
    "DecisionSettings", "Mode", "RetrainRule", "RollbackShorthand", "RolloutSteps", "RoutingTarget", "Task",
    "Topology", "load_topologies", "load_topology", "parse_duration_ms", "parse_topology", "resolve_aliases",
]
