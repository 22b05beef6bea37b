"""Checkpoints of the worker's state in a compacted Kafka topic, exact through crashes.

A checkpoint belongs to one input partition number k. Predictions and labels are keyed by model, so
a model's records are in partition k of both topics (which must have the same partition count), and
the checkpoint of k holds:

- the next offset to read of predictions[k], labels[k] and commands[k] (operators' approvals), and
- the snapshot of every model evaluator whose records came from partition k,

taken between two batches, so the state includes exactly the input before those offsets. A worker
that is assigned partition k restores the checkpoint and reads the topics from its offsets, not
from the consumer group's committed offsets: nothing is lost and nothing is counted twice. Without
a (valid) checkpoint it reads the partition from its beginning, which is exact as well.

Storage (`CheckpointStore`): a checkpoint is JSON (no pickle: whoever can write the topic must not
get code execution in the worker), zlib-compressed and cut into chunks of at most 512 KB, written
under the keys `{group}/p{k}/{slot}/{i}` into partition k of the state topic, the slot alternating
between 0 and 1; then a manifest under `{group}/p{k}` names the slot, the checkpoint id, the chunk
count and each chunk's SHA-256. The manifest goes last, so a worker that dies while writing chunks
leaves the previous checkpoint whole, and compaction keeps the latest value of every key, hence
the latest complete checkpoint. Every record is produced alone and flushed: one record per batch
keeps the embedded broker's high watermark right, and the reader reads to it.

`CheckpointedProcessor` wraps the StreamProcessor with the bookkeeping: offsets per input partition,
the filter that drops what a checkpoint already includes, which model came from which partition.
`Checkpoints` schedules writes and serialises them with the batches (asyncio, no Faust); app.py
connects it to Faust's rebalance and shutdown signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from mle_stream.core.evaluator import ModelEvaluator
from mle_stream.errors import BrokerError, MleStreamError
from mle_stream.kafka import consumer_config, producer_config
from mle_stream.kafka_security import PLAINTEXT, KafkaSecurity
from mle_stream.redact import redact_servers
from mle_stream.stream.processor import Incoming, Outgoing, StreamProcessor
from mle_stream.wire import RegistryUnavailable

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_BYTES = 512 * 1024  # well under Kafka's 1 MB default message.max.bytes, key and headers included
# JSON of pending predictions compresses well at level 1; higher levels cost more time than they save bytes
_ZLIB_LEVEL = 1


class CheckpointError(MleStreamError):
    """A checkpoint that cannot be used: damaged, incomplete, or not for this worker's inputs."""


# -- the checkpoint and its bytes -----------------------------------------------------------------


@dataclass(frozen=True)
class PartitionCheckpoint:
    partition: int
    offsets: dict[str, int]  # input topic -> next offset to read
    models: dict[str, dict[str, Any]]  # model -> ModelEvaluator.snapshot()
    checkpoint_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))


def encode_checkpoint(cp: PartitionCheckpoint) -> bytes:
    doc = {"format": FORMAT, "partition": cp.partition, "checkpoint_id": cp.checkpoint_id,
           "created_at_ms": cp.created_at_ms, "offsets": cp.offsets, "models": cp.models}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), _ZLIB_LEVEL)


def decode_checkpoint(blob: bytes) -> PartitionCheckpoint:
    try:
        doc = json.loads(zlib.decompress(blob))
        if doc.get("format") != FORMAT:
            raise CheckpointError(f"format {doc.get('format')!r}, this worker reads format {FORMAT}")
        offsets = {str(t): int(o) for t, o in doc["offsets"].items()}
        return PartitionCheckpoint(int(doc["partition"]), offsets, dict(doc["models"]), str(doc["checkpoint_id"]),
                                   int(doc["created_at_ms"]))
    except (zlib.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"not a readable checkpoint: {type(exc).__name__}: {exc}") from exc


def manifest_key(group: str, partition: int) -> str:
    return f"{group}/p{partition}"


def chunk_key(group: str, partition: int, slot: int, index: int) -> str:
    return f"{manifest_key(group, partition)}/{slot}/{index}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteReport:
    partition: int
    models: int
    bytes: int  # compressed, as stored
    chunks: int
    encode_s: float  # JSON + zlib
    send_s: float  # produce and flush every chunk and the manifest


class CheckpointStore:
    """Checkpoints of one worker group in the state topic. Blocking (confluent-kafka): call it from a
    thread when an event loop must stay responsive. Checkpoint of input partition k is stored in
    partition k mod N of the state topic, so a worker reads only the state partitions of what it owns."""

    def __init__(self, bootstrap: str, topic: str, group: str, timeout_s: float = 60.0, *,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.group = group
        self.timeout_s = timeout_s
        self._producer: Producer | None = None
        self._state_partitions: int | None = None
        self._slot: dict[int, int] = {}  # input partition -> slot of its current checkpoint
        self._chunks: dict[tuple[int, int], int] = {}  # (input partition, slot) -> chunks stored there
        # Partitions whose last write failed: the manifest may or may not have landed, so the slot it
        # names is unknown until the topic is read again.
        self._uncertain: set[int] = set()

    def state_partition(self, partition: int) -> int:
        if self._state_partitions is None:
            consumer = Consumer(consumer_config(self.bootstrap, f"{self.group}.state", security=self.security))
            try:
                meta = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            except KafkaException as exc:
                raise BrokerError(f"cannot read the metadata of state topic {self.topic!r} on "
                                  f"{redact_servers(self.bootstrap)!r}: {exc}") from exc
            finally:
                consumer.close()
            if meta is None or meta.error is not None or not meta.partitions:
                raise BrokerError(f"state topic {self.topic!r} does not exist on {redact_servers(self.bootstrap)!r} "
                                  f"({meta.error if meta is not None else 'no metadata'})")
            self._state_partitions = len(meta.partitions)
        return partition % self._state_partitions

    # -- writing ----------------------------------------------------------------------------------

    def write(self, cp: PartitionCheckpoint) -> WriteReport:
        started = time.perf_counter()
        blob = encode_checkpoint(cp)
        encoded = time.perf_counter()
        chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
        k, group = cp.partition, self.group
        if k in self._uncertain:  # did the manifest of the failed write land? The topic knows.
            self.read([k])
        slot = 1 - self._slot.get(k, 1)  # never the slot the current manifest names
        target = self.state_partition(k)
        manifest = {"format": FORMAT, "group": group, "partition": k, "checkpoint_id": cp.checkpoint_id,
                    "slot": slot, "chunks": len(chunks), "bytes": len(blob),
                    "sha256": [_sha256(c) for c in chunks], "offsets": cp.offsets, "created_at_ms": cp.created_at_ms}
        self._uncertain.add(k)
        for i, chunk in enumerate(chunks):
            self._send(chunk_key(group, k, slot, i), chunk, target)
        self._send(manifest_key(group, k), json.dumps(manifest, separators=(",", ":")).encode(), target)
        self._uncertain.discard(k)
        # Chunks a larger earlier checkpoint left in this slot: tombstones let compaction drop them.
        for i in range(len(chunks), self._chunks.get((k, slot), 0)):
            self._send(chunk_key(group, k, slot, i), None, target)
        self._slot[k] = slot
        self._chunks[(k, slot)] = len(chunks)
        return WriteReport(k, len(cp.models), len(blob), len(chunks), encoded - started, time.perf_counter() - encoded)

    def _send(self, key: str, value: bytes | None, partition: int) -> None:
        if self._producer is None:
            # linger 0 and a flush per record: each record is a batch of its own (see the module doc).
            self._producer = Producer(producer_config(self.bootstrap, security=self.security,
                                                      **{"linger.ms": 0, "message.max.bytes": 2 * CHUNK_BYTES}))
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        try:
            self._producer.produce(self.topic, key=key.encode(), value=value, partition=partition,
                                   on_delivery=delivered)
            undelivered = self._producer.flush(self.timeout_s)
        except (KafkaException, BufferError) as exc:
            undelivered, failures = 1, [str(exc)]
        if undelivered or failures:
            # Drop what is still queued: a chunk delivered late could overwrite one of a later checkpoint.
            self._producer.purge()
            self._producer = None
            reason = failures[0] if failures else f"not delivered within {self.timeout_s:.0f} s"
            raise BrokerError(f"cannot write {key!r} to state topic {self.topic!r}[{partition}]: {reason}")

    # -- reading ----------------------------------------------------------------------------------

    def read(self, partitions: Collection[int]) -> dict[int, PartitionCheckpoint | None]:
        """The latest valid checkpoint of each input partition, None where there is none (or it is
        unusable: then a warning says why, and the caller starts that partition from its beginning)."""
        if not partitions:
            return {}
        latest = self._read_latest({self.state_partition(k) for k in partitions},
                                   {manifest_key(self.group, k) for k in partitions})
        return {k: self._validate(k, latest) for k in sorted(partitions)}

    def _read_latest(self, state_partitions: set[int], prefixes: set[str]) -> dict[str, tuple[bytes | None, int]]:
        """key -> (latest value, its offset), for the keys of these checkpoints, reading each state
        partition from its start to the high watermark taken before reading."""
        consumer = Consumer(consumer_config(self.bootstrap, f"{self.group}.state", security=self.security,
                                            **{"enable.partition.eof": False, "fetch.max.bytes": 64 * 1024**2}))
        latest: dict[str, tuple[bytes | None, int]] = {}
        try:
            ends: dict[int, int] = {}
            for p in state_partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout_s)
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            reached: dict[int, int] = {p: -1 for p in ends}
            deadline = time.monotonic() + self.timeout_s
            while any(reached[p] + 1 < ends[p] for p in ends):
                if time.monotonic() > deadline:
                    behind = {p: f"{reached[p] + 1}/{ends[p]}" for p in ends if reached[p] + 1 < ends[p]}
                    raise BrokerError(f"reading state topic {self.topic!r} took over {self.timeout_s:.0f} s; "
                                      f"offsets read per partition: {behind}")
                for msg in consumer.consume(num_messages=1000, timeout=0.1):
                    if msg.error() is not None:
                        raise BrokerError(f"reading state topic {self.topic!r}: {msg.error()}")
                    partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                    reached[partition] = offset
                    key = (msg.key() or b"").decode("utf-8", "replace")
                    if key in prefixes or key.rsplit("/", 2)[0] in prefixes:
                        latest[key] = (msg.value(), offset)
        except KafkaException as exc:
            raise BrokerError(f"cannot read state topic {self.topic!r} on {redact_servers(self.bootstrap)!r}: "
                              f"{exc}") from exc
        finally:
            consumer.close()
        return latest

    def _validate(self, k: int, latest: Mapping[str, tuple[bytes | None, int]]) -> PartitionCheckpoint | None:
        key = manifest_key(self.group, k)
        raw, offset = latest.get(key, (None, -1))
        for slot in (0, 1):  # what each slot holds, so that a smaller checkpoint can tombstone the rest
            held = [int(name.rsplit("/", 1)[1]) for name, (value, _) in latest.items()
                    if value is not None and name.startswith(f"{key}/{slot}/")]
            self._chunks[(k, slot)] = max(held, default=-1) + 1
        if raw is None:
            log.info("no checkpoint of partition %d in %s (key %s): reading the partition from its beginning",
                     k, self.topic, key)
            return None
        try:
            manifest = json.loads(raw)
            if (manifest.get("format") != FORMAT or manifest.get("partition") != k
                    or manifest.get("group") != self.group):
                raise CheckpointError(f"the manifest is for format {manifest.get('format')!r}, group "
                                      f"{manifest.get('group')!r}, partition {manifest.get('partition')!r}")
            slot, count, hashes = int(manifest["slot"]), int(manifest["chunks"]), list(manifest["sha256"])
            if len(hashes) != count:
                raise CheckpointError(f"the manifest lists {len(hashes)} hashes for {count} chunks")
            chunks = []
            for i in range(count):
                ck = chunk_key(self.group, k, slot, i)
                value = latest.get(ck, (None, -1))[0]
                if value is None:
                    raise CheckpointError(f"chunk {i} of {count} ({ck}) is missing")
                if _sha256(value) != hashes[i]:
                    raise CheckpointError(f"chunk {i} of {count} ({ck}) does not match the manifest's SHA-256")
                chunks.append(value)
            cp = decode_checkpoint(b"".join(chunks))
            if cp.checkpoint_id != manifest["checkpoint_id"] or cp.partition != k:
                raise CheckpointError(f"the chunks hold checkpoint {cp.checkpoint_id} of partition {cp.partition}, "
                                      f"the manifest names {manifest['checkpoint_id']} of partition {k}")
        except (CheckpointError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("the checkpoint of partition %d in %s (manifest %s at offset %d) is unusable: %s; "
                        "reading the partition from its beginning", k, self.topic, key, offset, exc)
            return None
        self._slot[k] = slot
        return cp

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None


# -- the processor with offsets -------------------------------------------------------------------


class CheckpointedProcessor:
    """The StreamProcessor plus what makes its state checkpointable per input partition.

    It holds the input partitions assigned to this worker; for each, the next offset to process of
    every input topic and the models whose records came from it (by message key, the model name).
    A message of a partition it does not hold, or below the next offset (already included in the
    state, e.g. redelivered after a rebalance), is dropped before the processor sees it.
    """

    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor
        # The commands topic is an input for operators' APPROVE commands: its offsets are in the
        # checkpoint like the others', so an approval is acted on exactly once across restarts.
        self.inputs = (processor.topics.predictions, processor.topics.labels, processor.topics.commands)
        self._next: dict[tuple[str, int], int] = {}
        self._models: dict[int, set[str]] = {}  # held partition -> its models
        self._home: dict[str, int] = {}  # model -> the partition its records come from
        self._dirty: set[int] = set()  # held partitions that processed input since their last checkpoint
        self._misplaced: set[tuple[str, int]] = set()
        self.dropped: Counter[str] = Counter()

    @property
    def held(self) -> set[int]:
        return set(self._models)

    @property
    def dirty(self) -> set[int]:
        return set(self._dirty)

    @property
    def homes(self) -> dict[str, int]:
        """Each model with state here -> the held partition its records come from."""
        return {model: k for k, models in self._models.items() for model in models}

    def positions(self, partition: int) -> dict[tuple[str, int], int]:
        """(topic, partition) -> next offset to read, for every input of a held partition."""
        return {(t, partition): self._next[(t, partition)] for t in self.inputs}

    def process(self, messages: Sequence[Incoming], keys: Sequence[bytes | None]) -> list[Outgoing]:
        kept: list[Incoming] = []
        before = dict(self._next), set(self._dirty)
        for msg, key in zip(messages, keys, strict=True):
            tp = (msg.topic, msg.partition)
            expected = self._next.get(tp)
            if expected is None:
                self.dropped["not_held"] += 1
                continue
            if msg.offset < expected:
                self.dropped["already_included"] += 1
                continue
            if msg.offset > expected:
                # Normal only where offsets were deleted (retention) or are transaction markers.
                log.warning("offsets %d..%d of %s[%d] were never delivered to the worker", expected, msg.offset - 1,
                            *tp)
            self._next[tp] = msg.offset + 1
            self._dirty.add(msg.partition)
            kept.append(msg)
            # A model's home is where its predictions and labels come from; commands are published
            # by other producers (Faust's partitioner among them) and may sit in another partition.
            if key is not None and msg.topic != self.processor.topics.commands:
                self._attribute(key.decode("utf-8", "replace"), msg)
        try:
            return self.processor.process(kept) if kept else []
        except RegistryUnavailable:
            # The worker is stopping while it waits for the schema registry: the batch's predictions
            # and labels reached no evaluator (they go in once all its messages are decoded), and no
            # checkpoint may say the batch is included.
            self._next, self._dirty = before
            raise

    def tick(self) -> list[Outgoing]:
        """What time alone decides (StreamProcessor.tick); a model it changed makes its partition's
        state worth a checkpoint. Evaluators of partitions this worker does not hold have seen no
        input since they were reset, so they hold nothing."""
        out = self.processor.tick()
        for o in out:
            home = self._home.get(o.key.decode("utf-8", "replace"))
            if home is not None and home in self._models:
                self._dirty.add(home)
        return out

    def _attribute(self, model: str, msg: Incoming) -> None:
        if model not in self.processor.evaluators:
            return  # no topology: its records are dead-lettered, there is no state to keep
        home = self._home.setdefault(model, msg.partition)
        if home == msg.partition:
            self._models[home].add(model)
        elif (model, msg.partition) not in self._misplaced:
            self._misplaced.add((model, msg.partition))
            log.error("model %r has records in %s[%d] and in partition %d: its state is checkpointed with "
                      "partition %d only, so a restart may count the others twice or lose them. Key every "
                      "message by its model, and give %s and %s the same partition count.",
                      model, msg.topic, msg.partition, home, home, *self.inputs)

    def snapshot(self, partition: int) -> PartitionCheckpoint:
        return PartitionCheckpoint(
            partition=partition,
            offsets={t: self._next[(t, partition)] for t in self.inputs},
            models={m: self.processor.evaluators[m].snapshot() for m in sorted(self._models[partition])},
        )

    def mark_clean(self, partition: int) -> None:
        self._dirty.discard(partition)

    def assign(self, partition: int, checkpoint: PartitionCheckpoint | None) -> None:
        """Hold `partition` from the checkpoint's state and offsets, or empty from offset 0. A model
        that cannot be restored makes the whole checkpoint unusable (CheckpointError), and nothing
        changes: the caller then assigns the partition without it."""
        restored: dict[str, ModelEvaluator] = {}
        if checkpoint is not None:
            if set(checkpoint.offsets) != set(self.inputs):
                raise CheckpointError(f"the checkpoint of partition {partition} has offsets of "
                                      f"{sorted(checkpoint.offsets)}; the worker reads {list(self.inputs)}")
            for model, data in checkpoint.models.items():
                current = self.processor.evaluators.get(model)
                if current is None:
                    log.warning("the checkpoint of partition %d holds model %r, which has no topology now: "
                                "its state is dropped", partition, model)
                    continue
                try:
                    restored[model] = ModelEvaluator.restore(current.topology, data, current.profiles)
                except (ValueError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"model {model!r} in the checkpoint of partition {partition}: {exc}") from exc
        self.release(partition)  # whatever an earlier ownership left is stale
        for model, evaluator in restored.items():
            old_home = self._home.get(model)
            if old_home is not None and old_home != partition:
                self._models[old_home].discard(model)
            self.processor.evaluators[model] = evaluator
            self._home[model] = partition
        self._models[partition] = set(restored)
        for topic in self.inputs:
            self._next[(topic, partition)] = checkpoint.offsets[topic] if checkpoint is not None else 0

    def release(self, partition: int) -> None:
        """Stop holding `partition`: its models start empty again (another worker owns their state now)."""
        for model in self._models.pop(partition, set()):
            current = self.processor.evaluators[model]
            self.processor.evaluators[model] = ModelEvaluator(current.topology, current.profiles)
            del self._home[model]
        for topic in self.inputs:
            self._next.pop((topic, partition), None)
        self._dirty.discard(partition)


# -- when to write ----------------------------------------------------------------------------------


class Checkpoints:
    """Writes checkpoints every `interval_s` between batches, and on demand (revocation, shutdown).

    A checkpoint must include only batches whose outputs were all handed to the producer, and
    `flush_outputs` delivers them before the checkpoint is written: a crash after the checkpoint
    cannot lose a window or a command the state already counts as emitted. Batches and checkpoint
    work take one lock, so a checkpoint never sees half a batch.
    """

    def __init__(self, tracked: CheckpointedProcessor, store: CheckpointStore, interval_s: float,
                 flush_outputs: Callable[[], Awaitable[None]], clock: Callable[[], float] = time.monotonic) -> None:
        self.tracked = tracked
        self.store = store
        self.interval_s = interval_s
        self._flush_outputs = flush_outputs
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last = clock()
        self._consistent = True
        # Held partition -> when it first processed input that no checkpoint includes (the clock's
        # time): the age of unsaved state, which the worker's liveness bounds (mle_stream.health).
        self.unsaved_since: dict[int, float] = {}
        # Reports of the checkpoints written since the last drain_reports(): the worker drains them
        # after every write, so this holds a few at most, not one per checkpoint of the process's life.
        self.reports: list[WriteReport] = []

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[CheckpointedProcessor]:
        """Process one batch and hand over its outputs inside this block."""
        async with self._lock:
            try:
                yield self.tracked
            except BaseException:
                # The state may hold a batch whose outputs were not all sent: never checkpoint it.
                if self._consistent:
                    log.error("a batch failed after it changed the state; this process writes no more "
                              "checkpoints (a restart resumes from the last one)")
                self._consistent = False
                raise
            finally:
                now = self._clock()
                for k in self.tracked.dirty:
                    self.unsaved_since.setdefault(k, now)

    @property
    def consistent(self) -> bool:
        """False once a batch failed midway: from then on this process writes no checkpoint."""
        return self._consistent

    def drain_reports(self) -> list[WriteReport]:
        """The reports of the checkpoints written since the last call (each one is returned once),
        for the worker's metrics; the list starts afresh."""
        reports, self.reports = self.reports, []
        return reports

    async def maybe_write(self) -> None:
        if self._clock() - self._last >= self.interval_s:
            await self.write(None)

    async def write(self, partitions: Collection[int] | None) -> list[WriteReport]:
        """Checkpoint these held partitions (None: all) that processed input since their last one."""
        async with self._lock:
            self._last = self._clock()
            todo = sorted(self.tracked.dirty & (self.tracked.held if partitions is None else set(partitions)))
            if not todo:
                return []
            if not self._consistent:
                log.warning("not checkpointing partitions %s: the state no longer matches the offsets", todo)
                return []
            await self._flush_outputs()
            reports = []
            for k in todo:
                try:
                    reports.append(await asyncio.to_thread(self._write_one, k))
                except (BrokerError, KafkaException) as exc:
                    # The previous checkpoint stays valid (its manifest is intact): a restart now
                    # replays more input, and the next interval tries again.
                    log.error("cannot checkpoint partition %d: %s", k, exc)
            self.reports.extend(reports)
            for report in reports:
                self.unsaved_since.pop(report.partition, None)
            return reports

    def _write_one(self, k: int) -> WriteReport:
        started = time.perf_counter()
        checkpoint = self.tracked.snapshot(k)
        snapshot_s = time.perf_counter() - started
        report = self.store.write(checkpoint)
        self.tracked.mark_clean(k)
        log.info("wrote checkpoint %s of partition %d (offsets %s): %d models, %d bytes in %d chunks, %.2f s "
                 "(snapshot %.2f s, encode %.2f s, write %.2f s)", checkpoint.checkpoint_id, k, checkpoint.offsets,
                 report.models, report.bytes, report.chunks, time.perf_counter() - started, snapshot_s,
                 report.encode_s, report.send_s)
        return report

    async def assigned(self, partitions: Collection[int]) -> dict[tuple[str, int], int]:
        """Hold exactly `partitions` from now on; returns where to read each input partition.

        A partition held before keeps its state and goes on from its own offsets (nobody else
        consumed it meanwhile: a partition stays with one member across a rebalance or moves). A
        new one is restored from its checkpoint. A partition no longer assigned is released."""
        async with self._lock:
            for k in self.tracked.held - set(partitions):
                self.tracked.release(k)
                self.unsaved_since.pop(k, None)
            new = set(partitions) - self.tracked.held
            if new:
                started = time.perf_counter()
                found = await asyncio.to_thread(self.store.read, new)
                for k in sorted(new):
                    cp = found.pop(k, None)  # dropped as soon as restored: it is as big as the state
                    try:
                        await asyncio.to_thread(self.tracked.assign, k, cp)
                    except CheckpointError as exc:
                        log.warning("cannot restore %s: reading partition %d from its beginning", exc, k)
                        self.tracked.assign(k, None)
                        cp = None
                    if cp is not None:
                        log.info("restored partition %d from checkpoint %s (%d models, offsets %s)",
                                 k, cp.checkpoint_id, len(cp.models), cp.offsets)
                log.info("assigned partitions %s restored in %.2f s", sorted(new), time.perf_counter() - started)
            return {tp: offset for k in sorted(partitions) for tp, offset in self.tracked.positions(k).items()}

    async def close(self) -> None:
        """Clean shutdown: checkpoint everything held, then let the store go."""
        try:
            await self.write(None)
        finally:
            await asyncio.to_thread(self.store.close)
