"""MlflowRegistry against a real MLflow store (sqlite in tmp_path), and a rollback end to end
through the Actuator with GitOpsRouting + MlflowRegistry."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mle_stream.actuator import Actuator, GitOpsRouting, ModelRegistry
from mle_stream.actuator.service import epoch_ms
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, RolloutStatus
from mle_stream.core.signing import Signer
from mle_stream.errors import ActuationError
from mle_stream.keys import HMAC_KEY_ID

MODEL = "fraud-detector"
KEY = b"test-signing-key-0123456789abcde"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()

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
    assert registry.version_tags(MODEL,
                                 "1") == {"mle.verdict": "FAIL", "mle.reason": "error rate", "mle.command_id": "abc"}
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
    return SIGNER.sign(
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
            issued_at=epoch_ms(),  # the actuator refuses an expired command
        ),
    )


def test_rollback_end_to_end_with_git_and_mlflow(tracking_uri: str, workdir: Path) -> None:
    from mle_stream.actuator import MlflowRegistry

    routing = GitOpsRouting(workdir / "gitops")
    routing.init_route(MODEL, {"1": 90, "2": 10})
    registry = MlflowRegistry(tracking_uri)
    command = _rollback_command()

    event = Actuator(routing, registry, VERIFIER).handle(command)

    assert event.status is RolloutStatus.APPLIED, event.details
    assert registry.aliases(MODEL) == {"champion": "1"}
    tags = registry.version_tags(MODEL, "2")
    assert tags["mle.verdict"] == "FAIL"
    assert tags["mle.reason"] == command.reason
    assert tags["mle.command_id"] == command.command_id
    assert tags["mle.at"].endswith("Z")
    assert registry.version_tags(MODEL, "1")["mle.command_id"] == command.command_id
    assert tags["mle.signed_by"] == HMAC_KEY_ID
    assert registry.model_tags(MODEL) == {"mle.last_command_id": command.command_id,
                                          "mle.last_command_issued_at": str(command.issued_at)}

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
    again = Actuator(GitOpsRouting(workdir / "gitops"), MlflowRegistry(tracking_uri), VERIFIER).handle(command)
    assert again.status is RolloutStatus.SKIPPED_DUPLICATE


# -- retries: what is transient, and the bounded backoff, against a scripted HTTP server ----------


class _ScriptedMlflow:
    """An HTTP server that answers each request with the next (status, JSON body) of `script`, then
    with the last one again; `requests` counts what arrived. Stands in for an MLflow server that is
    overloaded or failing in a chosen way."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script: list[tuple[int, str]] = [(200, "{}")]
        self.requests = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = scripted.script[min(scripted.requests, len(scripted.script) - 1)]
                scripted.requests += 1
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_MODEL_JSON = '{"registered_model": {"name": "fraud-detector", "aliases": [{"alias": "champion", "version": "1"}]}}'


def _error_json(code: str) -> str:
    return f'{{"error_code": "{code}", "message": "scripted {code}"}}'


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[_ScriptedMlflow]:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # What MlflowRegistry would set for the process; set here so the test restores the environment.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = _ScriptedMlflow()
    yield server
    server.close()


def _mlflow_error(uri: str) -> Exception:
    """What MLflow's client really raises for a read of a version at `uri`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(MODEL, "1")
    except MlflowException as exc:
        return exc
    raise AssertionError(f"reading from {uri} did not fail")


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (503, "service unavailable", True),
        (429, "slow down", True),
        (500, _error_json("INTERNAL_ERROR"), True),
        (502, "bad gateway", True),
        (504, "gateway timeout", True),
        (507, _error_json("INTERNAL_ERROR"), True),  # a 5xx MLflow does not retry, answered by its server
        (503, _error_json("TEMPORARILY_UNAVAILABLE"), True),
        (404, _error_json("RESOURCE_DOES_NOT_EXIST"), False),
        (400, _error_json("INVALID_PARAMETER_VALUE"), False),
        (403, _error_json("PERMISSION_DENIED"), False),
        (501, "not implemented", False),
        (404, "<html>no such endpoint</html>", False),
    ],
)
def test_transient_is_what_may_succeed_when_tried_again(
        scripted: _ScriptedMlflow, status: int, body: str, transient: bool) -> None:
    from mle_stream.mlflow_registry import is_transient

    scripted.script = [(status, body)]
    assert is_transient(_mlflow_error(scripted.uri)) is transient


def test_unreachable_server_and_timeouts_are_transient_local_failures_are_not(
        scripted: _ScriptedMlflow, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import requests
    from mlflow.exceptions import MlflowException

    from mle_stream.mlflow_registry import is_transient

    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        refused_uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    assert is_transient(_mlflow_error(refused_uri))

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as silent:  # accepts, never answers: a read timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        assert is_transient(_mlflow_error(f"http://127.0.0.1:{silent.getsockname()[1]}"))

    assert not is_transient(MlflowException("a local store failed"))  # INTERNAL_ERROR by default, not from a server
    assert not is_transient(ValueError("a bug"))
    try:
        try:
            raise requests.exceptions.SSLError("certificate verify failed")
        except requests.exceptions.SSLError:
            # as MLflow raises it: without `from`
            raise MlflowException("API request to https://mlflow failed with exception ...")  # noqa: B904
    except MlflowException as exc:
        ssl_failure = exc
    assert ssl_failure.__context__ is not None
    assert not is_transient(ssl_failure)


def test_transient_errors_are_retried_with_bounded_backoff(scripted: _ScriptedMlflow) -> None:
    from mle_stream.actuator import MlflowRegistry

    sleeps: list[float] = []
    registry = MlflowRegistry(scripted.uri, attempts=5, base_delay_s=0.1, max_delay_s=0.3, sleep=sleeps.append)

    scripted.script = [(503, "down"), (429, "slow down"), (502, "restarting"), (200, _MODEL_JSON)]
    assert registry.aliases(MODEL) == {"champion": "1"}
    assert scripted.requests == 4 and sleeps == [0.1, 0.2, 0.3]

    scripted.requests, sleeps[:] = 0, []
    scripted.script = [(503, "still down")]
    with pytest.raises(ActuationError) as caught:
        registry.version_tags(MODEL, "2")
    message = str(caught.value)
    assert scripted.requests == 5 and sleeps == [0.1, 0.2, 0.3, 0.3]
    assert "5 attempts failed" in message and "model 'fraud-detector' version '2'" in message
    assert scripted.uri in message and "503" in message  # the last cause: too many 503 error responses


def test_wrong_requests_fail_at_once(scripted: _ScriptedMlflow) -> None:
    from mlflow.exceptions import RestException

    from mle_stream.actuator import MlflowRegistry

    sleeps: list[float] = []
    registry = MlflowRegistry(scripted.uri, sleep=sleeps.append)
    scripted.script = [(404, _error_json("RESOURCE_DOES_NOT_EXIST"))]
    with pytest.raises(ActuationError, match=r"alias 'champion' of model 'fraud-detector' at version '9'.*"
                                             r"RESOURCE_DOES_NOT_EXIST") as caught:
        registry.set_alias(MODEL, "champion", "9")
    assert isinstance(caught.value.__cause__, RestException)
    assert "attempts" not in str(caught.value)
    scripted.script = [(400, _error_json("INVALID_PARAMETER_VALUE"))]
    with pytest.raises(ActuationError, match="INVALID_PARAMETER_VALUE"):
        registry.tag_version(MODEL, "1", {"k": "v"})
    assert scripted.requests == 2 and sleeps == []


def test_retry_settings_are_checked_and_mlflow_http_retries_turned_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from mle_stream.actuator import MlflowRegistry

    for bad in ({"attempts": 0}, {"base_delay_s": -1.0}, {"base_delay_s": 2.0, "max_delay_s": 1.0}):
        with pytest.raises(ValueError):
            MlflowRegistry("http://127.0.0.1:5000", **bad)  # type: ignore[arg-type]

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "restored at teardown")
        monkeypatch.delenv(name)
    MlflowRegistry("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # the operator's choice stands
    MlflowRegistry("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
