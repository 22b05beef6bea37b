"""Confluent Schema Registry framing: on the input topics, bytes written by confluent-kafka's own
AvroSerializer (what Java's KafkaAvroSerializer writes), writer schemas served by a small registry
(tests/schema_registry_server.py) with basic auth and TLS, read by the real decoder, the worker's
step and a real `mle-stream worker` process over the embedded broker; on the outputs
(MLE_OUTPUT_FORMAT=confluent), what confluent-kafka's AvroDeserializer and mle-stream's readers read."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import read_until, topic_env
from mle_stream import wire
from mle_stream.actuator.ports import InMemoryRegistry, InMemoryRouting
from mle_stream.actuator.runner import run_actuator_loop
from mle_stream.actuator.service import Actuator
from mle_stream.config import Settings, Topics
from mle_stream.core.events import Label, Prediction
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.errors import ConfigError, InvalidEvent
from mle_stream.kafka import producer_config
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.retry import Backoff
from mle_stream.status.feed import StatusFeed
from mle_stream.status.model import StatusBoard
from mle_stream.stream.checkpoints import CheckpointedProcessor
from mle_stream.stream.processor import Incoming, StreamProcessor
from mle_stream.wire import confluent
from mle_stream.wire.output_framing import ConfluentOutputs
from mle_stream.wire.schema_registry import (
    UNKNOWN_ID_TTL_S,
    RegistryUnavailable,
    SchemaNotFound,
    SchemaRegistryClient,
    SchemaRegistrySettings,
)
from schema_registry_server import SchemaRegistry
from secured_broker import KEY_PASSWORD, make_pki
from worker_process import TOPOLOGY, Worker, traffic

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
USER_INFO = "alice:s3cret-pw"
TOPIC = "serving.predictions"


def _avsc(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


# What a Java producer registers: our schemas, the batch ones with their record inlined (as Java's
# Schema.toString() writes a schema that refers to another file's type).
PREDICTION, LABEL = _avsc("prediction.avsc"), _avsc("label.avsc")


def _batch_of(name: str, record: dict[str, Any]) -> dict[str, Any]:
    return {**_avsc(name), "fields": [{"name": "records", "type": {"type": "array", "items": record}}]}


PREDICTION_BATCH, LABEL_BATCH = _batch_of("prediction_batch.avsc", PREDICTION), _batch_of("label_batch.avsc", LABEL)
# A newer producer's Prediction: one more optional field, which the worker does not know.
EVOLVED = {**PREDICTION, "fields": [*PREDICTION["fields"],
                                    {"name": "region", "type": ["null", "string"], "default": None}]}
# A producer that writes the score as text: no Avro resolution reads it as a double.
INCOMPATIBLE = {**PREDICTION, "fields": [f if f["name"] != "score" else {"name": "score", "type": "string"}
                                         for f in PREDICTION["fields"]]}


def serializer(registry: SchemaRegistry, schema: dict[str, Any]) -> AvroSerializer:
    client = ConfluentRegistryClient({"url": registry.url, "basic.auth.user.info": USER_INFO})
    return AvroSerializer(client, json.dumps(schema))


def serialize(registry: SchemaRegistry, schema: dict[str, Any], datum: Any, topic: str = TOPIC) -> bytes:
    return serializer(registry, schema)(datum, SerializationContext(topic, MessageField.VALUE))


def ours(registry: SchemaRegistry) -> SchemaRegistryClient:
    return SchemaRegistryClient(SchemaRegistrySettings(registry.url, USER_INFO))


PREDICTIONS = [
    Prediction("p1", "fraud", "1", 1_000, score=0.25, segment={"country": "DE"}, latency_ms=3.5),
    Prediction("p2", "fraud", "2", 1_040, scores={"a": 0.5, "b": 0.5}, features={"x": 1.0, "c": "red"}),
    Prediction("p3", "fraud", "2", 1_080, value=-2.0, predicted_label=7),
]
LABELS = [Label("p1", "fraud", 2_000, True), Label("p2", "fraud", 2_010, "b"), Label("p3", "fraud", 2_020, 1.5)]


def test_what_confluents_serializer_writes_is_read_as_batches_and_single_records() -> None:
    with SchemaRegistry() as registry:
        batch = serialize(registry, PREDICTION_BATCH, {"records": [wire.to_json_dict(p) for p in PREDICTIONS]})
        single = serialize(registry, PREDICTION, wire.to_json_dict(PREDICTIONS[1]))
        labels = serialize(registry, LABEL_BATCH, {"records": [wire.to_json_dict(x) for x in LABELS]}, "labels")
        lookup = ours(registry)
        assert batch[:1] == b"\x00" and int.from_bytes(batch[1:5], "big") == 1

        columns = wire.decode_prediction_columns(batch, lookup)
        assert columns.ok and columns.columns.records() == PREDICTIONS
        assert wire.decode_predictions(batch, lookup).records == PREDICTIONS
        assert wire.decode_predictions(single, lookup).records == [PREDICTIONS[1]]
        assert wire.decode_label_columns(labels, lookup).columns.records() == LABELS
        assert wire.decode_labels(labels, lookup).records == LABELS
        # Each writer schema is fetched once: ids are immutable.
        assert sorted(r for r in registry.requests if r.startswith("GET /schemas")) == [
            "GET /schemas/ids/1", "GET /schemas/ids/2", "GET /schemas/ids/3"]


def _java_strings(node: Any) -> Any:
    """`node` with every string type as Java's SpecificRecord schemas write it."""
    if node == "string":
        return {"type": "string", "avro.java.string": "String"}
    if isinstance(node, list):
        return [_java_strings(n) for n in node]
    if isinstance(node, dict) and node.get("type") == "record":
        return {**node, "fields": [{**f, "type": _java_strings(f["type"])} for f in node["fields"]]}
    if isinstance(node, dict):
        return {k: _java_strings(v) if k in ("items", "values") else v for k, v in node.items()}
    return node


def test_a_schema_as_java_registers_it_is_ours_by_canonical_form_and_takes_the_fast_reader() -> None:
    java = _java_strings(PREDICTION_BATCH)
    assert "avro.java.string" in json.dumps(java)
    schemas = wire.schemas()
    resolution = confluent.resolve(json.dumps(java), confluent.reader_schema(schemas["Prediction"]),
                                   confluent.reader_schema(schemas["PredictionBatch"]))
    assert resolution.reader.name == "PredictionBatch" and resolution.writer is None  # no resolution needed
    with SchemaRegistry() as registry:
        raw = serialize(registry, java, {"records": [wire.to_json_dict(p) for p in PREDICTIONS]})
        assert wire.decode_prediction_columns(raw, ours(registry)).columns.records() == PREDICTIONS


def test_an_evolved_writer_schema_with_an_extra_optional_field_is_read() -> None:
    with SchemaRegistry() as registry:
        datum = {**wire.to_json_dict(PREDICTIONS[0]), "region": "eu-west"}
        raw = serialize(registry, EVOLVED, datum)
        batch = serialize(registry, _batch_of("prediction_batch.avsc", EVOLVED),
                          {"records": [datum, {**wire.to_json_dict(PREDICTIONS[2]), "region": None}]})
        lookup = ours(registry)
        assert wire.decode_prediction_columns(raw, lookup).columns.records() == [PREDICTIONS[0]]
        assert wire.decode_prediction_columns(batch, lookup).columns.records() == [PREDICTIONS[0], PREDICTIONS[2]]


def test_an_incompatible_writer_schema_or_an_unknown_id_is_an_error_naming_subject_id_and_field() -> None:
    with SchemaRegistry() as registry:
        raw = serialize(registry, INCOMPATIBLE, {**wire.to_json_dict(PREDICTIONS[0]), "score": "high"})
        lookup = ours(registry)
        for _ in range(3):
            [error] = wire.decode_prediction_columns(raw, lookup).errors
            assert error.index is None
            assert f"schema id 1 (subjects: {TOPIC}-value (version 1))" in error.reason
            assert "field 'score': the writer's string is none of the reader's [null, double]" in error.reason
        # Asked once, not once per message: a producer with an incompatible schema sends many.
        assert registry.requests.count("GET /schemas/ids/1/versions") == 1
        # A label schema on the predictions topic: the record names differ.
        label = serialize(registry, LABEL, wire.to_json_dict(LABELS[0]), "labels")
        [error] = wire.decode_predictions(label, lookup).errors
        assert "subjects: labels-value (version 1)" in error.reason
        assert "the writer's record io.mlestream.Label is not the reader's io.mlestream.Prediction" in error.reason

        deep = registry.register("deep-value", '{"type": "array", "items": ' * 5000 + '"long"' + "}" * 5000)
        [error] = wire.decode_predictions(b"\x00" + deep.to_bytes(4, "big") + b"\x00", lookup).errors
        assert "subjects: deep-value (version 1)) is nested too deeply to be read" in error.reason

        unknown = b"\x00" + (4242).to_bytes(4, "big") + raw[5:]
        [error] = wire.decode_label_columns(unknown, lookup).errors
        assert "knows no schema id 4242" in error.reason and "404" in error.reason
        # Random ids from whoever writes to the topic cost one request per id and minute, not per message.
        for _ in range(5):
            [error] = wire.decode_label_columns(unknown, lookup).errors
            assert "knows no schema id 4242" in error.reason and "asked again after 60 s" in error.reason
        assert registry.requests.count("GET /schemas/ids/4242") == 1
        [error] = wire.decode_predictions(raw).errors  # no registry configured
        assert "schema id 1" in error.reason and "set MLE_SCHEMA_REGISTRY_URL" in error.reason
        [error] = wire.decode_predictions(b"\x00\x00\x01", lookup).errors
        assert "truncated Confluent Schema Registry message: 3 bytes" in error.reason


def test_garbage_after_a_zero_byte_never_raises() -> None:
    with SchemaRegistry() as registry:
        ids = [registry.register(f"{name}-value", json.dumps(schema)).to_bytes(4, "big")
               for name, schema in (("p", PREDICTION_BATCH), ("l", LABEL), ("c", _avsc("command.avsc")))]
        lookup = ours(registry)

        @settings(max_examples=300, deadline=None, database=None)
        @given(garbage=st.binary(max_size=300), known=st.sampled_from([None, *ids]))
        def decode_all(garbage: bytes, known: bytes | None) -> None:
            payload = b"\x00" + (garbage if known is None else known + garbage)
            for decode in (wire.decode_prediction_columns, wire.decode_label_columns, wire.decode_predictions,
                           wire.decode_labels):
                result = decode(payload, lookup)
                assert all(e.reason for e in result.errors)
            for decode_one in (wire.decode_command, wire.decode_rollout_event, wire.decode_metric_snapshot):
                try:
                    decode_one(payload, lookup)
                except InvalidEvent as exc:  # the single-event decoders' one way to refuse
                    assert exc.reason

        decode_all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_registry_that_does_not_answer_is_waited_for_and_never_costs_a_dead_letter(
        caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    with SchemaRegistry() as source:  # the bytes, from a registry that then goes away
        raw = serialize(source, PREDICTION_BATCH, {"records": [wire.to_json_dict(p) for p in PREDICTIONS]})
    failures: list[str] = []
    lookup = SchemaRegistryClient(SchemaRegistrySettings(f"http://127.0.0.1:{port}", USER_INFO),
                                  backoff=Backoff(1, 0.05, 0.2), on_retry=failures.append)
    started: list[SchemaRegistry] = []

    def come_back() -> None:  # a listening socket would hold the connections: none until now
        late = SchemaRegistry(port=port)
        late.register(f"{TOPIC}-value", json.dumps(PREDICTION_BATCH))
        started.append(late.__enter__())

    timer = threading.Timer(0.6, come_back)
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, "mle_stream.schema_registry"):
            result = wire.decode_prediction_columns(raw, lookup)
    finally:
        timer.join()
        for late in started:
            late.__exit__()
    assert result.ok and result.columns.records() == PREDICTIONS
    assert failures and all("no answer" in f for f in failures)
    assert any("retrying in" in r.getMessage() and "the messages that need it wait" in r.getMessage()
               for r in caplog.records)
    assert "s3cret-pw" not in caplog.text

    # A worker that stops while it waits fails the batch (to be read again), not the message.
    down = SchemaRegistryClient(SchemaRegistrySettings(f"http://127.0.0.1:{_free_port()}", USER_INFO),
                                backoff=Backoff(1, 0.05, 0.1))
    threading.Timer(0.3, down.close).start()
    signer = Signer(HMAC_KEY_ID, b"k" * 32)
    step = StreamProcessor({"fraud": parse_topology(TOPOLOGY.format(model="fraud"))}, Topics(), signer, registry=down)
    tracked = CheckpointedProcessor(step)
    tracked.assign(0, None)
    positions = tracked.positions(0)
    with pytest.raises(RegistryUnavailable, match="no answer"):
        tracked.process([Incoming(Topics().predictions, 0, 0, raw)], [b"fraud"])
    assert step.counters["dead_letter"] == 0 and step.counters["predictions"] == 0
    assert tracked.positions(0) == positions and not tracked.dirty  # no checkpoint may include it


def test_wrong_credentials_are_the_registrys_problem_and_the_password_stays_out_of_errors() -> None:
    with SchemaRegistry() as registry:
        registry.register("x-value", json.dumps(PREDICTION))
        # Credentials in the URL count as basic auth, as with Confluent's clients.
        wrong = SchemaRegistryClient(SchemaRegistrySettings(registry.url.replace("http://", "http://bob:hunter2@")),
                                     backoff=Backoff(1, 0.01, 0.01))
        threading.Timer(0.2, wrong.close).start()
        with pytest.raises(RegistryUnavailable) as caught:
            wrong.writer_schema(1)
        assert "401" in str(caught.value) and "MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        in_url = SchemaRegistryClient(SchemaRegistrySettings(registry.url.replace("http://", "http://alice:s3cret-pw@")))
        assert json.loads(in_url.writer_schema(1)) == PREDICTION


def test_a_registry_over_mutual_tls_answers_and_an_untrusted_one_is_unavailable(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server.load_cert_chain(pki.server_cert, pki.server_key)
    server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a client without the CA's certificate is refused
    with SchemaRegistry(tls=server) as registry:
        registry.register("x-value", json.dumps(PREDICTION))
        trusted = SchemaRegistrySettings(registry.url, USER_INFO, str(pki.ca), str(pki.client_cert),
                                         str(pki.client_key), KEY_PASSWORD)
        assert json.loads(SchemaRegistryClient(trusted).writer_schema(1)) == PREDICTION
        for wrong in (replace(trusted, ssl_ca_location=str(pki.other_ca)),  # the server is not trusted
                      replace(trusted, ssl_certificate_location="", ssl_key_location="")):  # no client certificate
            client = SchemaRegistryClient(wrong, backoff=Backoff(1, 0.05, 0.05))
            threading.Timer(0.3, client.close).start()
            with pytest.raises(RegistryUnavailable, match="no answer"):
                client.writer_schema(1)
    with pytest.raises(ConfigError, match="MLE_SCHEMA_REGISTRY_SSL_"):
        SchemaRegistryClient(replace(trusted, ssl_key_password="wrong"))


def test_settings_read_the_registry_from_the_environment_and_refuse_what_cannot_work(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    settings = Settings.from_env({"MLE_SCHEMA_REGISTRY_URL": "https://sr:8081",
                                  "MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": USER_INFO,
                                  "MLE_SCHEMA_REGISTRY_SSL_CA_LOCATION": str(ca)})
    assert settings.schema_registry == SchemaRegistrySettings("https://sr:8081", USER_INFO, str(ca))
    assert "s3cret" not in repr(settings)
    for env, needle in [({"MLE_SCHEMA_REGISTRY_URL": "sr:8081"}, "http:// or https://"),
                        ({"MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "alice"}, "user:password"),
                        ({"MLE_SCHEMA_REGISTRY_SSL_KEY_LOCATION": str(tmp_path / "no.key")}, "no such file")]:
        with pytest.raises(ConfigError, match=needle):
            Settings.from_env(env)


def test_outputs_in_confluent_framing_are_what_confluents_deserializer_reads_and_so_do_our_decoders() -> None:
    from test_codec import command, rollout_event, snapshot

    events = {"metrics": (snapshot(), wire.encode_metric_snapshot, wire.decode_metric_snapshot),
              "commands": (command(), wire.encode_command, wire.decode_command),
              "rollouts": (rollout_event(), wire.encode_rollout_event, wire.decode_rollout_event)}
    with SchemaRegistry() as registry:
        outputs = ConfluentOutputs(ours(registry), {"metrics": "MetricSnapshot", "commands": "Command",
                                                    "rollouts": "RolloutEvent"})
        assert sorted(registry.subjects) == ["commands-value", "metrics-value", "rollouts-value"]
        deserializer = AvroDeserializer(ConfluentRegistryClient({"url": registry.url,
                                                                 "basic.auth.user.info": USER_INFO}))
        lookup = ours(registry)
        for topic, (event, encode, decode) in events.items():
            framed = outputs.frame(topic, encode(event))
            schema_id = registry.subjects[f"{topic}-value"][0]
            assert framed[:5] == b"\x00" + schema_id.to_bytes(4, "big")
            datum = deserializer(framed, SerializationContext(topic, MessageField.VALUE))
            assert datum == wire.to_json_dict(event)
            assert decode(framed, lookup) == event
            with pytest.raises(InvalidEvent, match="set MLE_SCHEMA_REGISTRY_URL"):
                decode(framed)
        # What the worker has not registered, or a dead letter's JSON, stays as it is.
        assert outputs.frame("other", wire.encode_command(command()))[:2] == wire.AVRO_MARKER
        assert outputs.frame("metrics", b'{"reason": "x"}') == b'{"reason": "x"}'

        # The worker reads framed commands (operators' APPROVEs) with its registry, and says what is missing without.
        framed = outputs.frame("commands", wire.encode_command(command()))
        signer = Signer(HMAC_KEY_ID, b"k" * 32)
        topologies = {"fraud": parse_topology(TOPOLOGY.format(model="fraud"))}
        assert StreamProcessor(topologies, Topics(), signer, registry=lookup).process(
            [Incoming(Topics().commands, 0, 0, framed)]) == []  # a ROLLBACK: the actuator's, not the worker's
        [letter] = StreamProcessor(topologies, Topics(), signer).process([Incoming(Topics().commands, 0, 0, framed)])
        assert "set MLE_SCHEMA_REGISTRY_URL" in json.loads(letter.value)["reason"]


def test_the_actuator_applies_a_framed_command_and_writes_its_rollout_event_framed(
        kafka_bootstrap: str, topics: Topics) -> None:
    from test_actuator_stream import SIGNER, rollback

    routing = InMemoryRouting({"fraud-detector": {"1": 90, "2": 10}})
    actuator = Actuator(routing, InMemoryRegistry({"fraud-detector": ["1", "2"]}), SIGNER.verifier())
    with SchemaRegistry() as registry:
        lookup = ours(registry)
        command = SIGNER.sign(rollback("framed"))
        framed = ConfluentOutputs(lookup, {topics.commands: "Command"}).frame(topics.commands,
                                                                               wire.encode_command(command))
        producer = Producer(producer_config(kafka_bootstrap))
        producer.produce(topics.commands, key=b"fraud-detector", value=framed)
        assert producer.flush(10) == 0
        stop = threading.Event()
        loop = threading.Thread(target=run_actuator_loop, daemon=True, args=(actuator, kafka_bootstrap, topics, stop),
                                kwargs={"group_id": f"g-{uuid.uuid4().hex[:8]}", "registry": lookup,
                                        "framing": ConfluentOutputs(lookup, {topics.rollout_events: "RolloutEvent"})})
        loop.start()
        try:
            [message] = read_until(kafka_bootstrap, [topics.rollout_events], lambda ms: len(ms) >= 1, timeout_s=30)
        finally:
            stop.set()
            loop.join(timeout=30)
        assert message.value()[:1] == b"\x00"
        event = wire.decode_rollout_event(message.value(), lookup)
    assert (event.command_id, event.status.value) == (command.command_id, "APPLIED")
    assert routing.get_weights("fraud-detector") == {"1": 100, "2": 0}


def test_a_worker_process_reads_confluent_framed_traffic_over_the_broker(
        tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> None:
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    (topologies / "fraud.yaml").write_text(TOPOLOGY.format(model="fraud"))
    with SchemaRegistry() as registry:
        env = {**os.environ, **topic_env(topics), "MLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
               "MLE_SIGNING_KEY": "k" * 32, "MLE_TOPIC_PARTITIONS": "2", "MLE_STATUS_PORT": "0",
               "MLE_METRICS_PORT": "0", "MLE_WORKER_GROUP": f"sr-{uuid.uuid4().hex[:8]}",
               "MLE_SCHEMA_REGISTRY_URL": registry.url, "MLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": USER_INFO,
               "MLE_OUTPUT_FORMAT": "confluent"}
        worker = Worker(tmp_path, env, topologies)
        worker.start()
        try:
            now = int(time.time() * 1000)
            base = (now - 60_000) // 1000 * 1000  # windows start at whole seconds
            preds, labels = traffic(base, 4, random.Random(7), models=("fraud",))
            producer = Producer(producer_config(kafka_bootstrap))
            batch = serializer(registry, PREDICTION_BATCH)
            label_batch = serializer(registry, LABEL_BATCH)

            def send(topic: str, value: bytes) -> None:
                producer.produce(topic, key=b"fraud", value=value)

            # First, so that its window is still open: a newer producer's prediction.
            evolved = Prediction("evolved-1", "fraud", "1", base + 500, score=0.9)
            send(topics.predictions, serialize(registry, EVOLVED, {**wire.to_json_dict(evolved), "region": "eu"},
                                               topics.predictions))
            for pm, lm in zip(preds, labels):
                send(topics.predictions, batch({"records": [wire.to_json_dict(p) for p in pm]},
                                               SerializationContext(topics.predictions, MessageField.VALUE)))
                send(topics.labels, label_batch({"records": [wire.to_json_dict(x) for x in lm]},
                                                SerializationContext(topics.labels, MessageField.VALUE)))
            send(topics.predictions, serialize(registry, INCOMPATIBLE, {**wire.to_json_dict(evolved), "score": "x"},
                                               topics.predictions))
            send(topics.predictions, b"\x00\x00\x00\x10\x00" + b"\x02")  # schema id 4096: unknown
            assert producer.flush(30) == 0
            worker.wait_for("reading from ", 1, 60)

            lookup = ours(registry)

            def closed(messages: list[Any]) -> dict[int, int]:
                out: dict[int, int] = {}
                for m in messages:
                    s = wire.decode_metric_snapshot(m.value(), lookup)
                    if s.status == "CLOSED" and s.segment is None:
                        out[s.window_start] = out.get(s.window_start, 0) + s.predictions
                return out

            want = {base + w * 1000: len(preds[w]) for w in range(3)}
            want[base] += 1  # the evolved writer's prediction
            snapshots = read_until(kafka_bootstrap, [topics.metrics],
                                   lambda ms: all(w in closed(ms) for w in want), timeout_s=60)
            assert {w: n for w, n in closed(snapshots).items() if w in want} == want, worker.text()[-3000:]
            letters = [json.loads(m.value()) for m in read_until(kafka_bootstrap, [topics.dead_letter],
                                                                  lambda ms: len(ms) >= 2, timeout_s=20)]
            # The outputs are in Confluent framing, under the schema registered as <topic>-value;
            # the status page's feed reads them with the registry.
            assert {m.value()[:5] for m in snapshots} == {
                b"\x00" + registry.subjects[f"{topics.metrics}-value"][0].to_bytes(4, "big")}
            board = StatusBoard({"fraud": ["error_rate"]}, verify=lambda command: True)
            feed = StatusFeed(kafka_bootstrap, topics, board, registry=lookup)
            try:
                assert feed.read_to_end(idle_s=3, timeout_s=20) >= len(snapshots)
            finally:
                feed.close()
            assert feed.skipped == 0 and board.applied >= len(snapshots) and board.ignored == {}
        finally:
            worker.stop()
    reasons = sorted(d["reason"] for d in letters)
    assert len(reasons) == 2, reasons
    assert f"subjects: {topics.predictions}-value (version 3)" in reasons[1] and "field 'score'" in reasons[1]
    assert "knows no schema id 4096" in reasons[0]
    assert USER_INFO not in worker.text()


def test_an_id_unknown_when_asked_is_read_once_the_unknown_ids_memory_has_passed() -> None:
    with SchemaRegistry() as registry:
        now = [0.0]
        client = SchemaRegistryClient(SchemaRegistrySettings(registry.url, USER_INFO), clock=lambda: now[0])
        next_id = registry.register("first-value", json.dumps(LABEL)) + 1
        with pytest.raises(SchemaNotFound, match=f"knows no schema id {next_id}"):
            client.writer_schema(next_id)
        assert registry.register("late-value", json.dumps(PREDICTION_BATCH)) == next_id
        now[0] = UNKNOWN_ID_TTL_S - 1
        with pytest.raises(SchemaNotFound, match="asked again after 60 s"):
            client.writer_schema(next_id)
        now[0] = UNKNOWN_ID_TTL_S
        assert json.loads(client.writer_schema(next_id))["name"] == PREDICTION_BATCH["name"]
        assert registry.requests.count(f"GET /schemas/ids/{next_id}") == 2
