"""When a model's labels count as idle, and which input partitions the worker pauses.

Each evaluator closes a window only when both of its inputs have passed it in event time (the
closing clock F = min(W_predictions, W_labels), core/evaluator.py). Two things at the worker's edge
keep that from waiting forever or holding unbounded memory, and both are decided here:

- Idle labels. When a model gets no labels (there are none, or they stopped), W_labels stands
  still and nothing would close. Its labels count as *idle* once the labels partition it reads is
  caught up and it received no label for `idle_ms`; the evaluator then closes by the predictions
  alone, as the worker did before alignment. Labels that exist in the topic but are not fetched
  yet never make an input idle: only `wait_max_ms` without any delivery from a partition that is
  behind does ("enforced", logged and counted), so that a stuck partition cannot hold its models'
  windows forever. A labels partition the worker paused itself is neither: its labels are ahead,
  not missing.
- Pauses, in both directions, so that the join does not fill with records waiting for the other
  input. While a model's predictions run more than `max_skew_ms` (event time) ahead of its closing
  clock and its labels partition is behind, the predictions partition is paused; it resumes below
  half the bound, or once the labels are caught up or idle. Symmetrically, while a model's labels
  run more than `max_skew_ms` ahead of its predictions and its predictions partition is behind, the
  labels partition is paused; it resumes below half the bound, or once the predictions are caught
  up. Idle labels are never the input ahead. The two inputs of one partition number are never
  paused at once (when its models pull in opposite directions neither is), and the commands are
  never paused: every partition always has an input that fetches, so the worker always makes
  progress.

Pure: the worker (app.py) reads the offsets from its consumer and the clocks from the evaluators,
and applies the result (StreamProcessor.set_labels_idle, aiokafka's pause and resume). Time is
wall time in milliseconds from `clock`, which tests drive by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

TP = tuple[str, int]


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


@dataclass(frozen=True)
class Offsets:
    """Where the worker is in one input partition.

    processed: the next offset the worker will process (the one its checkpoint records).
    position: the next offset the consumer will fetch, None while it has none (after a seek).
    highwater: the broker's high watermark from the last fetch, None before the first one.
    """

    processed: int
    position: int | None
    highwater: int | None

    @property
    def caught_up(self) -> bool:
        """Everything the broker had at the last fetch is fetched and processed.

        position >= highwater: fetched up to the end. On the embedded broker (Tansu) the high
        watermark is the first offset of the last record batch + 1, an under-statement; but the
        position moves by whole batches, so it reaches that watermark only once the last batch has
        been handed over. processed >= position: nothing handed over waits in Faust's buffers.
        """
        return (self.position is not None and self.highwater is not None
                and self.processed >= self.position >= self.highwater)


class Clocks(Protocol):
    """A model's input clocks in event-time ms, -1 before any (core/evaluator.py's InputClocks)."""

    @property
    def predictions(self) -> int: ...

    @property
    def labels(self) -> int: ...

    @property
    def event_time(self) -> int: ...


@dataclass(frozen=True)
class LabelsState:
    """How one model's labels input stands."""

    idle: bool
    enforced: bool  # idle although behind: its partition delivered nothing for wait_max_ms
    caught_up: bool


@dataclass(frozen=True)
class Plan:
    """What the worker applies after one round."""

    labels: dict[str, LabelsState]  # model -> its labels input, for the models of held partitions
    newly_enforced: list[str]  # models whose labels became idle by the hard bound this round
    paused: frozenset[TP]  # the input partitions to hold paused (never both of one number); every other one fetches


@dataclass
class _Delivery:
    processed: int
    since: int  # when `processed` last moved, or the partition was assigned


class Alignment:
    """Decides idle labels per model and pauses per input partition (module docstring).

    Call `assigned` after every rebalance, `labels_received` with the models a batch brought
    labels for, and `update` after every batch and on a timer without input.
    """

    def __init__(self, predictions_topic: str, labels_topic: str, idle_ms: int, wait_max_ms: int,
                 max_skew_ms: int, clock: Callable[[], int] = monotonic_ms) -> None:
        for name, value in (("idle_ms", idle_ms), ("wait_max_ms", wait_max_ms), ("max_skew_ms", max_skew_ms)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.predictions_topic = predictions_topic
        self.labels_topic = labels_topic
        self.idle_ms = idle_ms
        self.wait_max_ms = wait_max_ms
        self.max_skew_ms = max_skew_ms
        self._clock = clock
        self._assigned_at: dict[int, int] = {}  # held partition -> when it was assigned
        self._last_label: dict[str, int] = {}  # model -> when it last received a label
        self._delivery: dict[TP, _Delivery] = {}
        self._enforced: set[str] = set()
        self._paused: set[TP] = set()
        self._opposed: set[int] = set()  # partitions whose models pull in opposite directions (logged once)

    @property
    def paused(self) -> frozenset[TP]:
        return frozenset(self._paused)

    def assigned(self, partitions: Collection[int]) -> None:
        """The partitions held after a rebalance. Those newly held start afresh: their restored
        evaluators are not idle, and an input becomes idle only once shown so again."""
        now = self._clock()
        self._assigned_at = {k: self._assigned_at.get(k, now) for k in partitions}
        self._delivery = {tp: d for tp, d in self._delivery.items() if tp[1] in self._assigned_at}
        self._paused = {tp for tp in self._paused if tp[1] in self._assigned_at}
        self._opposed &= set(self._assigned_at)

    def labels_received(self, models: Iterable[str]) -> None:
        now = self._clock()
        for model in models:
            self._last_label[model] = now

    def update(self, offsets: Mapping[TP, Offsets], homes: Mapping[str, int | None],
               clocks: Mapping[str, Clocks]) -> Plan:
        """One round: `offsets` of the held input partitions, `homes` each model's partition (the
        one its records come from; None when its messages carry no key, so that any labels
        partition held may hold its labels), `clocks` each model's evaluator's."""
        now = self._clock()
        for tp, o in offsets.items():
            d = self._delivery.get(tp)
            if d is None:  # first seen: silent since its assignment at most
                self._delivery[tp] = _Delivery(o.processed, self._assigned_at.get(tp[1], now))
            elif d.processed != o.processed or tp in self._paused:
                # A partition paused on purpose delivers nothing by design: not stuck. Its wait for a
                # delivery starts afresh when it resumes.
                self._delivery[tp] = _Delivery(o.processed, now)
        labels: dict[str, LabelsState] = {}
        newly_enforced: list[str] = []
        held_labels = sorted(k for topic, k in offsets if topic == self.labels_topic)
        for model, home in sorted(homes.items(), key=lambda item: item[0]):
            partitions = held_labels if home is None else [home] if home in held_labels else []
            if not partitions:
                continue  # not held (any more): another worker decides
            state = self._labels_state(model, partitions, offsets, now)
            labels[model] = state
            if state.enforced and model not in self._enforced:
                newly_enforced.append(model)
                behind = ", ".join(f"{self.labels_topic}[{k}] (offset {offsets[(self.labels_topic, k)].processed} "
                                   f"processed, high watermark {offsets[(self.labels_topic, k)].highwater})"
                                   for k in partitions if not offsets[(self.labels_topic, k)].caught_up)
                log.warning("labels of model %r count as idle although %s is behind: it delivered nothing for %.0f s "
                            "(MLE_INPUT_WAIT_MAX); its windows now close by the predictions alone, and labels that "
                            "come later revise them", model, behind, self.wait_max_ms / 1000)
        self._enforced = {m for m, s in labels.items() if s.enforced}
        self._paused = self._pauses(offsets, homes, clocks, labels)
        return Plan(labels, newly_enforced, frozenset(self._paused))

    def _labels_state(self, model: str, partitions: list[int], offsets: Mapping[TP, Offsets],
                      now: int) -> LabelsState:
        """Idle when silent and every one of `partitions` (where the model's labels may be) is caught
        up or stuck past the hard bound; enforced when one of them is stuck. Never while one of them
        is paused: its labels are ahead of the predictions, not missing (and a paused partition
        looks caught up on a high watermark no longer fetched)."""
        if any((self.labels_topic, k) in self._paused for k in partitions):
            return LabelsState(idle=False, enforced=False,
                               caught_up=all(offsets[(self.labels_topic, k)].caught_up for k in partitions))
        heard = max(self._last_label.get(model, -1), *(self._assigned_at.get(k, now) for k in partitions))
        silent = now - heard >= self.idle_ms
        behind = [k for k in partitions if not offsets[(self.labels_topic, k)].caught_up]
        stuck = all(now - self._delivery[(self.labels_topic, k)].since >= self.wait_max_ms for k in behind)
        idle = silent and stuck
        return LabelsState(idle=idle, enforced=idle and bool(behind), caught_up=not behind)

    def _pauses(self, offsets: Mapping[TP, Offsets], homes: Mapping[str, int | None], clocks: Mapping[str, Clocks],
                labels: Mapping[str, LabelsState]) -> set[TP]:
        # partition -> how far, at most, one of its models' predictions run ahead of its closing clock
        # (waiting for labels), and one of its models' labels ahead of its predictions
        predictions_ahead: dict[int, int] = {}
        labels_ahead: dict[int, int] = {}
        for model, k in homes.items():
            c, state = clocks.get(model), labels.get(model)
            if k is None or c is None or state is None or state.idle:
                continue  # no partition to pause; or idle labels: they close by the predictions alone
            if c.predictions >= 0:
                predictions_ahead[k] = max(predictions_ahead.get(k, 0), c.predictions - c.event_time)
            if c.labels >= 0:  # before any prediction (-1) the labels are ahead by all they have
                labels_ahead[k] = max(labels_ahead.get(k, 0), c.labels - c.predictions)
        paused: set[TP] = set()
        opposed: set[int] = set()
        for k in sorted({k for _, k in offsets}):
            pred_tp, lab_tp = (self.predictions_topic, k), (self.labels_topic, k)
            pred, lab = offsets.get(pred_tp), offsets.get(lab_tp)
            if pred is None or lab is None:
                continue  # one input not held: nothing to wait for
            # Pause an input only while the other is behind: once it is caught up (or, for labels,
            # idle) it has nothing more to give, and waiting for it would only stall.
            hold_predictions = not lab.caught_up and self._over(pred_tp, predictions_ahead.get(k, 0))
            hold_labels = not pred.caught_up and self._over(lab_tp, labels_ahead.get(k, 0))
            if hold_predictions and hold_labels:
                # Its models pull in opposite directions: one waits for labels, another for
                # predictions. Pausing both would stop the partition, and pausing either would let
                # the other input run on for the model waiting for it: both fetch, as without
                # alignment, until one side falls back (the other's models catch up, or an input is
                # caught up).
                opposed.add(k)
                if k not in self._opposed:
                    log.info("not pausing %s[%d] nor %s[%d]: some of its models' predictions run more than %.0f s "
                             "of event time ahead of their labels, and others' labels ahead of their predictions",
                             self.predictions_topic, k, self.labels_topic, k, self.max_skew_ms / 1000)
            elif hold_predictions:
                paused.add(pred_tp)
            elif hold_labels:
                paused.add(lab_tp)
        self._opposed = opposed
        return paused

    def _over(self, tp: TP, ahead: int) -> bool:
        """Whether an input `ahead` of the other by this much (event time ms) is to be paused: past the
        bound, or, while it is paused already, past half of it (hysteresis)."""
        return ahead > self.max_skew_ms or (tp in self._paused and ahead > self.max_skew_ms // 2)
