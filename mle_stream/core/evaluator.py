"""Everything mle-stream knows about one model: the label join, its windows and its policy state.

The stream feeds decoded records in and calls `advance`; what comes out (metric snapshots of
closed windows, judgements, commands) is for the edge to publish. Records the contract allows but
this model cannot use (a binary label 'cat', a timestamp far in the future) come back as Rejects
for the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mle_stream.core.events import Command, Label, MetricSnapshot, Prediction
from mle_stream.core.join import Joined, LabelJoin, binary_truth
from mle_stream.core.policy import PolicyState, Verdict, WindowJudgement, decide, judge
from mle_stream.core.topology import Topology
from mle_stream.core.windows import WindowTable


@dataclass(frozen=True)
class Reject:
    record: Prediction | Label
    field: str
    reason: str


@dataclass
class Advance:
    snapshots: list[MetricSnapshot] = field(default_factory=list)
    judgements: list[WindowJudgement] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)


class ModelEvaluator:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.windows = WindowTable(topology.window_size_ms, topology.window_grace_ms, topology.window_retention_ms)
        self.join = LabelJoin(topology.label_max_delay_ms)
        self.policy_state = PolicyState()
        self._versions: set[str] = {topology.baseline_version, topology.candidate_version}

    def role(self, version: str) -> str:
        if version == self.topology.baseline_version:
            return "baseline"
        if version == self.topology.candidate_version:
            return "candidate"
        return "other"

    def add_predictions(self, predictions: list[Prediction], now_ms: int) -> list[Reject]:
        rejects: list[Reject] = []
        horizon = now_ms + self.topology.max_clock_skew_ms
        for p in predictions:
            if p.timestamp > horizon:
                # One far-future timestamp would close every open window at once: refuse it.
                rejects.append(Reject(p, "timestamp", f"{p.timestamp} is {p.timestamp - now_ms} ms ahead of the "
                                      f"worker's clock (allowed: {self.topology.max_clock_skew_ms} ms)"))
                continue
            problem = self._output_problem(p)
            if problem:
                rejects.append(Reject(p, *problem))
                continue
            self.windows.observe(p.timestamp)
            metrics = self.windows.metrics_for(p.version, p.timestamp)
            if metrics is None:
                continue
            self._versions.add(p.version)
            metrics.add_prediction(p.latency_ms, p.error is not None)
            joined = self.join.add_prediction(p)
            if joined is not None:
                rejects.extend(self._score(joined))
        return rejects

    def add_labels(self, labels: list[Label]) -> list[Reject]:
        rejects: list[Reject] = []
        for label in labels:
            joined = self.join.add_label(label)
            if joined is not None:
                rejects.extend(self._score(joined))
        return rejects

    def _output_problem(self, p: Prediction) -> tuple[str, str] | None:
        if p.error is not None:
            return None
        expected = {"binary": "score", "multiclass": "scores", "regression": "value"}[self.topology.task]
        if getattr(p, expected) is None:
            return expected, f"model {p.model!r} is a {self.topology.task} model: its predictions carry {expected!r}"
        return None

    def _score(self, joined: Joined) -> list[Reject]:
        p, label = joined.prediction, joined.label
        metrics = self.windows.metrics_for(p.version, p.timestamp)
        if metrics is None:
            return []
        if p.error is not None:
            # A failed request has no output to compare; it is already in serving_error_rate.
            return []
        try:
            if self.topology.task == "binary":
                truth = binary_truth(label.label)
                if p.predicted_label is not None:
                    predicted = binary_truth(p.predicted_label)
                else:
                    predicted = p.score is not None and p.score >= self.topology.threshold
                metrics.add_outcome(predicted == truth)
            elif self.topology.task == "multiclass":
                assert p.scores is not None
                predicted_cls = p.predicted_label if p.predicted_label is not None else max(p.scores, key=p.scores.__getitem__)
                metrics.add_outcome(str(predicted_cls) == str(label.label))
            else:
                assert p.value is not None
                metrics.add_outcome(None, abs(p.value - float(label.label)))
        except (ValueError, TypeError) as exc:
            return [Reject(label, "label", f"cannot score against prediction {p.prediction_id!r}: {exc}")]
        return []

    def advance(self, now_ms: int) -> Advance:
        """Close the windows the watermark has passed: snapshot, judge, decide. Then forget old state."""
        out = Advance()
        t = self.topology
        for start in self.windows.close_ready():
            baseline = self.windows.get(t.baseline_version, start)
            candidate = self.windows.get(t.candidate_version, start)
            judgement = judge(t, start, baseline, candidate)
            self.policy_state, commands = decide(t, self.policy_state, judgement, now_ms)
            out.judgements.append(judgement)
            out.commands.extend(commands)
            for version in sorted(self._versions):
                m = self.windows.get(version, start)
                role = self.role(version)
                out.snapshots.append(MetricSnapshot(
                    model=t.model, version=version, role=role,
                    window_start=start, window_end=start + t.window_size_ms,
                    predictions=m.predictions, labeled=m.labeled, correct=m.correct,
                    serving_errors=m.serving_errors, accuracy=m.accuracy, error_rate=m.error_rate,
                    serving_error_rate=m.serving_error_rate, label_coverage=m.label_coverage,
                    latency_p50_ms=m.latency.quantile(0.5), latency_p95_ms=m.latency.quantile(0.95),
                    latency_p99_ms=m.latency.quantile(0.99),
                    verdict=judgement.verdict.value if role == "candidate" else None,
                    emitted_at=now_ms,
                ))
        if out.judgements:
            # Both are linear scans: run them once per closed window, not per batch.
            self.windows.retire()
            self.join.expire(self.windows.watermark)
        return out


__all__ = ["Advance", "ModelEvaluator", "Reject", "Verdict"]
