"""The wire codec: round trips, union branches, malformed input, and the schema fingerprints."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mle_stream import wire
from mle_stream.core.events import (
    Command,
    CommandKind,
    Label,
    MetricSnapshot,
    Prediction,
    RolloutEvent,
    RolloutStatus,
)
from mle_stream.errors import InvalidEvent
from mle_stream.wire import records as record_path

T0 = 1_700_000_000_000
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def prediction(i: int = 0, **changes: Any) -> Prediction:
    fields: dict[str, Any] = dict(
        prediction_id=f"p{i}", model="fraud", version="v2", timestamp=T0 + i, score=0.25,
        latency_ms=3.5, features={f"f{j}": j * 0.5 + i for j in range(10)}, segment={"country": "DE"},
    )
    fields.update(changes)
    return Prediction(**fields)


def label(i: int = 0, value: Any = True) -> Label:
    return Label(prediction_id=f"p{i}", model="fraud", timestamp=T0 + 10_000 + i, label=value)


def command() -> Command:
    return Command(
        command_id="c1", kind=CommandKind.ROLLBACK, model="fraud", baseline_version="v1",
        candidate_version="v2", traffic={"v1": 100, "v2": 0}, reason="error rate up", rule="error-rate",
        window_start=T0, window_end=T0 + 300_000, evidence='{"windows": []}', policy_version="1",
        issued_at=T0 + 301_000, signature="ab" * 32,
    )


def rollout_event() -> RolloutEvent:
    return RolloutEvent(
        event_id="e1", command_id="c1", model="fraud", action="ROLLBACK", status=RolloutStatus.APPLIED,
        route_weights={"v1": 100}, champion="v1", challenger=None, reason="error rate up",
        details="HTTPRoute fraud revision 7", at=T0 + 302_000,
    )


def snapshot() -> MetricSnapshot:
    return MetricSnapshot(
        model="fraud", version="v2", role="candidate", segment="country=DE", window_start=T0,
        window_end=T0 + 60_000, predictions=1000, labeled=800,
        metrics={"accuracy": 0.875, "error_rate": 0.125, "label_coverage": 0.8, "latency_p99_ms": None},
        verdict="PASS", status="CLOSED", emitted_at=T0 + 61_000,
    )


def avro_raw(schema_name: str, datum: Any) -> bytes:
    """A single-object message written straight with fastavro, bypassing the dataclass checks."""
    schema = wire.schemas()[schema_name]
    out = io.BytesIO()
    out.write(wire.AVRO_MARKER + schema.fingerprint)
    fastavro.schemaless_writer(out, schema.parsed, datum)
    return out.getvalue()


def raw_prediction(i: int, **changes: Any) -> dict[str, Any]:
    datum = wire.to_json_dict(prediction(i))
    datum.update(changes)
    return datum


# ------------------------------------------------------------------------------------------------
# Round trips


def test_prediction_round_trips_avro_single_and_batch() -> None:
    p = prediction(1, predicted_label="fraud", error=None)
    assert wire.decode_predictions(wire.encode_prediction(p)) == wire.DecodeResult([p], [])
    batch = [prediction(i) for i in range(50)]
    result = wire.decode_predictions(wire.encode_predictions(batch))
    assert result.records == batch and result.errors == []


def test_every_prediction_shape_round_trips() -> None:
    shapes = [
        prediction(0, score=None, scores={"cat": 0.7, "dog": 0.3}),
        prediction(1, score=None, value=-12.5),
        prediction(2, score=None, error="model server timed out", features=None, segment=None, latency_ms=None),
        prediction(3, features={"country": "DE", "amount": 12.0}, segment={}),
        prediction(4, prediction_id="é" * 100, features={"ключ" * 20: 1.0}),  # multi-byte lengths
    ]
    for p in shapes:
        assert wire.decode_predictions(wire.encode_prediction(p)).records == [p]
    assert wire.decode_predictions(wire.encode_predictions(shapes)).records == shapes


def test_label_round_trips_avro_single_and_batch() -> None:
    labels = [label(0, True), label(1, 1), label(2, 0.3), label(3, "cat")]
    for x in labels:
        assert wire.decode_labels(wire.encode_label(x)).records == [x]
    assert wire.decode_labels(wire.encode_labels(labels)).records == labels


@pytest.mark.parametrize("shape", ["object", "array", "records"])
def test_json_forms_decode(shape: str) -> None:
    batch = [prediction(i) for i in range(3)]
    dicts = [wire.to_json_dict(p) for p in batch]
    doc: Any = {"object": dicts[0], "array": dicts, "records": {"records": dicts}}[shape]
    expected = batch[:1] if shape == "object" else batch
    assert wire.decode_predictions(json.dumps(doc).encode()).records == expected
    labels = [wire.to_json_dict(label(i, v)) for i, v in enumerate([True, 1, "cat", 0.3])]
    ldoc: Any = {"object": labels[0], "array": labels, "records": {"records": labels}}[shape]
    assert len(wire.decode_labels(json.dumps(ldoc).encode()).records) == (1 if shape == "object" else 4)


def test_json_accepts_leading_whitespace_and_ignores_unknown_fields() -> None:
    doc = {**wire.to_json_dict(prediction(0)), "added_in_v3": {"anything": [1, 2]}}
    result = wire.decode_predictions(b"\n  " + json.dumps(doc).encode())
    assert result.records == [prediction(0)] and result.errors == []


def test_json_labels_keep_their_json_type() -> None:
    payload = json.dumps([
        {"prediction_id": f"p{i}", "model": "m", "timestamp": T0, "label": v}
        for i, v in enumerate([True, 1, "cat", 0.3])
    ]).encode()
    values = [x.label for x in wire.decode_labels(payload).records]
    assert [(type(v), v) for v in values] == [(bool, True), (int, 1), (str, "cat"), (float, 0.3)]


def test_json_numbers_in_double_fields_become_floats_like_avro() -> None:
    doc = {**wire.to_json_dict(prediction(0)), "score": 1, "features": {"n": 3, "s": "x"}}
    p = wire.decode_predictions(json.dumps(doc).encode()).records[0]
    assert type(p.score) is float and type(p.features["n"]) is float and p.features["s"] == "x"  # type: ignore[index]


@pytest.mark.parametrize("event, encode, decode", [
    (command(), wire.encode_command, wire.decode_command),
    (rollout_event(), wire.encode_rollout_event, wire.decode_rollout_event),
    (snapshot(), wire.encode_metric_snapshot, wire.decode_metric_snapshot),
])
def test_single_events_round_trip_avro_and_json(event: Any, encode: Any, decode: Any) -> None:
    payload = encode(event)
    assert payload[:2] == b"\xc3\x01"
    assert decode(payload) == event
    assert decode(json.dumps(wire.to_json_dict(event)).encode()) == event


def test_timestamps_are_read_as_int_milliseconds() -> None:
    p = wire.decode_predictions(wire.encode_prediction(prediction(0))).records[0]
    batch = wire.decode_predictions(wire.encode_predictions([prediction(0)])).records[0]
    c = wire.decode_command(wire.encode_command(command()))
    assert type(p.timestamp) is int and type(batch.timestamp) is int
    assert (c.window_start, c.window_end, c.issued_at) == (T0, T0 + 300_000, T0 + 301_000)
    assert type(c.issued_at) is int


def test_json_optional_fields_take_their_defaults() -> None:
    doc = wire.to_json_dict(command())
    del doc["signature"]
    assert wire.decode_command(json.dumps(doc).encode()).signature == ""
    snap = wire.to_json_dict(snapshot())
    for name in ("segment", "status", "verdict", "emitted_at"):
        del snap[name]
    decoded = wire.decode_metric_snapshot(json.dumps(snap).encode())
    assert (decoded.segment, decoded.status, decoded.verdict, decoded.emitted_at) == (None, "CLOSED", None, 0)


def test_to_json_dict_uses_enum_values_and_plain_dicts() -> None:
    d = wire.to_json_dict(command())
    assert d["kind"] == "ROLLBACK" and d["traffic"] == {"v1": 100, "v2": 0}
    assert wire.to_json_dict(rollout_event())["status"] == "APPLIED"
    json.dumps(wire.to_json_dict(prediction(0)))  # JSON-ready
    with pytest.raises(TypeError):
        wire.to_json_dict({"not": "a dataclass"})


# ------------------------------------------------------------------------------------------------
# Union branches


@pytest.mark.parametrize("value", [True, False, 1, 0, 1.5, "x"])
def test_label_union_branch_keeps_the_python_type(value: Any) -> None:
    for payload in (wire.encode_label(label(0, value)), wire.encode_labels([label(0, value)])):
        got = wire.decode_labels(payload).records[0].label
        assert type(got) is type(value) and got == value
    p = prediction(0, predicted_label=value)
    for payload in (wire.encode_prediction(p), wire.encode_predictions([p])):
        got = wire.decode_predictions(payload).records[0].predicted_label
        assert type(got) is type(value) and got == value


def test_union_branch_index_on_the_wire() -> None:
    """Read back by fastavro with the raw schema: the branch, not only the value, is right."""
    schema = wire.schemas()["Label"]
    for value, expected in [(True, True), (1, 1), (1.5, 1.5), ("x", "x")]:
        body = io.BytesIO(wire.encode_label(label(0, value))[10:])
        got = fastavro.schemaless_reader(body, schema.parsed, None)["label"]
        assert type(got) is type(expected) and got == expected


def test_int_features_are_written_as_doubles() -> None:
    p = prediction(0, features={"n": 3, "s": "x", "f": 1.5})
    for payload in (wire.encode_prediction(p), wire.encode_predictions([p])):
        features = wire.decode_predictions(payload).records[0].features
        assert features == {"n": 3.0, "s": "x", "f": 1.5} and type(features["n"]) is float  # type: ignore[index]


# ------------------------------------------------------------------------------------------------
# Malformed input


def only_error(result: wire.DecodeResult[Any]) -> wire.RecordError:
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def test_garbage_is_one_message_error() -> None:
    err = only_error(wire.decode_predictions(b"\x01garbage"))
    assert err.index is None and err.reason.startswith("not JSON: ")
    # A leading 0x00 is the Confluent Schema Registry framing (tests/test_schema_registry.py).
    assert "set MLE_SCHEMA_REGISTRY_URL" in only_error(wire.decode_predictions(b"\x00\x01garbage")).reason
    err = only_error(wire.decode_predictions(b"hello"))
    assert err.reason == "not JSON: Expecting value: line 1 column 1 (char 0)"
    assert "empty message" in only_error(wire.decode_labels(b"")).reason
    assert "UTF-8" in only_error(wire.decode_labels(b"\xff\xfe\xfa")).reason
    assert "got int" in only_error(wire.decode_labels(b"42")).reason
    assert "nested too deeply" in only_error(wire.decode_labels(b"[" * 100_000)).reason


def test_truncated_avro_single_is_one_message_error() -> None:
    payload = wire.encode_prediction(prediction(0))
    for cut in (5, 12, len(payload) - 3):
        err = only_error(wire.decode_predictions(payload[:cut]))
        assert err.index is None and ("truncated" in err.reason or "unreadable Avro Prediction" in err.reason)


def test_truncated_avro_batch_keeps_the_records_before_the_damage() -> None:
    batch = [prediction(i) for i in range(10)]
    payload = wire.encode_predictions(batch)
    result = wire.decode_predictions(payload[: len(payload) // 2])
    assert result.records == batch[: len(result.records)] and 0 < len(result.records) < 10
    err = only_error(result)
    assert err.index == len(result.records) and "unreadable Avro Prediction" in err.reason


def test_trailing_bytes_are_reported() -> None:
    err = only_error(wire.decode_predictions(wire.encode_predictions([prediction(0)]) + b"\x00\x00"))
    assert "unexpected bytes" in err.reason
    with pytest.raises(InvalidEvent, match="unexpected bytes"):
        wire.decode_command(wire.encode_command(command()) + b"\x00")


# The fingerprints of schemas/: Java's (SchemaNormalization.parsingFingerprint64, recomputed by
# tests/test_producers.py), then fastavro's and goavro's where they differ (see there).
ACCEPTS_PREDICTIONS = ("A prediction message carries Prediction 0x507d53b97e6d24ee (schemas/prediction.avsc; also "
                       "0x6a1c1c522fa228ba), PredictionBatch 0x0509bf3536581fa4 (schemas/prediction_batch.avsc; also "
                       "0x2097b0dbfbf1fa1f, 0x8338350ee7243371) (docs/producing.md)")


def test_a_wrong_schema_is_named_with_what_the_topic_accepts() -> None:
    err = only_error(wire.decode_predictions(wire.encode_labels([label(0)])))
    assert err.index is None
    assert err.reason == (
        "Avro schema fingerprint 0x0a0ff309d5bd58d5 (header bytes d558bdd509f30f0a) is the LabelBatch schema "
        "(schemas/label_batch.avsc), not a prediction schema (a message on the wrong topic?). " + ACCEPTS_PREDICTIONS
    )
    err = only_error(wire.decode_labels(wire.encode_prediction(prediction(0))))
    assert err.reason == (
        "Avro schema fingerprint 0x507d53b97e6d24ee (header bytes ee246d7eb9537d50) is the Prediction schema "
        "(schemas/prediction.avsc), not a label schema (a message on the wrong topic?). A label message carries "
        "Label 0xb840af0fd1e385c8 (schemas/label.avsc; also 0x41870ac46cb4120c), LabelBatch 0x0a0ff309d5bd58d5 "
        "(schemas/label_batch.avsc; also 0x7ce715052418eb76, 0xb249299e5e949463) (docs/producing.md)"
    )
    unknown = b"\xc3\x01" + bytes(range(1, 9)) + b"\x00"
    assert only_error(wire.decode_predictions(unknown)).reason == (
        "Avro schema fingerprint 0x0807060504030201 (header bytes 0102030405060708) is none of mle-stream's "
        "schemas: the producer's schema differs from schemas/*.avsc (a changed name, namespace, field, type or "
        "field order changes the fingerprint) or its Avro library computes fingerprints another way. "
        + ACCEPTS_PREDICTIONS
    )
    old_command = (0x1B5FD24BD3F22A3C).to_bytes(8, "little")  # schemas/history/command-1.avsc
    assert only_error(wire.decode_predictions(b"\xc3\x01" + old_command + b"\x00")).reason == (
        "Avro schema fingerprint 0x1b5fd24bd3f22a3c (header bytes 3c2af2d34bd25f1b) is an older version of the "
        "Command schema (schemas/history/command-1.avsc), not a prediction schema. " + ACCEPTS_PREDICTIONS
    )
    with pytest.raises(InvalidEvent) as info:
        wire.decode_command(wire.encode_rollout_event(rollout_event()))
    assert str(info.value).endswith(
        "is the RolloutEvent schema (schemas/rollout_event.avsc), not a Command schema (a message on the wrong "
        "topic?). A Command message carries Command 0xf1d538dbf8b23c37 (schemas/command.avsc; also "
        "0xc8419e3c56880b6b), Command 0x1b5fd24bd3f22a3c (schemas/history/command-1.avsc; also 0xc7ff530718745207) "
        "(docs/producing.md)"
    )


def test_json_missing_field_is_named() -> None:
    doc = wire.to_json_dict(prediction(0))
    del doc["model"]
    err = only_error(wire.decode_predictions(json.dumps(doc).encode()))
    assert (err.index, err.field) == (0, "model")
    assert err.reason == "record 0: field 'model': is required but missing"


@pytest.mark.parametrize("field, value, expected", [
    ("timestamp", 1.5, "must be epoch milliseconds"),
    ("timestamp", True, "must be epoch milliseconds"),
    ("timestamp", 2**64, "64-bit"),
    ("score", "high", "must be a finite number"),
    ("score", 1.5, "must lie in [0, 1]"),
    ("features", [1, 2], "must be an object"),
    ("segment", {"country": 3}, "must be a string"),
    ("error", 500, "must be a string or null"),
    ("predicted_label", [1], "must be a boolean, number or string"),
])
def test_json_wrong_types_are_named(field: str, value: Any, expected: str) -> None:
    doc = {**wire.to_json_dict(prediction(0)), field: value}
    err = only_error(wire.decode_predictions(json.dumps(doc).encode()))
    assert err.field.split(".")[0] == field and expected in err.reason
    assert err.reason.startswith(f"record 0: field '{err.field}': ")


def test_nan_score_is_rejected_in_json_and_avro() -> None:
    doc = {**wire.to_json_dict(prediction(0)), "score": float("nan")}
    err = only_error(wire.decode_predictions(json.dumps(doc).encode()))  # Python writes NaN
    assert err.field == "score" and "finite" in err.reason
    err = only_error(wire.decode_predictions(avro_raw("Prediction", raw_prediction(0, score=math.nan))))
    assert err.field == "score"


def test_one_bad_record_keeps_the_others() -> None:
    bad = {3: dict(score=1.5), 7: dict(model="")}
    raws = [raw_prediction(i, **bad.get(i, {})) for i in range(10)]
    expected = [prediction(i) for i in range(10) if i not in bad]
    for payload in (avro_raw("PredictionBatch", {"records": raws}), json.dumps(raws).encode()):
        result = wire.decode_predictions(payload)
        assert result.records == expected
        assert [(e.index, e.field) for e in result.errors] == [(3, "score"), (7, "model")]
        assert result.errors[0].reason.startswith("record 3: field 'score': is a probability")
    mixed = json.dumps([wire.to_json_dict(label(0)), "oops", wire.to_json_dict(label(2))]).encode()
    result = wire.decode_labels(mixed)
    assert len(result.records) == 2 and only_error(result).index == 1


@pytest.mark.parametrize("change, field", [
    ({"kind": "EXPLODE"}, "kind"),
    ({"traffic": {"v1": "all"}}, "traffic.v1"),
    ({"traffic": [100]}, "traffic"),
    ({"window_start": 1.5}, "window_start"),
    ({"reason": None}, "reason"),
])
def test_malformed_command_json_names_the_field(change: dict[str, Any], field: str) -> None:
    doc = {**wire.to_json_dict(command()), **change}
    with pytest.raises(InvalidEvent) as info:
        wire.decode_command(json.dumps(doc).encode())
    assert info.value.field == field


def test_command_decode_rejects_missing_fields_and_garbage() -> None:
    doc = wire.to_json_dict(command())
    del doc["rule"]
    with pytest.raises(InvalidEvent) as info:
        wire.decode_command(json.dumps(doc).encode())
    assert info.value.field == "rule"
    for payload in (b"garbage", b"[]", wire.encode_command(command())[:20], b"\xc3\x01\x00"):
        with pytest.raises(InvalidEvent):
            wire.decode_command(payload)
    with pytest.raises(InvalidEvent, match="status"):
        wire.decode_rollout_event(json.dumps({**wire.to_json_dict(rollout_event()), "status": "OK"}).encode())
    with pytest.raises(InvalidEvent, match="metrics.accuracy"):
        bad = wire.to_json_dict(snapshot())
        bad["metrics"]["accuracy"] = "hi"
        wire.decode_metric_snapshot(json.dumps(bad).encode())


def test_a_map_field_that_is_not_a_map_is_named() -> None:
    for field in ("features", "segment"):
        with pytest.raises(InvalidEvent) as info:
            prediction(0, **{field: "abc"})
        assert info.value.field == field


def test_a_command_written_before_expires_at_existed_still_decodes() -> None:
    """A producer on the previous schema (schemas/history/command-1.avsc, no expires_at): its Avro
    messages name that schema's fingerprint and are resolved against today's, and JSON may leave the
    field out; either way expires_at is its default, 0, which the actuator refuses as stale."""
    old = json.loads((wire.schema_dir() / "history" / "command-1.avsc").read_text())
    assert [f["name"] for f in old["fields"]] == [f.name for f in dataclasses.fields(Command) if f.name != "expires_at"]
    datum = wire.to_json_dict(command())
    del datum["expires_at"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(old, named_schemas={}), datum)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(old),
                                                            "CRC-64-AVRO"))
    assert fingerprint != wire.schemas()["Command"].fingerprint
    assert wire.decode_command(wire.AVRO_MARKER + fingerprint + out.getvalue()) == command()
    assert wire.decode_command(json.dumps(datum).encode()) == command()
    new = dataclasses.replace(command(), expires_at=T0 + 3_901_000)
    assert wire.decode_command(wire.encode_command(new)).expires_at == T0 + 3_901_000


def test_encoding_an_ill_typed_command_names_the_field() -> None:
    with pytest.raises(InvalidEvent) as info:
        wire.encode_command(dataclasses.replace(command(), traffic={"v1": 1.5}))  # type: ignore[dict-item]
    assert info.value.field == "traffic.v1"


# ------------------------------------------------------------------------------------------------
# The fast PredictionBatch reader agrees with fastavro


def fastavro_batch(payload: bytes) -> list[Prediction]:
    body = io.BytesIO(payload[10:])
    batch = fastavro.schemaless_reader(body, wire.schemas()["PredictionBatch"].parsed, None)
    return [Prediction(**d) for d in batch["records"]]


def test_fast_reader_is_active_and_agrees_with_fastavro_on_mixed_feature_layouts() -> None:
    assert record_path._FAST_PREDICTIONS
    batch = [
        prediction(0), prediction(1, features={"a": 1.0}), prediction(2),
        prediction(3, features={f"f{j}": "text" if j == 4 else 1.0 for j in range(10)}),  # same names, a string
        prediction(4, features={}), prediction(5, features=None), prediction(6),
    ]
    payload = wire.encode_predictions(batch)
    assert [Prediction(*r) for r in record_path._read_prediction_batch(payload)] == fastavro_batch(payload) == batch


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def test_blocked_arrays_and_maps_from_other_writers_are_read() -> None:
    """Avro lets a writer split arrays and maps into blocks with a negative count and a byte size."""
    schema = wire.schemas()["Prediction"].parsed
    bodies = []
    for i in range(2):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, raw_prediction(i))
        bodies.append(out.getvalue())
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, raw_prediction(2, features=None, segment=None, error=None))
    assert out.getvalue().endswith(b"\x00\x00\x00")  # features, segment, error: all the null branch
    entry = zigzag(1) + b"a" + b"\x00" + b"\x00" * 7 + b"\x40"  # "a" -> 2.0
    blocked_map = zigzag(-1) + zigzag(len(entry)) + entry + zigzag(0)
    bodies.append(out.getvalue()[:-3] + zigzag(1) + blocked_map + b"\x00\x00")
    records = b"".join(bodies)
    header = wire.AVRO_MARKER + wire.schemas()["PredictionBatch"].fingerprint
    payload = header + zigzag(-3) + zigzag(len(records)) + records + zigzag(0)
    expected = [prediction(0), prediction(1), prediction(2, features={"a": 2.0}, segment=None)]
    assert wire.decode_predictions(payload).records == expected
    assert [Prediction(*r) for r in record_path._read_prediction_batch(payload)] == expected
    assert fastavro_batch(payload) == expected


finite = st.floats(allow_nan=False, allow_infinity=False)
label_values = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), finite, st.text())


@st.composite
def predictions(draw: st.DrawFn) -> Prediction:
    output = draw(st.sampled_from(["score", "scores", "value", "error"]))
    return Prediction(
        prediction_id=draw(st.text(min_size=1)),
        model=draw(st.text(min_size=1, max_size=70)),
        version=draw(st.text(min_size=1, max_size=5)),
        timestamp=draw(st.integers(0, 2**63 - 1)),
        score=draw(st.floats(0, 1)) if output == "score" else None,
        scores=draw(st.dictionaries(st.text(), finite, min_size=1)) if output == "scores" else None,
        value=draw(finite) if output == "value" else None,
        predicted_label=draw(st.none() | label_values),
        latency_ms=draw(st.none() | st.floats(0, 1e9)),
        features=draw(st.none() | st.dictionaries(
            st.text(max_size=70), st.one_of(finite, st.integers(-(2**53), 2**53), st.text()), max_size=12)),
        segment=draw(st.none() | st.dictionaries(st.text(), st.text(), max_size=3)),
        error=draw(st.text()) if output == "error" else draw(st.none() | st.text()),
    )


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(predictions(), min_size=1, max_size=6))
def test_any_valid_prediction_round_trips(batch: list[Prediction]) -> None:
    for p in batch[:2]:
        assert wire.decode_predictions(wire.encode_prediction(p)) == wire.DecodeResult([p], [])
    payload = wire.encode_predictions(batch)
    assert wire.decode_predictions(payload) == wire.DecodeResult(batch, [])
    assert [Prediction(*r) for r in record_path._read_prediction_batch(payload)] == fastavro_batch(payload) == batch
    as_json = json.dumps([wire.to_json_dict(p) for p in batch]).encode()
    assert wire.decode_predictions(as_json) == wire.DecodeResult(batch, [])


@settings(deadline=None, max_examples=60)
@given(st.lists(st.text(max_size=70), min_size=1, max_size=8, unique=True), st.data())
def test_batches_sharing_feature_names_round_trip(names: list[str], data: st.DataObject) -> None:
    """The fast reader's layout path: records that repeat their feature names, sometimes with text."""
    values = st.one_of(finite, finite, st.text(max_size=3))
    batch = [prediction(i, features={n: data.draw(values) for n in names}) for i in range(5)]
    payload = wire.encode_predictions(batch)
    assert [Prediction(*r) for r in record_path._read_prediction_batch(payload)] == batch
    assert wire.decode_predictions(payload).records == batch


@settings(deadline=None, max_examples=60)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_the_header_never_raise(body: bytes) -> None:
    header = wire.AVRO_MARKER + wire.schemas()["PredictionBatch"].fingerprint
    result = wire.decode_predictions(header + body)
    assert isinstance(result, wire.DecodeResult)
    assert all(isinstance(p, Prediction) for p in result.records)


# ------------------------------------------------------------------------------------------------
# Fingerprints, checked against an independent implementation of the Avro spec
#
# What is independent: the Parsing Canonical Form and CRC-64-AVRO below are written here from the
# Avro specification, without fastavro and without the codec's inlining of named types; the
# expected numbers in test_reference_implementation_matches_avro_test_vectors come from Apache
# Avro's cross-language test file (share/test/data/schema-tests.txt), checked there by the Java
# implementation. What is not: both sides read the same .avsc files.

CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


PRIMITIVE_TYPES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def canonical(schema: Any, namespace: str = "", seen: set[str] | None = None,
              library: dict[str, Any] | None = None) -> str:
    """The spec's Parsing Canonical Form; `library` holds named schemas defined in other files."""
    seen = set() if seen is None else seen
    library = library or {}
    if isinstance(schema, list):
        return "[" + ",".join(canonical(s, namespace, seen, library) for s in schema) + "]"
    if isinstance(schema, str):
        if schema in PRIMITIVE_TYPES:
            return json.dumps(schema)
        full = schema if "." in schema else (f"{namespace}.{schema}" if namespace else schema)
        if full in seen or full not in library:
            return json.dumps(full)
        return canonical(library[full], namespace, seen, library)
    kind = schema["type"]
    if kind in PRIMITIVE_TYPES:  # {"type": "long", "logicalType": ...} -> "long"
        return json.dumps(kind)
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        if "." in name:
            full, namespace = name, name.rsplit(".", 1)[0]
        else:
            namespace = schema.get("namespace", namespace)
            full = f"{namespace}.{name}" if namespace else name
        seen.add(full)
        parts = [f'"name":{json.dumps(full, ensure_ascii=False)}', f'"type":"{kind}"']
        if kind == "record":
            fields = ",".join(
                f'{{"name":{json.dumps(f["name"])},"type":{canonical(f["type"], namespace, seen, library)}}}'
                for f in schema["fields"]
            )
            parts.append(f'"fields":[{fields}]')
        elif kind == "enum":
            parts.append('"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")))
        else:
            parts.append(f'"size":{int(schema["size"])}')
        return "{" + ",".join(parts) + "}"
    if kind == "array":
        return f'{{"type":"array","items":{canonical(schema["items"], namespace, seen, library)}}}'
    if kind == "map":
        return f'{{"type":"map","values":{canonical(schema["values"], namespace, seen, library)}}}'
    return canonical(kind, namespace, seen, library)


def signed(fp: int) -> int:
    return fp - 2**64 if fp >= 2**63 else fp


@pytest.mark.parametrize("schema, expected_canonical, expected_fp", [
    ("null", '"null"', 7195948357588979594),
    ({"type": "record", "name": "foo", "fields": [{"type": {"type": "boolean"}, "name": "f1"}]},
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
    ({"fields": [], "type": "record", "name": "foo", "namespace": "x.y"},
     '{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ({"fields": [{"type": "boolean", "aliases": [], "name": "f1", "default": "true"},
                 {"order": "descending", "name": "f2", "doc": "Hello", "type": "int"}],
      "type": "record", "name": "foo"},
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
     -4860222112080293046),
    ({"namespace": "x.y.z", "type": "enum", "name": "foo", "doc": "foo bar", "symbols": ["A1", "A2"]},
     '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', -4448647247586288245),
    ({"items": {"type": "null"}, "type": "array"}, '{"type":"array","items":"null"}', -589620603366471059),
    ({"values": "string", "type": "map"}, '{"type":"map","values":"string"}', -8732877298790414990),
])
def test_reference_implementation_matches_avro_test_vectors(schema: Any, expected_canonical: str,
                                                            expected_fp: int) -> None:
    form = canonical(schema)
    assert form == expected_canonical
    assert signed(crc64_avro(form.encode())) == expected_fp


def test_every_fingerprint_matches_the_reference_implementation() -> None:
    raw = {p.stem: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.avsc")}
    library = {f'{s["namespace"]}.{s["name"]}': s for s in raw.values()}
    assert len(wire.schemas()) == len(raw) == 8
    for schema in raw.values():
        ours = wire.schemas()[schema["name"]]
        form = canonical(schema, library=library)
        assert ours.canonical_form == form
        assert ours.fingerprint == crc64_avro(form.encode()).to_bytes(8, "little")
    # The batch is the case a naive fingerprint gets wrong: Prediction must be inlined in it.
    batch_form = wire.schemas()["PredictionBatch"].canonical_form
    assert '"items":{"name":"io.mlestream.Prediction","type":"record"' in batch_form
    payload = wire.encode_predictions([prediction(0)])
    assert payload[2:10] == crc64_avro(batch_form.encode()).to_bytes(8, "little")


def test_schemas_are_found_next_to_the_package_or_at_the_repo_top() -> None:
    assert (wire.schema_dir() / "prediction.avsc").is_file()
