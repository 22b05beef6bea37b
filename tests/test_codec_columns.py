"""The columns path of the codec: PredictionBatch / LabelBatch bytes straight into columns.

Three truths it is checked against: the records a batch was encoded from; fastavro's own reading of
the same bytes (an independent Avro implementation); and the record path (`records._decode`:
fastavro and the dataclasses, what decode_predictions did before the columns path), which must
give the same records and the very same RecordErrors for every input, valid, invalid or corrupt.
Records are compared by their Avro encoding, which is exact (NaN bits, -0.0, union branches)
where `==` is not (NaN != NaN).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mle_stream import wire
from mle_stream.core.columns import LabelColumns, PredictionColumns
from mle_stream.core.events import Label, Prediction
from mle_stream.wire import _batch_reader as reader
from mle_stream.wire import avro_records
from mle_stream.wire import records as record_path
from test_codec import (
    T0,
    avro_raw,
    label,
    label_values,
    prediction,
    predictions,
    raw_prediction,
)

HEADER = 10
FEATURES = ("amount", "account_age_days", "txn_count_24h", "avg_amount_30d", "distance_km",
            "hour_of_day", "merchant_risk", "device_score", "velocity_1h", "balance_ratio")
SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# Truths


def fastavro_predictions(payload: bytes) -> list[Prediction]:
    datum: Any = fastavro.schemaless_reader(io.BytesIO(payload[HEADER:]), wire.schemas()["PredictionBatch"].parsed,
                                            None)
    return [Prediction(**d) for d in datum["records"]]


def fastavro_labels(payload: bytes) -> list[Label]:
    datum: Any = fastavro.schemaless_reader(io.BytesIO(payload[HEADER:]), wire.schemas()["LabelBatch"].parsed, None)
    return [Label(**d) for d in datum["records"]]


def same_predictions(got: list[Prediction], expected: list[Prediction]) -> bool:
    return len(got) == len(expected) and wire.encode_predictions(got) == wire.encode_predictions(expected)


def same_labels(got: list[Label], expected: list[Label]) -> bool:
    return len(got) == len(expected) and wire.encode_labels(got) == wire.encode_labels(expected)


def assert_plain_python(columns: PredictionColumns | LabelColumns) -> None:
    """What the columns hand out as objects is Python's own types, never numpy scalars."""
    for r in columns.records():
        assert type(r.timestamp) is int
        if isinstance(r, Label):
            assert type(r.label) in (bool, int, float, str)
            continue
        assert r.predicted_label is None or type(r.predicted_label) in (bool, int, float, str)
        assert all(type(v) in (float, str) for v in (r.features or {}).values())
        assert all(type(v) is float for v in (r.scores or {}).values())
        assert all(v is None or type(v) is float for v in (r.score, r.value, r.latency_ms))


def comparable(errors: list[wire.RecordError]) -> list[wire.RecordError]:
    # fastavro's messages for corrupt input name the stream object by its address.
    return [dataclasses.replace(e, reason=re.sub(r" at 0x[0-9a-f]+", "", e.reason)) for e in errors]


@contextlib.contextmanager
def small_parts() -> Iterator[None]:
    """The reader uses a shape however few of its records a batch has (it reads fewer than
    _MIN_PART loosely when the batch has other parts): the tests' small batches need it."""
    saved = reader._MIN_PART
    reader._MIN_PART = 1
    try:
        yield
    finally:
        reader._MIN_PART = saved


def assert_matches_record_path(payload: bytes, kind: str = "prediction") -> wire.ColumnsResult[Any]:
    """The columns path, decode_predictions/decode_labels and the record path agree on `payload`:
    the same records, the same errors, and message_index names each row's record."""
    columns: Any
    records: Any
    path: Any
    same: Any
    if kind == "prediction":
        columns, records, path, same = (wire.decode_prediction_columns, wire.decode_predictions,
                                        record_path._PREDICTIONS, same_predictions)
    else:
        columns, records, path, same = wire.decode_label_columns, wire.decode_labels, record_path._LABELS, same_labels
    truth = record_path._decode(payload, path)
    named = {e.index for e in truth.errors if e.index is not None}
    with small_parts():
        small = columns(payload)
    for result in (small, columns(payload)):
        assert comparable(result.errors) == comparable(truth.errors)
        assert same(result.columns.records(), truth.records)
        assert result.message_index.tolist() == [i for i in range(len(truth.records) + len(named)) if i not in named]
        assert result.message_index.dtype == np.int64
    decoded = records(payload)
    assert comparable(decoded.errors) == comparable(truth.errors) and same(decoded.records, truth.records)
    assert_plain_python(result.columns)
    return result


# ------------------------------------------------------------------------------------------------
# Records of one shape: what exercises the shape path (a record's shape is compiled once seen twice)


def shuffled(text: str, rnd: random.Random) -> str:
    chars = list(text)
    rnd.shuffle(chars)
    return "".join(chars)  # the same characters: the same number of UTF-8 bytes


def near(n: int, rnd: random.Random) -> int:
    return n ^ rnd.randrange(64)  # the low six bits: the same varint width, the same sign


def prediction_like(p: Prediction, rnd: random.Random) -> Prediction:
    """Another record of p's shape: string lengths, union branches, map keys and varint widths kept,
    every value changed."""
    def text(s: str | None) -> str | None:
        return None if s is None else shuffled(s, rnd)

    def double(v: float | None, low: float = -1e6, high: float = 1e6) -> float | None:
        return None if v is None else rnd.uniform(low, high)

    label: Any = p.predicted_label
    if isinstance(label, bool):
        label = rnd.random() < 0.5
    elif isinstance(label, int):
        label = near(label, rnd)
    elif isinstance(label, float):
        label = rnd.uniform(-5, 5)
    elif isinstance(label, str):
        label = shuffled(label, rnd)
    features = None if p.features is None else {
        k: shuffled(v, rnd) if isinstance(v, str) else rnd.choice([math.nan, rnd.uniform(-1e9, 1e9)])
        for k, v in p.features.items()
    }
    return Prediction(
        prediction_id=shuffled(p.prediction_id, rnd), model=shuffled(p.model, rnd), version=shuffled(p.version, rnd),
        timestamp=near(p.timestamp, rnd), score=double(p.score, 0.0, 1.0),
        scores=None if p.scores is None else {k: rnd.random() for k in p.scores}, value=double(p.value),
        predicted_label=label, latency_ms=double(p.latency_ms, 0.0, 1e4), features=features,
        segment=None if p.segment is None else {k: shuffled(v, rnd) for k, v in p.segment.items()},
        error=text(p.error),
    )


def label_like(x: Label, rnd: random.Random) -> Label:
    value: Any = x.label
    if isinstance(value, bool):
        value = rnd.random() < 0.5
    elif isinstance(value, int):
        value = near(value, rnd)
    elif isinstance(value, float):
        value = rnd.uniform(-1e9, 1e9)
    else:
        value = shuffled(value, rnd)
    return Label(shuffled(x.prediction_id, rnd), shuffled(x.model, rnd), near(x.timestamp, rnd), value)


def runs_of(protos: list[Any], like: Callable[[Any, random.Random], Any], rnd: random.Random) -> list[Any]:
    """Several records of each prototype's shape, in runs or interleaved."""
    batch = [r for p in protos for r in [p] + [like(p, rnd) for _ in range(rnd.randrange(2, 6))]]
    if rnd.random() < 0.5:
        rnd.shuffle(batch)
    return batch


long_text = st.text(min_size=64, max_size=150)  # two-byte length varints


@st.composite
def any_predictions(draw: st.DrawFn) -> Prediction:
    """test_codec's predictions, plus what they do not draw: features with NaN and infinities, long
    unicode ids, numeric feature layouts that repeat (the matrix)."""
    p = draw(predictions())
    changes: dict[str, Any] = {}
    if draw(st.booleans()):
        changes["prediction_id"] = draw(long_text)
    features = draw(st.sampled_from(["keep", "numeric", "mixed"]))
    if features == "numeric":
        changes["features"] = {name: draw(st.floats()) for name in FEATURES[: draw(st.integers(1, 10))]}
    elif features == "mixed":
        changes["features"] = {"amount": draw(st.floats()), "country": draw(st.text(max_size=3)),
                               draw(long_text): draw(st.floats())}
    return dataclasses.replace(p, **changes)


# ------------------------------------------------------------------------------------------------
# Valid batches


def bench_batch(n: int = 500) -> list[Prediction]:
    rnd = random.Random(7)
    return [
        Prediction(f"{rnd.getrandbits(128):032x}", "fraud", rnd.choice("12"), T0 + i, score=rnd.random(),
                   latency_ms=rnd.lognormvariate(2.3, 0.4), features={f: rnd.random() * 100 for f in FEATURES})
        for i in range(n)
    ]


def test_a_serving_pods_batch_is_read_as_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = bench_batch()
    payload = wire.encode_predictions(batch)
    wire.decode_prediction_columns(payload)  # the shape has now been seen and compiled
    loose = []

    def read_one(buf: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
        loose.append(pos)
        return reader._read_prediction(buf, pos)

    monkeypatch.setattr(reader, "_PREDICTION", dataclasses.replace(reader._PREDICTION, read_one=read_one))
    result = wire.decode_prediction_columns(payload)
    # All 500 in one regex run: the shape the batch before was read with fits from the first record.
    assert loose == []
    assert result.columns.records() == batch and result.errors == []
    assert result.message_index.tolist() == list(range(500))
    features = result.columns.features
    assert features.names == FEATURES and features.rows.tolist() == list(range(500)) and not features.other
    assert features.matrix.shape == (500, 10) and features.matrix.flags.c_contiguous
    assert result.columns.model == ["fraud"] * 500 and np.isnan(result.columns.value).all()
    assert result.columns.scores is None and result.columns.predicted_label is None and result.columns.error is None

    # Another shape (another model name) is learned from its first batch; its next batch is one
    # run from the first record on, and the first shape is still remembered.
    other = [dataclasses.replace(p, model="fraud-2") for p in batch]
    wire.decode_prediction_columns(wire.encode_predictions(other))
    assert loose
    loose.clear()
    assert wire.decode_prediction_columns(wire.encode_predictions(other)).columns.records() == other
    assert loose == []
    assert wire.decode_prediction_columns(payload).columns.records() == batch and loose == []  # both remembered


@SETTINGS
@given(st.lists(any_predictions(), min_size=1, max_size=6))
def test_any_valid_batch_decodes_to_its_records(batch: list[Prediction]) -> None:
    payload = wire.encode_predictions(batch)
    result = assert_matches_record_path(payload)
    assert result.errors == [] and same_predictions(result.columns.records(), batch)
    assert same_predictions(fastavro_predictions(payload), batch)
    for shapes in (False, True):
        read = reader.read_prediction_batch(payload, HEADER, shapes=shapes)
        assert same_predictions([Prediction(*read.args(i)) for i in range(len(read))], batch)


@SETTINGS
@given(st.lists(any_predictions(), min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_batches_of_repeated_shapes_decode_to_their_records(protos: list[Prediction], rnd: random.Random) -> None:
    batch = runs_of(protos, prediction_like, rnd)
    payload = wire.encode_predictions(batch)
    for _ in range(2):  # the second time every shape is compiled already
        result = assert_matches_record_path(payload)
        assert result.errors == [] and same_predictions(result.columns.records(), batch)
    assert same_predictions(fastavro_predictions(payload), batch)
    loose = reader.read_prediction_batch(payload, HEADER, shapes=False)
    assert same_predictions([Prediction(*loose.args(i)) for i in range(len(loose))], batch)


def test_every_union_branch_and_map_kind_in_shapes() -> None:
    rnd = random.Random(3)
    protos = [
        prediction(0, predicted_label=True), prediction(1, predicted_label=-(2**40)),
        prediction(2, predicted_label=0.5), prediction(3, predicted_label="fraud"),
        prediction(4, score=None, scores={"cat": 0.7, "dog": 0.3}), prediction(5, score=None, value=-1.5),
        prediction(6, score=None, error="timeout", features=None, segment=None, latency_ms=None),
        prediction(7, features={"country": "DE", "amount": 12.0}, segment={"country": "DE", "device": "ios"}),
        prediction(8, features={}, segment={}), prediction(9, score=None, scores={"only": 1.0}, error="partial"),
        prediction(10, prediction_id="é" * 100, model="ключ" * 20, features={"ключ" * 20: 1.0}),
    ]
    batch = runs_of(protos, prediction_like, rnd)
    payload = wire.encode_predictions(batch)
    wire.decode_prediction_columns(payload)
    result = assert_matches_record_path(payload)
    assert same_predictions(result.columns.records(), batch)
    columns = result.columns
    assert columns.scores is not None and columns.predicted_label is not None and columns.error is not None
    assert columns.segment is not None
    # Features: the layout with the most records is the matrix, every other map is in `other`.
    features = columns.features
    assert features.rows.tolist() == sorted(features.rows.tolist())
    assert len(features.rows) + len(features.other) == sum(p.features is not None for p in batch)
    for i, row in zip(features.rows.tolist(), features.matrix):
        expected = batch[i].features
        assert expected is not None and tuple(expected) == features.names
        assert np.array_equal(row, list(expected.values()), equal_nan=True)


def test_a_few_records_of_other_shapes_amid_a_long_run() -> None:
    """The run is read as a shape, the few others loosely, and all of it merged in message order."""
    main = bench_batch(100)
    few = [dataclasses.replace(p, prediction_id="short", segment={"country": "DE"}) for p in main[:5]]
    text = prediction(0, features={"country": "DE", "amount": 1.0})
    batch = main[:40] + few[:3] + main[40:] + few[3:] + [text]
    payload = wire.encode_predictions(batch)
    for _ in range(2):
        result = assert_matches_record_path(payload)
    assert result.columns.records() == batch
    features = result.columns.features
    assert features.names == FEATURES and len(features.rows) == 105 and list(features.other) == [105]
    assert result.columns.segment is not None and result.columns.segment[40:44] == [{"country": "DE"}] * 3 + [None]


def test_a_batch_of_no_records_is_empty() -> None:
    for decode, encode in ((wire.decode_prediction_columns, wire.encode_predictions),
                           (wire.decode_label_columns, wire.encode_labels)):
        result = decode(encode([]))
        assert len(result.columns) == 0 and result.errors == [] and result.message_index.tolist() == []


def test_records_encoded_unlike_fastavro_are_read_loosely() -> None:
    """Padded varints and blocked maps are valid Avro that no shape matches: read field by field."""
    schema = wire.schemas()["Label"].parsed
    bodies = []
    for i in range(4):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, avro_records.label_datum(label(i, 0.5)))
        bodies.append(out.getvalue())
    # Record 2 with its long label 7 written in three bytes (0x8e 0x80 0x00 instead of 0x0e).
    padded = avro_records.label_datum(label(2, 7))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, padded)
    assert out.getvalue().endswith(b"\x02\x0e")
    bodies[2] = out.getvalue()[:-1] + b"\x8e\x80\x00"
    payload = wire.AVRO_MARKER + wire.schemas()["LabelBatch"].fingerprint + b"\x08" + b"".join(bodies) + b"\x00"
    expected = [label(0, 0.5), label(1, 0.5), label(2, 7), label(3, 0.5)]
    assert fastavro_labels(payload) == expected
    for _ in range(2):
        assert wire.decode_label_columns(payload).columns.records() == expected
    assert reader.read_label_batch(payload, HEADER, shapes=False).records() == expected


# ------------------------------------------------------------------------------------------------
# Records that break the contract: Avro can carry them, the dataclass refuses them

INVALID_PREDICTIONS: list[dict[str, Any]] = [
    dict(score=1.5), dict(score=-0.25), dict(score=math.nan), dict(score=math.inf),
    dict(prediction_id=""), dict(model=""), dict(version=""), dict(timestamp=-1),
    dict(latency_ms=-1.0), dict(latency_ms=math.nan), dict(latency_ms=math.inf),
    dict(score=None), dict(scores={"a": 0.5}), dict(score=None, value=1.0, scores={"a": 0.5}),
    dict(score=None, scores={}), dict(score=None, scores={"a": math.nan}),
    dict(score=None, value=math.inf), dict(score=None, value=math.nan), dict(score=0.5, value=0.5),
]
VALID_ODDITIES: list[dict[str, Any]] = [
    dict(score=None, error="model server timed out"), dict(error="partial", latency_ms=None),
    dict(features={"amount": math.nan, "n": math.inf}), dict(latency_ms=-0.0, score=0.0),
]


@pytest.mark.parametrize("change", INVALID_PREDICTIONS + VALID_ODDITIES)
def test_a_record_breaking_the_contract_gets_the_record_paths_error(change: dict[str, Any]) -> None:
    bad = (3, 7)
    raws = [raw_prediction(i, **(change if i in bad else {})) for i in range(10)]
    payload = avro_raw("PredictionBatch", {"records": raws})
    for _ in range(2):  # a shape unknown, then known
        result = assert_matches_record_path(payload)
    if change in VALID_ODDITIES:
        assert result.errors == [] and len(result.columns) == 10
        return
    assert [e.index for e in result.errors] == list(bad)
    assert result.message_index.tolist() == [i for i in range(10) if i not in bad]
    assert result.columns.records() == [prediction(i) for i in range(10) if i not in bad]
    assert result.errors[0].reason.startswith(f"record 3: field '{result.errors[0].field}': ")


@SETTINGS
@given(st.lists(any_predictions(), min_size=1, max_size=8), st.data())
def test_invalid_records_anywhere_cost_only_themselves(batch: list[Prediction], data: st.DataObject) -> None:
    datums = [avro_records.prediction_datum(p) for p in batch]
    for i in data.draw(st.sets(st.integers(0, len(batch) - 1))):
        datums[i] = {**datums[i], **data.draw(st.sampled_from(INVALID_PREDICTIONS))}
    payload = avro_raw("PredictionBatch", {"records": datums})
    assert_matches_record_path(payload)


INVALID_LABELS: list[dict[str, Any]] = [
    dict(label=("double", math.nan)), dict(label=("double", -math.inf)), dict(prediction_id=""), dict(model=""),
    dict(timestamp=-5),
]


@pytest.mark.parametrize("change", INVALID_LABELS)
def test_a_label_breaking_the_contract_gets_the_record_paths_error(change: dict[str, Any]) -> None:
    datums = [{**avro_records.label_datum(label(i, 0.5)), **(change if i in (0, 4) else {})} for i in range(6)]
    payload = avro_raw("LabelBatch", {"records": datums})
    for _ in range(2):
        result = assert_matches_record_path(payload, "label")
    assert [e.index for e in result.errors] == [0, 4] and result.message_index.tolist() == [1, 2, 3, 5]
    assert result.columns.records() == [label(i, 0.5) for i in (1, 2, 3, 5)]


# ------------------------------------------------------------------------------------------------
# Labels


@st.composite
def labels(draw: st.DrawFn) -> Label:
    return Label(
        prediction_id=draw(st.text(min_size=1) | long_text), model=draw(st.text(min_size=1, max_size=70)),
        timestamp=draw(st.integers(0, 2**63 - 1)), label=draw(label_values),
    )


@SETTINGS
@given(st.lists(labels(), max_size=8), st.randoms(use_true_random=False))
def test_any_valid_label_batch_decodes_to_its_records(protos: list[Label], rnd: random.Random) -> None:
    for batch in (protos, runs_of(protos, label_like, rnd)):
        payload = wire.encode_labels(batch)
        for _ in range(2):
            result = assert_matches_record_path(payload, "label")
            assert result.errors == [] and same_labels(result.columns.records(), batch)
        assert same_labels(fastavro_labels(payload), batch)
        assert same_labels(reader.read_label_batch(payload, HEADER, shapes=False).records(), batch)


def test_label_values_keep_their_branch() -> None:
    values: list[Any] = [True, False, 0, 1, -(2**63), 2**63 - 1, 0.5, -0.0, "cat", ""]
    batch = [label(i, v) for i in range(3) for v in values]
    result = wire.decode_label_columns(wire.encode_labels(batch))
    assert [(type(v), v) for v in result.columns.label] == [(type(x.label), x.label) for x in batch]
    uniform = [label(i, i % 2 == 0) for i in range(100)]  # the binary case, one shape
    payload = wire.encode_labels(uniform)
    wire.decode_label_columns(payload)
    assert wire.decode_label_columns(payload).columns.label == [i % 2 == 0 for i in range(100)]


# ------------------------------------------------------------------------------------------------
# The other forms: JSON, single Avro records


def test_json_forms_give_columns_and_the_message_index() -> None:
    good = [wire.to_json_dict(prediction(i)) for i in range(3)]
    bad = {**good[1], "score": 1.5}
    for doc, expected, index in [
        (good[0], [prediction(0)], [0]),
        (good, [prediction(i) for i in range(3)], [0, 1, 2]),
        ({"records": [good[0], bad, good[2]]}, [prediction(0), prediction(2)], [0, 2]),
        ([good[0], "oops", good[2]], [prediction(0), prediction(2)], [0, 2]),
    ]:
        result = assert_matches_record_path(json.dumps(doc).encode())
        assert result.columns.records() == expected and result.message_index.tolist() == index
    labels_doc = [wire.to_json_dict(label(0, True)), {"prediction_id": "p1"}, wire.to_json_dict(label(2, "x"))]
    result = assert_matches_record_path(json.dumps(labels_doc).encode(), "label")
    assert result.columns.records() == [label(0, True), label(2, "x")] and result.message_index.tolist() == [0, 2]
    assert result.errors[0].field == "model"


def test_single_avro_records_give_one_row() -> None:
    result = assert_matches_record_path(wire.encode_prediction(prediction(4)))
    assert result.columns.records() == [prediction(4)] and result.message_index.tolist() == [0]
    result = assert_matches_record_path(avro_raw("Prediction", raw_prediction(0, score=2.0)))
    assert len(result.columns) == 0 and [e.index for e in result.errors] == [0] and result.message_index.tolist() == []
    result = assert_matches_record_path(wire.encode_label(label(1, 3)), "label")
    assert result.columns.records() == [label(1, 3)]


# ------------------------------------------------------------------------------------------------
# Corrupt messages behave exactly as on the record path


def test_truncated_batches_keep_the_records_before_the_damage() -> None:
    payload = wire.encode_predictions([prediction(i) for i in range(10)])
    for cut in range(0, len(payload), 11):
        assert_matches_record_path(payload[:cut])
    result = assert_matches_record_path(payload[: len(payload) // 2])
    assert 0 < len(result.columns) < 10 and result.errors[-1].index == len(result.columns)
    label_payload = wire.encode_labels([label(i, 0.25) for i in range(10)])
    for cut in range(0, len(label_payload), 7):
        assert_matches_record_path(label_payload[:cut], "label")


def test_garbage_trailing_bytes_and_bad_branches_are_reported_as_before() -> None:
    for payload in (b"", b"\x00", b"hello", b"[1, 2]", b"\xc3\x01", wire.AVRO_MARKER + b"\x01" * 8 + b"\x00"):
        assert_matches_record_path(payload)
        assert_matches_record_path(payload, "label")
    batch = wire.encode_predictions([prediction(i) for i in range(3)])
    result = assert_matches_record_path(batch + b"\x00")
    assert "unexpected bytes" in result.errors[0].reason and len(result.columns) == 0
    assert_matches_record_path(wire.encode_labels([label(0)]) + b"\x02", "label")
    assert_matches_record_path(wire.encode_labels([label(0)]), "prediction")  # another topic's schema
    # The score's union branch of record 1 (2: "double") made 6, a branch the union lacks.
    head = b"\x04p1\x0afraud\x04v2"  # prediction_id, model, version, then the timestamp
    at = batch.index(head) + len(head) + len(reader._varint(T0 + 1))
    assert batch[at] == 2
    result = assert_matches_record_path(batch[:at] + b"\x06" + batch[at + 1 :])
    assert len(result.columns) == 1 and result.errors[-1].index == 1


@SETTINGS
@given(st.lists(any_predictions(), min_size=1, max_size=4), st.data())
def test_damaged_bytes_give_what_the_record_path_gives(batch: list[Prediction], data: st.DataObject) -> None:
    payload = bytearray(wire.encode_predictions(batch * 3))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(HEADER, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    assert_matches_record_path(bytes(payload))


@SETTINGS
@given(st.lists(labels(), min_size=1, max_size=4), st.data())
def test_damaged_label_bytes_give_what_the_record_path_gives(batch: list[Label], data: st.DataObject) -> None:
    payload = bytearray(wire.encode_labels(batch * 3))
    at = data.draw(st.integers(HEADER, len(payload) - 1))
    payload[at] = data.draw(st.integers(0, 255))
    assert_matches_record_path(bytes(payload), "label")


@settings(deadline=None, max_examples=60)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_the_header_never_raise(body: bytes) -> None:
    for name, kind in (("PredictionBatch", "prediction"), ("LabelBatch", "label")):
        assert_matches_record_path(wire.AVRO_MARKER + wire.schemas()[name].fingerprint + body, kind)


def test_the_fast_readers_are_active() -> None:
    assert record_path._FAST_PREDICTIONS and record_path._FAST_LABELS



@SETTINGS
@given(st.lists(st.lists(any_predictions(), max_size=4), min_size=1, max_size=4))
def test_columns_of_several_messages_concatenate_to_the_columns_of_all_their_records(
        messages: list[list[Prediction]]) -> None:
    """What the worker does with a batch of messages (one evaluator call per model and kind):
    any features (numeric layouts that differ between messages, text values, none) and optional
    fields come out of the concatenation as the records went in."""
    parts = [PredictionColumns.from_records(m) for m in messages]
    joined = PredictionColumns.concat(parts)
    everything = [p for m in messages for p in m]
    assert len(joined) == len(everything) and same_predictions(joined.records(), everything)
    labels = [[Label(p.prediction_id, p.model, p.timestamp, i % 2 == 0) for i, p in enumerate(m)] for m in messages]
    concatenated = LabelColumns.concat([LabelColumns.from_records(m) for m in labels])
    assert concatenated.records() == [x for m in labels for x in m]
