"""The actuator: the one part of mle-stream that changes the world.

It applies signed commands through two small ports (ports.py) — a RoutingBackend (who gets how
much traffic) and a ModelRegistry (aliases and audit tags) — and returns a RolloutEvent saying
what it did. Adapters: GitOpsRouting (HTTPRoute manifests committed to Git), GatewayAPIRouting,
IstioRouting and KServeRouting (objects patched on the Kubernetes API server, kubernetes_routing.py;
backends.py builds the right one per model from its topology), MlflowRegistry (MLflow aliases and
version tags; in mle_stream.mlflow_registry, which the worker uses too), and in-memory ones for
tests and demos.

Everything but the ports is loaded on first use, so importing this package does not pay for
importing mlflow (it takes seconds), nor need the actuator's extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mle_stream.actuator.ports import InMemoryRegistry, InMemoryRouting, ModelRegistry, RoutingBackend

if TYPE_CHECKING:
    from mle_stream.actuator.gitops import GitOpsRouting
    from mle_stream.actuator.service import Actuator
    from mle_stream.mlflow_registry import MlflowRegistry, register_demo_versions

__all__ = [
    "Actuator",
    "GitOpsRouting",
    "InMemoryRegistry",
    "InMemoryRouting",
    "MlflowRegistry",
    "ModelRegistry",
    "RoutingBackend",
    "register_demo_versions",
]

# Loaded on first use: the CLI imports mle_stream.actuator.backends for RoutingOptions, and that must
# not need the actuator's extra (YAML, cryptography, mlflow) to print --help or name the extra.
_LAZY = {"Actuator": "mle_stream.actuator.service", "GitOpsRouting": "mle_stream.actuator.gitops",
         "MlflowRegistry": "mle_stream.mlflow_registry", "register_demo_versions": "mle_stream.mlflow_registry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
