"""A ModelRegistry backed by the MLflow Model Registry, using aliases (not the deprecated stages).

This is the only module that imports mlflow (a ~2 s import): the rest of the actuator and the
pure core stay fast to import and free of it.

MLflow returns version numbers as integers in some places (3.x: `ModelVersion.version`,
`RegisteredModel.aliases` values); the port speaks strings, so everything is converted here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mle_stream.errors import ActuationError

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class MlflowRegistry:
    """ModelRegistry on an MLflow tracking/registry server or a local `sqlite:///` store.

    registry_uri defaults to tracking_uri, as in MLflow itself. Every MLflow failure is raised as
    ActuationError naming the registry, the model and the version, with MLflow's exception chained.
    """

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        if not tracking_uri:
            raise ValueError("tracking_uri is empty: set MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db)")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def aliases(self, model: str) -> dict[str, str]:
        registered = self._call(f"read aliases of model {model!r}", lambda: self._client.get_registered_model(model))
        return {alias: str(version) for alias, version in (registered.aliases or {}).items()}

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._call(
            f"point alias {alias!r} of model {model!r} at version {version!r}",
            lambda: self._client.set_registered_model_alias(model, alias, version),
        )

    def delete_alias(self, model: str, alias: str) -> None:
        # Checked first because the port promises a no-op for a missing alias, while MLflow's REST
        # stores answer that case with RESOURCE_DOES_NOT_EXIST (the sqlite store does not).
        if alias not in self.aliases(model):
            return
        try:
            self._client.delete_registered_model_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code == _NOT_FOUND:  # deleted concurrently: the outcome we wanted
                return
            raise ActuationError(
                f"MLflow registry {self.registry_uri}: could not delete alias {alias!r} of model {model!r}: {exc.message}"
            ) from exc

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():  # one call per tag: MLflow has no batch update for versions
            try:
                self._client.set_model_version_tag(model, version, key, value)
            except MlflowException as exc:
                raise ActuationError(
                    f"MLflow registry {self.registry_uri}: could not set tag {key!r} on model {model!r} "
                    f"version {version!r}: {exc.message}"
                ) from exc

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        found = self._call(
            f"read tags of model {model!r} version {version!r}", lambda: self._client.get_model_version(model, version)
        )
        return dict(found.tags or {})

    def _call(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except MlflowException as exc:
            raise ActuationError(f"MLflow registry {self.registry_uri}: could not {what}: {exc.message}") from exc


def register_demo_versions(tracking_uri: str, model: str, n_versions: int, artifact_dir: Path) -> list[str]:
    """Register `n_versions` new versions of `model`, each from its own run; returns their numbers.

    For the demo and tests, where no training exists yet. Versions are created from a run's
    artifacts (a tiny MLmodel file under `model/`) because an MLflow server refuses a version
    whose source is a local path outside its run's artifact directory. The experiment
    "mle-stream-demo" stores artifacts under `artifact_dir`, so nothing is written to the cwd.
    The client is used directly (no `mlflow.start_run`) so the caller's global MLflow state (active
    run, tracking URI) is left alone.
    """
    if n_versions < 1:
        raise ValueError(f"n_versions must be >= 1, got {n_versions}")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    where = f"MLflow at {tracking_uri}"
    try:
        experiment = client.get_experiment_by_name("mle-stream-demo")
        if experiment is None:
            location = Path(artifact_dir).resolve()
            location.mkdir(parents=True, exist_ok=True)
            experiment_id = client.create_experiment("mle-stream-demo", artifact_location=location.as_uri())
        else:
            experiment_id = experiment.experiment_id
        try:
            client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code != _NOT_FOUND:
                raise
            client.create_registered_model(model, description="registered by mle-stream's demo")
        versions: list[str] = []
        for _ in range(n_versions):
            run = client.create_run(experiment_id, tags={"mle.demo_model": model})
            client.log_text(
                run.info.run_id, f"artifact_path: model\nflavors: {{}}\n# demo version of {model}\n", "model/MLmodel"
            )
            client.set_terminated(run.info.run_id)
            created = client.create_model_version(
                model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
            )
            versions.append(str(created.version))
    except MlflowException as exc:
        raise ActuationError(f"{where}: could not register demo versions of model {model!r}: {exc.message}") from exc
    log.info("registered versions %s of %s in %s", versions, model, tracking_uri)
    return versions
