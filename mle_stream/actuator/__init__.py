"""The actuator: the one part of mle-stream that changes the world.

It applies signed commands through two small ports (ports.py) — a RoutingBackend (who gets how
much traffic) and a ModelRegistry (aliases and audit tags) — and returns a RolloutEvent saying
what it did. Adapters: GitOpsRouting (HTTPRoute manifests committed to Git), GatewayAPIRouting,
IstioRouting and KServeRouting (objects patched on the Kubernetes API server, kubernetes_routing.py;
backends.py builds the right one per model from its topology), MlflowRegistry (MLflow aliases and
version tags), and in-memory ones for tests and demos.

MlflowRegistry and register_demo_versions are loaded on first use, so importing this package does
not pay for importing mlflow (~2 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mle_stream.actuator.gitops import GitOpsRouting
from mle_stream.actuator.ports import InMemoryRegistry, InMemoryRouting, ModelRegistry, RoutingBackend
from mle_stream.actuator.service import Actuator

if TYPE_CHECKING:
    from mle_stream.actuator.mlflow_registry import MlflowRegistry, register_demo_versions

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

_LAZY = {"MlflowRegistry", "register_demo_versions"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from mle_stream.actuator import mlflow_registry

        return getattr(mlflow_registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
