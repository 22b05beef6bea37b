"""The Faust worker: one agent reads predictions, labels and the commands topic (keyed by model,
so a model's records land in the same partition number of each and Faust assigns them to the same
worker; of the commands only operators' APPROVEs matter here), hands batches of raw messages to
the StreamProcessor and publishes what it returns.

The state is checkpointed per input partition (mle_stream.stream.checkpoints): every
`checkpoint_interval_s` between batches, when Faust revokes partitions, and on a clean shutdown.
When partitions are assigned, the worker restores their checkpoints and reads both topics from the
offsets the checkpoints include, whatever offsets Faust committed: see `_read_from`.

After every batch and every ALIGN_S without input, the worker aligns its inputs in event time
(stream/alignment.py, docs/catch-up.md): it declares a model's labels idle once caught up and
silent, and pauses an input partition that runs too far ahead of the other input, predictions of
labels or labels of predictions (`_pause`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.exceptions import ConsumerNotStarted
from faust.transport.consumer import Consumer
from faust.types import TP

from mle_stream.config import Settings
from mle_stream.core.drift.profile import ReferenceProfile
from mle_stream.core.topology import Topology
from mle_stream.errors import BrokerError, ConfigError
from mle_stream.health import HEARTBEAT_S, WorkerHealth
from mle_stream.kafka import ensure_state_topic, partition_counts
from mle_stream.kafka_security import KafkaSecurity
from mle_stream.keys import signer_from_settings, verifier_from_settings
from mle_stream.stream.alignment import Alignment, Offsets
from mle_stream.stream.checkpoints import CheckpointedProcessor, Checkpoints, CheckpointStore
from mle_stream.stream.credentials import faust_credentials
from mle_stream.stream.metrics import WorkerMetrics
from mle_stream.stream.processor import Incoming, Outgoing, StreamProcessor, wall_clock_ms
from mle_stream.telemetry import serve
from mle_stream.wire import CONFLUENT, ConfluentOutputs, client_for

log = logging.getLogger(__name__)

# Faust's cost is per Kafka message: take many at a time. 200 messages (100,000 predictions from
# the client) keep the per-batch costs small; more ran no faster in mle-stream bench and held more
# memory, since the next batch is fetched while one is processed (docs/performance-history.md).
BATCH_MESSAGES = 200
# Faust's take() waits this long for a batch to fill, counted from the end of the previous batch,
# even when the messages it has are all there is (the last, partial batch of a burst always waits
# it out). While the worker is behind, batches fill from the buffered messages long before it, so
# a long wait is pure loss (docs/performance-history.md). Shorter makes more, smaller batches when
# input trickles in.
BATCH_WITHIN_S = 0.05
# Messages Faust fetches ahead into the agent's channel (its default: 4096). A paused partition
# stops fetching, but what is already there is still processed: this bounds how far a pause lets
# predictions run on. At 500 predictions a message, 1024 are ~0.5M predictions. A smaller buffer
# also lowers the peak memory of a backlog at the same events/s (docs/performance-history.md).
STREAM_BUFFER_MAXSIZE = 1024
TICK_S = 10.0  # how often the worker asks whether a source has gone silent (decision.outage_after)
LAG_S = 5.0  # how often the consumer lag gauges are refreshed without input (after every batch too)
# How often, without input, the worker re-decides idle labels and paused inputs (after every
# batch too): a third of MLE_INPUT_IDLE's default, so windows close soon after labels go idle.
ALIGN_S = 1.0
# How long to wait for the consumer's position of a partition it has none of yet (right after an
# assignment or a seek): such a partition simply is not caught up this round.
POSITION_WAIT_S = 0.05


def build_app(settings: Settings, bootstrap: str, topologies: Mapping[str, Topology],
              observer: Callable[[int, int], None] | None = None,
              profiles: Mapping[str, Mapping[str, ReferenceProfile]] | None = None,
              datadir: str | None = None, metrics: WorkerMetrics | None = None,
              health: WorkerHealth | None = None) -> tuple[faust.App, StreamProcessor]:
    """The Faust app and its processor; `observer(messages, published)`, if given, is called after
    each batch is processed and its outputs handed to Faust (mle-stream bench times the worker with it).
    `metrics` (metrics.py) is updated once per batch; without it the app keeps its own, unexposed.
    `health` (mle_stream.health) is told how the agent, the checkpoints and the consumer are doing."""
    metrics = metrics if metrics is not None else WorkerMetrics()
    topics, security = settings.topics, settings.kafka_security
    registry = client_for(settings.schema_registry, on_retry=lambda _: metrics.schema_registry_failures.inc())
    framing = None
    if settings.output_format == CONFLUENT:
        assert registry is not None  # Settings requires the registry with this format
        framing = ConfluentOutputs(registry, {topics.metrics: "MetricSnapshot", topics.drift: "DriftTable",
                                              topics.commands: "Command"})
    processor = StreamProcessor(topologies, settings.topics, signer_from_settings(settings), profiles=profiles,
                                verifier=verifier_from_settings(settings), registry=registry)
    health = health if health is not None else WorkerHealth.from_env(settings.checkpoint_interval_s)
    _require_copartitioned(bootstrap, topics.predictions, topics.labels, topics.commands, security=security)
    ensure_state_topic(bootstrap, topics.state, settings.partitions, security=security)
    app = faust.App(
        settings.worker_group,
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(security),  # TLS / SASL of its consumer, producer and admin client
        broker_session_timeout=6,  # the embedded broker's group joins stall with the default
        # At the 1 MB default a fetch holds ~7 batched prediction messages per partition and the
        # agent idles between fetches (16 MB: docs/performance-history.md).
        consumer_max_fetch_size=16 * 1024**2,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=STREAM_BUFFER_MAXSIZE,
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        store="memory://",
        web_enabled=False,
        datadir=datadir or "{conf.name}-data",  # Faust's own default: <app id>-data in the cwd
    )
    tracked = CheckpointedProcessor(processor)
    checkpoints = Checkpoints(tracked,
                              CheckpointStore(bootstrap, topics.state, settings.worker_group, security=security),
                              settings.checkpoint_interval_s, flush_outputs=lambda: app.producer.flush())
    inputs = set(tracked.inputs)
    # The commands topic is read for operators' APPROVE commands (rollout.approval).
    source = app.topic(topics.predictions, topics.labels, topics.commands, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    sinks = {name: app.topic(name, key_serializer="raw", value_serializer="raw")
             for name in (topics.metrics, topics.drift, topics.commands, topics.dead_letter)}

    # One thread: batches are processed one at a time and in order, under the checkpoint lock.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mle-stream-process")
    positions: dict[tuple[str, int], int] = {}  # next offset to process per held input partition, for the lag
    alignment = Alignment(topics.predictions, topics.labels, settings.input_idle_ms, settings.input_wait_max_ms,
                          settings.align_max_skew_ms)
    align_lock = asyncio.Lock()

    def highwater(topic: str, partition: int) -> int | None:
        try:
            return cast(int | None, app.consumer.highwater(TP(topic, partition)))
        except (AssertionError, KeyError, ConsumerNotStarted):  # aiokafka asserts the partition is assigned
            return None  # revoked meanwhile, or the consumer is not up: no lag to tell

    async def publish(outs: list[Outgoing]) -> None:
        # One output the producer refuses (too large for the broker, a topic that is gone) must not
        # cost the batch's others, least of all a command: each is handed over on its own.
        for out in outs:
            try:
                value = out.value if framing is None else framing.frame(out.topic, out.value)
                await sinks[out.topic].send(key=out.key, value=value)
            except Exception as exc:
                metrics.output_failures.labels(out.topic).inc()
                log.error("could not publish %d bytes to %s (key %r): %s: %s; the batch's other outputs go on",
                          len(out.value), out.topic, out.key[:200], type(exc).__name__, exc)

    async def checkpoint(write: Awaitable[Any]) -> None:
        started = time.perf_counter()
        await write
        # Drained, not sliced: the reports of a long-running worker must not pile up.
        metrics.observe_checkpoints(checkpoints.drain_reports(), time.perf_counter() - started)

    @app.agent(source, name="evaluate")
    # Faust restarts an agent that raised an Exception, but one ended by another BaseException stays
    # dead while the process lives on: only the probes can tell.
    @health.watch_agent
    async def evaluate(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(BATCH_MESSAGES, within=BATCH_WITHIN_S):
            # Faust drops events fetched before a rebalance when they leave its channel, but take()
            # may have buffered some already (faust-streaming #221): their partition may be gone.
            generation = app.consumer_generation_id
            events = [e for e in events if e.message.generation_id in (None, generation)]
            batch = [Incoming(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                     for e in events]
            async with checkpoints.batch() as worker:
                started = time.perf_counter()
                # In a thread, so that the event loop keeps fetching the next messages meanwhile:
                # the CPU-bound processing would otherwise stall the fetcher for its whole length.
                outs = await loop.run_in_executor(executor, worker.process, batch, [e.message.key for e in events])
                seconds = time.perf_counter() - started
                await publish(outs)
                tally = processor.drain_tally()
                metrics.observe_batch(batch, outs, tally, seconds)
                alignment.labels_received(model for (kind, model), n in tally.records.items() if kind == "labels" and n)
                for k in worker.held:
                    positions.update(worker.positions(k))
            metrics.observe_lag(positions, highwater)
            await align()
            if observer is not None:
                observer(len(batch), len(outs))
            await checkpoint(checkpoints.maybe_write())

    async def align() -> None:
        """Decide which models' labels are idle and which input partitions to pause (alignment.py),
        close what idle labels let close, and apply the pauses. One round at a time: the rounds after
        batches and those of the timer would otherwise apply their pauses in another order than they
        decided them, leaving a partition paused that the last round resumed."""
        async with align_lock:
            await align_round()

    async def align_round() -> None:
        held = {tp: offset for tp, offset in positions.items() if tp[0] != topics.commands}
        fetched = await _consumer_offsets(app, held)
        offsets = {tp: Offsets(processed, *fetched.get(tp, (None, None))) for tp, processed in held.items()}
        before = alignment.paused
        async with checkpoints.batch() as worker:
            clocks = {m: e.clocks() for m, e in processor.evaluators.items()}
            # Models with state here; one whose messages carry no key has no partition, yet its windows
            # too must close once its labels are idle (those of other workers' partitions are empty).
            homes: dict[str, int | None] = {m: None for m, c in clocks.items() if max(c.predictions, c.labels) >= 0}
            homes.update(worker.homes)
            plan = alignment.update(offsets, homes, clocks)
            idled = [m for m, state in plan.labels.items() if processor.set_labels_idle(m, state.idle) and state.idle]
            for source, topic in (("predictions", topics.predictions), ("labels", topics.labels)):
                # a paused input waits, it is not silent: no outage HOLD comes of it
                processor.hold_back(source, [m for m, k in homes.items()
                                             if k is not None and (topic, k) in plan.paused])
            if idled:  # windows that waited for these labels may close now, without any input
                outs = worker.tick()
                await publish(outs)
                metrics.observe_outputs(outs, processor.drain_tally())
            clocks = {m: processor.evaluators[m].clocks() for m in homes}
            deferred = {m: processor.evaluators[m].deferred_rows() for m in homes}
        for model in plan.newly_enforced:
            metrics.enforced_idle.labels(model).inc()
        # Every held input partition not to be paused fetches (resuming one that is not paused is a no-op).
        resumed = [tp for tp in offsets if tp not in plan.paused]
        await _pause(app, plan.paused, resumed)
        for tp in sorted(plan.paused ^ before):
            ahead, other = ("predictions", "labels") if tp[0] == topics.predictions else ("labels", "predictions")
            log.info("%s %s[%d]: its models' %s are %s", "paused" if tp in plan.paused else "resumed", *tp, ahead,
                     f"more than {settings.align_max_skew_ms / 1000:.0f} s of event time ahead of their {other}, "
                     f"which are behind" if tp in plan.paused else f"no longer far ahead of their {other}")
        metrics.observe_inputs(clocks, plan.labels, deferred, homes, list(offsets), plan.paused, wall_clock_ms(),
                               labels_topic=topics.labels)

    @app.timer(ALIGN_S)
    async def align_without_input() -> None:
        # Labels go idle, and a stuck partition's wait runs out, while no input arrives.
        await align()

    @app.timer(TICK_S)
    async def hold_on_silence() -> None:
        # Without input the agent never runs, yet a silent source must still hold the rollout.
        async with checkpoints.batch() as worker:
            outs = worker.tick()
            await publish(outs)
            metrics.observe_outputs(outs, processor.drain_tally())

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_when_idle() -> None:
        # The agent checkpoints between batches; without input it never wakes up, and this does.
        await checkpoint(checkpoints.maybe_write())

    @app.timer(LAG_S)
    async def refresh_lag() -> None:
        # A worker stuck in a batch or starved of fetches is when the lag matters: not only after batches.
        metrics.observe_lag(positions, highwater)

    @app.timer(HEARTBEAT_S)
    async def report_health() -> None:
        # From the event loop, so that a blocked loop or a Faust that stopped its timers shows as silence.
        health.heartbeat(positions, {tp: highwater(*tp) for tp in positions}, checkpoints.unsaved_since,
                         checkpoints.consistent, alignment.paused)

    # mode's SignalHandlerT type rejects every handler under mypy, even its own documented form.
    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def restore(sender: faust.App, **_: Any) -> None:
        generation = app.consumer_generation_id
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic in inputs}
        assigned_positions = await checkpoints.assigned(assigned)
        positions.clear()
        positions.update(assigned_positions)
        if app.consumer_generation_id == generation:  # else another rebalance is on: it comes back here
            await _read_from(app, assigned_positions)
            alignment.assigned(assigned)
            # aiokafka forgets its pauses with the old assignment: decide and pause again before the flow resumes.
            await align()
            health.restored(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def hand_over(sender: faust.App, revoked: set[TP], **_: Any) -> None:
        # Faust has waited for the agent to finish its events: the next owner starts from here.
        health.rebalancing()
        await checkpoint(checkpoints.write({tp.partition for tp in revoked if tp.topic in inputs}))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def last_checkpoint(sender: faust.App, **_: Any) -> None:
        if registry is not None:  # a batch waiting for the registry gives up: it is read again after a restart
            registry.close()
        await checkpoint(checkpoints.close())

    return app, processor


async def _read_from(app: faust.App, positions: Mapping[tuple[str, int], int]) -> None:
    """Make the consumer read each input partition from these offsets (the checkpoints' ones).

    Right after on_rebalance_complete, Faust seeks every assigned partition to the group's committed
    offset (Recovery._resume_streams -> Consumer.perform_seek) and only then resumes the flow; a seek
    of ours before that would be undone, and one after it would race with fetched messages. So the
    offsets are committed first, and Faust's own seek lands on them. aiokafka's seek_to_committed
    leaves a partition whose committed offset is 0 where it is, hence the explicit seek as well.
    Faust commits the offsets its agent acknowledged meanwhile, which may be ahead of the last
    checkpoint: that is harmless, since every assignment commits the checkpoint's offsets again.
    """
    offsets = {TP(topic, partition): offset for (topic, partition), offset in positions.items()}
    if not offsets:
        return
    # Faust's Consumer has no public call that commits given offsets: _commit is its transport's.
    if not await cast(Consumer, app.consumer)._commit(offsets):
        raise BrokerError(f"could not commit the checkpoints' offsets {offsets} for group {app.conf.id!r}: the "
                          f"worker would read from other offsets and lose or double-count records; stopping")
    for tp, offset in offsets.items():
        await app.consumer.seek(tp, offset)
    log.info("reading from %s",
             ", ".join(f"{tp.topic}[{tp.partition}] from {offset}" for tp, offset in sorted(offsets.items())))


# aiokafka's consumer lives in Faust's consumer thread, with its own event loop: its state is read
# and changed there, through that thread's method queue (`call_thread`). Both are private to Faust
# (faust-streaming 0.15.3's AIOKafkaConsumerThread, like _commit above); tests/test_alignment_broker.py
# fails if they change.


async def _consumer_offsets(app: faust.App, tps: Collection[tuple[str, int]]
                            ) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    """The consumer's position (next offset to fetch) and last known high watermark of each of these
    partitions it has assigned; None for either it does not know yet."""
    thread = app.consumer._thread  # type: ignore[attr-defined]
    try:
        return cast(dict[tuple[str, int], tuple[int | None, int | None]],
                    await thread.call_thread(lambda: read_offsets(thread._ensure_consumer(), tps)))
    except ConsumerNotStarted:
        return {}


async def read_offsets(consumer: AIOKafkaConsumer, tps: Collection[tuple[str, int]]
                       ) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    """`_consumer_offsets` in the consumer's own loop. A partition revoked meanwhile is left out, also
    one revoked while its position was awaited: a rebalance can start during that wait, and aiokafka's
    highwater asserts its partition is assigned (that assertion, raised in a timer, stopped the worker)."""
    out: dict[tuple[str, int], tuple[int | None, int | None]] = {}
    for topic, partition in tps:
        tp = TopicPartition(topic, partition)
        if tp not in consumer.assignment():
            continue
        try:
            # It waits while the partition has no position (right after an assignment or a seek).
            position = await asyncio.wait_for(consumer.position(tp), POSITION_WAIT_S)
        except (TimeoutError, KafkaError):  # IllegalStateError (revoked during the wait) is a KafkaError
            position = None
        if tp in consumer.assignment():  # no await from here on: it stays assigned
            out[(topic, partition)] = (position, consumer.highwater(tp))
    return out


async def _pause(app: faust.App, pause: Collection[tuple[str, int]], resume: Collection[tuple[str, int]]) -> None:
    """Stop fetching from the `pause` partitions, fetch from the `resume` ones again (either may
    already be so: both are idempotent, which also re-applies pauses after a rebalance).

    aiokafka's own pause, not Faust's pause_partitions: Faust's only edits the set of partitions it
    takes records of, and a record aiokafka already handed over (its position moved) is dropped if
    its partition is paused meanwhile, never to be delivered again. aiokafka's stops the fetches and
    discards a fetched result without moving the position, so it is fetched again after the resume.
    It must run in the consumer's thread: pausing creates a future in the running loop."""
    thread = app.consumer._thread  # type: ignore[attr-defined]

    def apply() -> None:
        consumer = thread._ensure_consumer()
        assigned = consumer.assignment()
        consumer.pause(*[tp for tp in (TopicPartition(*p) for p in pause) if tp in assigned])
        consumer.resume(*[tp for tp in (TopicPartition(*p) for p in resume) if tp in assigned])

    if not pause and not resume:
        return
    try:
        await thread.call_thread(apply)
    except ConsumerNotStarted:
        pass  # stopping or not started: no fetch to hold back


def _require_copartitioned(bootstrap: str, *names: str, security: KafkaSecurity) -> None:
    """A model's predictions, labels and approvals must land in the same partition number: its
    checkpoint records offsets of all of them, and one worker must hold the whole join."""
    counts = partition_counts(bootstrap, list(names), security=security)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} ({counts[name]} partitions)" for name in names)
        raise ConfigError(f"topics {listed} must have the same number of partitions: a model's predictions and "
                          f"labels are joined, and checkpointed with its approvals, by partition number")


def tune_runtime() -> None:
    """Process-wide settings for a worker process: `tune_gc` and `limit_blas_threads`."""
    tune_gc()
    limit_blas_threads()


def tune_gc() -> None:
    """Collect the youngest generation every 100,000 allocations instead of 700. The worker keeps
    millions of small long-lived tuples (the join's pending predictions) and allocates a few per
    record; at the default threshold the collector keeps re-examining them, at a cost measured
    in docs/performance-history.md."""
    gc.set_threshold(100_000, 50, 100)


# Entry points of the OpenBLAS builds numpy and scipy wheels ship (64-bit and 32-bit interfaces).
_OPENBLAS_SET_THREADS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                         "openblas_set_num_threads64_", "openblas_set_num_threads")


def limit_blas_threads(threads: int = 1) -> list[str]:
    """Run BLAS calls in the calling thread only, in every OpenBLAS this process has loaded; returns
    the libraries changed.

    The metric updates take dot products of whole worker batches (tens of thousands of rows), which
    OpenBLAS splits over one thread per core; its helper thread then spins for a while waiting for
    more work. In the worker that spinning took CPU from the core the fetcher and the broker run on
    (docs/performance-history.md), and the batch thread waited for its helper whenever that core was
    busy. The worker's parallelism is the event loop next to the batch thread, not BLAS.
    (OPENBLAS_NUM_THREADS only works before numpy is imported.) Linux only; elsewhere a no-op."""
    import ctypes
    import re

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({m.group(1) for line in maps
                            if (m := re.search(r"(/\S*openblas\S*\.so[.\d]*)$", line.strip()))})
    except OSError:
        return []
    changed = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SET_THREADS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
                setter(threads)
                changed.append(path)
                break
    return changed


def run_worker(settings: Settings, bootstrap: str, topologies: Mapping[str, Topology], loglevel: str = "info",
               metrics_port: int = 0, metrics_bind: str = "0.0.0.0", health: WorkerHealth | None = None,
               metrics: WorkerMetrics | None = None) -> None:
    """Run the worker until it is stopped; serve its Prometheus metrics (`metrics`, shared with the
    status page's feed; new ones by default) and its probes (`health`, mle_stream.health) on
    metrics_bind:metrics_port (0: not served)."""
    from mle_stream.profiles import profiles_for

    metrics = metrics if metrics is not None else WorkerMetrics()
    health = health if health is not None else WorkerHealth.from_env(settings.checkpoint_interval_s)
    app, _ = build_app(settings, bootstrap, topologies,
                       profiles=profiles_for(topologies.values(), settings.mlflow_tracking_uri), metrics=metrics,
                       health=health)
    serve(metrics.registry, metrics_port, metrics_bind, health)
    tune_runtime()  # after the imports: they load the BLAS libraries
    from mle_stream.json_logs import json_logging_enabled

    # mode would replace the root handler with its own text one: keep ours with --log-format json.
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, quiet=True,
                          override_logging=not json_logging_enabled())
    worker.execute_from_commandline()
