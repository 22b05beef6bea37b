"""`mle-stream replay`: the stream's core over recorded events, in event-time order, no broker.

Predictions and labels (JSON lines, the same fields as on the topics) are merged into one stream
ordered by timestamp, fed to the same ModelEvaluator the worker uses in batches, and every window
is closed at the end. A user backtests a topology on yesterday's traffic this way.

With reference profiles (`--reference ref.json`, repeatable; each names its model and version),
drift is computed for their models even when the topology has no drift section, and the JSON
output carries each window's drift table under "drift" (see core/drift/live.py for what a window
is compared with).

Without a topology for a model, a default is inferred from its data: the task from the first
prediction's output (score: binary, scores: multiclass, value: regression), the most frequent
version as the baseline and the next as the candidate, 1-hour tumbling windows with no grace and
retention over the whole recording, and the default rollback rule.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from mle_stream import wire
from mle_stream.core.drift.profile import ReferenceProfile
from mle_stream.core.evaluator import Advance, ModelEvaluator
from mle_stream.core.events import Command, DriftTable, Label, MetricSnapshot, Prediction
from mle_stream.core.tasks import TASKS
from mle_stream.core.topology import Topology
from mle_stream.errors import ConfigError, InvalidEvent

BATCH = 5000  # records per evaluator call: the same batched path the worker takes
_REPORTED_ERRORS = 20


@dataclass
class ReplayResult:
    windows: list[MetricSnapshot] = field(default_factory=list)
    drift: list[DriftTable] = field(default_factory=list)
    decisions: list[Command] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        tables = {(d.model, d.version, d.window_start): d for d in self.drift}
        return {
            "windows": [window_json(w, tables.get((w.model, w.version, w.window_start)) if w.segment is None else None)
                        for w in self.windows],
            "decisions": [wire.to_json_dict(c) for c in self.decisions],
            "rejected": len(self.rejected),
        }


def window_json(w: MetricSnapshot, drift: DriftTable | None = None) -> dict[str, Any]:
    """A window as JSON; with its drift table, "drift" maps each feature (and "__score__") to its
    statistics and "drifted", "drift_reference" says what it was compared with."""
    doc = wire.to_json_dict(w)
    del doc["emitted_at"]  # the replay's clock, not information about the window
    if drift is not None:
        doc["drift"] = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in stats.items()}
                        for name, stats in drift.features.items()}
        doc["drift_reference"] = drift.reference
        doc["drifted_share"] = drift.drifted_share
    return doc


def read_jsonl(path: Path, kind: str, errors: list[str]) -> list[Prediction] | list[Label]:
    make = wire.prediction_from_dict if kind == "prediction" else wire.label_from_dict
    records: list[Any] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {kind}s from {path}: {exc.strerror}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(make(json.loads(line)))
            except (ValueError, InvalidEvent) as exc:  # json.JSONDecodeError is a ValueError
                errors.append(f"{path}:{number}: {exc}")
    return records


def default_topology(model: str, predictions: list[Prediction]) -> Topology:
    from mle_stream.core.topology import parse_topology

    first = next((p for p in predictions if p.error is None), None)
    # A prediction that did not fail carries exactly one output field: its task's.
    task = "binary" if first is None else next(
        name for name, t in TASKS.items() if getattr(first, t.output_field) is not None)
    versions = [v for v, _ in Counter(p.version for p in predictions).most_common()]
    baseline = versions[0] if versions else "1"
    candidate = versions[1] if len(versions) > 1 else f"{baseline}-candidate"
    span = max((p.timestamp for p in predictions), default=0) - min((p.timestamp for p in predictions), default=0)
    retention_h = max(1, span // 3_600_000 + 2)
    rule = "error_rate" if "error_rate" in TASKS[task].metric_names else "serving_error_rate"
    text = (f"model: {json.dumps(model)}\ntask: {task}\nbaseline: {{version: {json.dumps(baseline)}}}\n"
            f"candidate: {{version: {json.dumps(candidate)}}}\n"
            f"windows: {{size: 1h, grace: 0s, retention: {retention_h}h}}\n"
            f"labels: {{max_delay: {retention_h}h}}\nrollback: {{metric: {rule}}}\n")
    return parse_topology(text, f"<default topology for {model}>")


def _events(predictions: list[Prediction], labels: list[Label]) -> Iterator[tuple[int, int, Prediction | Label]]:
    """Both streams in event-time order; at equal times predictions first, then file order."""
    p_stream: Iterator[tuple[int, int, int, Prediction | Label]] = (
        (p.timestamp, 0, i, p) for i, p in enumerate(sorted(predictions, key=lambda r: r.timestamp)))
    l_stream: Iterator[tuple[int, int, int, Prediction | Label]] = (
        (lab.timestamp, 1, i, lab) for i, lab in enumerate(sorted(labels, key=lambda r: r.timestamp)))
    for ts, kind, _, record in heapq.merge(p_stream, l_stream):
        yield ts, kind, record


def replay(predictions: list[Prediction], labels: list[Label], topologies: Mapping[str, Topology],
           references: Sequence[ReferenceProfile] = ()) -> ReplayResult:
    result = ReplayResult()
    models = {p.model for p in predictions} | {lab.model for lab in labels}
    by_model = {m: [p for p in predictions if p.model == m] for m in models}
    profiles: dict[str, dict[str, ReferenceProfile]] = {}
    for profile in references:
        profiles.setdefault(profile.model, {})[profile.version] = profile
    evaluators = {}
    for m in sorted(models):
        topology = topologies.get(m) or default_topology(m, by_model[m])
        if m in profiles and not topology.drift.enabled:
            topology = replace(topology, drift=replace(topology.drift, enabled=True))
        evaluators[m] = ModelEvaluator(topology, profiles.get(m))
    # The recording's clock, not the wall's: no record of it is in the future.
    now = max(max((p.timestamp for p in predictions), default=0), max((lab.timestamp for lab in labels), default=0))

    latest: dict[tuple[str, str, Any, int], MetricSnapshot] = {}
    latest_drift: dict[tuple[str, str, int], DriftTable] = {}

    def collect(advance: Advance) -> None:
        # A window is reported as it fills, closes and is revised by late labels: keep the last.
        for w in advance.windows:
            latest[(w.model, w.version, w.segment, w.window_start)] = w
        for d in advance.drift:
            latest_drift[(d.model, d.version, d.window_start)] = d
        result.decisions.extend(advance.commands)

    pending: dict[str, tuple[int, list[Any]]] = {}

    def flush(model: str) -> None:
        kind, batch = pending.pop(model)
        ev = evaluators[model]
        rejects = ev.add_predictions(batch, now) if kind == 0 else ev.add_labels(batch, now)
        result.rejected.extend(f"{batch[r.index].prediction_id}: {r.field}: {r.reason}" for r in rejects)
        # Where a window closes (judgement, decision, expiry), exactly where the records put it;
        # in between, advancing would only report snapshots that a later one replaces. On
        # interleaved traffic, a run of one kind is often a record or two, and advancing after
        # each would cost far more than the records themselves.
        if ev.closing_due():
            collect(ev.advance(now, updates=True))

    for _, kind, record in _events(predictions, labels):
        current = pending.get(record.model)
        if current is not None and (current[0] != kind or len(current[1]) >= BATCH):
            flush(record.model)
            current = None
        if current is None:
            pending[record.model] = current = (kind, [])
        current[1].append(record)
    for model in list(pending):
        flush(model)
    for model in sorted(evaluators):
        collect(evaluators[model].close_all(now))
    result.windows = sorted(latest.values(), key=lambda w: (w.model, w.window_start, w.version, w.segment or ""))
    result.drift = sorted(latest_drift.values(), key=lambda d: (d.model, d.window_start, d.version))
    return result


def run_replay(predictions_path: Path, labels_path: Path | None, topologies: Mapping[str, Topology],
               json_output: bool, out: TextIO | None = None, err: TextIO | None = None,
               references: Sequence[ReferenceProfile] = ()) -> int:
    # Looked up per call, not bound at import: a caller (or pytest) may have replaced them since.
    out, err = out or sys.stdout, err or sys.stderr
    errors: list[str] = []
    predictions = read_jsonl(predictions_path, "prediction", errors)
    labels = read_jsonl(labels_path, "label", errors) if labels_path else []
    result = replay(predictions, labels, topologies, list(references))  # type: ignore[arg-type]
    result.rejected[:0] = errors
    for line in result.rejected[:_REPORTED_ERRORS]:
        print(f"rejected: {line}", file=err)
    if len(result.rejected) > _REPORTED_ERRORS:
        print(f"... and {len(result.rejected) - _REPORTED_ERRORS} more rejected records", file=err)
    if json_output:
        json.dump(result.to_json(), out, indent=2, sort_keys=True, allow_nan=False)
        print(file=out)
        return 0
    for w in result.windows:
        m = w.metrics
        seg = "" if w.segment is None else f" [{w.segment}]"
        acc = m.get("accuracy")
        print(f"{w.model} v{w.version}{seg} {w.window_start}..{w.window_end}: {w.predictions} predictions, "
              f"{w.labeled} labeled" + (f", accuracy {acc:.4f}" if acc is not None else "")
              + (f" → {w.verdict}" if w.verdict else ""), file=out)
    for d in result.drift:
        if d.drifted:
            print(f"drift: {d.model} v{d.version} {d.window_start}..{d.window_end} against {d.reference}: "
                  f"{', '.join(d.drifted)}", file=out)
    for c in result.decisions:
        print(f"decision: {c.kind.value} {c.model} v{c.candidate_version}: {c.reason}", file=out)
    return 0
