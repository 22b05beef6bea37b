"""The actuator over a real `mlflow server` (HTTP, sqlite store, artifacts in tmp): rollback and
promotion move the aliases and write the tags, redelivery is a duplicate, wrong requests fail at
once, and an MLflow restart is ridden out by MlflowRegistry's retries.

One server per module (it takes several seconds to start); each test uses its own model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import model_with_route
from mle_stream.actuator import (
    Actuator,
    GitOpsRouting,
    MlflowRegistry,
    register_demo_versions,
)
from mle_stream.actuator.service import epoch_ms
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, RolloutStatus
from mle_stream.core.signing import Signer
from mle_stream.errors import ActuationError
from mle_stream.keys import HMAC_KEY_ID

KEY = b"mlflow-server-test-key-012345678"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()

# MLflow's own sqlite store trips a SQLAlchemy deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MlflowServer:
    """`mlflow server` on a loopback port with a sqlite store and artifacts under `root`.

    Can be stopped and started again on the same port and store (an MLflow outage). The server is
    a process group (uvicorn and its workers): stop signals the whole group.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 120.0) -> None:
        assert not self.running, "already running"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner and its worker processes
        with open(self.root / "server.log", "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "served-artifacts")],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self._process.returncode}: "
                                     f"{(self.root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"mlflow server did not answer /health within {timeout_s} s: "
                             f"{(self.root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # The port must be free again before a restart on it.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        # What MlflowRegistry sets for an HTTP URI; set here so the module leaves the environment as it found it.
        env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def signed(kind: CommandKind, model: str, baseline: str, candidate: str, rule: str = "error_rate",
           signer: Signer = SIGNER) -> Command:
    """A signed command as the worker emits it: rollback to the baseline, or promote the candidate."""
    traffic = {baseline: 100, candidate: 0} if kind is CommandKind.ROLLBACK else {baseline: 0, candidate: 100}
    return signer.sign(Command(
        command_id=command_id(model, baseline, candidate, kind, rule, 0, 60_000), kind=kind, model=model,
        baseline_version=baseline, candidate_version=candidate, traffic=traffic,
        reason=f"{kind.value.lower()} by test ({rule})", rule=rule, window_start=0, window_end=60_000,
        evidence="{}", policy_version="p1", issued_at=epoch_ms()))


def git_subjects(repo: Path) -> list[str]:
    return subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_rollback_keeps_champion_on_the_baseline_and_a_redelivery_is_a_duplicate(
        mlflow_server: MlflowServer, tmp_path: Path) -> None:
    model = "fraud-rollback"
    routing, registry = model_with_route(mlflow_server.uri, tmp_path, model)
    command = signed(CommandKind.ROLLBACK, model, "1", "2")

    event = Actuator(routing, registry, VERIFIER).handle(command)

    assert event.status is RolloutStatus.APPLIED, event.details
    assert registry.aliases(model) == {"champion": "1"}
    assert (event.champion, event.challenger, dict(event.route_weights)) == ("1", None, {"1": 100, "2": 0})
    tags = registry.version_tags(model, "2")
    assert {k: tags[k] for k in ("mle.verdict", "mle.reason", "mle.rule", "mle.command_id")} == {
        "mle.verdict": "FAIL", "mle.reason": command.reason, "mle.rule": "error_rate",
        "mle.command_id": command.command_id}
    assert tags["mle.at"].endswith("Z")
    assert registry.version_tags(model, "1") == {"mle.command_id": command.command_id, "mle.signed_by": HMAC_KEY_ID}
    assert registry.model_tags(model) == {"mle.last_command_id": command.command_id,
                                          "mle.last_command_issued_at": str(command.issued_at)}

    # Redelivered to a restarted actuator (nothing in memory): Git and MLflow say it was applied.
    again = Actuator(GitOpsRouting(tmp_path / "gitops"), MlflowRegistry(mlflow_server.uri), VERIFIER).handle(command)
    assert again.status is RolloutStatus.SKIPPED_DUPLICATE, again.details
    assert sum(command.command_id in s for s in git_subjects(tmp_path / "gitops")) == 1


def test_promote_moves_champion_and_a_later_rollback_moves_it_back(
        mlflow_server: MlflowServer, tmp_path: Path) -> None:
    model = "fraud-promote"
    routing, registry = model_with_route(mlflow_server.uri, tmp_path, model)
    actuator = Actuator(routing, registry, VERIFIER)

    promote = signed(CommandKind.PROMOTE, model, "1", "2", rule="gate")
    event = actuator.handle(promote)
    assert event.status is RolloutStatus.APPLIED, event.details
    assert registry.aliases(model) == {"champion": "2"}
    assert routing.get_weights(model) == {"1": 0, "2": 100}
    assert registry.version_tags(model, "2")["mle.verdict"] == "PASS"
    assert actuator.handle(promote).status is RolloutStatus.SKIPPED_DUPLICATE

    rollback = signed(CommandKind.ROLLBACK, model, "1", "2")
    event = actuator.handle(rollback)
    assert event.status is RolloutStatus.APPLIED, event.details
    assert registry.aliases(model) == {"champion": "1"}
    assert registry.version_tags(model, "2")["mle.verdict"] == "FAIL"
    assert registry.version_tags(model, "2")["mle.command_id"] == rollback.command_id


def test_wrong_requests_fail_at_once_over_http(mlflow_server: MlflowServer) -> None:
    sleeps: list[float] = []
    registry = MlflowRegistry(mlflow_server.uri, sleep=sleeps.append)
    with pytest.raises(ActuationError, match=r"model 'no-such-model'.*RESOURCE_DOES_NOT_EXIST"):
        registry.aliases("no-such-model")
    register_demo_versions(mlflow_server.uri, "fraud-errors", 1, mlflow_server.root / "artifacts")
    with pytest.raises(ActuationError, match=r"model 'fraud-errors' version '7'.*RESOURCE_DOES_NOT_EXIST"):
        registry.version_tags("fraud-errors", "7")
    with pytest.raises(ActuationError, match=r"alias 'v3'.*INVALID_PARAMETER_VALUE"):  # reserved alias name
        registry.set_alias("fraud-errors", "v3", "1")
    assert sleeps == []


def test_retries_ride_out_an_mlflow_restart(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    model = "fraud-outage"
    model_with_route(mlflow_server.uri, tmp_path, model)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    patient = MlflowRegistry(mlflow_server.uri, sleep=sleep)  # the defaults: 9 attempts, ~63 s
    impatient = MlflowRegistry(mlflow_server.uri, attempts=2, base_delay_s=0.05, max_delay_s=0.05)
    mlflow_server.stop()
    try:
        with pytest.raises(ActuationError) as caught:
            impatient.set_alias(model, "champion", "2")
        message = str(caught.value)
        assert "2 attempts failed" in message and "Connection refused" in message, message
        assert f"alias 'champion' of model '{model}' at version '2'" in message

        restart = threading.Timer(1.0, mlflow_server.start)
        restart.start()
        patient.set_alias(model, "champion", "2")  # waits out the restart
        restart.join()
    finally:
        if not mlflow_server.running:
            mlflow_server.start()
    assert len(sleeps) >= 2, "the server was down for more than one attempt"
    assert patient.aliases(model) == {"champion": "2", "challenger": "2"}
