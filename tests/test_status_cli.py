"""`mle-stream status` and the worker's status page feed against the broker: a few published events
read back as JSON and as tables, and a flood of forged ones left off and counted."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from confluent_kafka import Producer

from conftest import topic_env
from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import CommandKind, DriftTable, RolloutStatus
from mle_stream.status.server import start_status_page
from mle_stream.stream.metrics import WorkerMetrics
from test_status_model import KEY, VERIFY, M, command, event, snapshot

pytestmark = [pytest.mark.broker]

CANARY = "topologies/fraud-detector-canary.yaml"  # model M


def status(bootstrap: str, topics: Topics, *args: str, key: bytes = KEY) -> subprocess.CompletedProcess[str]:
    """`mle-stream status ARGS`, reading the topologies of CANARY unless ARGS give -t."""
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": bootstrap, "MLE_SIGNING_KEY": key.decode()}
    topology = [] if "-t" in args else ["-t", CANARY]
    return subprocess.run([sys.executable, "-m", "mle_stream", "status", *topology, *args], env=env,
                          capture_output=True, text=True, timeout=90)


def test_status_reads_the_topics_into_json_and_tables(kafka_bootstrap: str, topics: Topics) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    key = M.encode()
    # Published 3 hours ago (by its timestamp): read, except with --since 1h.
    producer.produce(topics.drift, key=key, timestamp=int(time.time() * 1000) - 3 * 3_600_000,
                     value=wire.encode_drift_table(DriftTable(
                         model=M, version="2", role="candidate", window_start=0, window_end=5000, status="CLOSED",
                         reference="v1", features={}, drifted=(), drifted_share=None)))
    for i in range(3):
        producer.produce(topics.metrics, key=key, value=wire.encode_metric_snapshot(snapshot("1", i * 5000, 0.08)))
        producer.produce(topics.metrics, key=key, value=wire.encode_metric_snapshot(
            snapshot("2", i * 5000, 0.2, verdict="FAIL")))
    rollback = command(CommandKind.ROLLBACK, 20_000)
    producer.produce(topics.commands, key=key, value=wire.encode_command(rollback))
    producer.produce(topics.commands, key=key, value=b"not a command")  # skipped, with a log line
    producer.produce(topics.rollout_events, key=key, value=wire.encode_rollout_event(event(rollback, 21_000)))
    assert producer.flush(10) == 0

    result = status(kafka_bootstrap, topics, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (m,) = data["models"]
    assert m["model"] == M and m["phase"] == "rolled back" and m["traffic"] == {"1": 100, "2": 0}
    assert [len(v["windows"]) for v in m["versions"]] == [3, 3]
    assert [(t["source"], t["kind"]) for t in m["timeline"]] == [("command", "ROLLBACK"), ("rollout-event", "ROLLBACK")]
    assert m["decisions"][0]["outcome"] == RolloutStatus.APPLIED.value
    assert "unreadable" in result.stderr and "read 10 messages" in result.stderr

    result = status(kafka_bootstrap, topics, "--model", M, "-t", CANARY)
    assert result.returncode == 0, result.stderr
    assert f"== {M}: rolled back ==" in result.stdout
    assert "error_rate" in result.stdout and "0.08 | 0.2" in result.stdout
    assert "accuracy" not in result.stdout  # the topology watches error_rate only
    assert "APPLIED ROLLBACK" in result.stdout

    # --since: from the first offset at or after that time (the broker's message timestamps).
    everything = json.loads(status(kafka_bootstrap, topics, "--json").stdout)["events_applied"]
    recent = status(kafka_bootstrap, topics, "--json", "--since", "1h")
    assert recent.returncode == 0, recent.stderr
    assert everything == 9 and json.loads(recent.stdout)["events_applied"] == 8, recent.stderr
    assert "--since: expected a duration" in status(kafka_bootstrap, topics, "--since", "soon").stderr

    result = status(kafka_bootstrap, topics, "--model", "nope")
    assert result.returncode == 1 and "model 'nope' is not in the topologies (they name: fraud-detector)" in \
        result.stderr


FLOOD = 3000
STRAYS = 50  # rollout events of no command at all (fewer than wait for their command: see the docstring)
GARBAGE = 1000  # messages that are no command at all


def publish_flood(bootstrap: str, topics: Topics) -> dict[str, int]:
    """One signed rollback of M with its report, drowned in forgeries; returns what the board must count.

    The forged commands name a new model each, or M; the actuator's REJECTED reports of them name the
    same. The stray reports (forged on the rollout-events topic, which only the actuator should be
    allowed to write to) are fewer than the board keeps waiting for their command: more could push the
    rollback's report out when it is read before the rollback (test_status_trust shows that)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    rollback = command(CommandKind.ROLLBACK, 20_000)
    producer.produce(topics.commands, key=M.encode(), value=wire.encode_command(rollback))
    producer.produce(topics.rollout_events, key=M.encode(), value=wire.encode_rollout_event(event(rollback, 21_000)))
    for i in range(FLOOD):
        name = f"forged-{i}" if i % 2 == 0 else M
        forged = command(CommandKind.PROMOTE, 30_000 + i, 100, key=None, model=name, command_id=f"f{i}")
        producer.produce(topics.commands, key=name.encode(), value=wire.encode_command(forged))
        # What the actuator publishes when it rejects one: a rollout event naming the forged model.
        producer.produce(topics.rollout_events, key=name.encode(), value=wire.encode_rollout_event(
            dataclasses.replace(event(forged, 30_500 + i, RolloutStatus.REJECTED), model=name)))
        if i % 10 == 0:
            producer.produce(topics.metrics, key=name.encode(), value=wire.encode_metric_snapshot(
                dataclasses.replace(snapshot("2", i * 5000, 0.5), model=f"forged-{i}")))
    for forged in (command(CommandKind.APPROVE, 40_000, 50, key=None),
                   command(CommandKind.PROMOTE, 41_000, 100, key=b"another key, not the trusted one: forged")):
        producer.produce(topics.commands, key=M.encode(), value=wire.encode_command(forged))
    for _ in range(GARBAGE):
        producer.produce(topics.commands, key=M.encode(), value=b"\x00garbage")
    for i in range(STRAYS):  # "M promoted", reported for commands nobody signed
        producer.produce(topics.rollout_events, key=M.encode(), value=wire.encode_rollout_event(dataclasses.replace(
            event(rollback, 50_000 + i), event_id=f"stray-{i}", command_id=f"stray-{i}", action="PROMOTE",
            route_weights={"2": 100, f"{i}": 0}, champion="2")))
    assert producer.flush(30) == 0
    return {"unverified": FLOOD + 2, "unknown_model": FLOOD // 2 + FLOOD // 10, "unmatched": FLOOD // 2}


def assert_only_the_rollback(data: dict[str, Any]) -> None:
    (m,) = data["models"]
    assert m["model"] == M and m["phase"] == "rolled back"
    assert m["traffic"] == {"1": 100, "2": 0} and m["champion"] == "1"
    assert [d["kind"] for d in m["decisions"]] == ["ROLLBACK"] and m["decisions"][0]["outcome"] == "APPLIED"
    assert [(t["source"], t["kind"]) for t in m["timeline"]] == [("command", "ROLLBACK"), ("rollout-event", "ROLLBACK")]
    assert sorted(v["version"] for v in m["versions"]) == ["1", "2"]
    assert m["unmatched_events"] == STRAYS
    assert "forged" not in json.dumps(data) and "stray" not in json.dumps(data)


def test_status_shows_verified_commands_of_the_topologies_models_only(kafka_bootstrap: str, topics: Topics) -> None:
    left_off = publish_flood(kafka_bootstrap, topics)

    result = status(kafka_bootstrap, topics, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert_only_the_rollback(data)
    assert data["ignored"] == left_off
    assert f"{GARBAGE} unreadable skipped, " in result.stderr and f"{FLOOD + 2} unverified left off" in result.stderr
    assert len(result.stderr.splitlines()) < 20  # a line per batch, not per unreadable message

    result = status(kafka_bootstrap, topics, "-t", "topologies/")  # every topology: every model, none forged
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("== ")] == [
        "== credit-risk: evaluating ==", f"== {M}: rolled back ==", "== recommender: evaluating =="]
    assert "forged" not in result.stdout and "PROMOTE" not in result.stdout and "APPROVE" not in result.stdout
    assert (f"left off (counted, not shown): {FLOOD // 2 + FLOOD // 10} record(s) of models no topology names, "
            f"{FLOOD // 2} rollout event(s) of no verified command, {FLOOD + 2} unverified command(s)") in result.stdout

    # Without the key nothing could be shown: refused with what to do, not an empty page.
    refused = status(kafka_bootstrap, topics, "--json", key=b"")
    assert refused.returncode != 0 and "no keys to verify commands with" in refused.stderr


def test_the_worker_status_page_counts_what_it_leaves_off(kafka_bootstrap: str, topics: Topics,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    left_off = publish_flood(kafka_bootstrap, topics)
    metrics = WorkerMetrics()
    page = start_status_page(kafka_bootstrap, topics, {M: ["error_rate"]}, 0, verify=VERIFY, metrics=metrics)
    assert page is not None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(page.url + "api/status", timeout=5) as response:
                data = json.loads(response.read())
            if data["ignored"] == left_off and data["models"][0]["unmatched_events"] == STRAYS:
                break
            time.sleep(0.5)
        assert data["ignored"] == left_off, data["ignored"]
        assert_only_the_rollback(data)
    finally:
        page.close()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("mle_stream_unverified_commands_total", topic=topics.commands, component="status") == FLOOD + 2
    assert sample("mle_stream_status_ignored_records_total", topic=topics.commands, reason="unknown_model") is None
    assert sample("mle_stream_status_ignored_records_total", topic=topics.rollout_events,
                  reason="unknown_model") == FLOOD // 2
    assert sample("mle_stream_status_ignored_records_total", topic=topics.rollout_events,
                  reason="unmatched") == FLOOD // 2
    assert sample("mle_stream_status_ignored_records_total", topic=topics.metrics,
                  reason="unknown_model") == FLOOD // 10
    assert sample("mle_stream_status_ignored_records_total", topic=topics.commands, reason="undecodable") == GARBAGE
    unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert sum(int(r.getMessage().split()[2]) for r in unreadable) == GARBAGE and len(unreadable) <= GARBAGE // 100
    labels = {value for family in metrics.registry.collect() for s in family.samples for value in s.labels.values()}
    assert not {v for v in labels if "forged" in v or "stray" in v or v == M}  # no label a forger chose
