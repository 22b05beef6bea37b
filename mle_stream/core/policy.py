"""The decision policy: each closed window judged by the topology's checks, and what follows.

`judge` gives each check's verdict on a window (core/checks.py) and the window's overall verdict:
FAIL when a check fails, else INCONCLUSIVE when a check has too few samples, else PASS; ERROR when
neither version served a single prediction in the window. `decide` is a pure function (state,
judgement, now) -> (state, commands); the stream and `mle-stream replay` call the same one:

- a check whose FAIL windows reach `consecutive` in a row, or `cumulative` in all, fires its
  action: ROLLBACK (the candidate to 0%, once: a rolled-back candidate gets no further commands)
  or HOLD (keep the current traffic step). Only windows that follow each other count as
  consecutive: an INCONCLUSIVE or PASS window in between resets the streak, so a data gap can
  never turn into a rollback;
- ERROR (no data, or a source outage longer than `decision.outage_after`, see `decide_outage`)
  holds: a HOLD command, not repeated within `decision.cooldown`, and never a rollback;
- labels that stop coming while predictions flow (`decision.label_coverage`, see `_silence`) hold
  once: one HOLD per silence, however long it lasts, until the coverage is back.

Every command carries its evidence: the rule with its limits, the windows with every check's
numbers, and the topology it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mle_stream.core.checks import CheckResult, CheckRule, Verdict, judge_check, paired_window, samples_of
from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind
from mle_stream.core.topology import Topology
from mle_stream.core.window_state import WindowState

__all__ = ["CheckState", "PolicyState", "Verdict", "WindowJudgement", "approve", "decide", "decide_outage", "judge"]


@dataclass(frozen=True)
class WindowJudgement:
    window_start: int
    window_end: int
    verdict: Verdict
    checks: tuple[CheckResult, ...]
    reason: str
    # The candidate's counts in the window: its label coverage (labeled / predictions) is what
    # `decision.label_coverage` watches, whatever the checks read.
    candidate_predictions: int = 0
    candidate_labeled: int = 0

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.check == name)

    def evidence(self) -> dict[str, Any]:
        return {"window_start": self.window_start, "window_end": self.window_end, "verdict": self.verdict.value,
                "checks": [c.evidence() for c in self.checks], "reason": self.reason}


@dataclass(frozen=True)
class CheckState:
    # Evidence of the last FAIL windows in a row, oldest first: at most the check's `consecutive`
    # (what firing needs), so that a `hold` check failing for days keeps a bounded state and HOLD.
    streak: tuple[dict[str, Any], ...] = ()
    failures: int = 0  # FAIL windows since the rollout began
    failing: bool = False  # the last judged window FAILed (hysteresis)
    test: Mapping[str, Any] | None = None  # a sequential check's test state over the rollout so far
    run: int = 0  # FAIL windows in a row (the streak's length before it was cut to `consecutive`)


@dataclass(frozen=True)
class PolicyState:
    checks: Mapping[str, CheckState] = field(default_factory=dict)
    rolled_back: bool = False  # once rolled back, this topology's candidate gets no further commands
    holding: str | None = None  # why the rollout is held (ERROR), until a window has data again
    last_hold_end: int | None = None  # event time the last HOLD rests on (cooldown)
    step: int = 0  # index of the candidate's current traffic step (topology rollout.steps)
    step_passes: tuple[dict[str, Any], ...] = ()  # PASS windows in a row in this step (evidence)
    last_step_end: int | None = None  # event time the last SET_TRAFFIC rests on (cooldown)
    promoted: bool = False
    awaiting: int | None = None  # the step (percent) whose gate passed and that waits for approval
    # Label silence (see `_silence`): the coverage of the last closed windows in a row below the
    # floor, oldest first (at most `label_coverage.windows`), and whether this silence was
    # announced already (its HOLD emitted): set until a window's coverage is back above the floor.
    silent_windows: tuple[dict[str, Any], ...] = ()
    silence_held: bool = False

    def check(self, name: str) -> CheckState:
        return self.checks.get(name, CheckState())

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data; `restore` gives back an equal state."""
        return {"checks": {n: {"streak": list(c.streak), "failures": c.failures, "failing": c.failing,
                               "test": None if c.test is None else dict(c.test), "run": c.run}
                           for n, c in self.checks.items()},
                "rolled_back": self.rolled_back, "holding": self.holding, "last_hold_end": self.last_hold_end,
                "step": self.step, "step_passes": list(self.step_passes), "last_step_end": self.last_step_end,
                "promoted": self.promoted, "awaiting": self.awaiting,
                "silent_windows": list(self.silent_windows), "silence_held": self.silence_held}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> PolicyState:
        checks = {str(n): CheckState(tuple(c["streak"]), int(c["failures"]), bool(c["failing"]), c.get("test"),
                                     int(c.get("run", len(c["streak"]))))
                  for n, c in (data.get("checks") or {}).items()}
        last, step_end, awaiting = data.get("last_hold_end"), data.get("last_step_end"), data.get("awaiting")
        # Keys added later are optional: a snapshot taken before them restores with their defaults.
        return cls(checks, bool(data["rolled_back"]), data.get("holding"), None if last is None else int(last),
                   int(data.get("step", 0)), tuple(data.get("step_passes", ())),
                   None if step_end is None else int(step_end), bool(data.get("promoted", False)),
                   None if awaiting is None else int(awaiting), tuple(data.get("silent_windows", ())),
                   bool(data.get("silence_held", False)))


def judge(topology: Topology, start: int, baseline: WindowState, candidate: WindowState,
          state: PolicyState | None = None) -> WindowJudgement:
    end = start + topology.window_size_ms
    if baseline.predictions == 0 and candidate.predictions == 0:
        reason = "no data: neither version served a prediction in the window"
        results = tuple(CheckResult(r.name, r.metric, Verdict.ERROR, None, None, 0, 0, reason) for r in topology.checks)
        return WindowJudgement(start, end, Verdict.ERROR, results, reason, 0, 0)
    window_s = topology.window_size_ms / 1000
    b_values, c_values = baseline.values(window_s), candidate.values(window_s)
    state = state or PolicyState()
    results = tuple(judge_check(rule, b_values, c_values, state.check(rule.name).failing, state.check(rule.name).test,
                                None if rule.sequential is None else paired_window(rule.metric, baseline, candidate))
                    for rule in topology.checks)
    verdicts = {r.verdict for r in results}
    verdict = (Verdict.FAIL if Verdict.FAIL in verdicts else
               Verdict.INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else Verdict.PASS)
    shown = [r for r in results if r.verdict is verdict] or list(results)
    reason = "; ".join(f"{r.check}: {r.reason}" for r in shown)
    return WindowJudgement(start, end, verdict, results, reason, candidate.predictions, candidate.labeled)


def _command(topology: Topology, kind: CommandKind, rule: str, start: int, end: int, reason: str,
             evidence: dict[str, Any], traffic: Mapping[str, int], now_ms: int) -> Command:
    return Command(
        command_id=command_id(topology.model, topology.baseline_version, topology.candidate_version,
                              kind, rule, start, end),
        kind=kind, model=topology.model, baseline_version=topology.baseline_version,
        candidate_version=topology.candidate_version, traffic=dict(traffic), reason=reason, rule=rule,
        window_start=start, window_end=end, evidence=json.dumps({**evidence, "topology": topology.source},
                                                                 sort_keys=True, allow_nan=False),
        policy_version=topology.policy_version, issued_at=now_ms)


def _hold(topology: Topology, state: PolicyState, rule: str, start: int, end: int, reason: str,
          evidence: dict[str, Any], now_ms: int) -> tuple[PolicyState, list[Command]]:
    """A HOLD, unless one was issued less than the cooldown ago (event time)."""
    if state.last_hold_end is not None and end - state.last_hold_end < topology.decision.cooldown_ms:
        return state, []
    command = _command(topology, CommandKind.HOLD, rule, start, end, reason, evidence, {}, now_ms)
    return replace(state, last_hold_end=end), [command]


def decide(topology: Topology, state: PolicyState, judgement: WindowJudgement,
           now_ms: int) -> tuple[PolicyState, list[Command]]:
    """Fold one judged window into the state; returns the (unsigned) commands it fires."""
    if state.rolled_back or state.promoted:
        return state, []
    start, end = judgement.window_start, judgement.window_end
    if judgement.verdict is Verdict.ERROR:
        reason = f"{topology.model}: hold v{topology.candidate_version}'s rollout: {judgement.reason}"
        # A gap breaks every streak: the FAIL windows of a streak must follow each other (and the
        # silent windows too: a window without predictions says nothing about the labels).
        gap = {name: replace(cs, streak=(), run=0) for name, cs in state.checks.items()}
        return _hold(topology, replace(state, checks=gap, holding=judgement.reason, step_passes=(), awaiting=None,
                                       silent_windows=()),
                     "hold-on-error", start, end,
                     reason, {"window": judgement.evidence()}, now_ms)
    checks = dict(state.checks)
    keep = {rule.name: rule.consecutive for rule in topology.checks}
    for result in judgement.checks:
        current = state.check(result.check)
        test = current.test if result.test_state is None else result.test_state
        if result.verdict is Verdict.FAIL:
            streak = (current.streak + (judgement.evidence(),))[-keep.get(result.check, 1):]
            checks[result.check] = CheckState(streak, current.failures + 1, True, test, current.run + 1)
        elif result.verdict is Verdict.PASS:
            checks[result.check] = CheckState((), current.failures, False, test)
        else:  # INCONCLUSIVE breaks the streak: the windows must follow each other
            checks[result.check] = CheckState((), current.failures, current.failing, test)
    state = replace(state, checks=checks, holding=None)
    state, silence = _silence(topology, state, judgement, now_ms)
    # Only a FAIL window fires an action: a cumulative count, once reached, stays reached.
    failed = {r.check for r in judgement.checks if r.verdict is Verdict.FAIL}
    fired = [(rule, checks[rule.name]) for rule in topology.checks
             if rule.name in failed and _fires(rule, checks[rule.name])]
    rollback = [(rule, cs) for rule, cs in fired if rule.action == "rollback"]
    if rollback:  # ends the rollout: holding it for silent labels would say nothing more
        return _rollback(topology, state, rollback, judgement, now_ms)
    commands: list[Command] = list(silence)
    for rule, cs in fired:  # action: hold
        reason = (f"{topology.model}: hold v{topology.candidate_version}'s rollout: check {rule.name} failed "
                  f"{_count(rule, cs)}; last: {judgement.check(rule.name).reason}")
        state, holds = _hold(topology, state, rule.name, cs.streak[0]["window_start"] if cs.streak else start, end,
                             reason, {"rule": _rule_evidence(rule), "windows": list(cs.streak),
                                      "consecutive_failures": cs.run}, now_ms)
        commands += holds
    if fired or silence or topology.rollout is None:  # a window that holds does not also step
        return state, commands
    state, steps = _progress(topology, state, judgement, now_ms)
    return state, commands + steps


LABELS_SILENT = "labels-silent"  # the rule of the HOLD `_silence` emits


def _silence(topology: Topology, state: PolicyState, judgement: WindowJudgement,
             now_ms: int) -> tuple[PolicyState, list[Command]]:
    """Labels that stop coming: a check that reads labeled samples would sit INCONCLUSIVE for as
    long as they stay away, with nothing said. So when `label_coverage.windows` closed windows in a
    row have candidate predictions but labeled / predictions below `label_coverage.floor`, one HOLD
    says so, with each window's coverage as evidence; `silence_held` (checkpointed) keeps it from
    repeating until a window's coverage is back at the floor, after which the next silence holds
    again. A window without candidate predictions breaks the run (it says nothing about labels)
    but does not end an announced silence. The id rests on the run's windows, so a worker that
    restarts from a checkpoint taken before the HOLD derives the same command again."""
    d = topology.decision
    if d.label_coverage_floor <= 0 or all(samples_of(r.metric) != "labeled" for r in topology.checks):
        return state, []
    predictions, labeled = judgement.candidate_predictions, judgement.candidate_labeled
    if predictions <= 0:
        return replace(state, silent_windows=()), []
    coverage = labeled / predictions
    if coverage >= d.label_coverage_floor:
        return replace(state, silent_windows=(), silence_held=False), []
    window = {"window_start": judgement.window_start, "window_end": judgement.window_end,
              "predictions": predictions, "labeled": labeled, "coverage": coverage}
    silent = (state.silent_windows + (window,))[-d.label_coverage_windows:]
    state = replace(state, silent_windows=silent)
    if state.silence_held or len(silent) < d.label_coverage_windows:
        return state, []
    readers = [r.name for r in topology.checks if samples_of(r.metric) == "labeled"]
    reason = (f"{topology.model}: hold v{topology.candidate_version}'s rollout: labels silent: label coverage "
              f"below {d.label_coverage_floor:g} in {len(silent)} closed windows in a row (last: {labeled} of "
              f"{predictions} predictions labeled); check(s) {', '.join(readers)} cannot judge without labels")
    evidence = {"label_coverage": {"floor": d.label_coverage_floor, "windows": d.label_coverage_windows},
                "coverage": list(silent), "checks": readers}
    command = _command(topology, CommandKind.HOLD, LABELS_SILENT, silent[0]["window_start"],
                       judgement.window_end, reason, evidence, {}, now_ms)
    return replace(state, silence_held=True), [command]


def _progress(topology: Topology, state: PolicyState, judgement: WindowJudgement,
              now_ms: int) -> tuple[PolicyState, list[Command]]:
    """The progressive rollout: move to the next step when the last `windows` windows of this step
    all PASSed, with `samples` candidate samples between them (each window counts the fewest
    samples any check read), and the cooldown since the last step has passed. A FAIL window starts
    the count again; an INCONCLUSIVE one neither counts nor resets it. A step listed in
    `rollout.approval` then waits for an operator's APPROVE (see `approve`): the policy emits one
    HOLD saying so, and the checks keep running meanwhile (a FAIL still rolls back, and clears the
    wait: the gate has to pass again)."""
    rollout = topology.rollout
    assert rollout is not None
    if judgement.verdict is Verdict.FAIL:
        return replace(state, step_passes=(), awaiting=None), []
    if judgement.verdict is not Verdict.PASS:
        return state, []
    passes = (state.step_passes + (judgement.evidence(),))[-rollout.windows:]  # the last `windows` PASS in a row
    samples = _gate_samples(passes)
    cooling = (state.last_step_end is not None
               and judgement.window_end - state.last_step_end < topology.decision.cooldown_ms)
    if len(passes) < rollout.windows or samples < rollout.samples or cooling:
        return replace(state, step_passes=passes), []
    following = _next_step(topology, state)
    if following not in rollout.approval:
        return _step(topology, replace(state, step_passes=passes), now_ms, None)
    if state.awaiting == following:  # already asked: the evidence slides on with the newest windows
        return replace(state, step_passes=passes), []
    base, cand = topology.baseline_version, topology.candidate_version
    reason = (f"{topology.model} v{cand}: every check passed in {len(passes)} windows in a row "
              f"{_at(_current_step(topology, state))} ({samples} candidate samples); the step to {following}% waits "
              f"for approval: mle-stream command approve --model {topology.model} --baseline {base} "
              f"--candidate {cand} --percent {following} --reason ...")
    evidence = {"awaiting_percent": following, "windows": list(passes),
                "gate": {"windows": rollout.windows, "samples": rollout.samples}}
    command = _command(topology, CommandKind.HOLD, f"await-approval:step-{following}", passes[0]["window_start"],
                       judgement.window_end, reason, evidence, {}, now_ms)
    return replace(state, step_passes=passes, awaiting=following), [command]


def approve(topology: Topology, state: PolicyState, approval: Command,
            now_ms: int) -> tuple[PolicyState, list[Command], str]:
    """An operator's APPROVE (already verified) of the step `approval.traffic` names: when that step
    is the one waiting (its gate passed, see `_progress`), the step's SET_TRAFFIC or PROMOTE, with
    the approval in its evidence. Returns (state, commands, what happened) — an approval of a step
    that is not waiting changes nothing: approving ahead of the evidence is not possible."""
    base, cand = topology.baseline_version, topology.candidate_version
    if (approval.model, approval.baseline_version, approval.candidate_version) != (topology.model, base, cand):
        return state, [], (f"ignored: it approves {approval.model} v{approval.candidate_version} against "
                           f"v{approval.baseline_version}; the rollout is {topology.model} v{cand} against v{base}")
    percent = approval.traffic.get(cand)
    if state.rolled_back or state.promoted:
        return state, [], f"ignored: the rollout is over ({'rolled back' if state.rolled_back else 'promoted'})"
    if state.awaiting is None or percent != state.awaiting:
        waiting = "no step waits for approval" if state.awaiting is None else f"the step to {state.awaiting}% waits"
        return state, [], f"ignored: it approves {percent}% of traffic for v{cand}, but {waiting}"
    approved = {"command_id": approval.command_id, "reason": approval.reason, "issued_at": approval.issued_at,
                "evidence": approval.evidence}
    state, commands = _step(topology, state, now_ms, approved)
    return state, commands, f"approved: {commands[0].kind.value} to {percent}%"


def _gate_samples(passes: tuple[dict[str, Any], ...]) -> int:
    return sum(min((c["candidate"]["samples"] for c in w["checks"]), default=0) for w in passes)


def _current_step(topology: Topology, state: PolicyState) -> int:
    assert topology.rollout is not None
    return topology.rollout.steps[min(state.step, len(topology.rollout.steps) - 1)]


def _at(percent: int) -> str:
    return "in shadow (no live traffic)" if percent == 0 else f"at {percent}%"


def _next_step(topology: Topology, state: PolicyState) -> int:
    steps = topology.rollout.steps if topology.rollout is not None else ()
    return steps[state.step + 1] if state.step + 1 < len(steps) else 100


def _step(topology: Topology, state: PolicyState, now_ms: int,
          approval: dict[str, Any] | None) -> tuple[PolicyState, list[Command]]:
    """The command that moves the candidate to the next step, on the gate windows in `state.step_passes`."""
    rollout = topology.rollout
    assert rollout is not None
    passes = state.step_passes
    current, following = _current_step(topology, state), _next_step(topology, state)
    base, cand = topology.baseline_version, topology.candidate_version
    kind = CommandKind.PROMOTE if following == 100 else CommandKind.SET_TRAFFIC
    reason = (f"{topology.model} v{cand}: every check passed in {len(passes)} windows in a row {_at(current)} "
              f"({_gate_samples(passes)} candidate samples): "
              f"" + ("promote to 100%, champion" if kind is CommandKind.PROMOTE
                                                                else f"next step {following}%")
              + ("" if approval is None else f"; approved (command {approval['command_id']}): {approval['reason']}"))
    evidence: dict[str, Any] = {"from_percent": current, "to_percent": following, "windows": list(passes),
                                "gate": {"windows": rollout.windows, "samples": rollout.samples}}
    if approval is not None:
        evidence["approval"] = approval
    end = passes[-1]["window_end"]
    command = _command(topology, kind, f"step-{following}", passes[0]["window_start"], end, reason,
                       evidence, {base: 100 - following, cand: following}, now_ms)
    return replace(state, step=state.step + 1, step_passes=(), last_step_end=end, awaiting=None,
                   promoted=kind is CommandKind.PROMOTE), [command]


def _fires(rule: CheckRule, cs: CheckState) -> bool:
    return cs.run >= rule.consecutive or (rule.cumulative is not None and cs.failures >= rule.cumulative)


def _count(rule: CheckRule, cs: CheckState) -> str:
    if cs.run >= rule.consecutive:
        return f"in {cs.run} consecutive windows"
    return f"in {cs.failures} windows (cumulative limit {rule.cumulative})"


def _rule_evidence(rule: CheckRule) -> dict[str, Any]:
    return {"name": rule.name, "metric": rule.metric, "worse": rule.worse, **rule.limits(),
            "min_samples": rule.min_samples, "consecutive": rule.consecutive, "cumulative": rule.cumulative,
            "hysteresis": rule.hysteresis, "action": rule.action}


def _rollback(topology: Topology, state: PolicyState, fired: list[tuple[CheckRule, CheckState]],
              judgement: WindowJudgement, now_ms: int) -> tuple[PolicyState, list[Command]]:
    rule, cs = fired[0]  # the topology's first check that fired names the command
    windows = list(cs.streak) or [judgement.evidence()]
    start = windows[0]["window_start"] if cs.run >= rule.consecutive else judgement.window_start
    reason = (f"{topology.model} v{topology.candidate_version}: check {rule.name} ({rule.metric}) failed "
              f"{_count(rule, cs)} against baseline v{topology.baseline_version}; last: "
              f"{judgement.check(rule.name).reason}")
    evidence = {"rule": _rule_evidence(rule), "also_fired": [r.name for r, _ in fired[1:]], "windows": windows,
                "failures": cs.failures}
    command = _command(topology, CommandKind.ROLLBACK, rule.name, start, judgement.window_end, reason, evidence,
                       {topology.baseline_version: 100, topology.candidate_version: 0}, now_ms)
    return replace(state, rolled_back=True), [command]


def decide_outage(topology: Topology, state: PolicyState, source: str, silent_since_ms: int,
                  now_ms: int) -> tuple[PolicyState, list[Command]]:
    """ERROR from the wall clock: `source` ("predictions" or "labels") has sent nothing since
    `silent_since_ms` (arrival time), longer than `decision.outage_after`. Holds (once per
    outage: `holding` stays set until a window with data is judged), never rolls back."""
    if state.rolled_back or state.holding is not None:
        return state, []
    silent_s = (now_ms - silent_since_ms) / 1000
    why = (f"source outage: no {source} for {silent_s:.0f} s "
           f"(outage_after {topology.decision.outage_after_ms / 1000:g} s)")
    reason = f"{topology.model}: hold v{topology.candidate_version}'s rollout: {why}"
    state = replace(state, holding=why)
    command = _command(topology, CommandKind.HOLD, f"source-outage:{source}", silent_since_ms, silent_since_ms,
                       reason, {"source": source, "silent_since": silent_since_ms, "detected_at": now_ms}, {}, now_ms)
    return state, [command]
