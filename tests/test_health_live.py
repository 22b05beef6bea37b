"""The probes of real processes: `mle-stream worker` (with faults injected by tests/faulty_worker.py:
only its processing step fails, the health logic is the real one) and the actuator's consume loop,
over the broker, asked over HTTP as the kubelet asks them."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from conftest import topic_env
from mle_stream import wire
from mle_stream.actuator.ports import InMemoryRegistry, InMemoryRouting
from mle_stream.actuator.runner import run_actuator_loop
from mle_stream.actuator.service import Actuator, epoch_ms
from mle_stream.broker import EmbeddedBroker, free_port
from mle_stream.config import Topics
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind
from mle_stream.core.signing import Signer
from mle_stream.health import HEARTBEAT_S, ActuatorHealth
from mle_stream.kafka import ensure_topics, producer_config
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.telemetry import ActuatorMetrics, serve
from worker_process import TOPOLOGY, Worker, traffic

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent
FAULTY_WORKER = str(Path(__file__).with_name("faulty_worker.py"))
KEY = b"health-test-key-0123456789abcdef"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)


def get(port: int, path: str) -> tuple[int, Any]:
    """Status and body (JSON decoded for the probes) of GET http://127.0.0.1:PORT/PATH; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError:
        return 0, None
    return status, body if path == "/metrics" else json.loads(body)


def metric(port: int, sample: str) -> float | None:
    """The value of one sample, e.g. 'mle_stream_agent_crashes_total' or 'x{partition="0"}'."""
    _, text = get(port, "/metrics")
    for line in (text or "").splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            log = worker.text()[-4000:] if worker is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{log}")
        time.sleep(0.2)


def failing_checks(port: int, path: str = "/livez") -> dict[str, str]:
    status, body = get(port, path)
    if status != 503:
        return {}
    return {name: c["detail"] for name, c in body["checks"].items() if not c["ok"]}


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., tuple[Worker, int]]]:
    started: list[Worker] = []

    def start(bootstrap: str, topics: Topics, **env: str) -> tuple[Worker, int]:
        topologies = tmp_path / "topologies"
        topologies.mkdir(exist_ok=True)
        (topologies / "fraud.yaml").write_text(TOPOLOGY.format(model="fraud"))
        port = free_port()
        worker = Worker(tmp_path, {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": bootstrap,
                                   "MLE_SIGNING_KEY": KEY.decode(),
                                   "MLE_WORKER_GROUP": f"health-{uuid.uuid4().hex[:8]}",
                                   "MLE_TOPIC_PARTITIONS": "2", "MLE_STATUS_PORT": "0",
                                   "MLE_METRICS_PORT": str(port), "MLE_METRICS_BIND": "127.0.0.1", **env},
                        topologies, entry=[FAULTY_WORKER])
        started.append(worker)
        worker.start()
        wait_until(lambda: get(port, "/readyz")[0] == 200, "/readyz to answer 200", 60, worker)
        return worker, port

    yield start
    for worker in started:
        worker.stop()


def publish(bootstrap: str, topic: str, value: bytes, key: bytes = b"fraud") -> None:
    producer = Producer(producer_config(bootstrap))
    producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def test_a_worker_is_ready_once_restored_and_a_failed_batch_fails_liveness_and_counts_a_crash(
        start_worker: Callable[..., tuple[Worker, int]], kafka_bootstrap: str, topics: Topics) -> None:
    worker, port = start_worker(kafka_bootstrap, topics, MLE_CHECKPOINT_INTERVAL="1s")
    status, body = get(port, "/livez")
    assert status == 200 and body["status"] == "ok", body
    assert get(port, "/readyz")[1]["checks"]["partitions"]["detail"] == "input partitions [0, 1] restored"
    assert metric(port, "mle_stream_agent_crashes_total") == 0
    assert get(port, "/healthz")[0] == 200

    publish(kafka_bootstrap, topics.predictions, b"RAISE: a record the processing step chokes on")
    wait_until(lambda: "checkpoints" in failing_checks(port), "/livez to fail on checkpoints", 30, worker)
    checks = get(port, "/livez")[1]["checks"]
    assert "writes no checkpoint again" in checks["checkpoints"]["detail"]
    # Faust's supervisor started the agent again: it runs, but its state has lost a batch.
    assert checks["agent"]["ok"] and "RuntimeError: injected failure at" in checks["agent"]["detail"], checks
    assert metric(port, "mle_stream_agent_crashes_total") == 1
    assert get(port, "/healthz")[0] == 503 and get(port, "/readyz")[0] == 503


def test_an_agent_that_faust_does_not_restart_fails_liveness(
        start_worker: Callable[..., tuple[Worker, int]], kafka_bootstrap: str, topics: Topics) -> None:
    worker, port = start_worker(kafka_bootstrap, topics)
    assert get(port, "/livez")[0] == 200
    # SystemExit is no agent error to Faust: the worker begins to stop, the agent stays dead and the
    # process stays up (this is what main did with another hostile input).
    publish(kafka_bootstrap, topics.predictions, b"EXIT: a record that ends the agent")
    wait_until(lambda: "agent" in failing_checks(port), "/livez to fail on the agent", 30, worker)
    detail = failing_checks(port)["agent"]
    assert "the agent is not running" in detail and "SystemExit: injected exit at" in detail, detail
    assert worker.process is not None and worker.process.poll() is None, "the process stays up: only the probe tells"
    assert metric(port, "mle_stream_agent_crashes_total") == 1
    assert metric(port, "mle_stream_agent_running") == 0
    worker.kill()  # a worker whose agent ended by SystemExit does not stop on SIGTERM either


def test_a_worker_stuck_in_a_batch_while_input_waits_fails_liveness_and_recovers_when_it_moves(
        start_worker: Callable[..., tuple[Worker, int]], kafka_bootstrap: str, topics: Topics,
        tmp_path: Path) -> None:
    worker, port = start_worker(kafka_bootstrap, topics, MLE_HEALTH_STALL_AFTER="5s")
    release = tmp_path / "release"
    publish(kafka_bootstrap, topics.predictions, b"HANG:" + str(release).encode())
    time.sleep(1)  # the batch with it is in the processing thread: what follows waits
    for i in range(3):  # one record per produce: the embedded broker's high watermark stays right
        publish(kafka_bootstrap, topics.predictions, b"not json %d" % i)
    stalled = f'mle_stream_consumer_stalled{{partition="0",topic="{topics.predictions}"}}'
    wait_until(lambda: "consumer" in failing_checks(port), "/livez to fail on the stalled consumer", 30, worker)
    detail = failing_checks(port)["consumer"]
    assert re.search(rf"{re.escape(topics.predictions)}\[0\] at offset 0 with [1-9]\d* waiting since \d+ s ago",
                     detail), detail
    assert metric(port, stalled) == 1
    assert get(port, "/livez")[1]["checks"]["event_loop"]["ok"], "the event loop runs on: only the batch is stuck"
    release.touch()
    wait_until(lambda: get(port, "/livez")[0] == 200, "/livez to pass once the worker moves again", 30, worker)
    assert metric(port, stalled) == 0


AGE = 'mle_stream_checkpoint_age_seconds{partition="0"}'
WRITTEN = "mle_stream_checkpoints_written_total"


def _feed_until_the_broker_dies(start_worker: Callable[..., tuple[Worker, int]], topic_prefix: str,
                                attempt: int) -> tuple[Worker, int]:
    """A worker checkpointing every 3 s while input keeps arriving, then its broker killed
    (checkpoints and input both go). Returns the worker and its metrics port."""
    broker = EmbeddedBroker().start()
    topics = Topics(**{name: f"{topic_prefix}{attempt}." + default for name, default in Topics().__dict__.items()})
    ensure_topics(broker.bootstrap_servers, topics.all(), partitions=2)
    worker, port = start_worker(broker.bootstrap_servers, topics, MLE_CHECKPOINT_INTERVAL="3s",
                                MLE_HEALTH_CHECKPOINT_MAX_AGE="6s")
    preds, _ = traffic(int(time.time() * 1000), 400, random.Random(7), models=("fraud",))
    feeding = threading.Event()
    feeding.set()

    def feed() -> None:
        producer = Producer(producer_config(broker.bootstrap_servers))
        for message in preds:
            if not feeding.is_set():
                break
            producer.produce(topics.predictions, key=b"fraud", value=wire.encode_predictions(message))
            producer.poll(0)
            time.sleep(0.05)
        producer.purge()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: (metric(port, WRITTEN) or 0) >= 2, "checkpoints to be written", 30, worker)
        for _ in range(10):  # written every 3 s, so the unsaved input stays young
            assert get(port, "/livez")[0] == 200 and (metric(port, AGE) or 0) < 6, failing_checks(port)
            time.sleep(0.3)
        # Kill it halfway between two checkpoints, so that input processed since the last one is unsaved.
        # Clocks that would not do: the probe's age (heartbeats lag and run in step with checkpoints),
        # a checkpoint interval near the broker's fetch cadence (~1 s here: every batch is saved at once).
        written = metric(port, WRITTEN) or 0
        wait_until(lambda: (metric(port, WRITTEN) or 0) > written, "the next checkpoint", 10, worker)
        time.sleep(1.5)
        broker.kill()
    finally:
        feeding.clear()
        feeder.join(10)
        broker.stop()
    return worker, port


def test_checkpoint_age_grows_while_checkpoints_cannot_be_written_and_fails_liveness_past_the_bound(
        start_worker: Callable[..., tuple[Worker, int]], topic_prefix: str) -> None:
    # Liveness may only fail when the worker holds input that no checkpoint includes. Whether it does
    # when the broker dies depends on timing (the last checkpoint may follow the last batch): two
    # heartbeats after the kill the age tells, and the scenario runs again, on a new broker, if not.
    for attempt in range(3):
        worker, port = _feed_until_the_broker_dies(start_worker, topic_prefix, attempt)
        time.sleep(2 * HEARTBEAT_S + 0.5)
        if (metric(port, AGE) or 0) > 0:
            break
        worker.kill()  # without its broker a graceful stop would only wait out its timeout
    else:
        raise AssertionError("three times the last checkpoint before the broker died included all input")
    wait_until(lambda: "checkpoints" in failing_checks(port), "/livez to fail on checkpoints", 30, worker)
    detail = failing_checks(port)["checkpoints"]
    assert re.search(r"partition 0 holds input processed \d+ s ago that no checkpoint includes \(bound 6 s\)",
                     detail), detail
    first = metric(port, AGE)
    assert first is not None and first > 6
    time.sleep(1.5)
    assert (metric(port, AGE) or 0) >= first + 1, "the age grows while no checkpoint is written"
    worker.kill()  # without its broker a graceful stop would only wait out its timeout


# -- the actuator -------------------------------------------------------------------------------------


def test_an_actuator_process_serves_its_probes_where_it_is_told(tmp_path: Path, kafka_bootstrap: str,
                                                                  topics: Topics) -> None:
    port = free_port()
    env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap, "MLE_SIGNING_KEY": KEY.decode(),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLE_ACTUATOR_GROUP": f"actuator-{uuid.uuid4().hex[:8]}", "MLE_METRICS_PORT": str(port),
           "MLE_METRICS_BIND": "127.0.0.1"}
    log = tmp_path / "actuator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "mle_stream", "actuator", "-t", str(REPO / "topologies"),
                                    "--gitops-repo", str(tmp_path / "gitops"), "--dry-run"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200 or process.poll() is not None,
                   "the actuator's /readyz to answer 200", 60)
        assert process.poll() is None, log.read_text()[-3000:]
        status, body = get(port, "/livez")
        assert status == 200 and body["checks"]["loop"]["ok"], body
        assert metric(port, "mle_stream_actuator_loop_alive") == 1
    finally:
        process.terminate()
        process.wait(timeout=30)



def rollback(rule: str) -> Command:
    return SIGNER.sign(Command(
        command_id=command_id("fraud-detector", "1", "2", CommandKind.ROLLBACK, rule, 0, 15_000),
        kind=CommandKind.ROLLBACK, model="fraud-detector", baseline_version="1", candidate_version="2",
        traffic={"1": 100, "2": 0}, reason="test", rule=rule, window_start=0, window_end=15_000, evidence="{}",
        policy_version="p", issued_at=epoch_ms()))  # now: the actuator refuses an expired command


class DyingRouting(InMemoryRouting):
    """A routing backend that, once told, ends its thread (SystemExit, which the Actuator does not
    catch) or hangs, on the next command."""

    def __init__(self) -> None:
        super().__init__({"fraud-detector": {"1": 90, "2": 10}})
        self.fault: str | None = None
        self.release = threading.Event()

    def get_weights(self, model: str) -> dict[str, int]:
        if self.fault == "exit":
            raise SystemExit("injected: the routing backend ended the thread")
        if self.fault == "hang":
            self.release.wait(60)
        return super().get_weights(model)


@pytest.fixture
def actuator_loop(kafka_bootstrap: str, topics: Topics) -> Iterator[tuple[int, DyingRouting, threading.Thread]]:
    routing = DyingRouting()
    actuator = Actuator(routing, InMemoryRegistry({"fraud-detector": ["1", "2"]}), SIGNER.verifier())
    metrics, health = ActuatorMetrics(), ActuatorHealth(stall_after_s=3)
    port = serve(metrics.registry, free_port(), "127.0.0.1", health)
    assert port is not None
    stop = threading.Event()
    thread = threading.Thread(target=run_actuator_loop, args=(actuator, kafka_bootstrap, topics, stop),
                              kwargs={"group_id": f"g-{uuid.uuid4().hex[:8]}", "metrics": metrics, "health": health},
                              daemon=True)
    thread.start()
    wait_until(lambda: get(port, "/readyz")[0] == 200, "the actuator's /readyz to answer 200", 30)
    yield port, routing, thread
    stop.set()
    routing.release.set()
    thread.join(30)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death is the point
def test_the_actuator_is_ready_and_its_dead_loop_thread_fails_liveness(
        actuator_loop: tuple[int, DyingRouting, threading.Thread], kafka_bootstrap: str, topics: Topics) -> None:
    port, routing, thread = actuator_loop
    assert get(port, "/livez")[0] == 200
    assert metric(port, "mle_stream_actuator_loop_alive") == 1
    publish(kafka_bootstrap, topics.commands, wire.encode_command(rollback("r1")), key=b"fraud-detector")
    wait_until(lambda: metric(port, "mle_stream_actuator_last_command_age_seconds") is not None
               and metric(port, 'mle_stream_actuator_outcomes_total{kind="ROLLBACK",status="APPLIED"}') == 1,
               "the first command applied", 30)
    routing.fault = "exit"
    publish(kafka_bootstrap, topics.commands, wire.encode_command(rollback("r2")), key=b"fraud-detector")
    thread.join(30)
    assert not thread.is_alive()
    status, body = get(port, "/livez")
    assert status == 503
    assert body["checks"]["loop"]["detail"] == ("the consume loop has stopped: SystemExit: injected: the routing "
                                                "backend ended the thread")
    assert metric(port, "mle_stream_actuator_loop_alive") == 0


def test_an_actuator_loop_stuck_in_a_command_fails_liveness_after_the_bound(
        actuator_loop: tuple[int, DyingRouting, threading.Thread], kafka_bootstrap: str, topics: Topics) -> None:
    port, routing, thread = actuator_loop
    routing.fault = "hang"
    publish(kafka_bootstrap, topics.commands, wire.encode_command(rollback("r3")), key=b"fraud-detector")
    wait_until(lambda: "loop" in failing_checks(port), "/livez to fail on the stuck loop", 30)
    assert "has not come round for" in failing_checks(port)["loop"] and thread.is_alive()
    routing.fault = None
    routing.release.set()
    wait_until(lambda: get(port, "/livez")[0] == 200, "/livez to recover once the command is through", 30)

