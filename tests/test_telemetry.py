"""Prometheus metrics (mle_stream/telemetry.py): the values exposed equal what the worker and the
actuator did, counted by hand or read back from their outputs; the processes serve them over HTTP;
the Grafana dashboard asks only for metrics that exist."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.actuator.ports import InMemoryRouting
from mle_stream.actuator.runner import run_actuator_loop
from mle_stream.actuator.service import Actuator
from mle_stream.broker import free_port
from mle_stream.config import Settings, Topics
from mle_stream.core.events import Command, CommandKind, Label, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError
from mle_stream.kafka import producer_config
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.retry import Backoff
from mle_stream.stream.metrics import WorkerMetrics
from mle_stream.stream.processor import Incoming, Outgoing, StreamProcessor
from mle_stream.telemetry import ActuatorMetrics

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "mle-stream-dashboard.json"
TOPICS = Topics()
KEY = b"telemetry-key-0123456789abcdef01"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
FORGER = Signer(HMAC_KEY_ID, b"not the key, the same key id: a forgery")
TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 1s, grace: 0s}\n"
    "rollback: {max_increase: 0.1, consecutive_windows: 2, min_samples: 20}\n"
    "decision: {outage_after: 60s}\n"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry) -> Samples:
    """Every sample of the exposition text, by (name, labels): what Prometheus would scrape."""
    return parse(generate_latest(registry).decode())


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def by_label(got: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in got.items() if n == name}


def window(start: int, candidate_wrong: bool, n: int = 60) -> tuple[bytes, bytes]:
    preds, labels = [], []
    for i in range(n):
        version = "2" if i % 2 else "1"
        pid = f"{start}-{i}"
        preds.append(Prediction(prediction_id=pid, model="fraud", version=version, timestamp=start + i, score=0.9,
                                latency_ms=float(i)))
        labels.append(Label(prediction_id=pid, model="fraud", timestamp=start + 900,
                            label=not (candidate_wrong and version == "2")))
    return wire.encode_predictions(preds), wire.encode_labels(labels)


class Worker:
    """The StreamProcessor fed batch by batch, its metrics updated as app.py does."""

    def __init__(self, clock: Callable[[], int] = lambda: 10**12) -> None:
        self.processor = StreamProcessor({"fraud": TOPOLOGY}, TOPICS, SIGNER, clock=clock)
        self.metrics = WorkerMetrics()
        self.out: list[Outgoing] = []

    def batch(self, messages: list[Incoming]) -> list[Outgoing]:
        outs = self.processor.process(messages)
        self.metrics.observe_batch(messages, outs, self.processor.drain_tally(), 0.002)
        self.out += outs
        return outs

    def tick(self) -> list[Outgoing]:
        outs = self.processor.tick()
        self.metrics.observe_outputs(outs, self.processor.drain_tally())
        self.out += outs
        return outs


def test_records_messages_and_dead_letters_are_counted_by_model_topic_and_reason() -> None:
    w = Worker()
    preds, labels = window(0, candidate_wrong=False)
    other, _ = window(5000, candidate_wrong=False)
    unknown = wire.encode_prediction(Prediction(prediction_id="u", model="spam", version="1", timestamp=1, score=0.1))
    w.batch([
        Incoming(TOPICS.predictions, 0, 10, b"{not json"),  # undecodable message
        Incoming(TOPICS.predictions, 1, 11, other[:-3]),  # truncated: 59 records read, 1 undecodable
        Incoming(TOPICS.predictions, 3, 13, unknown),  # a model without topology
        Incoming(TOPICS.predictions, 0, 14, preds),
    ])
    w.batch([
        Incoming(TOPICS.labels, 0, 15, wire.encode_label(Label("p0", "fraud", 1, "cat"))),  # rejected by the model
        Incoming(TOPICS.labels, 0, 16, labels),
        Incoming("elsewhere", 0, 1, b"x"),
    ])
    got = samples(w.metrics.registry)
    assert by_label(got, "mle_stream_input_messages_total", "topic") == {
        TOPICS.predictions: 4, TOPICS.labels: 2, "elsewhere": 1}
    assert by_label(got, "mle_stream_predictions_total", "model") == {"fraud": 60 + 59}  # never "spam"
    assert by_label(got, "mle_stream_labels_total", "model") == {"fraud": 60}
    letters = {(dict(k)["topic"], dict(k)["reason"]): v for (n, k),
               v in got.items() if n == "mle_stream_dead_letters_total"}
    assert letters == {(TOPICS.predictions, "undecodable"): 2, (TOPICS.predictions, "unknown_model"): 1,
                       (TOPICS.labels, "rejected"): 1, ("elsewhere", "unknown_topic"): 1}
    # Outputs by topic equal the messages the processor returned; dead letters match the processor's own count.
    assert by_label(got, "mle_stream_output_messages_total", "topic") == dict(Counter(o.topic for o in w.out))
    assert sum(letters.values()) == w.processor.counters["dead_letter"] == len(
        [o for o in w.out if o.topic == TOPICS.dead_letter])
    assert value(got, "mle_stream_batch_seconds_count") == 2
    assert value(got, "mle_stream_batch_seconds_sum") == pytest.approx(0.004)


def test_window_gauges_equal_the_published_snapshots_and_verdicts_and_commands_are_counted() -> None:
    w = Worker()
    for start in (0, 1000, 2000, 3000):
        preds, labels = window(start, candidate_wrong=start > 0)
        w.batch([Incoming(TOPICS.predictions, 0, start, preds), Incoming(TOPICS.labels, 0, start + 1, labels)])
    got = samples(w.metrics.registry)

    snapshots = [wire.decode_metric_snapshot(o.value) for o in w.out if o.topic == TOPICS.metrics]
    closed = [s for s in snapshots if s.status == "CLOSED" and s.segment is None]
    assert [(s.window_start, s.version) for s in closed] == [(t, v) for t in (0, 1000, 2000) for v in ("1", "2")]
    last = {s.version: s for s in closed}  # the window 2000..3000 of each version
    gauges = {(dict(k)["version"], dict(k)["role"], dict(k)["metric"]): v
              for (n, k), v in got.items() if n == "mle_stream_window_metric" and dict(k)["model"] == "fraud"}
    expected = {(s.version, s.role, name): v for s in last.values() for name, v in s.metrics.items()}
    assert set(gauges) == set(expected)
    for key, v in expected.items():
        assert (math.isnan(gauges[key]) if v is None else gauges[key] == v), (key, gauges[key], v)
    assert gauges[("2", "candidate", "error_rate")] == 1.0 and gauges[("1", "baseline", "error_rate")] == 0.0
    assert gauges[("2", "candidate", "latency_p99_ms")] == last["2"].metrics["latency_p99_ms"]
    ends = by_label(got, "mle_stream_window_end_timestamp_seconds", "role")
    assert ends == {"baseline": 3.0, "candidate": 3.0}

    # One verdict per closed window, as the candidate's snapshots carry them.
    verdicts = by_label(got, "mle_stream_verdicts_total", "verdict")
    assert verdicts == dict(Counter(s.verdict for s in closed if s.role == "candidate"))
    assert verdicts == {"PASS": 1, "FAIL": 2}
    commands = [wire.decode_command(o.value) for o in w.out if o.topic == TOPICS.commands]
    assert [c.kind.value for c in commands] == ["ROLLBACK"]
    assert value(got, "mle_stream_commands_emitted_total", model="fraud", kind="ROLLBACK") == 1



def test_a_hold_the_timer_emits_is_counted_with_its_message() -> None:
    clock = [10**12]
    w = Worker(clock=lambda: clock[0])
    preds, labels = window(0, candidate_wrong=False)
    w.batch([Incoming(TOPICS.predictions, 0, 0, preds), Incoming(TOPICS.labels, 0, 1, labels)])
    clock[0] += 61_000  # a silent source, for longer than decision.outage_after
    assert [wire.decode_command(o.value).kind.value for o in w.tick()] == ["HOLD"]
    got = samples(w.metrics.registry)
    assert by_label(got, "mle_stream_commands_emitted_total", "kind") == {"HOLD": 1}
    assert value(got, "mle_stream_output_messages_total", topic=TOPICS.commands) == 1
    assert value(got, "mle_stream_batch_seconds_count") == 1  # the tick is no batch


def test_forged_approvals_are_counted_as_unverified_commands_without_their_model() -> None:
    w = Worker()
    for i in range(50):
        forged = Command(command_id=f"f{i}", kind=CommandKind.APPROVE, model=f"forged-{i}", baseline_version="1",
                         candidate_version="2", traffic={"1": 50, "2": 50}, reason="trust me", rule="r",
                         window_start=0, window_end=1, evidence="{}", policy_version="p", issued_at=1)
        w.batch([Incoming(TOPICS.commands, 0, i, wire.encode_command(FORGER.sign(forged) if i % 2 else
                                                                      forged))])
    got = samples(w.metrics.registry)
    assert value(got, "mle_stream_unverified_commands_total", topic=TOPICS.commands, component="worker") == 50
    assert value(got, "mle_stream_dead_letters_total", topic=TOPICS.commands, reason="unsigned") == 50
    assert not any("forged" in v for _, labels in got for _, v in labels)


def test_a_window_without_a_value_exposes_nan_and_other_versions_no_gauge() -> None:
    w = Worker()
    preds = [Prediction(prediction_id=f"p{i}", model="fraud", version=v, timestamp=i, score=0.5)
             for i, v in enumerate(["1", "2", "7"] * 5)]
    closer = Prediction(prediction_id="late", model="fraud", version="1", timestamp=1000, score=0.5)
    w.batch([Incoming(TOPICS.predictions, 0, 0, wire.encode_predictions(preds + [closer])),
             Incoming(TOPICS.labels, 0, 0, wire.encode_labels([Label("late", "fraud", 1000, True)]))])
    got = samples(w.metrics.registry)
    roles = {dict(k)["role"] for (n, k) in got if n == "mle_stream_window_metric"}
    assert roles == {"baseline", "candidate"}  # version 7 ("other") comes from the input: no gauge for it
    accuracy = value(got, "mle_stream_window_metric", model="fraud", version="2", role="candidate", metric="accuracy")
    assert math.isnan(accuracy)  # no labels in the window
    assert value(got, "mle_stream_window_metric", model="fraud", version="2", role="candidate",
                 metric="predictions") == 5


def test_consumer_lag_is_highwater_minus_position_of_the_partitions_held() -> None:
    metrics = WorkerMetrics()
    highwaters = {("p", 0): 130, ("p", 1): 7, ("l", 0): None}
    metrics.observe_lag({("p", 0): 100, ("p", 1): 9, ("l", 0): 3}, lambda t, p: highwaters[(t, p)])
    got = samples(metrics.registry)
    # p[1]: a high watermark below the position (the embedded broker's) reads 0; l[0] has none yet.
    assert {(dict(k)["topic"], dict(k)["partition"]): v for (n, k), v in got.items()
            if n == "mle_stream_consumer_lag"} == {("p", "0"): 30, ("p", "1"): 0}
    metrics.observe_lag({("p", 1): 5}, lambda t, p: highwaters[(t, p)])  # p[0] revoked
    assert by_label(samples(metrics.registry), "mle_stream_consumer_lag", "partition") == {"1": 2}


def test_input_alignment_gauges_and_the_status_block_of_the_models_held() -> None:
    from mle_stream.stream.alignment import LabelsState, Offsets  # noqa: F401 - the types app.py passes

    @dataclass(frozen=True)
    class Clocks:
        predictions: int
        labels: int
        event_time: int

    metrics = WorkerMetrics()
    now = 2_000_000
    metrics.observe_inputs(
        {"fraud": Clocks(1_990_000, 1_900_000, 1_900_000), "spam": Clocks(1_000_000, -1, 1_000_000)},
        {"fraud": LabelsState(idle=False, enforced=False, caught_up=False),
         "spam": LabelsState(idle=True, enforced=True, caught_up=False)},
        {"fraud": 12}, {"fraud": 0, "spam": 1}, [("p", 0), ("l", 0), ("p", 1), ("l", 1)], {("p", 0)}, now,
        labels_topic="l")
    metrics.enforced_idle.labels("spam").inc()
    got = samples(metrics.registry)
    assert value(got, "mle_stream_input_watermark_seconds", model="fraud", input="labels") == 1_900
    assert value(got, "mle_stream_input_event_lag_seconds", model="fraud", input="predictions") == 10
    assert ("mle_stream_input_watermark_seconds", frozenset({("model", "spam"), ("input", "labels")})) not in got
    assert {(dict(k)["topic"], dict(k)["partition"]): v for (n, k),
            v in got.items() if n == "mle_stream_input_paused"} \
        == {("p", "0"): 1, ("l", "0"): 0, ("p", "1"): 0, ("l", "1"): 0}
    assert by_label(got, "mle_stream_input_idle", "model") == {"fraud": 0, "spam": 1}
    assert by_label(got, "mle_stream_deferred_rows", "model") == {"fraud": 12, "spam": 0}
    assert value(got, "mle_stream_enforced_idle_total", model="spam") == 1
    fraud, spam = metrics.inputs_json("fraud"), metrics.inputs_json("spam")
    assert fraud is not None and spam is not None and metrics.inputs_json("other") is None
    assert (fraud["state"], fraud["predictions_paused"], fraud["labels_paused"], fraud["watermarks"]["event_time"]) \
        == ("holding predictions back", True, False, 1_900)
    assert (spam["state"], spam["labels_idle_enforced"],
            spam["event_lag_seconds"]["labels"]) == ("labels idle", True, None)
    json.dumps(fraud, allow_nan=False)  # as /api/status sends it
    metrics.observe_inputs({"fraud": Clocks(1_990_000, 2_900_000, 1_990_000)},
                           {"fraud": LabelsState(idle=False, enforced=False, caught_up=True)}, {}, {"fraud": 0},
                           [("p", 0), ("l", 0)], {("l", 0)}, now, labels_topic="l")  # the labels run ahead
    assert {(dict(k)["topic"], dict(k)["partition"]): v for (n, k), v in samples(metrics.registry).items()
            if n == "mle_stream_input_paused"} == {("p", "0"): 0, ("l", "0"): 1}
    fraud = metrics.inputs_json("fraud")
    assert fraud is not None and (fraud["state"], fraud["labels_paused"], fraud["predictions_paused"]) \
        == ("holding labels back", True, False)
    metrics.observe_inputs({}, {}, {}, {}, [], set(), now, labels_topic="l")  # everything revoked
    assert not [n for (n, _) in samples(metrics.registry) if n.startswith("mle_stream_input_")]


def test_metrics_port_comes_from_the_flag_the_environment_or_the_default() -> None:
    from mle_stream.cli import parse_args
    from mle_stream.cli.common import choose_metrics_port

    assert choose_metrics_port(parse_args(["worker", "-t", "x"]), Settings(), 9464) == 9464
    assert choose_metrics_port(parse_args(["worker", "-t", "x"]), Settings.from_env({"MLE_METRICS_PORT": "9999"}),
                                9464) == 9999
    args = parse_args(["actuator", "-t", "x", "--metrics-port", "0", "--metrics-bind", "127.0.0.1"])
    assert choose_metrics_port(args, Settings.from_env({"MLE_METRICS_PORT": "9999"}), 9465) == 0
    assert args.metrics_bind == "127.0.0.1"
    with pytest.raises(ConfigError, match="MLE_METRICS_PORT"):
        Settings.from_env({"MLE_METRICS_PORT": "http"})


# -- the dashboard --------------------------------------------------------------------------------


def exposed_names() -> set[str]:
    """Every sample name the two registries can expose (counters as *_total, histograms as
    *_bucket/_sum/_count), whether or not a labelled child exists yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for registry in (WorkerMetrics().registry, ActuatorMetrics().registry)
            for family in registry.collect() for suffix in suffixes[family.type]}


def expressions(node: object) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    found = []
    if isinstance(node, dict):
        for key, v in node.items():
            if key in ("expr", "definition") and isinstance(v, str):
                found.append(v)
            elif key == "query" and isinstance(v, str) and v != "prometheus":
                found.append(v)
            else:
                found += expressions(v)
    elif isinstance(node, list):
        for item in node:
            found += expressions(item)
    return found


def test_the_dashboard_asks_only_for_metrics_the_code_defines() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    used = {name for e in exprs for name in re.findall(r"\bmle_stream_[a-z0-9_]+", e)}
    assert used and used <= exposed_names(), used - exposed_names()
    # Every metric of the worker and the actuator is on the dashboard somewhere.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exposed_names()}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}, families - used

    panels = [p for p in dashboard["panels"]] + [q for p in dashboard["panels"] for q in p.get("panels", [])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["definition"].startswith("label_values(")
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]


def test_every_metric_is_documented() -> None:
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = operations[operations.index("### Prometheus metrics"):]
    documented = set(re.findall(r"`(mle_stream_[a-z0-9_]+)`", section))
    defined = {family.name + ("_total" if family.type == "counter" else "")
               for registry in (WorkerMetrics().registry, ActuatorMetrics().registry) for family in registry.collect()}
    assert defined <= documented, defined - documented


# -- the processes, over the broker -----------------------------------------------------------------


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())


def scrape_until(port: int, done: Callable[[Samples], bool], process: subprocess.Popen, timeout_s: float) -> Samples:
    deadline = time.monotonic() + timeout_s
    got: Samples = {}
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited"
        try:
            got = scrape(port)
        except OSError:  # not listening yet
            got = {}
        if got and done(got):
            return got
        time.sleep(0.5)
    raise AssertionError(f"not there within {timeout_s} s; last scrape: {sorted(got.items())}")


def stop(process: subprocess.Popen, log_path: Path) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    print(log_path.read_text()[-3000:])


@pytest.mark.broker
def test_the_worker_serves_its_metrics_over_http(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    from test_worker_stream import TOPOLOGY as WORKER_TOPOLOGY
    from test_worker_stream import window as worker_window

    (tmp_path / "fraud.yaml").write_text(WORKER_TOPOLOGY)
    port = free_port()
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": KEY.decode(),
           "MLE_WORKER_GROUP": f"worker-{uuid.uuid4().hex[:8]}"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "mle_stream", "worker", "-t", str(tmp_path / "fraud.yaml"),
                                    "--metrics-port", str(port), "--metrics-bind", "127.0.0.1"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        producer = Producer(producer_config(kafka_bootstrap))
        base = (int(time.time() * 1000) - 60_000) // 2000 * 2000
        for w, candidate_error_rate in enumerate((0.1, 0.5, 0.5)):  # 40 predictions per version and window
            preds, labels = worker_window(base + w * 2000, {"1": 0.1, "2": candidate_error_rate})
            producer.produce(topics.predictions, key=b"fraud", value=wire.encode_predictions(preds))
            producer.produce(topics.labels, key=b"fraud", value=wire.encode_labels(labels))
        tick = Prediction(prediction_id="tick", model="fraud", version="1", timestamp=base + 6000, score=0.9)
        producer.produce(topics.predictions, key=b"fraud", value=wire.encode_prediction(tick))
        producer.produce(topics.predictions, key=b"fraud", value=b"{junk")
        producer.flush(10)

        got = scrape_until(port, lambda s: value(s, "mle_stream_commands_emitted_total", model="fraud",
                                                 kind="ROLLBACK") >= 1
                           and value(s, "mle_stream_predictions_total", model="fraud") >= 241, process, 90)
        assert value(got, "mle_stream_predictions_total", model="fraud") == 241
        assert value(got, "mle_stream_labels_total", model="fraud") == 240
        assert value(got, "mle_stream_input_messages_total", topic=topics.predictions) == 5
        assert value(got, "mle_stream_dead_letters_total", topic=topics.predictions, reason="undecodable") == 1
        assert value(got, "mle_stream_window_metric", model="fraud", version="2", role="candidate",
                     metric="error_rate") == 0.5
        assert value(got, "mle_stream_commands_emitted_total", model="fraud", kind="ROLLBACK") == 1
        assert value(got, "mle_stream_verdicts_total", model="fraud", verdict="FAIL") == 2
        assert value(got, "mle_stream_output_messages_total", topic=topics.commands) == 1
        assert value(got, "mle_stream_batch_seconds_count") >= 1
        # The lag of the partition the records went to: what is left to read, as the consumer sees it.
        lags = {(dict(k)["topic"], dict(k)["partition"]): v for (n, k),
                v in got.items() if n == "mle_stream_consumer_lag"}
        assert any(t == topics.predictions for t, _ in lags) and all(v >= 0 for v in lags.values()), lags
    finally:
        stop(process, log_path)


@pytest.mark.broker
def test_the_actuator_serves_its_metrics_over_http(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    from test_actuator_stream import rollback

    # HOLD changes neither the route nor the registry: this actuator needs neither to be set up.
    hold = SIGNER.sign(replace(rollback("silent"), kind=CommandKind.HOLD, traffic={}, command_id="hold-1"))
    port = free_port()
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": KEY.decode(),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLE_ACTUATOR_GROUP": f"actuator-{uuid.uuid4().hex[:8]}",
           "MLE_METRICS_PORT": str(port)}  # the environment's port, this time
    log_path = tmp_path / "actuator.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "mle_stream", "actuator", "-t", str(REPO / "topologies"),
                                    "--gitops-repo", str(tmp_path / "gitops")],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        producer = Producer(producer_config(kafka_bootstrap))
        for payload in (wire.encode_command(FORGER.sign(rollback("forged"))), b"\x00garbage",
                        wire.encode_command(hold), wire.encode_command(hold)):
            producer.produce(topics.commands, key=b"fraud-detector", value=payload)
        producer.flush(10)
        got = scrape_until(port, lambda s: sum(by_label(s, "mle_stream_actuator_outcomes_total", "status").values())
                           >= 3, process, 60)
        assert by_label(got, "mle_stream_actuator_commands_total", "kind") == {"ROLLBACK": 1, "HOLD": 2}
        outcomes = {(dict(k)["kind"], dict(k)["status"]): v for (n, k), v in got.items()
                    if n == "mle_stream_actuator_outcomes_total"}
        assert outcomes == {("ROLLBACK", "REJECTED"): 1, ("HOLD", "APPLIED"): 1, ("HOLD", "SKIPPED_DUPLICATE"): 1}
        assert value(got, "mle_stream_actuator_apply_seconds_count", kind="HOLD") == 2
        assert value(got, "mle_stream_dead_letters_total", topic=topics.commands, reason="undecodable") == 1
        assert by_label(got, "mle_stream_actuator_redeliveries_total", "kind") == {}
    finally:
        stop(process, log_path)


@pytest.mark.broker
def test_redeliveries_of_a_command_failing_on_transient_errors_are_counted(kafka_bootstrap: str,
                                                                           topics: Topics) -> None:
    from test_actuator_stream import FlakyRegistry, rollback

    routing = InMemoryRouting({"fraud-detector": {"1": 90, "2": 10}})
    registry = FlakyRegistry({"fraud-detector": ["1", "2"]})
    registry.down.set()
    metrics = ActuatorMetrics()
    stop_loop = threading.Event()
    thread = threading.Thread(target=run_actuator_loop, daemon=True, args=(
        Actuator(routing, registry, VERIFIER), kafka_bootstrap, topics, stop_loop),
        kwargs={"group_id": f"g-{uuid.uuid4().hex[:8]}", "redeliver": Backoff(1, 0.2, 0.4), "metrics": metrics})
    thread.start()
    producer = Producer(producer_config(kafka_bootstrap))
    producer.produce(topics.commands, key=b"fraud-detector",
                     value=wire.encode_command(SIGNER.sign(rollback("outage"))))
    producer.flush(10)
    try:
        deadline = time.monotonic() + 30
        while registry.refused < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        registry.down.clear()
        read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= 2, timeout_s=30)
    finally:
        stop_loop.set()
        thread.join(timeout=30)
    got = samples(metrics.registry)
    failed = value(got, "mle_stream_actuator_outcomes_total", kind="ROLLBACK", status="FAILED")
    assert failed >= 3 and value(got, "mle_stream_actuator_redeliveries_total", kind="ROLLBACK") == failed
    assert value(got, "mle_stream_actuator_outcomes_total", kind="ROLLBACK", status="APPLIED") == 1
    assert value(got, "mle_stream_actuator_commands_total", kind="ROLLBACK") == failed + 1
    assert value(got, "mle_stream_actuator_apply_seconds_count", kind="ROLLBACK") == failed + 1
