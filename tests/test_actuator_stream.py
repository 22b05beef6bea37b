"""`mle-stream actuator` as a process over the broker: forged and malformed commands change nothing
and never stop it; a valid command is applied and reported."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import model_with_route, read_until, topic_env
from mle_stream import wire
from mle_stream.actuator.ports import InMemoryRegistry, InMemoryRouting
from mle_stream.actuator.runner import run_actuator_loop
from mle_stream.actuator.service import Actuator, epoch_ms
from mle_stream.config import Topics
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, RolloutEvent
from mle_stream.core.signing import Signer
from mle_stream.errors import ActuationError
from mle_stream.kafka import producer_config
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.retry import Backoff

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent
KEY = b"actuator-test-key-0123456789abcd"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
FORGER = Signer(HMAC_KEY_ID, b"not the key, the same key id: a forgery")


def rollback(rule: str = "r") -> Command:
    return Command(
        command_id=command_id("fraud-detector", "1", "2", CommandKind.ROLLBACK, rule, 0, 15_000),
        kind=CommandKind.ROLLBACK, model="fraud-detector", baseline_version="1", candidate_version="2",
        traffic={"1": 100, "2": 0}, reason="test", rule=rule, window_start=0, window_end=15_000, evidence="{}",
        policy_version="p", issued_at=epoch_ms(),  # now: the actuator refuses an expired command
    )


def test_forged_and_garbage_commands_are_refused_and_a_signed_one_applied(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    routing, registry = model_with_route(tracking, tmp_path, "fraud-detector", namespace="ml")

    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "MLE_SIGNING_KEY": KEY.decode(), "MLFLOW_TRACKING_URI": tracking,
           "MLE_ACTUATOR_GROUP": f"actuator-{uuid.uuid4().hex[:8]}"}
    log = open(tmp_path / "actuator.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "mle_stream", "actuator", "-t", str(REPO / "topologies"),
                                "--gitops-repo", str(tmp_path / "gitops")], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        producer = Producer(producer_config(kafka_bootstrap))
        forged = FORGER.sign(rollback("forged"))
        producer.produce(topics.commands, key=b"fraud-detector", value=wire.encode_command(forged))
        producer.produce(topics.commands, key=b"fraud-detector", value=b"\x00garbage")
        good = SIGNER.sign(rollback())
        producer.produce(topics.commands, key=b"fraud-detector", value=wire.encode_command(good))
        producer.produce(topics.commands, key=b"fraud-detector", value=wire.encode_command(good))  # redelivery
        producer.flush(10)

        out = read_until(kafka_bootstrap, [topics.rollout_events, topics.dead_letter],
                         lambda ms: sum(m.topic() == topics.rollout_events for m in ms) >= 3
                         and any(m.topic() == topics.dead_letter for m in ms), timeout_s=60)
        assert process.poll() is None, "the actuator must keep running"
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()

    events = [wire.decode_rollout_event(m.value()) for m in out if m.topic() == topics.rollout_events]
    assert [(e.command_id, e.status.value) for e in events] == [
        (forged.command_id, "REJECTED"), (good.command_id, "APPLIED"), (good.command_id, "SKIPPED_DUPLICATE")]
    letters = [json.loads(m.value()) for m in out if m.topic() == topics.dead_letter]
    assert len(letters) == 1 and letters[0]["source_topic"] == topics.commands and letters[0]["offset"] == 1

    assert registry.aliases("fraud-detector") == {"champion": "1"}
    assert routing.get_weights("fraud-detector") == {"1": 100, "2": 0}
    log_lines = subprocess.run(["git", "-C", str(tmp_path / "gitops"), "log", "--format=%s"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(log_lines) == 2 and good.command_id in log_lines[0]  # applied once, forged never


class FlakyRegistry(InMemoryRegistry):
    """An in-memory registry whose writes fail with a transient error while `down` is set (a
    registry server that is unreachable after the adapter's own retries)."""

    def __init__(self, versions) -> None:
        super().__init__(versions)
        self.down = threading.Event()
        self.refused = 0

    def set_alias(self, model: str, alias: str, version: str) -> None:
        if self.down.is_set():
            self.refused += 1
            raise ActuationError("registry unreachable: 9 attempts failed over 63.5 s", transient=True)
        super().set_alias(model, alias, version)


def test_a_command_failing_on_a_registry_outage_is_applied_once_the_registry_is_back_and_holds_the_next(
        kafka_bootstrap: str, topics: Topics) -> None:
    routing = InMemoryRouting({"fraud-detector": {"1": 90, "2": 10}})
    registry = FlakyRegistry({"fraud-detector": ["1", "2"]})
    registry.down.set()
    actuator = Actuator(routing, registry, VERIFIER)
    stop, failure = threading.Event(), []

    def loop() -> None:
        try:
            run_actuator_loop(actuator, kafka_bootstrap, topics, stop, group_id=f"g-{uuid.uuid4().hex[:8]}",
                              redeliver=Backoff(1, 0.2, 0.4))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failure.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    first, second = SIGNER.sign(rollback("outage")), SIGNER.sign(rollback("after"))
    producer = Producer(producer_config(kafka_bootstrap))
    for cmd in (first, second):
        producer.produce(topics.commands, key=b"fraud-detector", value=wire.encode_command(cmd))
    producer.flush(10)
    try:
        deadline = time.monotonic() + 30
        while registry.refused < 3 and time.monotonic() < deadline:  # delivered again and again meanwhile
            time.sleep(0.1)
        assert registry.refused >= 3 and routing.history and len(routing.history) == 1
        registry.down.clear()
        out = read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= 3, timeout_s=30)
        assert thread.is_alive() and not failure
    finally:
        stop.set()
        thread.join(timeout=30)
    events = [wire.decode_rollout_event(m.value()) for m in out]
    # One FAILED for the whole outage, then the same command APPLIED (resumed at the registry step),
    # and only then the command behind it, which the first one held up.
    assert [(e.command_id, e.status.value) for e in events] == [
        (first.command_id, "FAILED"), (first.command_id, "APPLIED"), (second.command_id, "APPLIED")]
    assert "resumed" in events[1].details
    assert registry.aliases("fraud-detector") == {"champion": "1"}
    assert [h[2] for h in routing.history] == [first.command_id, second.command_id]  # each routed once, in order


def test_a_set_traffic_replayed_on_the_topic_after_a_rollback_is_stale_across_a_restart(
        kafka_bootstrap: str, topics: Topics) -> None:
    routing = InMemoryRouting({"fraud-detector": {"1": 90, "2": 10}})
    registry = InMemoryRegistry({"fraud-detector": ["1", "2"]})
    now = epoch_ms()
    step = SIGNER.sign(dataclasses.replace(rollback("step"), kind=CommandKind.SET_TRAFFIC, traffic={"1": 50, "2": 50},
                                           issued_at=now - 60_000))
    back = SIGNER.sign(dataclasses.replace(rollback("back"), issued_at=now - 30_000))
    producer = Producer(producer_config(kafka_bootstrap))

    def run(commands: list[Command], events: int) -> list[RolloutEvent]:
        """A fresh actuator in a fresh consumer group (a restart that lost everything in memory)."""
        for cmd in commands:
            producer.produce(topics.commands, key=b"fraud-detector", value=wire.encode_command(cmd))
        producer.flush(10)
        stop, group = threading.Event(), f"g-{uuid.uuid4().hex[:8]}"
        thread = threading.Thread(target=run_actuator_loop, daemon=True,
                                  args=(Actuator(routing, registry, VERIFIER), kafka_bootstrap, topics, stop, group))
        thread.start()
        try:
            out = read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= events, timeout_s=30)
        finally:
            stop.set()
            thread.join(timeout=30)
        return [wire.decode_rollout_event(m.value()) for m in out]

    first = run([step, back], 2)
    assert [(e.command_id,
             e.status.value) for e in first] == [(step.command_id, "APPLIED"), (back.command_id, "APPLIED")]
    # The captured set-traffic published again: a restarted actuator reads the whole topic from the start
    # (new group), so it meets all three; the first two are duplicates, the replay is stale.
    events = run([step], 5)[2:]
    assert [(e.command_id, e.status.value) for e in events] == [
        (step.command_id, "REJECTED"), (back.command_id, "SKIPPED_DUPLICATE"), (step.command_id, "REJECTED")]
    assert all(e.details.startswith("STALE: ") for e in events if e.status.value == "REJECTED")
    assert routing.get_weights("fraud-detector") == {"1": 100, "2": 0}
    assert [h[2] for h in routing.history] == [step.command_id, back.command_id]
