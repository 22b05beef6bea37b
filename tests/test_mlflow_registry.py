"""MlflowRegistry against a real MLflow store (sqlite in tmp_path), and a rollback end to end
through the Actuator with GitOpsRouting + MlflowRegistry."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from mle_stream.actuator import Actuator, GitOpsRouting, ModelRegistry
from mle_stream.core.commands import command_id, sign
from mle_stream.core.events import Command, CommandKind, RolloutStatus
from mle_stream.errors import ActuationError

MODEL = "fraud-detector"
KEY = b"test-signing-key"

# MLflow's own sqlite store trips a SQLAlchemy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cwd that must still be empty afterwards: MLflow writes nothing outside tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # Collection runs before pytest sets PYTEST_CURRENT_TEST, which is what MLflow 3 checks to
    # keep its usage telemetry off in tests.
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield tmp_path
    assert list(cwd.iterdir()) == []


@pytest.fixture
def tracking_uri(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A sqlite-backed MLflow with model MODEL at versions 1 and 2, each registered from a run."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored at teardown; set_tracking_uri writes it too
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment("test", artifact_location=(workdir / "artifacts").as_uri())
        client = MlflowClient()
        client.create_registered_model(MODEL)
        for _ in range(2):
            with mlflow.start_run(experiment_id=experiment_id) as run:
                mlflow.log_text("artifact_path: model\nflavors: {}\n", "model/MLmodel")
            client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_registered_model_alias(MODEL, "champion", "1")
        client.set_registered_model_alias(MODEL, "challenger", "2")
        yield uri
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None clears the global URI


def test_implements_the_registry_port(tracking_uri: str) -> None:
    from mle_stream.actuator import MlflowRegistry

    registry = MlflowRegistry(tracking_uri)
    assert isinstance(registry, ModelRegistry)
    assert registry.aliases(MODEL) == {"champion": "1", "challenger": "2"}

    registry.set_alias(MODEL, "champion", "2")
    registry.delete_alias(MODEL, "challenger")
    registry.delete_alias(MODEL, "challenger")  # missing: a no-op
    assert registry.aliases(MODEL) == {"champion": "2"}

    registry.tag_version(MODEL, "1", {"mle.verdict": "FAIL", "mle.reason": "error rate"})
    registry.tag_version(MODEL, "1", {"mle.command_id": "abc"})
    assert registry.version_tags(MODEL, "1") == {"mle.verdict": "FAIL", "mle.reason": "error rate", "mle.command_id": "abc"}
    assert registry.version_tags(MODEL, "2") == {}


def test_mlflow_errors_become_actuation_errors_naming_model_and_version(tracking_uri: str) -> None:
    from mlflow.exceptions import MlflowException

    from mle_stream.actuator import MlflowRegistry

    registry = MlflowRegistry(tracking_uri)
    with pytest.raises(ActuationError, match=r"alias 'champion' of model 'fraud-detector' at version '9'") as caught:
        registry.set_alias(MODEL, "champion", "9")
    assert isinstance(caught.value.__cause__, MlflowException)
    with pytest.raises(ActuationError, match=r"model 'payments'"):
        registry.aliases("payments")
    with pytest.raises(ActuationError, match=r"model 'fraud-detector' version '7'"):
        registry.tag_version(MODEL, "7", {"k": "v"})
    with pytest.raises(ActuationError, match=r"model 'fraud-detector' version '7'"):
        registry.version_tags(MODEL, "7")


def test_register_demo_versions_registers_from_runs(workdir: Path) -> None:
    from mlflow import MlflowClient

    from mle_stream.actuator import register_demo_versions

    uri = f"sqlite:///{workdir}/demo.db"
    artifacts = workdir / "demo-artifacts"
    assert register_demo_versions(uri, "recsys", 2, artifacts) == ["1", "2"]
    assert register_demo_versions(uri, "recsys", 1, artifacts) == ["3"]  # the model is reused

    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("recsys", "3")
    assert version.run_id
    assert (version.source or "").startswith(artifacts.resolve().as_uri())
    assert any(artifacts.rglob("MLmodel"))
    with pytest.raises(ValueError, match="n_versions"):
        register_demo_versions(uri, "recsys", 0, artifacts)


def _rollback_command() -> Command:
    return sign(
        Command(
            command_id=command_id(MODEL, "1", "2", CommandKind.ROLLBACK, "error_rate", 1_000, 61_000),
            kind=CommandKind.ROLLBACK,
            model=MODEL,
            baseline_version="1",
            candidate_version="2",
            traffic={"1": 100, "2": 0},
            reason="error rate of v2 is 4.1% vs 1.0% on v1",
            rule="error_rate",
            window_start=1_000,
            window_end=61_000,
            evidence="{}",
            policy_version="p1",
            issued_at=62_000,
        ),
        KEY,
    )


def test_rollback_end_to_end_with_git_and_mlflow(tracking_uri: str, workdir: Path) -> None:
    from mle_stream.actuator import MlflowRegistry

    routing = GitOpsRouting(workdir / "gitops")
    routing.init_route(MODEL, {"1": 90, "2": 10})
    registry = MlflowRegistry(tracking_uri)
    command = _rollback_command()

    event = Actuator(routing, registry, KEY).handle(command)

    assert event.status is RolloutStatus.APPLIED, event.details
    assert registry.aliases(MODEL) == {"champion": "1"}
    tags = registry.version_tags(MODEL, "2")
    assert tags["mle.verdict"] == "FAIL"
    assert tags["mle.reason"] == command.reason
    assert tags["mle.command_id"] == command.command_id
    assert tags["mle.at"].endswith("Z")
    assert registry.version_tags(MODEL, "1")["mle.command_id"] == command.command_id

    manifest = yaml.safe_load(routing.manifest_path(MODEL).read_text())
    assert [(r["name"], r["weight"]) for r in manifest["spec"]["rules"][0]["backendRefs"]] == [
        ("fraud-detector-v1", 100),
        ("fraud-detector-v2", 0),
    ]
    assert manifest["metadata"]["annotations"]["mle-stream.io/last-command-id"] == command.command_id
    log = subprocess.run(
        ["git", "log", "-1", "--format=%B"], cwd=routing.repo_dir, check=True, capture_output=True, text=True
    ).stdout
    assert command.command_id in log and command.reason in log

    assert dict(event.route_weights) == {"1": 100, "2": 0}
    assert (event.champion, event.challenger) == ("1", None)

    # A restarted actuator sees the command in Git and MLflow and does not apply it again.
    again = Actuator(GitOpsRouting(workdir / "gitops"), MlflowRegistry(tracking_uri), KEY).handle(command)
    assert again.status is RolloutStatus.SKIPPED_DUPLICATE
