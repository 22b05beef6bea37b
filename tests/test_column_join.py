"""ColumnJoin against LabelJoin: the same random batches into both, the same outcomes out."""

import base64
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from label_join_reference import Joined, LabelJoin
from mle_stream.core.column_join import ColumnJoin, ColumnJoined, hash_ids, id_array
from mle_stream.core.id_table import IdTable
from mle_stream.core.snapshot_columns import decode_column

COLUMNS = {"pane": np.int64, "version": np.int8, "output": np.float64, "decision": np.bool_, "segments": object}
IDS = ["a0", "a1", "a2", "a3", "b", "é5", "c" * 9, "d" * 17, "e" * 8, "f" * 40]  # several widths, one not ASCII
MIXED_LABELS = [True, False, 0, 1, 1.0, 0.0, -0.0, 2.5, "a", "b"]  # True == 1 == 1.0, yet not the same label


def payload_of(pid: str, ts: int) -> tuple[Any, ...]:
    segments = (None,) if ts % 3 else (None, ("region", pid))
    return ts // 100, len(pid) % 3, ts / 7, ts % 2 == 0, segments


def restore_segments(values: list[Any]) -> list[Any]:
    return [tuple(None if d is None else tuple(d) for d in s) for s in values]


def tiny_hash(ids: np.ndarray) -> np.ndarray:
    """Three hash values for all ids: every lookup meets collisions."""
    return np.array([len(i) % 3 for i in ids.tolist()], dtype=np.uint64)


def rows_of(joined: Joined[Any]) -> list[tuple[Any, ...]]:
    return [(p, type(label), label, w) for p, label, w in zip(joined.predictions, joined.labels, joined.weights)]


def column_rows_of(joined: ColumnJoined) -> list[tuple[Any, ...]]:
    columns = [joined.predictions[k].tolist() for k in COLUMNS]
    predictions = list(zip(*columns)) if columns[0] else []
    labels = joined.labels.tolist()
    return [(p, type(label), label, w) for p, label, w in zip(predictions, labels, joined.weights.tolist())]


def ordered(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What a snapshot holds that behaviour depends on: ids, timestamps and labels in order."""
    out = {}
    for part in ("predictions", "labels", "joined"):
        data = snapshot[part]
        out[part] = [decode_column(data["id"]), decode_column(data["ts"])]
        if "label" in data:
            labels = decode_column(data["label"])
            out[part].append([(type(v), v) for v in labels])
    return out


def same_state(lj: LabelJoin[Any], cj: ColumnJoin) -> None:
    assert cj.pending == lj.pending and cj.joined == lj.joined
    assert (cj.expired_predictions, cj.expired_labels, cj.corrections, cj.duplicates) == (
        lj.expired_predictions, lj.expired_labels, lj.corrections, lj.duplicates)
    assert cj.holds(IDS).tolist() == lj.holds(IDS)
    assert [(type(v), v) for v in cj.labels_of(IDS)] == [(type(v), v) for v in lj.labels_of(IDS)]
    assert ordered(cj.snapshot()) == ordered(lj.snapshot())
    assert tombstones(cj.snapshot()) == {b: (newest, sorted(held)) for b, (newest, held) in lj._tombstones.items()}


def tombstones(snapshot: dict[str, Any]) -> dict[int, tuple[int, list[int]]]:
    return {t["bucket"]: (t["newest"], np.frombuffer(base64.b64decode(t["keys"]), "<u8").tolist())
            for t in snapshot.get("tombstones", [])}


ids_st = st.sampled_from(IDS)
ts_st = st.integers(0, 60).map(lambda k: 50 * k)  # coarse: timestamps on an expiry horizon happen


def ops(labels: list[Any]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    batch_of_predictions = st.tuples(st.just("p"), st.lists(st.tuples(ids_st, ts_st), max_size=8), st.booleans())
    batch_of_labels = st.tuples(st.just("l"), st.lists(st.tuples(ids_st, ts_st, st.sampled_from(labels)), max_size=8),
                                st.booleans())
    expire = st.tuples(st.just("x"), st.integers(0, 80).map(lambda k: 50 * k))
    snapshot = st.tuples(st.just("s"))
    return st.lists(st.one_of(batch_of_predictions, batch_of_labels, expire, snapshot), max_size=30)


def same_rows(got: Any, expected: Any) -> bool:
    """The same joined rows, in the same order but where a batch went in parts (an id twice in it,
    far apart in time: the reference then goes record by record): the evaluator adds them up."""
    mine, theirs = column_rows_of(got), rows_of(expected)
    return mine == theirs or sorted(map(repr, mine)) == sorted(map(repr, theirs))


def run(sequence: list[tuple[Any, ...]], hash_fn: Callable[[np.ndarray], np.ndarray] = hash_ids) -> None:
    lj: LabelJoin[Any] = LabelJoin(max_delay_ms=500, correction_ms=300, hash_ids=hash_fn)
    cj = ColumnJoin(500, 300, COLUMNS, hash_ids=hash_fn)
    for op in sequence:
        if op[0] == "p":
            records, as_array = op[1], op[2]
            ids = [r[0] for r in records]
            ts = [r[1] for r in records]
            payloads = [payload_of(i, t) for i, t in records]
            expected = lj.add_predictions(ids, ts, payloads)
            columns = {k: [p[j] for p in payloads] for j, k in enumerate(COLUMNS)}
            got = cj.add_predictions(id_array(ids) if as_array else ids, np.array(ts, dtype=np.int64), columns)
            assert same_rows(got, expected)
            # Each joined row names the prediction it came from.
            assert [payloads[r] for r in got.rows.tolist()] == [row[0] for row in column_rows_of(got)]
            assert got.duplicates.tolist() == expected.duplicates
        elif op[0] == "l":
            records, as_array = op[1], op[2]
            ids, ts, labels = [r[0] for r in records], [r[1] for r in records], [r[2] for r in records]
            expected = lj.add_labels(ids, ts, labels)
            got = cj.add_labels(id_array(ids) if as_array else ids, ts, labels)
            assert same_rows(got, expected)
            assert got.duplicates.tolist() == expected.duplicates
            # Each joined row names the label it came from (a correction's -1 row: the label correcting it).
            new = [(r, row) for r, row in zip(got.rows.tolist(), column_rows_of(got)) if row[3] == 1.0]
            assert [(type(labels[r]), labels[r]) for r, _ in new] == [row[1:3] for _, row in new]
        elif op[0] == "x":
            lj.expire(op[1])
            cj.expire(op[1])
        else:
            data = json.loads(json.dumps(cj.snapshot()))
            cj = ColumnJoin.restore(data, {"segments": restore_segments}, hash_ids=hash_fn)
            assert json.loads(json.dumps(cj.snapshot())) == data
        same_state(lj, cj)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(ops(MIXED_LABELS))
def test_same_outcomes_as_label_join_with_labels_of_mixed_types(sequence: list[tuple[Any, ...]]) -> None:
    run(sequence)


@SETTINGS
@given(ops([True, False]))
def test_same_outcomes_as_label_join_with_boolean_labels(sequence: list[tuple[Any, ...]]) -> None:
    run(sequence)


@SETTINGS
@given(ops(MIXED_LABELS))
def test_same_outcomes_when_every_id_collides(sequence: list[tuple[Any, ...]]) -> None:
    run(sequence, tiny_hash)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2000)), max_size=300), st.integers(0, 3000))
def test_many_ids_through_table_rebuilds_and_expiry(records: list[tuple[int, int]], watermark: int) -> None:
    """Enough ids to grow the arena and rebuild the table, with forced collisions on half of them."""
    for hash_fn in (hash_ids, lambda ids: hash_ids(ids) & np.uint64(0xFF00000000000007)):
        lj: LabelJoin[Any] = LabelJoin(max_delay_ms=500, correction_ms=300, hash_ids=hash_fn)
        cj = ColumnJoin(500, 300, COLUMNS, hash_ids=hash_fn)
        for start in range(0, len(records), 37):
            chunk = records[start:start + 37]
            ids = [f"id-{i}" for i, _ in chunk]
            ts = [t for _, t in chunk]
            payloads = [payload_of(i, t) for i, t in zip(ids, ts)]
            if start % 2:
                expected = lj.add_labels(ids, ts, [t % 2 == 0 for t in ts])
                got = cj.add_labels(ids, ts, np.array([t % 2 == 0 for t in ts]))
            else:
                expected = lj.add_predictions(ids, ts, payloads)
                got = cj.add_predictions(ids, ts, {k: [p[j] for p in payloads] for j, k in enumerate(COLUMNS)})
            assert column_rows_of(got) == rows_of(expected)
            assert got.duplicates.tolist() == expected.duplicates
            if start % 3 == 0:
                lj.expire(watermark + start)
                cj.expire(watermark + start)
            same_state(lj, cj)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 199), max_size=60)), max_size=20), st.booleans())
def test_id_table_alone_against_a_dict(batches: list[tuple[bool, list[int]]], collide: bool) -> None:
    """IdTable driven as the join drives it (find, then insert into the free slots find saw,
    rebuilding when crowded or when a run reaches the tail; delete leaves tombstones), with every
    hash in 8 home slots when `collide`: it finds exactly what a dict holds."""
    ids = id_array([f"id-{i}" for i in range(200)])
    keys = hash_ids(ids) & np.uint64(0xFF00000000000007) if collide else hash_ids(ids)
    slot_of = np.zeros(200, dtype=np.int32)  # entry i is id i
    table, held = IdTable(), set[int]()
    for insert, batch in batches:
        e = np.array(sorted(set(batch)), dtype=np.int64)
        if insert:
            e = e[~np.isin(e, list(held))]
            found, free_slot = table.find(keys[e], ids[e], keys, ids)
            assert (found == -1).all()
            need = len(held) + len(e)
            if table.crowded(len(e)):
                table.rebuild(need, keys, np.array(sorted(held), dtype=np.int64), slot_of)
                free_slot = None
            placed = table.insert(keys[e], e, slot_of, free_slot)
            while not placed:
                table.rebuild(2 * need, keys, np.array(sorted(held), dtype=np.int64), slot_of)
                placed = table.insert(keys[e], e, slot_of)
            held |= set(e.tolist())
            assert table.used <= table.capacity // 2
        else:
            e = e[np.isin(e, list(held))]
            table.delete(slot_of[e])
            held -= set(e.tolist())
        found, _ = table.find(keys, ids, keys, ids)
        assert found.tolist() == [i if i in held else -1 for i in range(200)]
        live = np.array(sorted(held), dtype=np.int64)
        assert ((table.slots[slot_of[live]] & np.uint64(0xFFFFFFFF)).astype(np.int64) == live).all()


def test_hash_does_not_depend_on_the_array_width() -> None:
    narrow = np.array([b"ab", b"0123456789abcdef"], dtype="S16")
    wide = np.array([b"ab", b"0123456789abcdef"], dtype="S41")
    assert hash_ids(narrow).tolist() == hash_ids(wide).tolist()
    assert len(set(hash_ids(np.array([f"{i:032x}".encode() for i in range(10_000)])).tolist())) == 10_000


def test_ids_as_str_and_as_bytes_are_one_id() -> None:
    cj = ColumnJoin(1000, 0, {"output": np.float64})
    cj.add_predictions(["é-1", "x"], [1, 2], {"output": [0.5, 0.25]})
    got = cj.add_labels(np.array(["é-1".encode(), b"x"]), [3, 4], [True, False])
    assert got.rows.tolist() == [0, 1] and got.predictions["output"].tolist() == [0.5, 0.25]


@given(st.lists(st.text(st.sampled_from("ab\x00\x7fé"), max_size=3), max_size=6), st.booleans())
def test_id_array_is_the_utf8_bytes_of_each_id(ids: list[str], same_length: bool) -> None:
    """Ids of one length, all ASCII and without NUL, take a shortcut (one joined text cut into
    rows); every other list the general conversion. Both must give each id's own bytes."""
    if same_length and ids:
        ids = [(i + "a" * 3)[:3] for i in ids]
    if any("\x00" in i for i in ids):
        with pytest.raises(ValueError, match="contains a NUL"):
            id_array(ids)
        return
    got = id_array(ids)
    assert got.dtype.kind == "S" and got.tolist() == [i.encode() for i in ids]


def test_an_id_with_a_nul_character_is_refused_with_the_id() -> None:
    cj = ColumnJoin(1000, 0, {"output": np.float64})
    with pytest.raises(ValueError, match="'a\\\\x00' contains a NUL"):
        cj.add_predictions(["ok", "a\x00"], [1, 2], {"output": [0.5, 0.25]})


def test_bad_parameters_and_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="max_delay_ms > 0"):
        ColumnJoin(0, 0, {})
    cj = ColumnJoin(1000, 0, {"output": np.float64})
    with pytest.raises(ValueError, match="payload columns"):
        cj.add_predictions(["a"], [1], {"score": [0.5]})
    with pytest.raises(ValueError, match="not a column_join"):
        ColumnJoin.restore(LabelJoin(1, 0).snapshot())


def pending_bytes(make: Callable[[], Any], add: Callable[[Any, list[str], list[int], int], None], n: int) -> float:
    """Bytes held per pending prediction, ids included (the decoder's strings die with their batch
    unless the join keeps them)."""
    tracemalloc.start()
    join = make()
    base = tracemalloc.get_traced_memory()[0]
    for start in range(0, n, 500):
        ids = [f"{(start + i) * 2654435761 % 2**128:032x}" for i in range(500)]
        add(join, ids, list(range(start, start + 500)), start)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert join.pending == (n, 0)
    return held / n


def test_memory_per_pending_prediction() -> None:
    n = 20_000

    def add_columns(join: ColumnJoin, ids: list[str], ts: list[int], start: int) -> None:
        k = len(ids)
        join.add_predictions(ids, ts, {"pane": np.full(k, start - start % 1000), "version": np.zeros(k, np.int8),
                                       "output": np.random.default_rng(start).random(k), "decision": np.ones(k, bool)})

    def add_tuples(join: LabelJoin[Any], ids: list[str], ts: list[int], start: int) -> None:
        outputs = np.random.default_rng(start).random(len(ids)).tolist()
        pane, version, whole = start - start % 1000, "1", (None,)
        join.add_predictions(ids, ts, [(pane, version, whole, o, True) for o in outputs])

    columns = pending_bytes(lambda: ColumnJoin(10**9, 0, {"pane": np.int64, "version": np.int8,
                                                          "output": np.float64, "decision": np.bool_}), add_columns, n)
    tuples = pending_bytes(lambda: LabelJoin(10**9, 0), add_tuples, n)
    assert columns < 220 and columns < 0.75 * tuples, (columns, tuples)


def test_a_prediction_that_expired_unlabeled_stays_a_duplicate_until_its_bucket_goes() -> None:
    """By hand: max_delay 1000, correction 400, so tombstone buckets of 100 ms of event time."""
    cj = ColumnJoin(1000, 400, {"output": np.float64})

    def deliver(*ids: str, ts: int = 0) -> list[int]:
        return cj.add_predictions(list(ids), [ts] * len(ids), {"output": [0.5] * len(ids)}).duplicates.tolist()

    assert deliver("a", "b") == [] and cj.add_predictions(["c"], [50], {"output": [0.5]}).duplicates.tolist() == []
    assert len(cj.add_labels(["b"], [10], [True])) == 1
    cj.expire(1100)  # horizon 100: a and c expire unlabeled, b is joined
    assert (cj.expired_predictions, cj.tombstones, cj.pending, cj.joined) == (2, 2, (0, 0), 1)
    assert deliver("a", "b", "d") == [0, 1]  # a: tombstone, b: joined; d is new
    assert len(cj.add_labels(["c"], [60], [True])) == 0 and cj.pending == (1, 1)  # c's late label waits...
    got = cj.add_predictions(["c"], [50], {"output": [0.5]})
    assert len(got) == 0 and got.duplicates.tolist() == [0]  # ...and the redelivered c does not meet it
    cj.expire(1450)  # d expires unlabeled into bucket 0; tombstone horizon 50: bucket 0's newest ts is 50, it stays
    assert cj.tombstones == 3 and deliver("a") == [0] and cj.duplicates == 4
    data = json.loads(json.dumps(cj.snapshot()))
    assert ColumnJoin.restore(data).add_predictions(["a"], [0], {"output": [0.5]}).duplicates.tolist() == [0]
    del data["tombstones"]  # a checkpoint from before tombstones still restores, without them
    assert ColumnJoin.restore(data).add_predictions(["a"], [0], {"output": [0.5]}).duplicates.tolist() == []
    cj.expire(1451)  # horizon 51: bucket 0 and the joined pair b (ts 0) go
    assert (cj.tombstones, cj.joined) == (0, 0) and deliver("a", "b", "d") == []  # beyond retention: new again


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("p"), st.lists(st.integers(0, 11), max_size=6)),
                          st.tuples(st.just("l"), st.lists(st.integers(0, 11), max_size=6)),
                          st.tuples(st.just("x"), st.integers(0, 40))), max_size=40))
def test_a_redelivery_within_retention_is_a_duplicate_whatever_came_between(ops: list[tuple[Any, Any]]) -> None:
    """Against the plainest model, a set of the ids counted: id k has event time 100 k; its
    prediction is redelivered only while its timestamp is within max_delay + correction_ms of
    the highest watermark expiry has seen (the join's promise), with labels and expiries of
    every kind in between. Each first delivery counts, every other one is a duplicate."""
    max_delay, correction = 300, 500
    cj = ColumnJoin(max_delay, correction, {"output": np.float64})
    counted: set[int] = set()
    watermark, weight = 0, dict.fromkeys(range(12), 0.0)
    for op, arg in ops:
        if op == "x":
            watermark = max(watermark, 100 * arg)
            cj.expire(100 * arg)
            continue
        ids = [k for k in dict.fromkeys(arg) if k not in counted or 100 * k >= watermark - max_delay - correction]
        names, ts = [f"id-{k}" for k in ids], [100 * k for k in ids]
        if op == "l":
            got = cj.add_labels(names, ts, [k % 2 == 0 for k in ids])
        else:
            got = cj.add_predictions(names, ts, {"output": [0.5] * len(ids)})
            assert got.duplicates.tolist() == [i for i, k in enumerate(ids) if k in counted]
            counted.update(ids)
        for row, w in zip(got.rows.tolist(), got.weights.tolist()):
            weight[ids[row]] += w
    assert cj.duplicates >= 0 and all(w in (0.0, 1.0) for w in weight.values())  # one outcome per id at most
