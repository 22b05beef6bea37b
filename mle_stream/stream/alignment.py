"""When a model's labels count as idle, and which predictions partitions the worker pauses.

Each evaluator closes a window only when both of its inputs have passed it in event time (the
closing clock F = min(W_predictions, W_labels), core/evaluator.py). Two things at the worker's edge
keep that from waiting forever or holding unbounded memory, and both are decided here:

- Idle labels. When a model gets no labels (there are none, or they stopped), W_labels stands
  still and nothing would close. Its labels count as *idle* once the labels partition it reads is
  caught up and it received no label for `idle_ms`; the evaluator then closes by the predictions
  alone, as the worker did before alignment. Labels that exist in the topic but are not fetched
  yet never make an input idle: only `wait_max_ms` without any delivery from a partition that is
  behind does ("enforced", logged and counted), so that a stuck partition cannot hold its models'
  windows forever.
- Pauses. While a model's predictions run more than `max_skew_ms` (event time) ahead of its
  closing clock and its labels partition is behind, the predictions partition is paused, so that
  the join does not fill with predictions waiting for labels; it resumes below half the bound, or
  once the labels are caught up or idle. Only predictions partitions are ever paused: the labels
  and commands always fetch, so the worker always makes progress.

Pure: the worker (app.py) reads the offsets from its consumer and the clocks from the evaluators,
and applies the result (StreamProcessor.set_labels_idle, aiokafka's pause and resume). Time is
wall time in milliseconds from `clock`, which tests drive by hand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Mapping, Protocol

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
    paused: frozenset[TP]  # the predictions partitions to hold paused; every other one fetches


@dataclass
class _Delivery:
    processed: int
    since: int  # when `processed` last moved, or the partition was assigned


class Alignment:
    """Decides idle labels per model and pauses per predictions partition (module docstring).

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
            elif d.processed != o.processed:
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
        up or stuck past the hard bound; enforced when one of them is stuck."""
        heard = max(self._last_label.get(model, -1), *(self._assigned_at.get(k, now) for k in partitions))
        silent = now - heard >= self.idle_ms
        behind = [k for k in partitions if not offsets[(self.labels_topic, k)].caught_up]
        stuck = all(now - self._delivery[(self.labels_topic, k)].since >= self.wait_max_ms for k in behind)
        idle = silent and stuck
        return LabelsState(idle=idle, enforced=idle and bool(behind), caught_up=not behind)

    def _pauses(self, offsets: Mapping[TP, Offsets], homes: Mapping[str, int | None], clocks: Mapping[str, Clocks],
                labels: Mapping[str, LabelsState]) -> set[TP]:
        skew: dict[int, int] = {}  # partition -> how far its models' predictions run ahead, at most
        for model, k in homes.items():
            c, state = clocks.get(model), labels.get(model)
            if k is None or c is None or state is None or state.idle or c.predictions < 0:
                continue  # no partition to pause; or idle labels: they close by the predictions alone
            skew[k] = max(skew.get(k, 0), c.predictions - c.event_time)
        paused = set()
        for tp in offsets:
            topic, k = tp
            if topic != self.predictions_topic:
                continue  # labels and commands always fetch: the worker can always make progress
            lab = offsets.get((self.labels_topic, k))
            if lab is None or lab.caught_up:
                continue  # labels have nothing more to give: waiting for them would only stall
            ahead = skew.get(k, 0)
            if ahead > self.max_skew_ms or (tp in self._paused and ahead > self.max_skew_ms // 2):
                paused.add(tp)
        return paused
