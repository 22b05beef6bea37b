"""mle-stream ingest: KServe inference-logger events over real HTTP to predictions on the broker.

The events are built as KServe's logger builds them (pkg/logger/handler.go and worker.go at
kserve/kserve aaac4e29): binary-mode CloudEvents 1.0 sent by cloudevents/sdk-go, one with the
request body and one with the response body, the same ce-id on both, ce-source the pod's name,
ce-time in RFC 3339 with nanoseconds, ce-metadata/ce-annotations as JSON strings, and the original
request's Content-Type on both halves.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mle_stream import wire
from mle_stream.client import EvaluationClient
from mle_stream.config import Topics
from mle_stream.core.kserve_logger import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    IngestMapping,
    parse_event,
    resolve_version,
)
from mle_stream.core.pending_pairs import Dropped, PendingPairs
from mle_stream.core.topology import load_topologies, parse_topology
from mle_stream.errors import ConfigError
from mle_stream.ingest import IngestServer, Limits, RunningServer
from tests.conftest import read_until

FRAUD = """\
model: fraud-detector
task: binary
baseline: {version: "1"}
candidate: {version: "2"}
ingest:
  inference_service: fraud
  features: [amount, age]          # v1 instances are lists
"""
IRIS = """\
model: iris
task: multiclass
baseline: {version: "1"}
candidate: {version: "2"}
ingest:
  label_output: label              # the score: the first other output (the probabilities)
  classes: [setosa, versicolor, virginica]
  version: ["{annotation:mle-stream.io/version}", "{revision}", "0"]
"""
# A pod of Knative revision 00002 of the fraud predictor (KServe passes the pod's name as --source-uri).
FRAUD_POD = "fraud-predictor-00002-deployment-6d5c9b7f4-x2k8q"


def kserve_headers(kind: str, ce_id: str, service: str, time: str, source: str = FRAUD_POD,
                   annotations: dict[str, str] | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Id": ce_id,
        "Ce-Type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "Ce-Source": source,
        "Ce-Time": time,
        "Ce-Recordedtime": time,
        "Ce-Inferenceservicename": service,
        "Ce-Namespace": "ml",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "",
        "Ce-Metadata": json.dumps({"X-Request-Id": ["abc"]}),
    }
    if annotations:
        headers["Ce-Annotations"] = json.dumps(annotations)
    return headers


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers or {"Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(tmp_path: Path, kafka_bootstrap: str, topics: Topics) -> Iterator[tuple[str, IngestServer]]:
    (tmp_path / "fraud.yaml").write_text(FRAUD)
    (tmp_path / "iris.yaml").write_text(IRIS)
    with EvaluationClient(kafka_bootstrap, topics=topics, linger_ms=20) as client:
        server = IngestServer(load_topologies([tmp_path]), client, Limits(max_body_bytes=64 << 10, pair_timeout_s=1.0))
        running = RunningServer(server, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{running.port}", server
        finally:
            running.stop()


def test_kserve_events_become_predictions_and_labels_on_the_topics(
        served: tuple[str, IngestServer], kafka_bootstrap: str, topics: Topics) -> None:
    url, server = served
    t0, t1 = "2026-12-07T03:00:00.000000000Z", "2026-12-07T03:00:00.042000000Z"
    # v1, request first, two instances; the response has [P(legit), P(fraud)] per instance.
    v1_id = str(uuid.uuid4())
    for kind, body in (("request", {"instances": [[120.5, 33], [9.99, 71]]}),
                       ("response", {"predictions": [[0.9, 0.1], [0.2, 0.8]]})):
        status, answer = post(url + "/", json.dumps(body).encode(),
                              kserve_headers(kind, v1_id, "fraud", t0 if kind == "request" else t1))
        assert status == 200, answer
    assert answer == {"published": 2}
    # v2 (Open Inference Protocol), response first, one instance; the version from an annotation.
    v2_id = "caller-chosen-id"
    v2_request = {"inputs": [{"name": "petal", "shape": [1, 2], "datatype": "FP32", "data": [1.4, 0.2]},
                             {"name": "sepal_length", "shape": [1], "datatype": "FP32", "data": [5.1]}]}
    v2_response = {"model_name": "iris", "id": v2_id, "outputs": [
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["setosa"]},
        {"name": "probabilities", "shape": [1, 3], "datatype": "FP32", "data": [[0.7, 0.2, 0.1]]}]}
    annotations = {"mle-stream.io/version": "7"}
    status, answer = post(url + "/", json.dumps(v2_response).encode(),
                          kserve_headers("response", v2_id, "iris", t1, "iris-predictor-abc", annotations))
    assert (status, answer) == (200, {"status": "waiting for the request"})
    status, answer = post(url + "/", json.dumps(v2_request).encode(),
                          kserve_headers("request", v2_id, "iris", t0, "iris-predictor-abc", annotations))
    assert (status, answer) == (200, {"published": 1})
    # Without ce-time (not KServe, but allowed by CloudEvents) the prediction is stamped on arrival.
    before = int(time.time() * 1000)
    for kind, body in (("request", {"instances": [{"amount": 5}]}), ("response", {"predictions": [True]})):
        headers = kserve_headers(kind, "untimed", "fraud", "")
        del headers["Ce-Time"]
        assert post(url + "/", json.dumps(body).encode(), headers)[0] == 200
    after = int(time.time() * 1000)
    # Labels over HTTP: one, and a list.
    status, _ = post(url + "/labels", json.dumps(
        {"prediction_id": f"{v1_id}:1", "model": "fraud-detector", "timestamp": 1_796_612_400_500,
         "label": 1}).encode())
    assert status == 200
    status, answer = post(url + "/labels", json.dumps(
        [{"prediction_id": f"{v2_id}:0", "model": "iris", "timestamp": 1_796_612_400_600, "label": "setosa"}]).encode())
    assert (status, answer) == (200, {"published": 1})

    messages = read_until(kafka_bootstrap, [topics.predictions, topics.labels],
                          lambda ms: sum(len(decoded(m, topics)) for m in ms) >= 6, timeout_s=20)
    predictions = {p.prediction_id: p for m in messages if m.topic() == topics.predictions for p in decoded(m, topics)}
    labels = {x.prediction_id: x for m in messages if m.topic() == topics.labels for x in decoded(m, topics)}
    at = 1_796_612_400_000  # 2026-12-07T03:00:00Z in epoch ms
    first, second = predictions[f"{v1_id}:0"], predictions[f"{v1_id}:1"]
    assert (first.model, first.version, first.timestamp, first.score, first.latency_ms) == (
        "fraud-detector", "2", at, 0.1, 42.0)
    assert first.features == {"amount": 120.5, "age": 33.0}
    assert (second.score, second.features) == (0.8, {"amount": 9.99, "age": 71.0})
    iris = predictions[f"{v2_id}:0"]
    assert (iris.model, iris.version, iris.predicted_label) == ("iris", "7", "setosa")
    assert iris.scores == pytest.approx({"setosa": 0.7, "versicolor": 0.2, "virginica": 0.1})
    assert iris.features == pytest.approx({"petal.0": 1.4, "petal.1": 0.2, "sepal_length": 5.1})
    untimed = predictions["untimed:0"]
    assert before <= untimed.timestamp <= after and untimed.latency_ms is None
    assert (untimed.score, untimed.features) == (1.0, {"amount": 5.0})
    assert labels[f"{v1_id}:1"].label == 1 and labels[f"{v2_id}:0"].label == "setosa"
    metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    assert 'mle_stream_ingest_records_total{kind="prediction",outcome="published"} 4.0' in metrics
    assert "mle_stream_ingest_paired_total 3.0" in metrics
    assert json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read()) == {"status": "ok", "pending": 0}


def decoded(message: Any, topics: Topics) -> list[Any]:
    decode = wire.decode_predictions if message.topic() == topics.predictions else wire.decode_labels
    result = decode(message.value())
    assert not result.errors
    return result.records


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
HOSTILE_BODIES = st.one_of(
    st.one_of(
        JSON_VALUES,
        st.builds(lambda v: {"instances": v}, JSON_VALUES), st.builds(lambda v: {"predictions": v}, JSON_VALUES),
        st.builds(lambda name, shape, data: {"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                                                         "data": data}]}, JSON_VALUES, JSON_VALUES, JSON_VALUES),
        st.builds(lambda shape, data: {"outputs": [{"name": "p", "shape": shape, "datatype": "FP32", "data": data}]},
                  st.lists(st.integers(-2, 3), max_size=3), JSON_VALUES),
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=40))
GOOD = kserve_headers("request", "x", "fraud", "2026-12-07T03:00:00Z")
HEADER_VALUES = st.one_of(st.text(max_size=30), st.sampled_from(
    ["", "1.0", "0.3", REQUEST_TYPE, RESPONSE_TYPE, "not a time", "9999-12-31T23:59:59-23:59", "iris", "{", "[]"]))


def kserve_event() -> st.SearchStrategy[tuple[dict[str, str], bytes]]:
    """An event KServe's logger could send, broken in one header, or well-formed headers with a hostile body."""
    broken_header = st.builds(lambda name, value: {**GOOD, name: value}, st.sampled_from(sorted(GOOD)),
                              HEADER_VALUES.filter(lambda v: v.isascii() and v.isprintable()))
    good_headers = st.builds(lambda kind, service: kserve_headers(kind, str(uuid.uuid4()), service,
                                                                  "2026-12-07T03:00:00Z"),
                             st.sampled_from(["request", "response"]), st.sampled_from(["fraud", "iris"]))
    return st.one_of(st.tuples(broken_header, st.just(b'{"instances": [[1, 2]]}')),
                     st.tuples(good_headers, HOSTILE_BODIES))


DEEP = kserve_headers("request", "deep", "fraud", "2026-12-07T03:00:00Z")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=kserve_event())
@example(event=(DEEP, b"[" * 60_000))  # deeper than Python's recursion limit
@example(event=(DEEP, b'{"instances": [NaN]}'))
@example(event=(DEEP, b"9" * 5000))  # longer than Python's integer-string limit
@example(event=(DEEP, b'{"inputs": [{"name": "a", "shape": [1], "data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}]}"))
def test_hostile_events_and_labels_get_a_4xx_naming_the_field(served: tuple[str, IngestServer],
                                                             event: tuple[dict[str, str], bytes]) -> None:
    url, server = served
    headers, body = event
    status, answer = post(url + "/", body, headers)
    # Whatever was broken was refused with a reason, or was harmless (the event is still well-formed).
    assert status == 200 or 400 <= status < 500 and answer["reason"] and answer["error"], (status, answer)
    status, answer = post(url + "/labels", body)
    assert 400 <= status < 500 and answer["error"], answer


def test_mapping_refusals_name_the_field_and_what_to_do(served: tuple[str, IngestServer]) -> None:
    url, server = served
    t = "2026-12-07T03:00:00Z"
    pairs = [  # (service, request, response, what the answer must say)
        ("fraud", {"instances": [[1, 2]]}, {"predictions": [[0.1, 0.2, 0.7]]},
         "predictions[0]: a list of 3 values; set ingest.index"),
        ("fraud", {"instances": [[1, 2], [3, 4]]}, {"predictions": [0.5]},
         "2 instances but the response 1 predictions"),
        ("fraud", {"instances": [[1, 2, 3]]}, {"predictions": [0.5]}, "instances[0]: 3 values for 2 ingest.features"),
        ("fraud", {"instances": [[1, 2]]}, {"predictions": [1.5]}, "predictions[0]: score: is a probability"),
        ("fraud", {"instances": [[10**400, 2]]}, {"predictions": [10**400]}, "predictions[0]: expected a number"),
        ("iris", {"instances": [[1]]}, {"predictions": [{"probabilities": [0.5, 0.5, 0.0]}]},
         "predictions[0]: the prediction is an object ('probabilities'): set ingest.output"),
        ("iris", {"instances": [[0.5] * 1001]}, {"outputs": [
            {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["setosa"]},
            {"name": "probabilities", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]},
         "instances[0]: 1001 values, more than 1000 features; set ingest.features: none"),
    ]
    for service, request, response, expected in pairs:
        ce_id = str(uuid.uuid4())
        assert post(url + "/", json.dumps(request).encode(), kserve_headers("request", ce_id, service, t))[0] == 200
        status, answer = post(url + "/", json.dumps(response).encode(), kserve_headers("response", ce_id, service, t))
        assert status == 422 and expected in answer["error"], answer
    # No version: a pod without a revision in its name, no annotation, no fixed fallback.
    ce_id = "no-version"
    for kind, body in (("request", {"instances": [[1, 2]]}), ("response", {"predictions": [0.4]})):
        status, answer = post(url + "/", json.dumps(body).encode(),
                              kserve_headers(kind, ce_id, "fraud", t, "fraud-abc"))
    assert status == 422 and answer["reason"] == "version" and "logger.metadataAnnotations" in answer["error"]
    status, answer = post(url + "/", b'{"instances": [1]}', kserve_headers("request", "r", "nobody", t))
    assert status == 422 and "known: fraud, iris" in answer["error"]
    assert post(url + "/", b'{"instances": [1]}', kserve_headers("request", "dup", "fraud", t))[0] == 200
    status, answer = post(url + "/", b'{"instances": [1]}', kserve_headers("request", "dup", "fraud", t))
    assert status == 409 and answer["reason"] == "duplicate"
    # A request whose response never comes is dropped after the pair timeout (1 s here), and counted.
    assert post(url + "/", b'{"instances": [1]}', kserve_headers("request", "lonely", "iris", t))[0] == 200
    time.sleep(1.6)
    metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    assert 'mle_stream_ingest_unpaired_total{type="request",why="expired"}' in metrics
    assert "mle_stream_ingest_pending 0.0" in metrics
    status, answer = post(url + "/", b"x" * (65 << 10), kserve_headers("request", "big", "fraud", t))
    assert status == 413 and answer["reason"] == "too_large"
    both = {name: parse_topology(FRAUD.replace("fraud-detector", name), f"{name}.yaml") for name in ("a", "b")}
    with pytest.raises(ConfigError, match="b.yaml: InferenceService 'fraud' already feeds model 'a'"):
        IngestServer(both, server.publisher)
    status, answer = post(url + "/labels", json.dumps([{"prediction_id": "p", "model": "iris", "timestamp": 1,
                                                        "label": 1}, {"prediction_id": "p", "model": "iris"}]).encode())
    assert status == 400 and answer["error"].startswith("[1]: ") and "timestamp" in answer["error"]
    # What the worker would dead-letter is refused here, naming the field: not taken for a full queue (503).
    status, answer = post(url + "/labels", json.dumps({"prediction_id": "x" * 200, "model": "iris", "timestamp": 1,
                                                       "label": 1, "comment": "unknown fields are ignored"}).encode())
    assert status == 400 and "prediction_id" in answer["error"], answer


def test_pending_pairs_expire_and_evict_the_oldest_half() -> None:
    table: PendingPairs[str] = PendingPairs(max_entries=2, max_bytes=100, timeout_ms=1000)
    assert table.offer("a", "request", "a-req", 10, now_ms=0) == (None, [])
    assert table.offer("b", "response", "b-resp", 10, now_ms=100) == (None, [])
    assert table.offer("c", "request", "c-req", 10, now_ms=200) == (None, [Dropped("request", "evicted")])
    assert table.offer("b", "request", "b-req", 10, now_ms=300) == (("b-req", "b-resp"), [])
    assert table.offer("d", "request", "d-req", 95, now_ms=400) == (None, [Dropped("request", "evicted")])
    assert (len(table), table.bytes) == (1, 95)
    assert table.expire(1400) == [] and table.expire(1401) == [Dropped("request", "expired")]
    assert (len(table), table.bytes) == (0, 0)


def test_version_templates_and_their_errors_in_the_topology() -> None:
    event = parse_event({k.lower(): v for k, v in kserve_headers(
        "request", "i", "fraud", "2026-12-07T03:00:00Z", annotations={"team/version": "4"}).items()},
        b'{"instances": [1]}')
    assert resolve_version(IngestMapping.version, event) == "2"  # Knative revision 00002 of the pod
    assert resolve_version(("{annotation:team/version}",), event) == "4"
    assert resolve_version(("v{header:x-request-id}-{ce:component}",), event) == "vabc-predictor"
    assert resolve_version(("{ce:endpoint}", "fixed"), event) == "fixed"  # empty ce-endpoint: next template
    with pytest.raises(ConfigError) as error:
        parse_topology(FRAUD + "  version: ['{revision:x}', '{annotation}', '{nope}']\n  index: -1\n", "t.yaml")
    text = str(error.value)
    assert "t.yaml:8: ingest.version[0]: '{revision:x}': {revision} takes no argument" in text
    assert "{annotation} needs a name" in text and "unknown placeholder {nope}" in text
    assert "t.yaml:9: ingest.index: expected a whole number >= 0" in text
