"""The actuator killed between the route commit and the registry update, for real: `mle-stream
actuator` as a process over the broker and a real `mlflow server`. MLflow goes down right after the
route is committed, the actuator retries the registry step until it is SIGKILLed; MLflow comes back
on the same port and store, the actuator restarts in the same consumer group, gets the command
again (its offset was never committed) and finishes only the registry step. Git, MLflow and the
rollout events end consistent: one route commit, champion on the baseline, challenger removed,
tags set, one APPLIED event saying it resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from conftest import model_with_route, read_until, topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import CommandKind, RolloutStatus
from mle_stream.core.signing import Signer
from mle_stream.kafka import consumer_config, producer_config
from mle_stream.keys import HMAC_KEY_ID
from test_mlflow_server import MlflowServer, git_subjects, signed

pytestmark = [pytest.mark.broker,
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]

REPO = Path(__file__).resolve().parent.parent
MODEL = "fraud-detector"  # a model of topologies/, routed through the GitOps repository
KEY = b"actuator-crash-test-key-01234567"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)

# Runs right after the actuator commits the route: says so, then holds the actuator inside its
# route step until the test has stopped MLflow, so the registry step is the one that meets the outage.
POST_COMMIT_HOOK = """#!/bin/sh
touch '{committed}'
i=0
while [ ! -e '{release}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
"""


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tails}")
        time.sleep(0.1)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        # What MlflowRegistry sets for an HTTP URI; set here so the test leaves the environment as it found it.
        env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        server = MlflowServer(tmp_path / "mlflow")
        server.start()
        try:
            yield server
        finally:
            server.stop()


def test_killed_between_route_and_registry_resumes_at_the_registry_step(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics, mlflow_server: MlflowServer) -> None:
    _, registry = model_with_route(mlflow_server.uri, tmp_path, MODEL, namespace="ml")
    gitops = tmp_path / "gitops"
    committed, release = tmp_path / "route-committed", tmp_path / "release-route-step"
    hook = gitops / ".git" / "hooks" / "post-commit"
    hook.write_text(POST_COMMIT_HOOK.format(committed=committed, release=release))
    hook.chmod(0o755)

    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_SIGNING_KEY": KEY.decode(), "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "MLE_ACTUATOR_GROUP": f"actuator-{uuid.uuid4().hex[:8]}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    logs: list[Path] = []

    def start_actuator() -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"actuator-{len(logs) + 1}.log")
        with open(logs[-1], "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "mle_stream", "actuator", "-t", str(REPO / "topologies"),
                 "--gitops-repo", str(gitops)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)

    command = signed(CommandKind.ROLLBACK, MODEL, "1", "2", signer=SIGNER)
    first = start_actuator()
    try:
        producer = Producer(producer_config(kafka_bootstrap))
        producer.produce(topics.commands, key=MODEL.encode(), value=wire.encode_command(command))
        assert producer.flush(10) == 0

        wait_for(committed.exists, "the actuator to commit the route", 90, logs + [mlflow_server.root / "server.log"])
        mlflow_server.stop()
        release.touch()
        wait_for(lambda: "attempt 2 of" in logs[0].read_text(errors="replace"),
                 "the actuator to retry the registry step", 30, logs)
        assert sum(command.command_id in s for s in git_subjects(gitops)) == 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    hook.unlink()  # a second route commit must not wait on the hook: the assertions below catch it
    first_log = logs[0].read_text(errors="replace")
    assert "could not point alias 'champion' of model 'fraud-detector' at version '1'" in first_log, first_log

    mlflow_server.start()
    second = start_actuator()
    try:
        out = read_until(kafka_bootstrap, [topics.rollout_events], _settled(), timeout_s=90)
    finally:
        second.terminate()
        second.wait(timeout=20)

    events = [wire.decode_rollout_event(m.value() or b"") for m in out]
    assert [(e.command_id, e.status) for e in events] == [(command.command_id, RolloutStatus.APPLIED)], \
        [(e.status.value, e.details) for e in events]
    assert "resumed" in events[0].details, events[0].details
    assert "at revision" not in events[0].details, "the route step ran again"
    assert (events[0].champion, events[0].challenger) == ("1", None)
    assert dict(events[0].route_weights) == {"1": 100, "2": 0}

    # Applied once: one route commit, and the offset of the command committed past it.
    assert sum(command.command_id in s for s in git_subjects(gitops)) == 1
    assert len(git_subjects(gitops)) == 2  # init_route and the rollback
    assert registry.aliases(MODEL) == {"champion": "1"}
    tags = registry.version_tags(MODEL, "2")
    assert (tags["mle.verdict"], tags["mle.reason"], tags["mle.command_id"]) == (
        "FAIL", command.reason, command.command_id)
    assert tags["mle.at"].endswith("Z")
    assert registry.version_tags(MODEL, "1") == {"mle.command_id": command.command_id, "mle.signed_by": HMAC_KEY_ID}
    assert _committed_offsets(kafka_bootstrap, env["MLE_ACTUATOR_GROUP"], topics.commands) == [1]


def _settled() -> Callable[[list[Message]], bool]:
    """Done 3 s after the first event arrived, so a second one (a re-application) would show too."""
    first_seen: list[float] = []

    def done(messages: list[Message]) -> bool:
        if not first_seen and messages:
            first_seen.append(time.monotonic())
        return bool(first_seen) and time.monotonic() - first_seen[0] > 3.0

    return done


def _committed_offsets(bootstrap: str, group: str, topic: str) -> list[int]:
    """The group's committed offsets on the partitions that have one (-1001: none committed)."""
    consumer = Consumer(consumer_config(bootstrap, group))
    try:
        partitions = [TopicPartition(topic, p) for p in range(2)]
        return [tp.offset for tp in consumer.committed(partitions, timeout=10) if tp.offset >= 0]
    finally:
        consumer.close()
