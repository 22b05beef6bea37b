"""The worker's step without a broker: decode, evaluate, dead-letter, sign."""

import json

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.events import Label, Prediction
from mle_stream.core.id_hash import MAX_ID_BYTES
from mle_stream.core.signing import Signer
from mle_stream.core.topology import parse_topology
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.stream.processor import Incoming, StreamProcessor

TOPICS = Topics()
KEY = b"test-key-0123456789abcdef0123456"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
FORGER = Signer(HMAC_KEY_ID, b"not the key, the same key id: a forgery")
TOPOLOGY = parse_topology(
    'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
    "windows: {size: 1s, grace: 0s}\n"
    "rollback: {max_increase: 0.1, consecutive_windows: 2, min_samples: 20}\n"
)


def processor() -> StreamProcessor:
    return StreamProcessor({"fraud": TOPOLOGY}, TOPICS, SIGNER, clock=lambda: 10**12)


def window(start: int, candidate_wrong: bool) -> tuple[bytes, bytes]:
    preds, labels = [], []
    for i in range(60):
        version = "2" if i % 2 else "1"
        wrong = candidate_wrong and version == "2"
        pid = f"{start}-{i}"
        preds.append(Prediction(prediction_id=pid, model="fraud", version=version, timestamp=start + i, score=0.9))
        labels.append(Label(prediction_id=pid, model="fraud", timestamp=start + 900, label=not wrong))
    return wire.encode_predictions(preds), wire.encode_labels(labels)


def by_topic(out, topic):
    return [o for o in out if o.topic == topic]


def test_bad_messages_go_to_dead_letter_with_where_and_why_and_good_data_still_counts() -> None:
    p = processor()
    good_preds, good_labels = window(0, candidate_wrong=False)
    other_preds, _ = window(5000, candidate_wrong=False)
    unknown = wire.encode_prediction(Prediction(prediction_id="u", model="spam", version="1", timestamp=1, score=0.1))
    messages = [
        Incoming(TOPICS.predictions, 0, 10, b"{not json"),
        Incoming(TOPICS.predictions, 1, 11, other_preds[:-3]),  # truncated Avro: 59 of 60 readable
        Incoming(TOPICS.predictions, 2, 12,
                 json.dumps({"prediction_id": "x", "model": "fraud", "version": "1"}).encode()),
        Incoming(TOPICS.predictions, 3, 13, unknown),
        Incoming(TOPICS.predictions, 0, 14, good_preds),
        Incoming(TOPICS.labels, 0, 15, wire.encode_label(Label("p0", "fraud", 1, "cat"))),
        Incoming(TOPICS.labels, 0, 16, good_labels),
    ]
    out = p.process(messages)
    letters = [json.loads(o.value) for o in by_topic(out, TOPICS.dead_letter)]
    where = [(d["source_topic"], d["partition"], d["offset"]) for d in letters]
    assert (TOPICS.predictions, 0, 10) in where and (TOPICS.predictions, 3, 13) in where
    assert (TOPICS.predictions, 2, 12) in where
    missing = next(d for d in letters if d["offset"] == 12)
    assert missing["field"] == "timestamp" and missing["record_index"] == 0
    unknown_letter = next(d for d in letters if d["offset"] == 13)
    assert "no topology for model 'spam'" in unknown_letter["reason"] and unknown_letter["record"]["model"] == "spam"
    assert "payload_base64" in next(d for d in letters if d["offset"] == 10)
    truncated = [d for d in letters if d["offset"] == 11]
    assert len(truncated) == 1 and truncated[0]["record_index"] == 59
    # A binary model cannot use the label 'cat': refused on arrival, before its prediction comes.
    cat = next(d for d in letters if d["offset"] == 15)
    assert cat["field"] == "label" and "binary label" in cat["reason"] and cat["record"]["label"] == "cat"
    # The valid predictions (60, and the 59 read before the truncation) and the 60 labels still count.
    assert p.counters["predictions"] == 119 and p.counters["labels"] == 60
    assert p.evaluators["fraud"].join.pending == (59, 0)  # the salvaged predictions wait for labels


def test_commands_are_signed_and_metrics_published_per_version() -> None:
    p = processor()
    out = []
    for start in (0, 1000, 2000):
        preds, labels = window(start, candidate_wrong=start > 0)
        out += p.process([Incoming(TOPICS.predictions, 0, start, preds), Incoming(TOPICS.labels, 0, start, labels)])
    snaps = [wire.decode_metric_snapshot(o.value) for o in by_topic(out, TOPICS.metrics)]
    closed = [(s.window_start, s.version, s.metrics["error_rate"]) for s in snaps if s.status == "CLOSED"]
    assert closed == [(0, "1", 0.0), (0, "2", 0.0), (1000, "1", 0.0), (1000, "2", 1.0)]
    commands = [wire.decode_command(o.value) for o in by_topic(out, TOPICS.commands)]
    assert commands == []  # one failing window so far; the rule needs two
    preds, labels = window(3000, candidate_wrong=True)
    out = p.process([Incoming(TOPICS.predictions, 0, 9, preds), Incoming(TOPICS.labels, 0, 9, labels)])
    commands = [wire.decode_command(o.value) for o in by_topic(out, TOPICS.commands)]
    assert len(commands) == 1 and VERIFIER.verify(commands[0])
    assert not Signer(HMAC_KEY_ID, b"other".ljust(32, b"!")).verifier().verify(commands[0])
    assert by_topic(out, TOPICS.commands)[0].key == b"fraud"


def test_a_rejected_record_is_named_by_its_index_in_the_message_even_after_a_decode_error() -> None:
    p = processor()
    batch = json.dumps({"records": [
        {"prediction_id": "a", "model": "fraud", "version": "1", "timestamp": 1, "score": 0.5},
        {"prediction_id": "b", "model": "fraud", "version": "1", "timestamp": 1, "score": 7},  # decode error
        {"prediction_id": "c", "model": "spam", "version": "1", "timestamp": 1, "score": 0.5},  # unknown model
    ]}).encode()
    letters = [json.loads(o.value) for o in by_topic(p.process([Incoming(TOPICS.predictions, 0, 3, batch)]),
                                                      TOPICS.dead_letter)]
    assert sorted((d["record_index"], d["field"]) for d in letters) == [(1, "score"), (2, "model")]


def test_records_rejected_when_a_batch_is_evaluated_at_once_are_named_by_their_own_message() -> None:
    """The evaluator takes a model's predictions of all the batch's messages in one call, and its
    labels in another: each rejected record still points at its own message and index."""
    p = processor()

    def preds(offset: int, missing_score: int | None = None, future: int | None = None) -> Incoming:
        records = [Prediction(prediction_id=f"{offset}-{i}", model="fraud", version="1",
                              timestamp=10**12 + 10**9 if i == future else 1000 + i,
                              score=None if i == missing_score else 0.5,
                              value=0.3 if i == missing_score else None) for i in range(4)]  # a regression output
        return Incoming(TOPICS.predictions, 0, offset, wire.encode_predictions(records))

    labels = [Label(f"21-{i}", "fraud", 2000, "cat" if i == 1 else True) for i in range(4)]
    out = p.process([preds(20), preds(21, missing_score=2), Incoming(TOPICS.labels, 0, 22, wire.encode_labels(labels)),
                     preds(23, future=3)])
    letters = [json.loads(o.value) for o in by_topic(out, TOPICS.dead_letter)]
    assert sorted((d["offset"], d["record_index"], d["field"]) for d in letters) == [
        (21, 2, "score"), (22, 1, "label"), (23, 3, "timestamp")]
    assert (p.counters["predictions"], p.counters["labels"]) == (10, 3)  # 12 and 4, less the rejected
    letter = next(d for d in letters if d["offset"] == 21)
    assert letter["record"]["prediction_id"] == "21-2"  # the record itself, not its neighbour in the batch


def test_an_id_the_label_join_cannot_hold_is_dead_lettered_and_the_rest_evaluated() -> None:
    """The label join keeps ids as NUL-padded bytes as wide as the longest one: an id with a NUL,
    or of more than MAX_ID_BYTES, is refused by name, not let in to crash the batch (again after
    every restart) or to widen every entry."""
    p = processor()
    long_id = "é" * (MAX_ID_BYTES // 2 + 1)  # 130 bytes of UTF-8 in 65 characters
    preds = json.dumps({"records": [
        {"prediction_id": pid, "model": "fraud", "version": "1", "timestamp": 1000, "score": 0.5}
        for pid in ("ok1", "bad\x00id", "ok2", long_id)]}).encode()
    labels = json.dumps({"records": [{"prediction_id": pid, "model": "fraud", "timestamp": 1100, "label": True}
                                     for pid in ("bad\x00id", "ok1", long_id)]}).encode()
    out = p.process([Incoming(TOPICS.predictions, 0, 1, preds), Incoming(TOPICS.labels, 0, 2, labels)])
    letters = [json.loads(o.value) for o in by_topic(out, TOPICS.dead_letter)]
    assert sorted((d["offset"], d["record_index"], d["field"]) for d in letters) == [
        (1, 1, "prediction_id"), (1, 3, "prediction_id"), (2, 0, "prediction_id"), (2, 2, "prediction_id")]
    assert sum("NUL" in d["reason"] for d in letters) == 2 and sum("130" in d["reason"] for d in letters) == 2
    assert (p.counters["predictions"], p.counters["labels"]) == (2, 1)
    assert p.evaluators["fraud"].join.pending == (1, 0) and p.evaluators["fraud"].join.joined == 1


def after_one_window(clock: list[int]) -> StreamProcessor:
    """A worker's step with an outage_after of 60 s, on `clock`, after a window of both inputs."""
    topology = parse_topology(
        'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
        "windows: {size: 1s, grace: 0s}\ndecision: {outage_after: 60s}\n")
    p = StreamProcessor({"fraud": topology}, TOPICS, SIGNER, clock=lambda: clock[0])
    preds, labels = window(0, candidate_wrong=False)
    p.process([Incoming(TOPICS.predictions, 0, 0, preds), Incoming(TOPICS.labels, 0, 1, labels)])
    return p


def test_a_silent_source_holds_on_the_timer_tick_once_signed() -> None:
    from mle_stream.core.events import CommandKind

    clock = [10**12]
    p = after_one_window(clock)
    clock[0] += 60_000
    assert by_topic(p.tick(), TOPICS.commands) == []  # 60 s is not longer than outage_after
    clock[0] += 1_000
    commands = [wire.decode_command(o.value) for o in by_topic(p.tick(), TOPICS.commands)]
    assert [c.kind for c in commands] == [CommandKind.HOLD] and VERIFIER.verify(commands[0])
    assert "no predictions for 61 s" in commands[0].reason and commands[0].traffic == {}
    clock[0] += 60_000
    assert by_topic(p.tick(), TOPICS.commands) == []  # one HOLD per outage


def test_predictions_the_worker_holds_back_are_not_an_outage() -> None:
    clock = [10**12]
    p = after_one_window(clock)

    def rules() -> list[str]:
        return [wire.decode_command(o.value).rule for o in by_topic(p.tick(), TOPICS.commands)]

    for minute in range(3):  # paused for 3 minutes while the labels catch up
        clock[0] += 60_000
        p.process([Incoming(TOPICS.labels, 0, 2 + minute, wire.encode_labels(
            [Label(f"other-{minute}", "fraud", 1_000 + minute, True)]))])
        p.hold_back("predictions", ["fraud"])
        assert rules() == []
    clock[0] += 61_000  # resumed, and then silent for longer than outage_after: that is an outage
    assert rules() == ["source-outage:predictions"]


def test_a_signed_approve_on_the_commands_topic_steps_a_waiting_rollout_and_a_forged_one_is_dead_lettered() -> None:
    from mle_stream.core.events import Command, CommandKind

    topology = parse_topology(
        'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
        "windows: {size: 1s, grace: 0s}\n"
        "checks: [{name: errors, metric: error_rate, max_degradation: 0.1, min_samples: 20}]\n"
        "rollout: {steps: [10, 100], windows: 1, samples: 0, approval: true}\n")
    p = StreamProcessor({"fraud": topology}, TOPICS, SIGNER, clock=lambda: 10**12)
    out = []
    for i, start in enumerate((0, 1000)):
        preds, labels = window(start, candidate_wrong=False)
        out += p.process([Incoming(TOPICS.predictions, 0, i, preds), Incoming(TOPICS.labels, 0, i, labels)])
    (hold,) = [wire.decode_command(o.value) for o in by_topic(out, TOPICS.commands)]
    assert (hold.kind, hold.rule) == (CommandKind.HOLD, "await-approval:step-100")
    approval = Command(command_id="op-1", kind=CommandKind.APPROVE, model="fraud", baseline_version="1",
                       candidate_version="2", traffic={"1": 0, "2": 100}, reason="ok by ana", rule="manual:approve",
                       window_start=1, window_end=1, evidence="{}", policy_version="manual", issued_at=10**12 - 1000)
    forged = FORGER.sign(approval)
    # The worker's own HOLD read back from the topic is not for it, the forged approval is refused.
    out = p.process([Incoming(TOPICS.commands, 0, 0, by_topic(out, TOPICS.commands)[0].value),
                     Incoming(TOPICS.commands, 0, 1, wire.encode_command(forged)),
                     Incoming(TOPICS.commands, 0, 2, wire.encode_command(approval))])  # unsigned
    assert by_topic(out, TOPICS.commands) == []
    letters = [json.loads(o.value) for o in by_topic(out, TOPICS.dead_letter)]
    assert [(d["offset"], d["field"]) for d in letters] == [(1, "signature"), (2, "signature")]
    assert all(d["source_topic"] == TOPICS.commands for d in letters)
    out = p.process([Incoming(TOPICS.commands, 0, 3, wire.encode_command(SIGNER.sign(approval)))])
    (promote,) = [wire.decode_command(o.value) for o in by_topic(out, TOPICS.commands)]
    assert promote.kind is CommandKind.PROMOTE and promote.traffic == {"1": 0, "2": 100} and VERIFIER.verify(promote)
    assert json.loads(promote.evidence)["approval"]["reason"] == "ok by ana"


def test_approvals_verify_against_the_operators_keys_and_an_expired_one_is_dead_lettered() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mle_stream.core.events import Command, CommandKind

    topology = parse_topology(
        'model: fraud\ntask: binary\nbaseline: {version: "1"}\ncandidate: {version: "2"}\n'
        "windows: {size: 1s, grace: 0s}\n"
        "checks: [{name: errors, metric: error_rate, max_degradation: 0.1, min_samples: 20}]\n"
        "rollout: {steps: [10, 100], windows: 1, samples: 0, approval: true}\n")
    ana = Signer("ana", Ed25519PrivateKey.generate())
    now = 10**12
    # The worker signs with its own key and accepts approvals from ana's public key only.
    p = StreamProcessor({"fraud": topology}, TOPICS, SIGNER, clock=lambda: now, verifier=ana.verifier())
    for i, start in enumerate((0, 1000)):
        preds, labels = window(start, candidate_wrong=False)
        p.process([Incoming(TOPICS.predictions, 0, i, preds), Incoming(TOPICS.labels, 0, i, labels)])

    def approval(issued_at: int) -> Command:
        return Command(command_id=f"op-{issued_at}", kind=CommandKind.APPROVE, model="fraud", baseline_version="1",
                       candidate_version="2", traffic={"1": 0, "2": 100}, reason="ok by ana", rule="manual:approve",
                       window_start=issued_at, window_end=issued_at, evidence="{}", policy_version="manual",
                       issued_at=issued_at)

    expired = ana.sign(approval(now - ana.ttl_ms - 1))  # captured long ago, published again now
    by_worker_key = SIGNER.sign(approval(now - 1000))  # the worker's key does not approve
    out = p.process([Incoming(TOPICS.commands, 0, 0, wire.encode_command(expired)),
                     Incoming(TOPICS.commands, 0, 1, wire.encode_command(by_worker_key))])
    assert by_topic(out, TOPICS.commands) == []
    letters = [json.loads(o.value) for o in by_topic(out, TOPICS.dead_letter)]
    assert [(d["offset"], d["field"]) for d in letters] == [(0, "expires_at"), (1, "signature")]
    assert "STALE: expired" in letters[0]["reason"] and "signed by ana" in letters[0]["reason"]

    out = p.process([Incoming(TOPICS.commands, 0, 2, wire.encode_command(ana.sign(approval(now - 1000))))])
    (promote,) = [wire.decode_command(o.value) for o in by_topic(out, TOPICS.commands)]
    assert promote.kind is CommandKind.PROMOTE and SIGNER.verifier().verify(promote)


def test_idle_labels_close_on_the_tick_without_input_and_labels_that_arrive_are_waited_for_again() -> None:
    p = processor()
    evaluator = p.evaluators["fraud"]
    first_preds, first_labels = window(0, candidate_wrong=False)
    later_preds, _ = window(3000, candidate_wrong=False)
    # Window 0 labeled (labels at 900 ms), predictions up to ~3 s: the labels' clock holds the closing.
    p.process([Incoming(TOPICS.predictions, 0, 0, first_preds), Incoming(TOPICS.labels, 0, 0, first_labels),
               Incoming(TOPICS.predictions, 0, 1, later_preds)])
    assert evaluator.clocks().event_time == 900 and evaluator.clocks().predictions == 3059
    assert not [o for o in p.tick() if o.topic == TOPICS.metrics and b"CLOSED" in o.value]
    assert p.set_labels_idle("fraud", True) and not p.set_labels_idle("fraud", True)
    closed = [wire.decode_metric_snapshot(o.value) for o in p.tick() if o.topic == TOPICS.metrics]
    starts = {s.window_start for s in closed if s.status == "CLOSED"}
    assert 0 in starts and 3000 not in starts  # closed by the predictions alone, up to their clock
    assert evaluator.clocks().event_time == 3059
    # A label arriving ends the idle period before it is taken in.
    p.process([Incoming(TOPICS.labels, 0, 1, wire.encode_label(Label("3000-0", "fraud", 3900, True)))])
    assert evaluator.labels_idle is False
