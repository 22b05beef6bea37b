"""Baseline and candidate named by MLflow alias (`baseline: {alias: champion}`): resolved to the
versions the registry's aliases point at when a component starts (the worker, `replay`). A worker
follows a moved alias when it restarts; the rollout it runs is the one it started with."""

from __future__ import annotations

from collections.abc import Mapping

from mle_stream.config import missing_sqlite_store
from mle_stream.core.topology import Topology, resolve_aliases
from mle_stream.errors import ActuationError, ConfigError


def resolve_with_mlflow(topologies: Mapping[str, Topology], tracking_uri: str) -> dict[str, Topology]:
    """The topologies with their aliases resolved in the MLflow registry at `tracking_uri`;
    ConfigError names the model and the alias that cannot be."""
    if all(t.baseline_alias is None and t.candidate_alias is None for t in topologies.values()):
        return dict(topologies)
    local = missing_sqlite_store(tracking_uri)
    if local is not None:
        raise ConfigError(f"topologies name MLflow aliases, but the MLflow store {local} does not exist "
                          "(MLFLOW_TRACKING_URI)")
    from mle_stream.mlflow_registry import MlflowRegistry

    registry = MlflowRegistry(tracking_uri)

    def aliases(model: str) -> dict[str, str]:
        try:
            return registry.aliases(model)
        except ActuationError as exc:
            raise ConfigError(f"cannot resolve the aliases of model {model!r}: {exc}") from exc

    return {model: resolve_aliases(t, aliases) for model, t in topologies.items()}
