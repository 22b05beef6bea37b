"""The first decision policy: consecutive windows of a worse error rate roll the candidate back.

`decide` is a pure function (state, closed window, now) -> (state, judgement, commands); the stream
and any replay call the same function. Verdicts are typed: a window with too few samples on either
side is INCONCLUSIVE, which never counts toward a rollback (flagger #1035, argo-rollouts #1466 are
rollbacks caused by low traffic). Only windows that follow each other count as consecutive: an
INCONCLUSIVE or PASS window in between resets the streak.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind
from mle_stream.core.topology import Topology
from mle_stream.core.window_state import WindowState


class Verdict(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class WindowJudgement:
    window_start: int
    window_end: int
    verdict: Verdict
    baseline_value: float | None
    candidate_value: float | None
    baseline_samples: int
    candidate_samples: int
    reason: str

    def evidence(self) -> dict[str, object]:
        return {
            "window_start": self.window_start,
            "window_end": self.window_end,
            "verdict": self.verdict.value,
            "baseline": {"value": self.baseline_value, "samples": self.baseline_samples},
            "candidate": {"value": self.candidate_value, "samples": self.candidate_samples},
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PolicyState:
    streak: tuple[WindowJudgement, ...] = ()
    rolled_back: bool = False  # once rolled back, this topology's candidate gets no further commands

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data; `restore` gives back an equal state."""
        return {"streak": [{**asdict(j), "verdict": j.verdict.value} for j in self.streak],
                "rolled_back": self.rolled_back}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> "PolicyState":
        streak = tuple(WindowJudgement(**{**j, "verdict": Verdict(j["verdict"])}) for j in data["streak"])
        return cls(streak=streak, rolled_back=bool(data["rolled_back"]))


def _metric(state: WindowState, name: str) -> tuple[float | None, int]:
    if name == "error_rate":
        return state.error_rate, state.labeled
    return state.serving_error_rate, state.predictions


def judge(topology: Topology, start: int, baseline: WindowState, candidate: WindowState) -> WindowJudgement:
    rule = topology.rollback
    end = start + topology.window_size_ms
    b_value, b_n = _metric(baseline, rule.metric)
    c_value, c_n = _metric(candidate, rule.metric)
    sample_kind = "labeled predictions" if rule.metric == "error_rate" else "predictions"
    if b_n < rule.min_samples or c_n < rule.min_samples or b_value is None or c_value is None:
        reason = (f"too few {sample_kind}: baseline {b_n}, candidate {c_n}, "
                  f"need {rule.min_samples} on each side")
        return WindowJudgement(start, end, Verdict.INCONCLUSIVE, b_value, c_value, b_n, c_n, reason)
    delta = c_value - b_value
    if delta > rule.max_increase:
        verdict = Verdict.FAIL
        reason = (f"{rule.metric} {c_value:.4f} (n={c_n}) is {delta:+.4f} above the baseline's "
                  f"{b_value:.4f} (n={b_n}); allowed {rule.max_increase:+.4f}")
    else:
        verdict = Verdict.PASS
        reason = f"{rule.metric} {c_value:.4f} vs baseline {b_value:.4f}: within {rule.max_increase:+.4f}"
    return WindowJudgement(start, end, verdict, b_value, c_value, b_n, c_n, reason)


def decide(
    topology: Topology, state: PolicyState, judgement: WindowJudgement, now_ms: int
) -> tuple[PolicyState, list[Command]]:
    """Fold one judged window into the state; returns an unsigned ROLLBACK when the rule fires."""
    if state.rolled_back:
        return state, []
    if judgement.verdict is not Verdict.FAIL:
        return replace(state, streak=()), []
    streak = state.streak + (judgement,)
    rule = topology.rollback
    if len(streak) < rule.consecutive_windows:
        return replace(state, streak=streak), []
    first, last = streak[0], streak[-1]
    kind = CommandKind.ROLLBACK
    reason = (f"{topology.model} v{topology.candidate_version}: {rule.metric} worse than baseline "
              f"v{topology.baseline_version} by more than {rule.max_increase} in {len(streak)} "
              f"consecutive windows; last: {last.reason}")
    evidence = {
        "rule": {"name": rule.name, "metric": rule.metric, "max_increase": rule.max_increase,
                 "consecutive_windows": rule.consecutive_windows, "min_samples": rule.min_samples},
        "windows": [j.evidence() for j in streak],
        "topology": topology.source,
    }
    command = Command(
        command_id=command_id(topology.model, topology.baseline_version, topology.candidate_version,
                              kind, rule.name, first.window_start, last.window_end),
        kind=kind,
        model=topology.model,
        baseline_version=topology.baseline_version,
        candidate_version=topology.candidate_version,
        traffic={topology.baseline_version: 100, topology.candidate_version: 0},
        reason=reason,
        rule=rule.name,
        window_start=first.window_start,
        window_end=last.window_end,
        evidence=json.dumps(evidence, sort_keys=True),
        policy_version=topology.policy_version,
        issued_at=now_ms,
    )
    return PolicyState(streak=streak, rolled_back=True), [command]
