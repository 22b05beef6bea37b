"""Every kind of connection mle-stream opens, over real TLS and SASL listeners on loopback (the
embedded broker behind tests/secured_broker.py's proxy): confluent-kafka's producer, consumer and
admin client, the EvaluationClient, and aiokafka configured through our Faust credentials; mutual
TLS; host name verification; PLAIN and SCRAM logins; and clients without the right settings
refused. The whole worker -> actuator path, over mutual TLS and over SASL_SSL, is the last test."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from conftest import topic_env
from mle_stream import wire
from mle_stream.actuator.gitops import GitOpsRouting
from mle_stream.broker import free_port
from mle_stream.client import EvaluationClient
from mle_stream.config import Topics
from mle_stream.core.events import Prediction
from mle_stream.errors import BrokerError
from mle_stream.kafka import admin_client, consumer_config, ensure_topics, partition_counts, wait_for_broker
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.mlflow_registry import MlflowRegistry, register_demo_versions
from mle_stream.retry import Backoff
from mle_stream.stream.credentials import faust_credentials
from secured_broker import KEY_PASSWORD, KafkaProxy, Pki, make_pki, secured_broker, server_tls
from test_worker_stream import TOPOLOGY as WORKER_TOPOLOGY
from test_worker_stream import window

pytestmark = pytest.mark.broker

ONE_TRY = Backoff(attempts=1)
SIGNING_KEY = "tls-test-key-0123456789abcdef0123"  # an HMAC key needs 32 bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


USERS = {"alice": "alice-pass-7Qv"}


@pytest.fixture(scope="module")
def tls(pki: Pki) -> Iterator[tuple[str, KafkaProxy]]:
    """A listener that authenticates itself to clients (server-side TLS only)."""
    with secured_broker(server_tls(pki.server_cert, pki.server_key)) as served:
        yield served


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[tuple[str, KafkaProxy]]:
    """A listener that also requires a client certificate signed by the test CA."""
    with secured_broker(server_tls(pki.server_cert, pki.server_key, client_ca=pki.ca)) as served:
        yield served


@pytest.fixture(scope="module")
def sasl_ssl(pki: Pki) -> Iterator[tuple[str, KafkaProxy]]:
    """TLS, then a SASL login (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) as one of USERS."""
    with secured_broker(server_tls(pki.server_cert, pki.server_key), USERS) as served:
        yield served


def client_tls(pki: Pki, **more: str) -> KafkaSecurity:
    return KafkaSecurity.from_env({"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_CA_LOCATION": str(pki.ca),
                                   **more})


def mutual_tls_env(pki: Pki) -> dict[str, str]:
    return {"MLE_KAFKA_SECURITY_PROTOCOL": "SSL", "MLE_KAFKA_SSL_CA_LOCATION": str(pki.ca),
            "MLE_KAFKA_SSL_CERTIFICATE_LOCATION": str(pki.client_cert),
            "MLE_KAFKA_SSL_KEY_LOCATION": str(pki.client_key), "MLE_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}


def sasl_env(pki: Pki, mechanism: str, password: str = USERS["alice"], protocol: str = "SASL_SSL") -> dict[str, str]:
    env = {"MLE_KAFKA_SECURITY_PROTOCOL": protocol, "MLE_KAFKA_SASL_MECHANISM": mechanism,
           "MLE_KAFKA_SASL_USERNAME": "alice", "MLE_KAFKA_SASL_PASSWORD": password}
    return {**env, "MLE_KAFKA_SSL_CA_LOCATION": str(pki.ca)} if protocol == "SASL_SSL" else env


def fresh_topics(bootstrap: str, security: KafkaSecurity) -> Topics:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topics = Topics(**{name: prefix + default for name, default in Topics().__dict__.items()})
    ensure_topics(bootstrap, topics.all(), partitions=2, security=security)
    return topics


def publish(bootstrap: str, topics: Topics, security: KafkaSecurity, n: int) -> list[str]:
    """n predictions through the EvaluationClient; the ids it sent."""
    now = int(time.time() * 1000)
    ids = [f"p-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    with EvaluationClient(bootstrap, topics=topics, linger_ms=10, security=security) as client:
        for i, pid in enumerate(ids):
            assert client.log_prediction(Prediction(prediction_id=pid, model="fraud", version="1", timestamp=now + i,
                                                    score=0.5))
        assert client.flush(30) == 0
        assert client.stats.sent_records == n
    return ids


def prediction_ids(values: list[bytes]) -> list[str]:
    return [p.prediction_id for value in values for p in wire.decode_predictions(value).records]


def read_with_librdkafka(bootstrap: str, topic: str, security: KafkaSecurity, n: int) -> list[str]:
    return prediction_ids(read_messages(bootstrap, topic, security, lambda vs: len(prediction_ids(vs)) >= n, 30))


def read_messages(bootstrap: str, topic: str, security: KafkaSecurity, done: Callable[[list[bytes]], bool],
                  timeout_s: float = 90) -> list[bytes]:
    """The values of `topic` (2 partitions), from the beginning, until `done(values)` holds or the time is up."""
    consumer = Consumer(consumer_config(bootstrap, f"g-{uuid.uuid4().hex[:8]}", security=security))
    consumer.assign([RdTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(2)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(values) and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                assert message.error() is None, message.error()
                values.append(message.value())
    finally:
        consumer.close()
    return values


def assert_round_trip(bootstrap: str, security: KafkaSecurity, n: int) -> None:
    """n records published to fresh topics come back whole to a librdkafka and an aiokafka reader."""
    topics = fresh_topics(bootstrap, security)
    sent = publish(bootstrap, topics, security, n)
    assert sorted(read_with_librdkafka(bootstrap, topics.predictions, security, n)) == sorted(sent)
    assert sorted(asyncio.run(read_with_aiokafka(bootstrap, topics.predictions, security, n))) == sorted(sent)


async def read_with_aiokafka(bootstrap: str, topic: str, security: KafkaSecurity, n: int) -> list[str]:
    """aiokafka configured exactly as the Faust worker's consumer is: through faust_credentials()."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000,
                                **credentials_to_aiokafka_auth(faust_credentials(security)))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(2)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ids: list[str] = []
        deadline = time.monotonic() + 30
        while len(ids) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += prediction_ids([record.value for record in records])
        return ids
    finally:
        await consumer.stop()


async def aiokafka_connects(bootstrap: str, security: KafkaSecurity) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5_000,
                                **credentials_to_aiokafka_auth(faust_credentials(security)))
    await consumer.start()  # a start that fails cleans up after itself
    # A request over the connection, which also lets aiokafka's own background task begin: stopping
    # a consumer before it has run makes aiokafka 0.14's stop() raise CancelledError.
    await consumer.topics()
    await consumer.stop()


def test_tls_round_trip_through_admin_client_evaluation_client_and_both_consumers(
        pki: Pki, tls: tuple[str, KafkaProxy]) -> None:
    bootstrap, proxy = tls
    security = client_tls(pki)
    wait_for_broker(bootstrap, security=security)
    topics = fresh_topics(bootstrap, security)
    assert partition_counts(bootstrap, [topics.predictions, topics.labels], security=security) == {
        topics.predictions: 2, topics.labels: 2}
    sessions = proxy.sessions

    sent = publish(bootstrap, topics, security, 50)

    assert sorted(read_with_librdkafka(bootstrap, topics.predictions, security, 50)) == sorted(sent)
    assert sorted(asyncio.run(read_with_aiokafka(bootstrap, topics.predictions, security, 50))) == sorted(sent)
    assert proxy.sessions > sessions  # every client above opened TLS sessions of its own


def test_clients_without_tls_settings_cannot_use_the_tls_port(pki: Pki, tls: tuple[str, KafkaProxy]) -> None:
    bootstrap, _ = tls
    with pytest.raises(KafkaException):
        admin_client(bootstrap, log_level=0).list_topics(timeout=3)
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        wait_for_broker(bootstrap, ONE_TRY, security=PLAINTEXT)
    with pytest.raises(KafkaConnectionError):
        asyncio.run(aiokafka_connects(bootstrap, PLAINTEXT))


def test_an_untrusted_broker_certificate_is_refused_at_once(pki: Pki, tls: tuple[str, KafkaProxy]) -> None:
    bootstrap, _ = tls
    untrusting = client_tls(pki, MLE_KAFKA_SSL_CA_LOCATION=str(pki.other_ca))
    started = time.monotonic()
    # The default backoff would retry for minutes: a certificate error must end the wait at the first try.
    with pytest.raises(BrokerError, match="refused this client's security settings .*certificate verify failed"):
        wait_for_broker(bootstrap, security=untrusting)
    assert time.monotonic() - started < 20
    with pytest.raises(KafkaConnectionError):
        asyncio.run(aiokafka_connects(bootstrap, untrusting))


def test_host_names_are_verified_unless_the_algorithm_is_none(pki: Pki) -> None:
    with secured_broker(server_tls(pki.wrong_name_cert,
                                   pki.wrong_name_key)) as (bootstrap, _):  # a certificate for kafka.invalid
        verifying = client_tls(pki)
        with pytest.raises(BrokerError, match="certificate verify failed"):
            wait_for_broker(bootstrap, ONE_TRY, security=verifying)
        with pytest.raises(KafkaConnectionError):
            asyncio.run(aiokafka_connects(bootstrap, verifying))

        trusting_the_name = client_tls(pki, MLE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM="none")
        wait_for_broker(bootstrap, ONE_TRY, security=trusting_the_name)
        asyncio.run(aiokafka_connects(bootstrap, trusting_the_name))


def test_mutual_tls_needs_the_client_certificate(pki: Pki, mtls: tuple[str, KafkaProxy]) -> None:
    bootstrap, _ = mtls
    security = KafkaSecurity.from_env(mutual_tls_env(pki))  # the key is encrypted: ssl.key.password opens it
    wait_for_broker(bootstrap, security=security)
    assert_round_trip(bootstrap, security, 20)

    without_certificate = client_tls(pki)
    with pytest.raises(BrokerError):
        wait_for_broker(bootstrap, ONE_TRY, security=without_certificate)
    with pytest.raises(KafkaConnectionError):
        asyncio.run(aiokafka_connects(bootstrap, without_certificate))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_logins_carry_the_round_trip_and_a_wrong_password_is_refused(
        pki: Pki, sasl_ssl: tuple[str, KafkaProxy], mechanism: str) -> None:
    bootstrap, proxy = sasl_ssl
    security = KafkaSecurity.from_env(sasl_env(pki, mechanism))
    logins = proxy.authenticated
    wait_for_broker(bootstrap, security=security)
    assert_round_trip(bootstrap, security, 20)
    assert proxy.authenticated > logins

    wrong = KafkaSecurity.from_env(sasl_env(pki, mechanism, password="not-" + USERS["alice"]))
    started = time.monotonic()
    # As for certificates: a refused login ends the start-up wait at the first try.
    with pytest.raises(BrokerError, match="refused this client's security settings .*SASL authentication error"):
        wait_for_broker(bootstrap, security=wrong)
    assert time.monotonic() - started < 20
    with pytest.raises(KafkaConnectionError):
        asyncio.run(aiokafka_connects(bootstrap, wrong))


def test_sasl_without_tls_and_clients_without_a_login_refused(pki: Pki) -> None:
    with secured_broker(users=USERS) as (bootstrap, _):
        security = KafkaSecurity.from_env(sasl_env(pki, "SCRAM-SHA-256", protocol="SASL_PLAINTEXT"))
        wait_for_broker(bootstrap, security=security)
        topics = fresh_topics(bootstrap, security)
        sent = publish(bootstrap, topics, security, 10)
        assert sorted(asyncio.run(read_with_aiokafka(bootstrap, topics.predictions, security, 10))) == sorted(sent)

        with pytest.raises(BrokerError, match="cannot reach Kafka"):
            wait_for_broker(bootstrap, ONE_TRY, security=PLAINTEXT)
        with pytest.raises(KafkaConnectionError):
            asyncio.run(aiokafka_connects(bootstrap, PLAINTEXT))


def run_cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "mle_stream", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def wait_for_status_page(port: int, timeout_s: float = 30) -> Any:
    """The worker's /api/status once its feed (a consumer over TLS) has read a command's outcome."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as response:
                page = json.load(response)
            if page["events_applied"] > 0 or time.monotonic() > deadline:
                return page
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@pytest.mark.parametrize("listener", ["mtls", "sasl_ssl"])
def test_worker_actuator_command_and_status_over_a_secured_listener(
        pki: Pki, listener: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The system as deployed, every Kafka connection over mutual TLS, or over SASL_SSL with
    SCRAM-SHA-512: `mle-stream worker` (its Faust consumer and producer, admin calls, checkpoint store
    and status page) configured by a properties file, `mle-stream actuator`, `command` and `status`
    by MLE_KAFKA_* variables, and the EvaluationClient. A degrading candidate must be rolled back
    end to end."""
    bootstrap, _ = request.getfixturevalue(listener)
    variables = mutual_tls_env(pki) if listener == "mtls" else sasl_env(pki, "SCRAM-SHA-512")
    security = KafkaSecurity.from_env(variables)
    topics = fresh_topics(bootstrap, security)
    topology = tmp_path / "fraud.yaml"
    topology.write_text(WORKER_TOPOLOGY)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    assert register_demo_versions(tracking, "fraud", 2, tmp_path / "artifacts") == ["1", "2"]
    MlflowRegistry(tracking).set_alias("fraud", "challenger", "2")
    routing = GitOpsRouting(tmp_path / "gitops")
    routing.init_route("fraud", {"1": 90, "2": 10})

    properties = tmp_path / "client.properties"
    properties.write_text("# the worker's Kafka security, as in a Kafka client.properties\n" + "".join(
        f"{name.removeprefix('MLE_KAFKA_').lower().replace('_', '.')}={value}\n" for name, value in variables.items()))
    base = {**{k: v for k, v in os.environ.items() if not k.startswith("MLE_KAFKA_")}, **topic_env(topics),
            "MLE_BOOTSTRAP_SERVERS": bootstrap, "MLE_SIGNING_KEY": SIGNING_KEY, "MLFLOW_TRACKING_URI": tracking,
            "MLE_METRICS_PORT": "0", "MLE_TOPIC_PARTITIONS": "2", "MLE_WORKER_GROUP": f"w-{uuid.uuid4().hex[:8]}",
            "MLE_ACTUATOR_GROUP": f"a-{uuid.uuid4().hex[:8]}"}
    status_port = free_port()
    worker_env = {**base, "MLE_KAFKA_PROPERTIES_FILE": str(properties), "MLE_STATUS_PORT": str(status_port),
                  "MLE_CHECKPOINT_INTERVAL": "1s"}
    cli_env = {**base, **variables}
    processes = []
    try:
        for name, args, env in (("worker", ["worker", "--topology", str(topology)], worker_env),
                                ("actuator",
                                 ["actuator", "-t", str(topology), "--gitops-repo", str(tmp_path / "gitops")],
                                 cli_env)):
            with open(tmp_path / f"{name}.log", "wb") as log:
                processes.append(subprocess.Popen([sys.executable, "-m", "mle_stream", *args], env=env, stdout=log,
                                                  stderr=subprocess.STDOUT, cwd=tmp_path))  # Faust's data dir there

        start = (int(time.time() * 1000) - 60_000) // 2000 * 2000
        with EvaluationClient(bootstrap, topics=topics, linger_ms=10, security=security) as client:
            for w, rate in enumerate([{"1": 0.1, "2": 0.1}, {"1": 0.1, "2": 0.5}, {"1": 0.1, "2": 0.5}]):
                predictions, labels = window(start + w * 2000, rate)
                for p in predictions:
                    client.log_prediction(p)
                for label in labels:
                    client.log_label(label)
            # A later prediction moves event time past the third window, closing it.
            client.log_prediction(Prediction(prediction_id="tick", model="fraud", version="1", timestamp=start + 6000,
                                             score=0.9))
            assert client.flush(30) == 0

        events = read_messages(bootstrap, topics.rollout_events, security,
                               lambda vs: any(wire.decode_rollout_event(v).status.value == "APPLIED" for v in vs))
        logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:] for name in ("worker", "actuator")}
        assert all(p.poll() is None for p in processes), logs
        applied = [e for e in map(wire.decode_rollout_event, events) if e.status.value == "APPLIED"]
        assert applied and applied[0].action.upper() == "ROLLBACK", (applied, logs)
        assert routing.get_weights("fraud") == {"1": 100, "2": 0}
        assert read_messages(bootstrap, topics.state, security, bool), "the worker's checkpoints reach the state topic"

        status = json.loads(run_cli(["status", "--json", "-t", str(topology)], cli_env))
        assert [m["model"] for m in status["models"]] == ["fraud"] and status["events_applied"] > 0, status
        page = wait_for_status_page(status_port)
        assert [m["model"] for m in page["models"]] == ["fraud"] and page["events_applied"] > 0, page

        published = run_cli(["command", "set-traffic", "--model", "fraud", "--baseline", "1", "--candidate", "2",
                             "--percent", "5", "--reason", f"over {listener}", "--by", "test"], cli_env)
        assert "published SET_TRAFFIC of fraud" in published, published
        commands = read_messages(bootstrap, topics.commands, security,
                                 lambda vs: any(wire.decode_command(v).reason == f"over {listener}" for v in vs), 30)
        assert any(wire.decode_command(v).reason == f"over {listener}" for v in commands)
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
