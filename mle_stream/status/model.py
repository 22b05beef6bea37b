"""The status of every model, folded from what the worker and the actuator publish.

`StatusBoard.apply` takes the decoded events of the four output topics (MetricSnapshot, DriftTable,
Command, RolloutEvent) in the order they were read and keeps, per model: the versions and their
roles, the traffic the route last reported, the rollout phase, time series of the closed windows'
metrics and drift per version (the last `max_windows` windows), the decisions with their evidence,
and a timeline of commands and rollout events. No I/O: the status page's feed and
`mle-stream status` both read the topics and hand the events here.

Everything is idempotent per key, since a worker republishes after a restart (README: Outputs
after a restart): a window is keyed by its start (a REVISED snapshot replaces the CLOSED one), a
command by its id, a rollout event by its id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from mle_stream.core.events import Command, CommandKind, DriftTable, MetricSnapshot, RolloutEvent, RolloutStatus

StatusEvent = Union[MetricSnapshot, DriftTable, Command, RolloutEvent]

# Plotted when a model's topology is unknown (mle-stream status without -t) or names no checks.
DEFAULT_WATCHED = ("error_rate", "accuracy", "latency_p99_ms")
MAX_WINDOWS = 500
MAX_DECISIONS = 100
MAX_TIMELINE = 300
_JUDGED = ("CLOSED", "REVISED")  # OPEN snapshots are partial windows: the plots show judged ones only


@dataclass
class _Version:
    role: str = ""
    windows: dict[int, dict[str, Any]] = field(default_factory=dict)  # window_start -> point
    drift: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Model:
    name: str
    watched: tuple[str, ...]
    baseline: str | None = None
    candidate: str | None = None
    versions: dict[str, _Version] = field(default_factory=dict)
    traffic: dict[str, int] | None = None  # None: no APPLIED rollout event seen yet
    traffic_at: int | None = None
    champion: str | None = None
    challenger: str | None = None
    phase: str = "evaluating"
    commands: dict[str, Command] = field(default_factory=dict)  # command_id -> command, in arrival order
    events: dict[str, RolloutEvent] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)


def _bounded_put(series: dict[int, dict[str, Any]], key: int, point: dict[str, Any], limit: int) -> None:
    series[key] = point
    while len(series) > limit:
        del series[min(series)]


def _finite(value: float | None) -> float | None:
    # The page's JSON must parse in a browser: no NaN or Infinity.
    return value if value is None or math.isfinite(value) else None


def _evidence(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=lambda _: None) if text else {}
    except ValueError:
        return {"unparsed": text}


def _candidate_percent(command: Command) -> int | None:
    return command.traffic.get(command.candidate_version)


def command_phase(command: Command) -> str | None:
    """The phase a command starts, before the actuator reports; None when it changes no phase."""
    percent = _candidate_percent(command)
    if command.kind is CommandKind.HOLD:
        if command.rule.startswith("await-approval"):
            step = command.rule.rsplit("step-", 1)[-1] if "step-" in command.rule else "?"
            return f"waiting for approval: step {step}%"
        return "held"
    return {CommandKind.ROLLBACK: "rolling back", CommandKind.PROMOTE: "promoting",
            CommandKind.SET_TRAFFIC: f"rolling out: step {percent}% (pending)",
            CommandKind.APPROVE: f"approved: step {percent}%"}.get(command.kind)


def event_phase(event: RolloutEvent, command: Command | None) -> str | None:
    """The phase after the actuator's report of a command; None when it changes no phase."""
    action = event.action.upper()
    if event.status is RolloutStatus.APPLIED:
        if action == "ROLLBACK":
            return "rolled back"
        if action == "PROMOTE":
            return "promoted"
        if action == "SET_TRAFFIC":
            percent = _candidate_percent(command) if command is not None else None
            return f"rolling out: step {percent}%" if percent is not None else "rolling out"
        return None
    if event.status is RolloutStatus.FAILED:
        return f"{action.lower().replace('_', ' ')} failed: {event.details or event.reason}"[:200]
    if event.status is RolloutStatus.REJECTED:
        return None  # nothing changed; the timeline shows it
    return None


class StatusBoard:
    """Per-model status folded from decoded events (see the module docstring).

    `watched` names the metrics to plot per model (a topology's check metrics); others get
    DEFAULT_WATCHED. `max_windows` bounds each version's metric and drift series."""

    def __init__(self, watched: Mapping[str, Sequence[str]] | None = None, *, max_windows: int = MAX_WINDOWS,
                 max_decisions: int = MAX_DECISIONS, max_timeline: int = MAX_TIMELINE) -> None:
        if max_windows < 1 or max_decisions < 1 or max_timeline < 1:
            raise ValueError("max_windows, max_decisions and max_timeline must be >= 1")
        self._watched = {m: tuple(dict.fromkeys(metrics)) for m, metrics in (watched or {}).items()}
        self._max_windows = max_windows
        self._max_decisions = max_decisions
        self._max_timeline = max_timeline
        self._models: dict[str, _Model] = {}
        self._applied = 0

    @property
    def applied(self) -> int:
        """How many events were folded in (the feed's progress)."""
        return self._applied

    def models(self) -> list[str]:
        return sorted(self._models)

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(name, self._watched.get(name) or DEFAULT_WATCHED)
        return model

    def _version(self, model: _Model, version: str, role: str = "") -> _Version:
        state = model.versions.setdefault(version, _Version())
        if role and role != state.role:
            state.role = role
            if role == "baseline":
                model.baseline = version
            elif role in ("candidate", "shadow"):
                model.candidate = version
        return state

    def apply(self, event: StatusEvent) -> None:
        """Fold one decoded event in; events of other types raise TypeError."""
        if isinstance(event, MetricSnapshot):
            self._snapshot(event)
        elif isinstance(event, DriftTable):
            self._drift(event)
        elif isinstance(event, Command):
            self._command(event)
        elif isinstance(event, RolloutEvent):
            self._rollout_event(event)
        else:
            raise TypeError(f"not a status event: {type(event).__name__}")
        self._applied += 1

    def _snapshot(self, s: MetricSnapshot) -> None:
        model = self._model(s.model)
        version = self._version(model, s.version, s.role)
        if s.segment is not None or s.status not in _JUDGED:
            return
        # A window is judged once: a REVISED snapshot (late labels) may not repeat the verdict.
        verdict = s.verdict or version.windows.get(s.window_start, {}).get("verdict")
        _bounded_put(version.windows, s.window_start, {
            "window_start": s.window_start, "window_end": s.window_end, "predictions": s.predictions,
            "labeled": s.labeled, "verdict": verdict, "status": s.status,
            "metrics": {k: _finite(v) for k, v in s.metrics.items()},
        }, self._max_windows)

    def _drift(self, d: DriftTable) -> None:
        model = self._model(d.model)
        version = self._version(model, d.version, d.role)
        if d.status not in _JUDGED:
            return
        psis = [float(v) for stats in d.features.values() if isinstance(v := stats.get("psi"), (int, float))]
        _bounded_put(version.drift, d.window_start, {
            "window_start": d.window_start, "window_end": d.window_end, "reference": d.reference,
            "drifted_share": _finite(d.drifted_share), "max_psi": _finite(max(psis)) if psis else None,
            "drifted": list(d.drifted), "concept_drift": len(d.concept_drift), "status": d.status,
        }, self._max_windows)

    def _command(self, c: Command) -> None:
        model = self._model(c.model)
        if c.command_id in model.commands:
            return  # re-emitted after a worker restart: same id, nothing new
        model.commands[c.command_id] = c
        while len(model.commands) > self._max_decisions:
            del model.commands[next(iter(model.commands))]
        self._version(model, c.baseline_version, "baseline")
        self._version(model, c.candidate_version, "candidate")
        self._add_to_timeline(model, {
            "at": c.issued_at, "source": "command", "kind": c.kind.value, "command_id": c.command_id,
            "rule": c.rule, "reason": c.reason, "traffic": dict(c.traffic),
            "window_start": c.window_start, "window_end": c.window_end})


    def _rollout_event(self, e: RolloutEvent) -> None:
        model = self._model(e.model)
        if e.event_id in model.events:
            return
        model.events[e.event_id] = e
        while len(model.events) > self._max_decisions:
            del model.events[next(iter(model.events))]
        if e.status is RolloutStatus.APPLIED and e.route_weights:
            model.traffic, model.traffic_at = dict(e.route_weights), e.at
            for version in e.route_weights:
                self._version(model, version)
        if e.status is RolloutStatus.APPLIED:
            model.champion, model.challenger = e.champion, e.challenger
        self._add_to_timeline(model, {
            "at": e.at, "source": "rollout-event", "event_id": e.event_id, "kind": e.action, "status": e.status.value,
            "command_id": e.command_id, "reason": e.reason, "details": e.details,
            "traffic": dict(e.route_weights), "champion": e.champion, "challenger": e.challenger})

    def _add_to_timeline(self, model: _Model, entry: dict[str, Any]) -> None:
        # Insertion sort by time: entries arrive nearly in order (two topics, read side by side).
        timeline = model.timeline
        i = len(timeline)
        while i > 0 and timeline[i - 1]["at"] > entry["at"]:
            i -= 1
        timeline.insert(i, entry)
        if len(timeline) > self._max_timeline:
            del timeline[0]
        model.phase = self._phase(model)

    @staticmethod
    def _phase(model: _Model) -> str:
        """The phase after the timeline, in time order: the topics are read side by side, so a rollout
        event may be read before its command, and arrival order would move the phase back."""
        phase = "evaluating"
        for entry in model.timeline:
            if entry["source"] == "command":
                command = model.commands.get(entry["command_id"])
                # A rollback or a promotion ends the rollout: a HOLD or RETRAIN after it is news for
                # the timeline, not a new phase of this candidate.
                if command is None or (phase in ("rolled back", "promoted")
                                       and command.kind in (CommandKind.HOLD, CommandKind.RETRAIN)):
                    continue
                new = command_phase(command)
            else:
                event = model.events.get(entry["event_id"])
                new = None if event is None else event_phase(event, model.commands.get(entry["command_id"]))
            phase = new or phase
        return phase

    def model_json(self, name: str) -> dict[str, Any]:
        m = self._models[name]
        versions = []
        for v in sorted(m.versions, key=lambda v: (v != m.baseline, v != m.candidate, v)):
            state = m.versions[v]
            versions.append({
                "version": v, "role": state.role or ("baseline" if v == m.baseline else ""),
                "traffic": None if m.traffic is None else m.traffic.get(v, 0),
                "alias": "champion" if v == m.champion else "challenger" if v == m.challenger else None,
                "windows": [state.windows[k] for k in sorted(state.windows)],
                "drift": [state.drift[k] for k in sorted(state.drift)],
            })
        decisions = [{"command_id": c.command_id, "kind": c.kind.value, "rule": c.rule, "reason": c.reason,
                      "traffic": dict(c.traffic), "baseline": c.baseline_version, "candidate": c.candidate_version,
                      "window_start": c.window_start, "window_end": c.window_end, "issued_at": c.issued_at,
                      "evidence": _evidence(c.evidence),
                      "outcome": next((e.status.value for e in reversed(m.events.values())
                                       if e.command_id == c.command_id), None)}
                     for c in m.commands.values()]
        return {"model": name, "phase": m.phase, "baseline": m.baseline, "candidate": m.candidate,
                "traffic": m.traffic, "traffic_at": m.traffic_at, "champion": m.champion,
                "challenger": m.challenger, "watched": list(m.watched), "versions": versions,
                "decisions": sorted(decisions, key=lambda d: d["issued_at"]), "timeline": list(m.timeline)}

    def to_json(self, model: str | None = None) -> dict[str, Any]:
        """Plain data for the page's /api/status and `mle-stream status --json`: {"models": [...]},
        or only `model` (an empty list when it is unknown)."""
        names = [n for n in self.models() if model is None or n == model]
        return {"models": [self.model_json(n) for n in names], "events_applied": self._applied}
