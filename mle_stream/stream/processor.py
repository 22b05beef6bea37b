"""One step of the worker, without Faust: raw Kafka messages in, messages to publish out.

Decoding, routing records to each model's evaluator, dead-lettering what cannot be used, and
signing commands all happen here, so the whole step is testable without a broker; app.py only
moves bytes between Faust and this class.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from mle_stream import wire
from mle_stream.config import Topics
from mle_stream.core.columns import LabelColumns, PredictionColumns, group_rows
from mle_stream.core.commands import stale_reason
from mle_stream.core.drift.profile import ReferenceProfile
from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.core.events import Command, CommandKind, Label, MetricSnapshot, Prediction
from mle_stream.core.policy import Verdict
from mle_stream.core.signing import Signer, Verifier
from mle_stream.core.topology import Topology
from mle_stream.errors import InvalidEvent
from mle_stream.wire import RegistryUnavailable, WriterSchemas, bounded_text, dead_letter_entry

log = logging.getLogger(__name__)


def _fields(command: Command) -> dict[str, object]:
    """A decision's structured log fields (mle-stream --log-format json)."""
    return {"model": command.model, "version": command.candidate_version, "window_start": command.window_start,
            "window_end": command.window_end, "command_id": command.command_id, "kind": command.kind.value}


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class _Part:
    """One model's valid records of one message, and where each one is in the message."""

    msg: Incoming
    columns: PredictionColumns | LabelColumns
    position: Any  # row -> index of the record in the Kafka message (an int array)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes


# Why a record or message was dead-lettered, in a few classes (a label of the worker's metrics:
# the reasons themselves name records and values, which no metric label may hold).
UNDECODABLE = "undecodable"  # not a record of the topic's contract (codec)
REJECTED = "rejected"  # a valid record its model cannot use (wrong task, timestamp ahead, ...)
UNKNOWN_MODEL = "unknown_model"
UNKNOWN_TOPIC = "unknown_topic"
UNSIGNED = "unsigned"  # an APPROVE that does not verify
INTERNAL_ERROR = "internal_error"  # the worker failed on it: a bug, logged with its traceback


def _bug(exc: Exception, doing: str) -> str:
    return (f"the worker failed {doing} ({type(exc).__name__}: {exc}); this is a bug in mle-stream, its "
            "traceback is in the worker's log: please report it with this dead letter")


@dataclass
class Tally:
    """What the processor did since the last `StreamProcessor.drain_tally`, for the worker's metrics:
    counted as it goes (a few counter increments per message and per closed window), read once per
    batch, so that telemetry never decodes the outputs again."""

    records: Counter[tuple[str, str]] = field(default_factory=Counter)  # (predictions|labels, model) -> accepted
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source topic, reason class)
    closed: list[MetricSnapshot] = field(default_factory=list)  # closed windows of whole versions
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, verdict), one per closed window
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, kind) emitted


class StreamProcessor:
    def __init__(
        self,
        topologies: Mapping[str, Topology],
        topics: Topics,
        signer: Signer,
        clock: Callable[[], int] = wall_clock_ms,
        profiles: Mapping[str, Mapping[str, ReferenceProfile]] | None = None,
        verifier: Verifier | None = None,
        registry: WriterSchemas | None = None,
    ) -> None:
        """`signer` signs every command the worker emits; `verifier` checks operators' APPROVEs (default:
        the signer's own key, as with a shared HMAC secret). `profiles`: reference profiles by model and
        version, for drift (core/drift/live.py). `registry`: the writer schemas of Confluent-framed
        predictions and labels (None: such messages are dead letters saying to configure one)."""
        self._registry = registry
        self.topics = topics
        profiles = profiles or {}
        self.evaluators = {model: ModelEvaluator(t, profiles.get(model)) for model, t in topologies.items()}
        self._signer = signer
        self._verifier = verifier if verifier is not None else signer.verifier()
        self._clock = clock
        self._updated_at: dict[str, int] = {}  # model -> when window updates were last published
        self.counters: Counter[str] = Counter()
        self.tally = Tally()

    def process(self, messages: Sequence[Incoming]) -> list[Outgoing]:
        """One batch of messages: each evaluator takes all of the batch's predictions for its
        model in one call, then all of its labels, each in message order. That is an order in
        which they could have arrived (the two topics are fetched independently; each partition
        keeps its order), and one call per batch costs far less than one per message."""
        now = self._clock()
        out: list[Outgoing] = []
        parts: dict[tuple[str, str], list[_Part]] = {}  # (model, kind) -> its records, message by message
        for msg in messages:
            try:
                out.extend(self._read(msg, parts, now))
            except RegistryUnavailable:  # not this message's fault: the batch fails, to be read again
                raise
            except Exception as exc:  # a bug met by some input: that message is lost, not the batch
                log.exception("failed on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
                out.append(self._dead_letter(msg, None, "", _bug(exc, "reading this message"), msg.value,
                                             INTERNAL_ERROR))
        for model, kind in sorted(parts, key=lambda k: (k[0], k[1] != "predictions")):
            try:
                out.extend(self._ingest(model, kind, parts[(model, kind)], now))
            except Exception as exc:
                log.exception("the evaluator of %s failed on a batch of %s", model, kind)
                why = _bug(exc, f"the evaluator of model {model!r} taking a batch of {kind}")
                out.extend(self._dead_letter(p.msg, None, "", why, p.msg.value, INTERNAL_ERROR)
                           for p in parts[(model, kind)])
        for model in sorted({model for model, _ in parts}):
            try:
                out.extend(self._advance(self.evaluators[model], now))
            except Exception:  # its windows are closed by a later batch that does not meet the bug
                log.exception("the evaluator of %s failed to advance its windows", model)
        return out

    def _read(self, msg: Incoming, parts: dict[tuple[str, str], list[_Part]], now: int) -> list[Outgoing]:
        """Decode one message: its usable records into `parts`; what is done with it already (approvals,
        dead letters) returned."""
        if msg.topic == self.topics.predictions:
            return self._route(msg, wire.decode_prediction_columns(msg.value or b"", self._registry), parts)
        if msg.topic == self.topics.labels:
            return self._route(msg, wire.decode_label_columns(msg.value or b"", self._registry), parts)
        if msg.topic == self.topics.commands:
            return self._approval(msg, now)
        return [self._dead_letter(msg, None, "", f"the worker does not read topic {msg.topic!r}", msg.value,
                                  UNKNOWN_TOPIC)]

    def drain_tally(self) -> Tally:
        """What was done since the last call (and start afresh)."""
        tally, self.tally = self.tally, Tally()
        return tally

    def tick(self) -> list[Outgoing]:
        """What time alone decides, without input: HOLD commands for silent sources, and the windows
        a model's closing clock now passes because its labels were declared idle (set_labels_idle)
        after its last input. An evaluator with nothing due closes nothing."""
        now = self._clock()
        out: list[Outgoing] = []
        for model in sorted(self.evaluators):
            try:
                out.extend(self._advance(self.evaluators[model], now))  # its outage check included
            except Exception:  # as in process: the next batch or tick tries again
                log.exception("the evaluator of %s failed to advance its windows", model)
        return out

    def hold_back(self, source: str, models: Iterable[str]) -> None:
        """The worker has paused these models' `source` partition, "predictions" or "labels"
        (stream/alignment.py): that input is not silent, it waits, and no outage HOLD may come of it."""
        now = self._clock()
        for model in models:
            self.evaluators[model].held_back(source, now)

    def set_labels_idle(self, model: str, idle: bool) -> bool:
        """Whether `model`'s windows close by its predictions alone (its labels are idle: caught
        up and silent, decided by the worker, stream/alignment.py) or wait for both inputs; True
        when this changed the flag. Windows it lets close are closed by the next tick or batch."""
        evaluator = self.evaluators[model]
        changed = evaluator.labels_idle != idle
        evaluator.labels_idle = idle
        return changed

    def _route(self, msg: Incoming, decoded: wire.ColumnsResult[Any],
               parts: dict[tuple[str, str], list[_Part]]) -> list[Outgoing]:
        """A message's valid records into `parts` by model; dead letters for the rest."""
        out = [self._dead_letter(msg, e.index, e.field, e.reason, msg.value, UNDECODABLE) for e in decoded.errors]
        cols: PredictionColumns | LabelColumns = decoded.columns
        if not len(cols):
            return out
        kind = "predictions" if isinstance(cols, PredictionColumns) else "labels"
        position = decoded.message_index  # row -> index of the record in the Kafka message
        for model, rows in group_rows(cols.model).items():
            part = cols if len(rows) == len(cols) else cols.select(rows)
            if model not in self.evaluators:
                known = ", ".join(sorted(self.evaluators)) or "none"
                out.extend(self._dead_letter(msg, int(position[rows[j]]), "model",
                                             f"no topology for model {model!r} (known: {known})", part.record(j),
                                             UNKNOWN_MODEL)
                           for j in range(len(part)))
                continue
            parts.setdefault((model, kind), []).append(_Part(msg, part, position[rows]))
        return out

    def _ingest(self, model: str, kind: str, parts: list[_Part], now: int) -> list[Outgoing]:
        """One model's predictions or labels of the batch into its evaluator, in one call; the
        records it rejects are dead-lettered with the message and index they came from."""
        evaluator = self.evaluators[model]
        if kind == "predictions":
            predictions = PredictionColumns.concat([cast(PredictionColumns, p.columns) for p in parts])
            n, rejects = len(predictions), evaluator.add_prediction_columns(predictions, now)
        else:
            # Labels that arrive are not idle, whatever the worker decided a moment ago: they go in
            # with the closing clock waiting for them again, not behind windows closed without them.
            evaluator.labels_idle = False
            labels = LabelColumns.concat([cast(LabelColumns, p.columns) for p in parts])
            n, rejects = len(labels), evaluator.add_label_columns(labels, now)
        self.counters[kind] += n - len(rejects)
        self.tally.records[(kind, model)] += n - len(rejects)
        if not rejects:
            return []
        starts = np.cumsum([0] + [len(p.columns) for p in parts])
        out = []
        for r in rejects:
            k = int(np.searchsorted(starts, r.index, side="right")) - 1
            part, j = parts[k], r.index - int(starts[k])
            out.append(self._dead_letter(part.msg, int(part.position[j]), r.field, r.reason, part.columns.record(j),
                                         REJECTED))
        return out

    def _approval(self, msg: Incoming, now: int) -> list[Outgoing]:
        """The worker reads the commands topic for operators' APPROVE commands (rollout.approval);
        every other kind is for the actuator (the worker's own commands among them) and skipped. An
        approval is acted on only when its signature verifies: a forged one is dead-lettered."""
        try:
            command = wire.decode_command(msg.value or b"", self._registry)
        except InvalidEvent as exc:
            return [self._dead_letter(msg, None, exc.field, f"not a command: {exc}", msg.value, UNDECODABLE)]
        if command.kind is not CommandKind.APPROVE:
            return []
        signer = self._verifier.verify(command)
        if signer is None:
            known = ", ".join(self._verifier.key_ids)
            return [self._dead_letter(msg, None, "signature", f"APPROVE {command.command_id} of {command.model!r} "
                                      f"is unsigned or not signed by a known key ({known}): ignored", msg.value,
                                      UNSIGNED)]
        stale = stale_reason(command, now)
        if stale:  # a replayed approval must not let a later rollout take a step
            return [self._dead_letter(msg, None, "expires_at", f"APPROVE {command.command_id} of {command.model!r} "
                                      f"(signed by {signer.key_id}): {stale}", msg.value, UNSIGNED)]
        evaluator = self.evaluators.get(command.model)
        if evaluator is None:
            known = ", ".join(sorted(self.evaluators)) or "none"
            return [self._dead_letter(msg, None, "model", f"APPROVE {command.command_id}: no topology for model "
                                      f"{command.model!r} (known: {known})", msg.value, UNKNOWN_MODEL)]
        commands, note = evaluator.approve(command, now)
        log.log(logging.INFO if commands else logging.WARNING, "APPROVE %s of %s (%s): %s",
                command.command_id, command.model, command.reason, note, extra=_fields(command))
        return self._publish(command.model.encode(), commands)

    def _dead_letter(self, msg: Incoming, index: int | None, field: str, reason: str,
                     payload: bytes | Prediction | Label | None, reason_class: str) -> Outgoing:
        self.counters["dead_letter"] += 1
        self.tally.dead_letters[(msg.topic, reason_class)] += 1
        # The codec's reasons already name the record and field; the topic position is ours to add.
        log.warning("dead-letter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, bounded_text(reason, 500))
        value = dead_letter_entry(
            reason=reason, field=field, source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
            record_index=index, at=self._clock(),
            payload=bytes(payload) if isinstance(payload, (bytes, bytearray)) else None,
            record=wire.to_json_dict(payload) if isinstance(payload, (Prediction, Label)) else None,
        )
        return Outgoing(self.topics.dead_letter, msg.topic.encode(), value)

    def _advance(self, evaluator: ModelEvaluator, now: int) -> list[Outgoing]:
        # Updates of open and revised windows are throttled: closing a window never is.
        model_name = evaluator.topology.model
        updates = now - self._updated_at.get(model_name, -(10**15)) >= evaluator.topology.window_updates_ms
        if updates:
            self._updated_at[model_name] = now
        result = evaluator.advance(now, updates=updates)
        model = evaluator.topology.model.encode()
        out = [Outgoing(self.topics.metrics, model, wire.encode_metric_snapshot(w)) for w in result.windows]
        out.extend(Outgoing(self.topics.drift, model, wire.encode_drift_table(d)) for d in result.drift)
        for d in result.drift:
            if d.status == "CLOSED" and d.drifted:
                log.warning("%s v%s window %d..%d drifted from %s: %s", d.model, d.version, d.window_start,
                            d.window_end, d.reference, ", ".join(d.drifted),
                            extra={"model": d.model, "version": d.version, "window_start": d.window_start,
                                   "window_end": d.window_end})
        self.tally.closed.extend(w for w in result.windows if w.status == "CLOSED" and w.segment is None)
        for j in result.judgements:
            self.tally.verdicts[(model_name, j.verdict.value)] += 1
            level = logging.WARNING if j.verdict is Verdict.FAIL else logging.INFO
            log.log(level, "%s window %d..%d: %s, %s", evaluator.topology.model, j.window_start, j.window_end,
                    j.verdict.value, j.reason,
                    extra={"model": evaluator.topology.model, "version": evaluator.topology.candidate_version,
                           "window_start": j.window_start, "window_end": j.window_end, "verdict": j.verdict.value})
        out.extend(self._publish(model, result.commands))
        return out

    def _publish(self, model: bytes, commands: Sequence[Command]) -> list[Outgoing]:
        out = []
        for command in commands:
            signed = self._signer.sign(command)
            self.counters["commands"] += 1
            self.tally.commands[(command.model, command.kind.value)] += 1
            log.warning("%s %s (command %s): %s", command.kind.value, command.model, command.command_id, command.reason,
                        extra=_fields(command))
            out.append(Outgoing(self.topics.commands, model, wire.encode_command(signed)))
        return out
