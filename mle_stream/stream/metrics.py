"""The worker's Prometheus metrics (the shared base and the exposition are in mle_stream.telemetry).

The worker updates them once per batch from what the StreamProcessor tallied while it worked
(`processor.Tally`), not by decoding its outputs again.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from mle_stream.telemetry import RoleMetrics

if TYPE_CHECKING:
    from mle_stream.stream.alignment import Clocks, LabelsState
    from mle_stream.stream.checkpoints import WriteReport
    from mle_stream.stream.processor import Incoming, Outgoing, Tally

# Roles whose window metrics are exported: versions the topology does not name ("other") come from
# the input, and a gauge per such version would let producers grow the label set without bound.
_EXPORTED_ROLES = ("baseline", "candidate")


class WorkerMetrics(RoleMetrics):
    """The worker's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.input_messages = self._counter(
            "mle_stream_input_messages", "Kafka messages the worker read, by topic (a message may carry many "
            "records)", "topic")
        self.predictions = self._counter(
            "mle_stream_predictions", "Prediction records the worker accepted into a model's windows, by model",
            "model")
        self.labels = self._counter(
            "mle_stream_labels", "Label records the worker accepted into a model's windows, by model",
            "model")
        self.output_messages = self._counter(
            "mle_stream_output_messages", "Kafka messages the worker published, by topic (metric snapshots, drift "
            "tables, commands, dead letters)", "topic")
        self.dead_letters = self._counter(
            "mle_stream_dead_letters", "Records or messages sent to the dead-letter topic, by the topic they were "
            "read from and reason class (undecodable, rejected, unknown_model, unknown_topic, unsigned, "
            "internal_error)", "topic", "reason")
        self.schema_registry_failures = self._counter(
            "mle_stream_schema_registry_failures", "Requests to the Schema Registry (MLE_SCHEMA_REGISTRY_URL) that got "
            "no usable answer; the worker retries them with backoff while the messages that need the schema wait "
            "(each failure is logged at WARNING)")
        self.output_failures = self._counter(
            "mle_stream_output_failures", "Messages the worker could not hand to its producer, by topic (each is "
            "logged at ERROR with what it was; the batch's other outputs are still published)", "topic")
        self.window_metric = self._gauge(
            "mle_stream_window_metric", "Value of a metric in the last closed event-time window of a whole model "
            "version (segments excluded), in the metric's own unit (ratios 0-1, latency in ms); NaN when that "
            "window had none", "model", "version", "role", "metric")
        self.window_end = self._gauge(
            "mle_stream_window_end_timestamp_seconds", "Event-time end of the last closed window of a whole model "
            "version, in seconds since the epoch", "model", "version", "role")
        self.verdicts = self._counter(
            "mle_stream_verdicts", "Verdicts on closed windows (PASS, FAIL, INCONCLUSIVE, ERROR), one per closed "
            "window of a model", "model", "verdict")
        self.commands = self._counter(
            "mle_stream_commands_emitted", "Signed commands the worker published, by model and kind",
            "model", "kind")
        self.consumer_lag = self._gauge(
            "mle_stream_consumer_lag", "Messages not yet processed in an assigned input partition: the consumer's "
            "high watermark minus the next offset to process. The embedded broker (Tansu) reports a high watermark "
            "too low (the first offset of the last record batch + 1), so there this reads low or 0",
            "topic", "partition")
        self.batch_seconds = self._histogram(
            "mle_stream_batch_seconds", "Time to process one batch of input messages, in seconds (decode, join, "
            "windows, decisions; in the worker's processing thread)",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.checkpoints = self._counter(
            "mle_stream_checkpoints_written", "Checkpoints of an input partition's state written to the state "
            "topic")
        self.checkpoint_bytes = self._counter(
            "mle_stream_checkpoint_bytes", "Compressed bytes of the checkpoints written, in bytes")
        self.checkpoint_seconds = self._histogram(
            "mle_stream_checkpoint_seconds", "Time of one checkpoint round that wrote at least one partition, in "
            "seconds (output flush, snapshot, encoding and writing of every partition due; waiting for a batch in "
            "progress included)", (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0))
        self.input_watermark = self._gauge(
            "mle_stream_input_watermark_seconds", "A model's input clocks in event time, in seconds since the epoch: "
            "input=predictions and labels are the largest timestamps read of each, input=event_time the closing "
            "clock (the smaller of the two, or the predictions' while labels are idle); absent before any",
            "model", "input")
        self.input_event_lag = self._gauge(
            "mle_stream_input_event_lag_seconds", "Wall-clock time minus each input clock of "
            "mle_stream_input_watermark_seconds, in seconds: how far behind in event time each input is (right on "
            "every broker, unlike mle_stream_consumer_lag)", "model", "input")
        self.input_paused = self._gauge(
            "mle_stream_input_paused", "1 while the worker holds an input partition paused because its models' "
            "records of that topic run more than MLE_ALIGN_MAX_SKEW ahead of the other input (predictions of their "
            "labels, or labels of their predictions), else 0", "topic", "partition")
        self.input_idle = self._gauge(
            "mle_stream_input_idle", "1 while a model's input counts as idle (caught up and silent for "
            "MLE_INPUT_IDLE, or behind and silent for MLE_INPUT_WAIT_MAX) and its windows close without it, else 0; "
            "only labels are ever idle", "model", "input")
        self.enforced_idle = self._counter(
            "mle_stream_enforced_idle", "Times a model's labels were declared idle although their partition was "
            "behind, after it delivered nothing for MLE_INPUT_WAIT_MAX (each is logged at WARNING)", "model")
        self.deferred_rows = self._gauge(
            "mle_stream_deferred_rows", "Rows a model's evaluator has read but holds back from its windows: keyed "
            "past the cut of a window that holds their pane and has not closed yet (its closing waits for both inputs)",
                "model")
        self._inputs_lock = threading.Lock()
        self._inputs: dict[str, dict[str, Any]] = {}  # model -> its `inputs` block of the status page
        self.unverified_commands = self._unverified_commands()
        self.status_ignored = self._counter(
            "mle_stream_status_ignored_records", "Records the status page's feed read and left off the page, by topic "
            "and reason (unknown_model: a model no topology names; unmatched: a rollout event of no verified command "
            "seen; version_limit: a version beyond a model's limit; undecodable); forged commands are counted in "
            "mle_stream_unverified_commands", "topic", "reason")

    def observe_batch(self, messages: Sequence[Incoming], outs: Sequence[Outgoing], tally: Tally,
                      seconds: float) -> None:
        """One processed batch: its input messages, its outputs, the processor's tally of it."""
        for topic, count in collections.Counter(m.topic for m in messages).items():
            self.input_messages.labels(topic).inc(count)
        self.batch_seconds.observe(seconds)
        self.observe_outputs(outs, tally)

    def observe_outputs(self, outs: Sequence[Outgoing], tally: Tally) -> None:
        """Outputs and tally of work without input as well (the worker's timer that holds rollouts)."""
        for topic, count in collections.Counter(o.topic for o in outs).items():
            self.output_messages.labels(topic).inc(count)
        for (kind, model), count in tally.records.items():
            (self.predictions if kind == "predictions" else self.labels).labels(model).inc(count)
        for (topic, reason), count in tally.dead_letters.items():
            self.dead_letters.labels(topic, reason).inc(count)
            if reason == "unsigned":  # processor.UNSIGNED: an APPROVE that does not verify
                self.unverified_commands.labels(topic, "worker").inc(count)
        for (model, verdict), count in tally.verdicts.items():
            self.verdicts.labels(model, verdict).inc(count)
        for (model, kind), count in tally.commands.items():
            self.commands.labels(model, kind).inc(count)
        for snapshot in tally.closed:  # in event-time order: the last closed window's values win
            if snapshot.role not in _EXPORTED_ROLES:
                continue
            for name, value in snapshot.metrics.items():
                self.window_metric.labels(snapshot.model, snapshot.version, snapshot.role, name).set(
                    math.nan if value is None else value)
            self.window_end.labels(snapshot.model, snapshot.version, snapshot.role).set(snapshot.window_end / 1000)

    def observe_lag(self, positions: Mapping[tuple[str, int], int],
                    highwater: Callable[[str, int], int | None]) -> None:
        """Set the lag of exactly these input partitions (next offset to process by (topic, partition));
        `highwater` returns the consumer's last known high watermark, None when it has none yet."""
        self.consumer_lag.clear()  # partitions revoked since the last call disappear
        for (topic, partition), position in positions.items():
            end = highwater(topic, partition)
            if end is not None:
                self.consumer_lag.labels(topic, str(partition)).set(max(end - position, 0))

    def observe_inputs(self, clocks: Mapping[str, Clocks], labels: Mapping[str, LabelsState],
                       deferred: Mapping[str, int], homes: Mapping[str, int | None],
                       inputs: Collection[tuple[str, int]],
                       paused: Collection[tuple[str, int]], now_ms: int, *, labels_topic: str) -> None:
        """The alignment of exactly these models (their evaluators' `clocks`, the state of their `labels`
        input, their `deferred` rows, their `homes` partitions) and input partitions (`inputs`, of which
        `paused` are paused: those of `labels_topic` hold labels back, the others predictions), at
        wall-clock time `now_ms`."""
        for gauge in (self.input_watermark, self.input_event_lag, self.input_idle, self.deferred_rows,
                      self.input_paused):
            gauge.clear()  # models and partitions revoked since the last call disappear
        for topic, partition in inputs:
            self.input_paused.labels(topic, str(partition)).set(1.0 if (topic, partition) in paused else 0.0)
        blocks: dict[str, dict[str, Any]] = {}
        for model, c in clocks.items():
            marks = {"predictions": c.predictions, "labels": c.labels, "event_time": c.event_time}
            seconds = {name: None if ms < 0 else ms / 1000 for name, ms in marks.items()}
            lag = {name: None if ms < 0 else (now_ms - ms) / 1000 for name, ms in marks.items()}
            for name, ms in marks.items():
                if ms >= 0:
                    self.input_watermark.labels(model, name).set(ms / 1000)
                    self.input_event_lag.labels(model, name).set((now_ms - ms) / 1000)
            state = labels.get(model)
            idle = state is not None and state.idle
            if state is not None:
                self.input_idle.labels(model, "labels").set(1.0 if idle else 0.0)
            self.deferred_rows.labels(model).set(deferred.get(model, 0))
            home = homes.get(model)
            labels_held = home is not None and (labels_topic, home) in paused
            predictions_held = home is not None and any(t != labels_topic and k == home for t, k in paused)
            blocks[model] = {
                "watermarks": seconds, "event_lag_seconds": lag, "partition": home,
                "predictions_paused": predictions_held, "labels_paused": labels_held, "labels_idle": idle,
                "labels_idle_enforced": state is not None and state.enforced,
                "labels_caught_up": state is not None and state.caught_up,
                "deferred_rows": deferred.get(model, 0),
                "state": ("holding predictions back" if predictions_held else "holding labels back" if labels_held
                          else "labels idle" if idle
                          else "catching up" if state is not None and not state.caught_up else "aligned"),
            }
        with self._inputs_lock:
            self._inputs = blocks

    def inputs_json(self, model: str) -> dict[str, Any] | None:
        """The status page's `inputs` block of `model` (None when this worker holds no state of it):
        its input clocks and their lag, whether its predictions or its labels are paused or its labels
        idle, and in a word: "catching up", "holding predictions back", "holding labels back", "labels
        idle" or "aligned"."""
        with self._inputs_lock:
            block = self._inputs.get(model)
            return None if block is None else dict(block)

    def observe_checkpoints(self, reports: Sequence[WriteReport], seconds: float) -> None:
        if not reports:
            return
        self.checkpoints.inc(len(reports))
        self.checkpoint_bytes.inc(sum(r.bytes for r in reports))
        self.checkpoint_seconds.observe(seconds)
