"""Idle labels and paused predictions (mle_stream/stream/alignment.py) against a fake consumer:
partitions that hand over whole record batches and report a high watermark the way Kafka or the
embedded broker (Tansu) does, and a hand-driven clock."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import pytest

from mle_stream.config import Settings
from mle_stream.errors import ConfigError
from mle_stream.stream.alignment import Alignment, Offsets

P, L = "preds", "labels"
IDLE, WAIT_MAX, SKEW = 3_000, 600_000, 600_000


@dataclass
class FakePartition:
    """One input partition as the worker sees it: records sit in the broker in batches; a fetch
    hands over one whole batch (the consumer's position moves past it), processing catches up
    with what was handed over. `tansu`: the high watermark is the first offset of the last batch
    + 1, as the embedded broker reports it; else the end of the log, as Kafka does."""

    tansu: bool = False
    batches: list[list[int]] = field(default_factory=list)  # record timestamps, batch by batch
    fetched: int = 0  # batches handed over
    position: int = 0
    processed: int = 0
    paused: bool = False
    highwater: int | None = None  # as of the last fetch: None before the first

    def produce(self, timestamps: list[int]) -> None:
        self.batches.append(timestamps)

    def end(self) -> int:
        return sum(len(b) for b in self.batches)

    def _broker_highwater(self) -> int:
        if not self.batches:
            return 0
        return self.end() - len(self.batches[-1]) + 1 if self.tansu else self.end()

    def fetch(self) -> list[int]:
        """One fetch: the next batch, if not paused; the high watermark comes with the response."""
        if self.paused:
            return []
        self.highwater = self._broker_highwater()
        if self.fetched == len(self.batches):
            return []
        batch = self.batches[self.fetched]
        self.fetched += 1
        self.position += len(batch)
        return batch

    def offsets(self) -> Offsets:
        return Offsets(self.processed, self.position, self.highwater)


@dataclass(frozen=True)
class Clocks:
    predictions: int
    labels: int
    event_time: int


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def alignment(clock: Clock, idle: int = IDLE, wait_max: int = WAIT_MAX, skew: int = SKEW) -> Alignment:
    a = Alignment(P, L, idle, wait_max, skew, clock=clock)
    a.assigned([0])
    return a


def test_tansu_high_watermark_reads_caught_up_only_once_the_last_batch_is_handed_over_and_processed() -> None:
    part = FakePartition(tansu=True)
    for size in (1, 10, 10):  # 21 records; Tansu's high watermark: 11 + 1
        part.produce([0] * size)
    assert not part.offsets().caught_up  # nothing fetched: no high watermark known yet
    part.fetch()
    assert part.highwater == 12 and not part.offsets().caught_up
    part.fetch()
    part.processed = part.position  # 11 < 12: the last batch is still in the broker
    assert not part.offsets().caught_up
    part.fetch()
    assert part.position == 21 and not part.offsets().caught_up  # handed over, still in Faust's buffer
    part.processed = part.position
    assert part.offsets().caught_up
    part.produce([0] * 5)  # more arrives: known at the next fetch, which also hands it over
    part.fetch()
    assert not part.offsets().caught_up
    part.processed = part.position
    assert part.offsets().caught_up


def test_an_empty_partition_is_caught_up_after_its_first_fetch() -> None:
    part = FakePartition()
    assert not part.offsets().caught_up
    part.fetch()
    assert part.offsets() == Offsets(0, 0, 0) and part.offsets().caught_up
    assert not Offsets(5, None, 5).caught_up  # no position (after a seek): unknown is not caught up


def test_labels_idle_once_caught_up_and_silent_and_not_idle_when_labels_come_again() -> None:
    clock = Clock()
    a = alignment(clock)
    labels, preds = FakePartition(), FakePartition()
    labels.fetch(), preds.fetch()

    def idle() -> bool:
        plan = a.update({(P, 0): preds.offsets(), (L, 0): labels.offsets()}, {"m": 0}, {})
        return plan.labels["m"].idle

    assert not idle()  # caught up, but silent only since the assignment
    clock.now += IDLE - 1
    assert not idle()
    clock.now += 1
    assert idle()
    a.labels_received(["m"])
    assert not idle()
    clock.now += IDLE
    assert idle()
    a.labels_received(["other"])  # another model's labels change nothing for m
    assert idle()


def test_labels_present_in_the_topic_are_never_idle_until_the_hard_bound(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = alignment(clock)
    labels = FakePartition()
    labels.produce([0] * 10)
    labels.fetch()  # handed over, not processed: the worker is busy with predictions
    offsets = {(L, 0): labels.offsets()}
    clock.now += WAIT_MAX - 1
    assert a.update(offsets, {"m": 0}, {}).labels["m"].idle is False
    clock.now += 1
    with caplog.at_level(logging.WARNING, "mle_stream.stream.alignment"):
        plan = a.update(offsets, {"m": 0}, {})
        assert plan.labels["m"].idle and plan.labels["m"].enforced and plan.newly_enforced == ["m"]
        assert a.update(offsets, {"m": 0}, {}).newly_enforced == []  # counted and logged once
    assert len(caplog.records) == 1 and "MLE_INPUT_WAIT_MAX" in caplog.records[0].getMessage()
    labels.processed = 3  # the partition delivers again: its models wait for their labels again
    plan = a.update({(L, 0): labels.offsets()}, {"m": 0}, {})
    assert not plan.labels["m"].idle and not plan.labels["m"].enforced


def test_a_partition_delivering_other_models_labels_is_not_stuck() -> None:
    clock = Clock()
    a = alignment(clock)
    for step in range(1, 30):
        clock.now += WAIT_MAX // 20
        # `m` hears nothing, but its partition moves: its labels may be further on
        plan = a.update({(L, 0): Offsets(step, step + 5, step + 10)}, {"m": 0, "n": 0}, {})
        a.labels_received(["n"])
        assert not plan.labels["m"].idle


def test_a_newly_assigned_partition_is_not_idle_until_shown_so_again() -> None:
    clock = Clock()
    a = alignment(clock)
    caught_up = Offsets(0, 0, 0)
    clock.now += IDLE
    assert a.update({(L, 0): caught_up}, {"m": 0}, {}).labels["m"].idle
    a.assigned([0, 1])  # a rebalance: 0 kept, 1 new
    plan = a.update({(L, 0): caught_up, (L, 1): caught_up}, {"m": 0, "n": 1}, {})
    assert plan.labels["m"].idle and not plan.labels["n"].idle
    clock.now += IDLE
    assert a.update({(L, 0): caught_up, (L, 1): caught_up}, {"m": 0, "n": 1}, {}).labels["n"].idle


def test_pause_while_predictions_run_ahead_of_labels_that_are_behind_and_resume_below_half() -> None:
    clock = Clock()
    a = alignment(clock)
    behind = Offsets(0, 10, 100)

    def paused(predictions: int, event_time: int, labels: Offsets = behind, labels_ts: int = 0) -> bool:
        plan = a.update({(P, 0): Offsets(0, 0, 100), (L, 0): labels}, {"m": 0},
                        {"m": Clocks(predictions, labels_ts, event_time)})
        assert plan.paused <= {(P, 0)}
        return (P, 0) in plan.paused

    assert not paused(SKEW, 0)
    assert paused(SKEW + 1, 0)
    assert paused(SKEW // 2 + 1, 0)  # hysteresis: holds until below half
    assert not paused(SKEW // 2, 0)
    assert not paused(SKEW // 2 + 1, 0)  # and does not pause again before the bound
    assert paused(2 * SKEW, -1, labels_ts=-1)  # no label read yet, and labels waiting: hold the predictions
    assert not paused(2 * SKEW, -1, labels=Offsets(100, 100, 100))  # caught up: nothing to wait for
    assert not paused(-1, -1)  # no predictions yet


def test_idle_labels_resume_their_predictions() -> None:
    clock = Clock()
    a = alignment(clock, wait_max=2 * IDLE)
    behind = Offsets(0, 0, 100)
    plan = a.update({(P, 0): Offsets(0, 0, 100), (L, 0): behind}, {"m": 0}, {"m": Clocks(2 * SKEW, 0, 0)})
    assert plan.paused == {(P, 0)}
    clock.now += 2 * IDLE  # the labels partition delivers nothing: enforced idle
    plan = a.update({(P, 0): Offsets(0, 0, 100), (L, 0): behind}, {"m": 0}, {"m": Clocks(2 * SKEW, 0, 0)})
    assert plan.labels["m"].enforced and plan.paused == frozenset()


def test_the_worst_model_of_a_partition_decides_and_other_partitions_are_left_alone() -> None:
    clock = Clock()
    a = alignment(clock)
    a.assigned([0, 1])
    offsets = {(P, 0): Offsets(0, 0, 9), (L, 0): Offsets(0, 0, 9), (P, 1): Offsets(0, 0, 9), (L, 1): Offsets(0, 0, 9),
               ("commands", 0): Offsets(0, 0, 9)}
    clocks = {"a": Clocks(100, 100, 100), "b": Clocks(2 * SKEW, 0, 0), "c": Clocks(10, 10, 10)}
    plan = a.update(offsets, {"a": 0, "b": 0, "c": 1}, clocks)
    assert plan.paused == {(P, 0)}


def test_pause_labels_while_they_run_ahead_of_predictions_that_are_behind_and_resume_below_half() -> None:
    clock = Clock()
    a = alignment(clock)
    behind = Offsets(0, 10, 100)

    def paused(labels_ts: int, predictions: int, preds: Offsets = behind, labels: Offsets = behind) -> bool:
        plan = a.update({(P, 0): preds, (L, 0): labels, ("commands", 0): behind}, {"m": 0},
                        {"m": Clocks(predictions, labels_ts, min(predictions, labels_ts))})
        assert plan.paused <= {(L, 0)} or (labels_ts < 0 and plan.paused == {(P, 0)})
        return (L, 0) in plan.paused

    assert not paused(SKEW, 0)
    assert paused(SKEW + 1, 0)
    assert paused(SKEW // 2 + 1, 0)  # hysteresis: holds until below half
    assert not paused(SKEW // 2, 0)
    assert not paused(SKEW // 2 + 1, 0)  # and does not pause again before the bound
    assert paused(SKEW + 1, 0)
    assert not paused(2 * SKEW, 0, preds=Offsets(100, 100, 100))  # predictions caught up: nothing to wait for
    assert paused(2 * SKEW, -1)  # no prediction read yet, and predictions waiting: hold the labels
    # no label yet: the labels are ahead of nothing (those predictions are, and are paused themselves)
    assert not paused(-1, 2 * SKEW) and not paused(-1, -1)


def test_idle_labels_are_never_the_input_ahead() -> None:
    clock = Clock()
    a = alignment(clock)
    caught_up, behind = Offsets(50, 50, 50), Offsets(0, 10, 100)
    clock.now += IDLE  # caught up and silent: idle
    plan = a.update({(P, 0): behind, (L, 0): caught_up}, {"m": 0}, {"m": Clocks(0, 2 * SKEW, 0)})
    assert plan.labels["m"].idle and plan.paused == frozenset()


def test_paused_labels_are_never_idle_nor_stuck_and_their_wait_starts_afresh_on_resume() -> None:
    """A paused labels partition delivers nothing by design, and its high watermark is no longer
    fetched: neither makes its labels idle (they are ahead, not missing)."""
    clock = Clock()
    a = alignment(clock, wait_max=10 * IDLE)
    preds = Offsets(0, 10, 100)
    labels = Offsets(0, 10, 100)  # behind, then paused for longer than the hard bound
    ahead = {"m": Clocks(0, 2 * SKEW, 0)}
    assert a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, ahead).paused == {(L, 0)}
    for _ in range(30):
        clock.now += IDLE
        plan = a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, ahead)
        assert plan.paused == {(L, 0)} and not plan.labels["m"].idle and not plan.labels["m"].enforced
    plan = a.update({(P, 0): Offsets(100, 100, 100), (L, 0): labels}, {"m": 0}, ahead)  # predictions caught up
    assert plan.paused == frozenset()
    clock.now += 10 * IDLE - 1  # behind and silent since the resume: not stuck yet
    assert not a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, {"m": Clocks(0, 0, 0)}).labels["m"].idle
    clock.now += 1
    assert a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, {"m": Clocks(0, 0, 0)}).labels["m"].enforced


def test_paused_labels_that_look_caught_up_stay_paused_and_not_idle() -> None:
    """Labels read to the end far ahead of predictions that are behind: paused. Paused, the partition
    fetches no new high watermark, so it keeps looking caught up; its labels are silent all the
    same. They are ahead, not idle: the pause holds until the predictions come up."""
    clock = Clock()
    a = alignment(clock)
    preds, labels = Offsets(0, 10, 100), Offsets(100, 100, 100)
    ahead = {"m": Clocks(0, 2 * SKEW, 0)}
    assert a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, ahead).paused == {(L, 0)}
    for _ in range(5):
        clock.now += IDLE
        plan = a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, ahead)
        assert plan.paused == {(L, 0)} and not plan.labels["m"].idle and plan.labels["m"].caught_up
    plan = a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, {"m": Clocks(2 * SKEW, 2 * SKEW, 2 * SKEW)})
    assert plan.paused == frozenset()  # the predictions came up: resumed, and may go idle from here
    clock.now += IDLE
    assert a.update({(P, 0): preds, (L, 0): labels}, {"m": 0}, ahead).labels["m"].idle


def test_models_of_one_partition_pulling_in_opposite_directions_pause_neither_input(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = alignment(clock)
    a.assigned([0, 1])
    behind = Offsets(0, 10, 100)
    offsets = {(P, 0): behind, (L, 0): behind, (P, 1): behind, (L, 1): behind}
    # "wait" waits for labels (its predictions far ahead), "lead" for predictions (its labels far ahead)
    wait, lead, level = Clocks(3 * SKEW, SKEW, SKEW), Clocks(SKEW, 3 * SKEW, SKEW), Clocks(SKEW, SKEW, SKEW)
    homes = {"wait": 0, "lead": 1, "other": 1}
    plan = a.update(offsets, homes, {"wait": wait, "lead": lead, "other": level})
    assert plan.paused == {(P, 0), (L, 1)}  # one direction each
    homes = {"wait": 0, "lead": 0, "other": 1}  # now both on partition 0
    with caplog.at_level(logging.INFO, "mle_stream.stream.alignment"):
        for _ in range(3):
            plan = a.update(offsets, homes, {"wait": wait, "lead": lead, "other": level})
            assert plan.paused == frozenset()  # the pause of predictions[0] ends, nothing else starts
    assert len(caplog.records) == 1 and "not pausing preds[0] nor labels[0]" in caplog.records[0].getMessage()
    # "lead" falls back below half the bound: "wait" alone decides again
    plan = a.update(offsets, homes, {"wait": wait, "lead": Clocks(SKEW, SKEW + SKEW // 2, SKEW), "other": level})
    assert plan.paused == {(P, 0)}


def test_one_input_not_held_pauses_nothing() -> None:
    clock = Clock()
    a = alignment(clock)
    behind = Offsets(0, 10, 100)
    assert a.update({(L, 0): behind}, {"m": 0}, {"m": Clocks(0, 2 * SKEW, 0)}).paused == frozenset()
    assert a.update({(P, 0): behind}, {"m": 0}, {"m": Clocks(2 * SKEW, 0, 0)}).paused == frozenset()


# How each partition of a simulated backlog is written: which input comes in big batches (and so is
# read ahead of the other), per model. "opposed": two models, one each way, in the same partition.
SHAPES = {"predictions ahead": {"a": P}, "labels ahead": {"a": L}, "opposed": {"a": P, "b": L}}


@pytest.mark.parametrize("seed", range(30))
def test_a_simulated_catch_up_never_pauses_both_inputs_of_a_partition_and_always_finishes(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    """Two partitions of a backlog. Per model, one input comes in big batches, the other in small ones
    (the big one is read ahead); labels are timestamped 1-20 s after their predictions. A partition
    holds one model reading either input ahead, or two reading opposite ones. Messages are keyed by
    model, so each batch is one model's, and the models' batches interleave at random in each
    partition. The fetcher serves each partition that is not paused in a random order, the worker
    processes what was handed over at random moments; the models' clocks follow what was processed,
    the closing clock as the evaluator keeps it (the smaller, or the predictions' while labels are
    idle). Never are both inputs of a partition number paused, nor the commands; the catch-up
    finishes, with pauses on the way in the direction of the input read ahead."""
    caplog.set_level(logging.INFO, "mle_stream.stream.alignment")
    rng = random.Random(seed)
    clock = Clock()
    skew = 60_000
    a = Alignment(P, L, IDLE, WAIT_MAX, skew, clock=clock)
    a.assigned([0, 1])
    shapes = [list(SHAPES)[(seed + k) % len(SHAPES)] for k in (0, 1)]
    parts = {(topic, k): FakePartition(tansu=bool(rng.getrandbits(1))) for topic in (P, L, "commands") for k in (0, 1)}
    owner: dict[tuple[str, int], list[str]] = {tp: [] for tp in parts}  # each batch's model
    homes: dict[str, int | None] = {}
    for k, shape in enumerate(shapes):
        queues: dict[tuple[str, str], list[list[int]]] = {}
        for name, big in SHAPES[shape].items():
            model = f"{name}{k}"
            homes[model] = k
            t = 0
            preds, labels = [], []
            for _ in range(40):
                ts = [t + i * 100 for i in range(rng.randint(200, 500))]
                lts = [x + rng.randint(1_000, 20_000) for x in ts]
                preds += [ts] if big == P else [ts[i:i + 40] for i in range(0, len(ts), 40)]
                labels += [lts] if big == L else [lts[i:i + 40] for i in range(0, len(lts), 40)]
                t = ts[-1] + 100
            queues[(model, P)], queues[(model, L)] = preds, labels
        for topic in (P, L):
            mine = {m: queues[(m, topic)] for m in homes if homes[m] == k}
            while any(mine.values()):  # a random merge, each model's batches in order
                model = rng.choice([m for m, q in mine.items() if q])
                parts[(topic, k)].produce(mine[model].pop(0))
                owner[(topic, k)].append(model)
        parts[("commands", k)].produce([0])
        owner[("commands", k)].append("")
    handed: dict[tuple[str, int], list[tuple[str, list[int]]]] = {tp: [] for tp in parts}
    seen = {(m, topic): -1 for m in homes for topic in (P, L)}
    idle = {m: False for m in homes}
    paused_ever: set[tuple[str, int]] = set()
    for _step in range(100_000):
        clock.now += rng.randint(1, 200)
        for tp in rng.sample(list(parts), len(parts)):
            batch = parts[tp].fetch()
            if batch:
                handed[tp].append((owner[tp][parts[tp].fetched - 1], batch))
        if rng.random() < 0.5:  # the worker processes everything handed over
            for tp, batches in handed.items():
                for model, batch in batches:
                    parts[tp].processed += len(batch)
                    if tp[0] in (P, L):
                        seen[(model, tp[0])] = max(seen[(model, tp[0])], *batch)
                    if tp[0] == L:
                        a.labels_received([model])
                        idle[model] = False  # as StreamProcessor does when labels arrive
                batches.clear()
        clocks = {}
        for m in homes:
            wp, wl = seen[(m, P)], seen[(m, L)]
            clocks[m] = Clocks(wp, wl, wp if idle[m] else min(wp, wl))
        plan = a.update({tp: p.offsets() for tp, p in parts.items()}, homes, clocks)
        idle = {m: s.idle for m, s in plan.labels.items()}
        assert all(topic != "commands" for topic, _ in plan.paused), plan.paused
        assert not any((P, k) in plan.paused and (L, k) in plan.paused for k in (0, 1)), plan.paused
        for tp, part in parts.items():
            part.paused = tp in plan.paused
        paused_ever |= plan.paused
        if all(p.processed == p.end() for p in parts.values()):
            break
    else:
        pytest.fail(f"the catch-up of {shapes} did not finish: a pause that never ends?")
    for k, shape in enumerate(shapes):  # the input read ahead was held back
        if shape != "opposed":
            assert {(P, k), (L, k)} & paused_ever == {(P if shape == "predictions ahead" else L, k)}, paused_ever
        else:  # both ways at once, at some point: neither was paused then
            assert f"not pausing {P}[{k}] nor {L}[{k}]" in caplog.text
    assert not any(s.enforced for s in plan.labels.values())


def test_settings_from_the_environment() -> None:
    s = Settings.from_env({})
    assert (s.input_idle_ms, s.input_wait_max_ms, s.align_max_skew_ms) == (3_000, 600_000, 600_000)
    s = Settings.from_env({"MLE_INPUT_IDLE": "500ms", "MLE_INPUT_WAIT_MAX": "90", "MLE_ALIGN_MAX_SKEW": "1h"})
    assert (s.input_idle_ms, s.input_wait_max_ms, s.align_max_skew_ms) == (500, 90_000, 3_600_000)
    with pytest.raises(ConfigError, match="MLE_INPUT_IDLE must be a duration"):
        Settings.from_env({"MLE_INPUT_IDLE": "soon"})
    with pytest.raises(ConfigError, match="must not be below MLE_INPUT_IDLE"):
        Settings.from_env({"MLE_INPUT_IDLE": "1m", "MLE_INPUT_WAIT_MAX": "30s"})


def test_a_model_without_a_partition_waits_for_every_labels_partition_held() -> None:
    """Messages without a key give a model no partition: its labels may be in any labels partition."""
    clock = Clock()
    a = alignment(clock)
    a.assigned([0, 1])
    clock.now += IDLE
    behind, caught_up = Offsets(0, 0, 5), Offsets(5, 5, 5)
    plan = a.update({(L, 0): caught_up, (L, 1): behind, (P, 0): behind}, {"m": None},
                    {"m": Clocks(2 * SKEW, -1, -1)})
    assert not plan.labels["m"].idle and not plan.labels["m"].caught_up
    assert plan.paused == frozenset()  # no partition of its own to pause
    plan = a.update({(L, 0): caught_up, (L, 1): caught_up}, {"m": None}, {})
    assert plan.labels["m"].idle and plan.labels["m"].caught_up
