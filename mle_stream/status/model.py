"""The status of every model, folded from what the worker and the actuator publish.

`StatusBoard.apply` takes the decoded events of the four output topics (MetricSnapshot, DriftTable,
Command, RolloutEvent) in the order they were read and keeps, per model: the versions and their
roles, the traffic the route last reported, the rollout phase, time series of the closed windows'
metrics and drift per version (the last `max_windows` windows), the decisions with their evidence,
and a timeline of commands and rollout events. A labels-silent HOLD (the candidate's labels stopped
coming) shows as the phase "held: labels silent" and in `labels_silent`, until a judged window of
the candidate has its label coverage back at the HOLD's floor. No I/O: the status page's feed and
`mle-stream status` both read the topics and hand the events here.

Everything is idempotent per key, since a worker republishes after a restart (docs/operations.md: Outputs
after a restart): a window is keyed by its start (a REVISED snapshot replaces the CLOSED one), a
command by its id, a rollout event by its id.

What reaches the board is chosen by trust, not by what the messages say
(docs/status-and-notifications-trust.md):

- the models are the topologies' (`watched`), fixed at construction: a record of any other model is
  counted and left off, so no message can add a model;
- a command is shown only when the injected `verify` accepts it (a forged APPROVE or PROMOTE must
  not move the phase or appear as a decision); the rest are counted;
- a rollout event is not signed, so it is shown only as the report of a verified command the board
  has seen. One read before its command (another topic) waits for it, in a bounded buffer; a
  REJECTED one does not wait, since that is what the actuator publishes for every forged command
  and a flood of them must not push real reports out of the buffer. One that never matches is never
  shown;
- each model holds at most `max_versions` versions: metric snapshots are not signed either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mle_stream.core.events import Command, CommandKind, DriftTable, MetricSnapshot, RolloutEvent, RolloutStatus
from mle_stream.core.policy import LABELS_SILENT

StatusEvent = MetricSnapshot | DriftTable | Command | RolloutEvent

# Plotted when a model's topology is unknown (mle-stream status without -t) or names no checks.
DEFAULT_WATCHED = ("error_rate", "accuracy", "latency_p99_ms")
MAX_WINDOWS = 500
MAX_DECISIONS = 100
MAX_TIMELINE = 300
MAX_VERSIONS = 20
_SEEN_COMMANDS = 10  # verified command ids remembered per model, in multiples of max_decisions

# Why apply() left an event off the board (the feed counts these per topic).
UNVERIFIED = "unverified"
UNKNOWN_MODEL = "unknown_model"
VERSION_LIMIT = "version_limit"
UNMATCHED = "unmatched"  # a rollout event of no verified command seen (dropped, not waiting)
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
    # Verified command ids, kept longer than `commands`: a late rollout event still finds its command.
    seen: dict[str, None] = field(default_factory=dict)
    events: dict[str, RolloutEvent] = field(default_factory=dict)
    unmatched: dict[str, RolloutEvent] = field(default_factory=dict)  # events waiting for their command
    timeline: list[dict[str, Any]] = field(default_factory=list)


class _Ignored(Exception):
    """An event the board leaves off, and why (one of the reasons apply() returns)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _bounded_put(series: dict[int, dict[str, Any]], key: int, point: dict[str, Any], limit: int) -> None:
    series[key] = point
    while len(series) > limit:
        del series[min(series)]


def _bounded_set(items: dict[Any, Any], key: Any, value: Any, limit: int) -> int:
    """items[key] = value, dropping the oldest insertions beyond `limit`; returns how many were dropped."""
    items[key] = value
    dropped = 0
    while len(items) > limit:
        del items[next(iter(items))]
        dropped += 1
    return dropped


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


def _labels_silent(command: Command) -> bool:
    return command.kind is CommandKind.HOLD and command.rule == LABELS_SILENT


def command_phase(command: Command) -> str | None:
    """The phase a command starts, before the actuator reports; None when it changes no phase."""
    percent = _candidate_percent(command)
    if command.kind is CommandKind.HOLD:
        if command.rule.startswith("await-approval"):
            step = command.rule.rsplit("step-", 1)[-1] if "step-" in command.rule else "?"
            return f"waiting for approval: step {step}%"
        return "held: labels silent" if _labels_silent(command) else "held"
    return {CommandKind.ROLLBACK: "rolling back", CommandKind.PROMOTE: "promoting",
            CommandKind.SET_TRAFFIC: f"rolling out: step {percent}% (pending)",
            CommandKind.APPROVE: f"approved: step {percent}%"}.get(command.kind)


def _silence_floor(command: Command) -> float | None:
    """The label coverage floor a labels-silent HOLD was issued under (its evidence names it)."""
    evidence = _evidence(command.evidence)
    settings = evidence.get("label_coverage") if isinstance(evidence, dict) else None
    floor = settings.get("floor") if isinstance(settings, dict) else None
    return float(floor) if isinstance(floor, (int, float)) and not isinstance(floor, bool) else None


def _silence_over(model: _Model, command: Command) -> bool:
    """Whether the labels came back after a labels-silent HOLD: a judged window of its candidate
    after the silent ones with coverage at the floor, as the policy sees the silence end (the
    policy says nothing when it ends, so the board reads it from the windows)."""
    floor, version = _silence_floor(command), model.versions.get(command.candidate_version)
    if floor is None or version is None:
        return False
    return any(w["window_end"] > command.window_end and w["predictions"] > 0
               and w["labeled"] >= floor * w["predictions"] for w in version.windows.values())


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

    `watched`: the models shown (the topologies') and the metrics to plot for each (its checks'
    metrics; DEFAULT_WATCHED when it names none). `verify`: whether a command comes from a trusted
    signer (mle_stream.verification.verifier_for); it must not raise. `max_windows` bounds each
    version's metric and drift series, `max_versions` the versions of a model."""

    def __init__(self, watched: Mapping[str, Sequence[str]], *, verify: Callable[[Command], bool],
                 max_windows: int = MAX_WINDOWS, max_decisions: int = MAX_DECISIONS, max_timeline: int = MAX_TIMELINE,
                 max_versions: int = MAX_VERSIONS) -> None:
        if min(max_windows, max_decisions, max_timeline, max_versions) < 1:
            raise ValueError("max_windows, max_decisions, max_timeline and max_versions must be >= 1")
        self._verify = verify
        self._max_windows = max_windows
        self._max_decisions = max_decisions
        self._max_timeline = max_timeline
        self._max_versions = max_versions
        self._models = {m: _Model(m, tuple(dict.fromkeys(metrics)) or DEFAULT_WATCHED)
                        for m, metrics in watched.items()}
        self._applied = 0
        self._ignored: dict[str, int] = {}

    @property
    def applied(self) -> int:
        """How many events were folded in (the feed's progress)."""
        return self._applied

    @property
    def ignored(self) -> dict[str, int]:
        """Events left off the board, by reason (UNVERIFIED, UNKNOWN_MODEL, VERSION_LIMIT, UNMATCHED: a
        REJECTED rollout event of no verified command seen, or another one no longer waiting for it)."""
        return dict(self._ignored)

    def models(self) -> list[str]:
        return sorted(self._models)

    def _make_room(self, model: _Model, versions: Sequence[str]) -> None:
        """Raise _Ignored(VERSION_LIMIT) before anything changes when `versions` would not fit."""
        if len(model.versions) + len(set(versions) - model.versions.keys()) > self._max_versions:
            raise _Ignored(VERSION_LIMIT)

    def _version(self, model: _Model, version: str, role: str = "") -> _Version:
        state = model.versions.get(version)
        if state is None:
            self._make_room(model, [version])
            state = model.versions[version] = _Version()
        if role and role != state.role:
            state.role = role
            if role == "baseline":
                model.baseline = version
            elif role in ("candidate", "shadow"):
                model.candidate = version
        return state

    def apply(self, event: StatusEvent) -> str | None:
        """Fold one decoded event in; returns None, or why it was left off the board (counted in `ignored`,
        which also counts the waiting rollout events this one pushed out). Other types raise TypeError."""
        if not isinstance(event, (MetricSnapshot, DriftTable, Command, RolloutEvent)):
            raise TypeError(f"not a status event: {type(event).__name__}")
        # Verified first: a forged command is counted as forged whatever model it names.
        if isinstance(event, Command) and not self._verify(event):
            return self._ignore(UNVERIFIED)
        model = self._models.get(event.model)
        if model is None:
            return self._ignore(UNKNOWN_MODEL)
        try:
            if isinstance(event, MetricSnapshot):
                self._snapshot(model, event)
            elif isinstance(event, DriftTable):
                self._drift(model, event)
            elif isinstance(event, Command):
                self._command(model, event)
            else:
                self._rollout_event(model, event)
        except _Ignored as exc:
            return self._ignore(exc.reason)
        self._applied += 1
        return None

    def _ignore(self, reason: str) -> str:
        self._ignored[reason] = self._ignored.get(reason, 0) + 1
        return reason

    def _snapshot(self, model: _Model, s: MetricSnapshot) -> None:
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
        if any(_labels_silent(c) for c in model.commands.values()):
            model.phase = self._phase(model)  # this window may be the one whose labels are back

    def _drift(self, model: _Model, d: DriftTable) -> None:
        version = self._version(model, d.version, d.role)
        if d.status not in _JUDGED:
            return
        psis = [float(v) for stats in d.features.values() if isinstance(v := stats.get("psi"), (int, float))]
        _bounded_put(version.drift, d.window_start, {
            "window_start": d.window_start, "window_end": d.window_end, "reference": d.reference,
            "drifted_share": _finite(d.drifted_share), "max_psi": _finite(max(psis)) if psis else None,
            "drifted": list(d.drifted), "concept_drift": len(d.concept_drift), "status": d.status,
        }, self._max_windows)

    def _command(self, model: _Model, c: Command) -> None:
        if c.command_id in model.commands:
            return  # re-emitted after a worker restart: same id, nothing new
        self._make_room(model, [c.baseline_version, c.candidate_version])
        self._version(model, c.baseline_version, "baseline")
        self._version(model, c.candidate_version, "candidate")
        _bounded_set(model.commands, c.command_id, c, self._max_decisions)
        _bounded_set(model.seen, c.command_id, None, self._max_decisions * _SEEN_COMMANDS)
        self._add_to_timeline(model, {
            "at": c.issued_at, "source": "command", "kind": c.kind.value, "command_id": c.command_id,
            "rule": c.rule, "reason": c.reason, "traffic": dict(c.traffic),
            "window_start": c.window_start, "window_end": c.window_end})
        for event in [e for e in model.unmatched.values() if e.command_id == c.command_id]:
            del model.unmatched[event.event_id]
            try:
                self._report(model, event)
            except _Ignored as exc:  # the event's, not this command's: the command is on the board
                self._ignore(exc.reason)

    def _rollout_event(self, model: _Model, e: RolloutEvent) -> None:
        if e.event_id in model.events or e.event_id in model.unmatched:
            return
        if e.command_id in model.seen:
            self._report(model, e)
        elif e.status is RolloutStatus.REJECTED:
            raise _Ignored(UNMATCHED)
        else:  # read before its command (another topic), or the report of no verified command at all
            for _ in range(_bounded_set(model.unmatched, e.event_id, e, self._max_decisions)):
                self._ignore(UNMATCHED)

    def _report(self, model: _Model, e: RolloutEvent) -> None:
        """The actuator's report `e` of a verified command: traffic, aliases, timeline."""
        if e.status is RolloutStatus.APPLIED and e.route_weights:
            self._make_room(model, list(e.route_weights))
            for version in e.route_weights:
                self._version(model, version)
        _bounded_set(model.events, e.event_id, e, self._max_decisions)
        # The last report in time order wins: a report waiting for its command comes in late.
        if e.status is RolloutStatus.APPLIED and (model.traffic_at is None or e.at >= model.traffic_at):
            if e.route_weights:
                model.traffic = dict(e.route_weights)
            model.traffic_at = e.at
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
                # A silence whose labels came back no longer holds: the phase before it stands.
                new = None if _labels_silent(command) and _silence_over(model, command) else command_phase(command)
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
        return {"model": name, "phase": m.phase, "labels_silent": self._silence(m),
                "baseline": m.baseline, "candidate": m.candidate,
                "traffic": m.traffic, "traffic_at": m.traffic_at, "champion": m.champion,
                "challenger": m.challenger, "watched": list(m.watched), "versions": versions,
                "decisions": sorted(decisions, key=lambda d: d["issued_at"]), "timeline": list(m.timeline),
                "unmatched_events": len(m.unmatched)}

    @staticmethod
    def _silence(model: _Model) -> dict[str, Any] | None:
        """The newest labels-silent HOLD whose labels have not come back: since when (the first
        silent window), the floor and the last silent window's coverage; None when there is none."""
        held = [c for c in model.commands.values() if _labels_silent(c)]
        if not held or model.phase in ("rolled back", "promoted"):
            return None
        last = max(held, key=lambda c: (c.window_end, c.issued_at))
        if _silence_over(model, last):
            return None
        evidence = _evidence(last.evidence)
        windows = evidence.get("coverage") if isinstance(evidence, dict) else None
        coverage = windows[-1].get("coverage") if isinstance(windows, list) and windows and isinstance(
            windows[-1], dict) else None
        return {"command_id": last.command_id, "candidate": last.candidate_version, "since": last.window_start,
                "until": last.window_end, "floor": _silence_floor(last),
                "coverage": _finite(coverage) if isinstance(coverage, (int, float)) else None}

    def to_json(self, model: str | None = None) -> dict[str, Any]:
        """Plain data for the page's /api/status and `mle-stream status --json`: {"models": [...]},
        or only `model` (an empty list when it is unknown). `events_applied` counts the events folded
        in, `ignored` those left off by reason."""
        names = [n for n in self.models() if model is None or n == model]
        return {"models": [self.model_json(n) for n in names], "events_applied": self._applied,
                "ignored": self.ignored}
