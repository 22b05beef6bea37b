"""`mle-stream status` against the broker: a few published events, read back as JSON and as tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from conftest import topic_env
from mle_stream import codec
from mle_stream.config import Topics
from mle_stream.core.events import CommandKind, DriftTable, RolloutStatus
from test_status_model import M, command, event, snapshot

pytestmark = [pytest.mark.broker]


def status(bootstrap: str, topics: Topics, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run([sys.executable, "-m", "mle_stream", "status", *args], env=env, capture_output=True,
                          text=True, timeout=90)


def test_status_reads_the_topics_into_json_and_tables(kafka_bootstrap: str, topics: Topics) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    key = M.encode()
    # Published 3 hours ago (by its timestamp): read, except with --since 1h.
    producer.produce(topics.drift, key=key, timestamp=int(time.time() * 1000) - 3 * 3_600_000,
                     value=codec.encode_drift_table(DriftTable(
                         model=M, version="2", role="candidate", window_start=0, window_end=5000, status="CLOSED",
                         reference="v1", features={}, drifted=(), drifted_share=None)))
    for i in range(3):
        producer.produce(topics.metrics, key=key, value=codec.encode_metric_snapshot(snapshot("1", i * 5000, 0.08)))
        producer.produce(topics.metrics, key=key, value=codec.encode_metric_snapshot(
            snapshot("2", i * 5000, 0.2, verdict="FAIL")))
    rollback = command(CommandKind.ROLLBACK, 20_000)
    producer.produce(topics.commands, key=key, value=codec.encode_command(rollback))
    producer.produce(topics.commands, key=key, value=b"not a command")  # skipped, with a log line
    producer.produce(topics.rollout_events, key=key, value=codec.encode_rollout_event(event(rollback, 21_000)))
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

    result = status(kafka_bootstrap, topics, "--model", M, "-t", "topologies/fraud-detector-canary.yaml")
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
    assert result.returncode == 1 and "nothing published for model 'nope'" in result.stderr
