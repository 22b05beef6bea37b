"""Everything mle-stream knows about one model: the label join, its panes and its policy state.

The stream (and `mle-stream replay`) feed decoded records in and call `advance`; what comes out
(window results of closed windows, judgements, commands) is for the edge to publish. Records the
contract allows but this model cannot use (a binary label 'cat', a timestamp far in the future)
come back as Rejects for the dead-letter topic.

The per-record work is the join (a dict lookup) and appending to column lists; the metric states
are updated once per (pane, version, segment) and batch, from numpy arrays.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mle_stream.core.events import Command, Label, LabelValue, MetricSnapshot, Prediction
from mle_stream.core.join import Arrival, LabelJoin, binary_truth
from mle_stream.core.metrics.outcomes import BinaryOutcomes, MulticlassOutcomes, RegressionOutcomes
from mle_stream.core.policy import PolicyState, WindowJudgement, decide, judge
from mle_stream.core.topology import Topology
from mle_stream.core.window_state import WindowState
from mle_stream.core.windows import PaneTable, Segment, WindowSpec

OTHER = "__other__"  # the segment value that stands for every value past the cardinality cap


@dataclass(frozen=True)
class Reject:
    record: Prediction | Label
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Pending:
    """What the join keeps of a prediction: enough to score it, not its features."""

    version: str
    pane: int
    segments: tuple[Segment, ...]  # always starts with None, the whole version
    output: Any  # binary: score; multiclass: the scores map; regression: the value
    decision: Any  # binary: bool; multiclass: class name; regression: None


@dataclass
class Advance:
    windows: list[MetricSnapshot] = field(default_factory=list)
    judgements: list[WindowJudgement] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)


class _Columns:
    """Rows for one state, gathered during a batch and applied at its end."""

    __slots__ = ("a", "b", "c", "w")

    def __init__(self) -> None:
        self.a: list[Any] = []
        self.b: list[Any] = []
        self.c: list[Any] = []
        self.w: list[float] = []


class ModelEvaluator:
    def __init__(self, topology: Topology) -> None:
        t = self.topology = topology
        spec = WindowSpec(t.window_size_ms, t.window_hop_ms, t.window_grace_ms, t.window_retention_ms)
        self.panes: PaneTable[WindowState] = PaneTable(spec, lambda: WindowState.for_topology(t))
        # A joined pair stays correctable as long as its pane can still change.
        self.join: LabelJoin[Pending] = LabelJoin(t.label_max_delay_ms, t.window_size_ms + t.window_retention_ms)
        self.policy_state = PolicyState()
        self._segment_values: dict[str, set[str]] = {d: set() for d in t.segment_dimensions}
        self._touched: set[int] = set()  # panes updated since updates were last emitted

    def role(self, version: str) -> str:
        if version == self.topology.baseline_version:
            return "baseline"
        if version == self.topology.candidate_version:
            return "candidate"
        return "other"

    # -- input ------------------------------------------------------------------------------------

    def add_predictions(self, predictions: list[Prediction], now_ms: int) -> list[Reject]:
        rejects: list[Reject] = []
        served: defaultdict[tuple[int, str, Segment], _Columns] = defaultdict(_Columns)
        scored: defaultdict[tuple[int, str, Segment], _Columns] = defaultdict(_Columns)
        horizon = now_ms + self.topology.max_clock_skew_ms
        panes = self.panes
        for p in predictions:
            if p.timestamp > horizon:
                # One far-future timestamp would close every open window at once: refuse it.
                rejects.append(Reject(p, "timestamp", f"{p.timestamp} is {p.timestamp - now_ms} ms ahead of the "
                                      f"worker's clock (allowed: {self.topology.max_clock_skew_ms} ms)"))
                continue
            try:
                output, decision = self._read_output(p)
            except ValueError as exc:
                field_name, _, reason = str(exc).partition(": ")
                rejects.append(Reject(p, field_name, reason))
                continue
            panes.observe(p.timestamp)
            pane = panes.pane_start(p.timestamp)
            if not panes.is_retained(pane):
                panes.late_dropped += 1
                continue
            pending = Pending(p.version, pane, self._segments(p), output, decision)
            if p.error is None:
                result = self.join.add_prediction(p.prediction_id, p.timestamp, pending)
                if result.arrival is Arrival.DUPLICATE:
                    continue
                if result.arrival is Arrival.JOINED:
                    self._collect(scored, pending, result.label, 1.0)  # type: ignore[arg-type]  # set when JOINED
            latency = np.nan if p.latency_ms is None else p.latency_ms
            for segment in pending.segments:
                cols = served[(pane, p.version, segment)]
                cols.a.append(latency)
                cols.b.append(p.error is not None)
        self._apply_served(served)
        self._apply_scored(scored)
        return rejects

    def add_labels(self, labels: list[Label]) -> list[Reject]:
        rejects: list[Reject] = []
        scored: defaultdict[tuple[int, str, Segment], _Columns] = defaultdict(_Columns)
        for label in labels:
            try:
                truth = self._read_truth(label.label)
            except ValueError as exc:
                rejects.append(Reject(label, "label", f"cannot score a {self.topology.task} model with it: {exc}"))
                continue
            result = self.join.add_label(label.prediction_id, label.timestamp, truth)
            if result.arrival is Arrival.JOINED:
                self._collect(scored, result.prediction, truth, 1.0)  # type: ignore[arg-type]
            elif result.arrival is Arrival.CORRECTED:
                # The later label wins: take the old outcome out, put the new one in.
                self._collect(scored, result.prediction, result.previous_label, -1.0)  # type: ignore[arg-type]
                self._collect(scored, result.prediction, truth, 1.0)  # type: ignore[arg-type]
        self._apply_scored(scored)
        return rejects

    def _read_output(self, p: Prediction) -> tuple[Any, Any]:
        """The model output and the decision taken; ValueError('field: reason') when unusable."""
        task = self.topology.task
        if p.error is not None:
            return None, None
        if task == "binary":
            if p.score is None:
                raise ValueError(f"score: model {p.model!r} is a binary model: its predictions carry 'score'")
            if p.predicted_label is not None:
                try:
                    return p.score, binary_truth(p.predicted_label)
                except ValueError as exc:
                    raise ValueError(f"predicted_label: {exc}") from None
            return p.score, p.score >= self.topology.threshold
        if task == "multiclass":
            if p.scores is None:
                raise ValueError(f"scores: model {p.model!r} is a multiclass model: its predictions carry 'scores'")
            if sum(p.scores.values()) <= 0 or min(p.scores.values()) < 0:
                raise ValueError("scores: class probabilities must be >= 0 and not all 0")
            decision = p.predicted_label if p.predicted_label is not None else max(p.scores, key=p.scores.__getitem__)
            return p.scores, str(decision)
        if p.value is None:
            raise ValueError(f"value: model {p.model!r} is a regression model: its predictions carry 'value'")
        return p.value, None

    def _read_truth(self, value: LabelValue) -> LabelValue:
        task = self.topology.task
        if task == "binary":
            return binary_truth(value)
        if task == "multiclass":
            return str(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a regression label must be a number, got {value!r}")
        return float(value)

    def _segments(self, p: Prediction) -> tuple[Segment, ...]:
        if not self._segment_values or not p.segment:
            return (None,)
        out: list[Segment] = [None]
        for dimension, seen in self._segment_values.items():
            value = p.segment.get(dimension)
            if value is None:
                continue
            if value not in seen:
                if len(seen) >= self.topology.segment_max_values:
                    value = OTHER
                else:
                    seen.add(value)
            out.append((dimension, value))
        return tuple(out)

    def _collect(self, scored: defaultdict[tuple[int, str, Segment], _Columns], pending: Pending,
                 truth: LabelValue, weight: float) -> None:
        task = self.topology.task
        if task == "binary":
            a, b, c = truth, pending.output, pending.decision
        elif task == "multiclass":
            total = sum(pending.output.values())
            a, b, c = truth, pending.decision, pending.output.get(truth, 0.0) / total
        else:
            a, b, c = truth, pending.output, None
        for segment in pending.segments:
            cols = scored[(pending.pane, pending.version, segment)]
            cols.a.append(a)
            cols.b.append(b)
            cols.c.append(c)
            cols.w.append(weight)

    def _apply_served(self, served: Mapping[tuple[int, str, Segment], _Columns]) -> None:
        for (pane, version, segment), cols in served.items():
            state = self.panes.state(pane, version, segment)
            if state is not None:
                self._touched.add(pane)
                state.serve(np.array(cols.a, dtype=np.float64), np.array(cols.b, dtype=np.bool_))

    def _apply_scored(self, scored: Mapping[tuple[int, str, Segment], _Columns]) -> None:
        task = self.topology.task
        for (pane, version, segment), cols in scored.items():
            state = self.panes.state(pane, version, segment)
            if state is None:
                continue
            self._touched.add(pane)
            weight = np.array(cols.w, dtype=np.float64)
            if task == "binary":
                state.score(BinaryOutcomes(np.array(cols.a, dtype=np.bool_), np.array(cols.b, dtype=np.float64),
                                           np.array(cols.c, dtype=np.bool_), weight))
            elif task == "multiclass":
                state.score(MulticlassOutcomes(np.array(cols.a, dtype=object), np.array(cols.b, dtype=object),
                                               np.array(cols.c, dtype=np.float64), weight))
            else:
                state.score(RegressionOutcomes(np.array(cols.a, dtype=np.float64),
                                               np.array(cols.b, dtype=np.float64), weight))

    # -- output -----------------------------------------------------------------------------------

    def close_all(self, now_ms: int) -> Advance:
        """Close every window that holds data, as if event time had moved far past them (the end
        of a replay)."""
        t = self.topology
        if self.panes.watermark >= 0:
            self.panes.observe(self.panes.watermark + t.window_size_ms + t.window_grace_ms)
        return self.advance(now_ms, updates=True)

    def advance(self, now_ms: int, updates: bool = False) -> Advance:
        """Close the windows the watermark has passed (results with status CLOSED, judgement,
        decision). With `updates`, also report every other window whose panes changed since the
        last updates: OPEN ones still filling, REVISED ones that late labels changed after they
        closed (their verdict stands: a decision is taken once). Then forget what retention no
        longer needs."""
        out = Advance()
        t = self.topology
        already_closed = self.panes.next_window
        closing = self.panes.close_ready()
        for start in closing:
            baseline = self.panes.window(start, t.baseline_version)
            candidate = self.panes.window(start, t.candidate_version)
            judgement = judge(t, start, baseline, candidate)
            self.policy_state, commands = decide(t, self.policy_state, judgement, now_ms)
            out.judgements.append(judgement)
            out.commands.extend(commands)
            known: dict[tuple[str, Segment], WindowState] = {
                (t.baseline_version, None): baseline, (t.candidate_version, None): candidate}
            out.windows.extend(self._results(start, "CLOSED", judgement.verdict.value, known, now_ms))
        if updates:
            changed = {s for pane in self._touched for s in self.panes.windows_holding(pane)} - set(closing)
            for start in sorted(changed):
                if already_closed is not None and start < already_closed:
                    status = "REVISED"
                elif self.panes.next_window is None or start >= self.panes.next_window:
                    status = "OPEN"
                else:
                    continue  # starts before the first window with data: never judged, never reported
                out.windows.extend(self._results(start, status, None, {}, now_ms))
            self._touched.clear()
        if closing:
            # Both scan only what has expired; run them once per closing, not per batch.
            self.panes.retire()
            self.join.expire(self.panes.watermark)
        return out

    def _results(self, start: int, status: str, verdict: str | None,
                 known: Mapping[tuple[str, Segment], WindowState], now_ms: int) -> list[MetricSnapshot]:
        t = self.topology
        keys = self.panes.keys_in(start) | set(known)
        results = []
        for version, segment in sorted(keys, key=lambda k: (k[0], k[1] or ("", ""))):
            state = known.get((version, segment)) or self.panes.window(start, version, segment)
            role = self.role(version)
            results.append(MetricSnapshot(
                model=t.model, version=version, role=role,
                segment=None if segment is None else f"{segment[0]}={segment[1]}",
                window_start=start, window_end=start + t.window_size_ms,
                predictions=state.predictions, labeled=state.labeled,
                metrics=state.values(t.window_size_ms / 1000),
                verdict=verdict if role == "candidate" and segment is None else None, status=status,
                emitted_at=now_ms,
            ))
        return results


__all__ = ["Advance", "ModelEvaluator", "Pending", "Reject"]
