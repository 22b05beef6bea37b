"""Retrain commands: when a topology's retrain trigger fires for the version in production.

The triggers (topology `retrain`, any that is set): the share of the baseline's features that
drifted in a closed window (its drift table against its reference profile), a concept-drift
alarm on the baseline's errors, or N labeled predictions of the baseline since it was trained
(the creation time of its reference profile; without one, since the worker's state began).

A RETRAIN command changes no traffic. It carries its evidence (which triggers, which features
with which statistics, the alarms, the label count) and names the event-time range of data to
train on as its window_start..window_end: `train_window` up to the end of the window that fired,
never earlier than the version's training time. Its id derives from that range and the rule,
so re-deciding the same window gives the same id. After a command, `cooldown` of event time
passes before the next one, and the label count starts again from zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from mle_stream.core.commands import command_id
from mle_stream.core.events import Command, CommandKind, DriftTable
from mle_stream.core.topology import Topology


@dataclass(frozen=True)
class RetrainState:
    labels_since_training: float = 0.0  # weighted: a corrected label counts once
    last_issued_end: int | None = None  # event-time end of the window the last command rests on

    def snapshot(self) -> dict[str, Any]:
        return {"labels": self.labels_since_training, "last_issued_end": self.last_issued_end}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> RetrainState:
        last = data.get("last_issued_end")
        return cls(float(data.get("labels", 0.0)), None if last is None else int(last))


def trained_at_ms(created_at: str | None) -> int:
    """A profile's ISO 8601 creation time in epoch ms; 0 when there is none to read."""
    if not created_at:
        return 0
    try:
        return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def consider_retrain(
    topology: Topology,
    state: RetrainState,
    *,
    window_start: int,
    window_end: int,
    baseline_drift: DriftTable | None,
    alarms: Sequence[Mapping[str, Any]],
    trained_at: int,
    now_ms: int,
) -> tuple[RetrainState, list[Command]]:
    """The retrain decision for one closed window of the baseline."""
    rule = topology.retrain
    if not rule.enabled:
        return state, []
    triggers: list[str] = []
    evidence: dict[str, Any] = {"window": {"start": window_start, "end": window_end}, "topology": topology.source}
    share = None if baseline_drift is None else baseline_drift.drifted_share
    if rule.drifted_share is not None and share is not None and share >= rule.drifted_share:
        assert baseline_drift is not None
        triggers.append(f"{share:.0%} of the features drifted (threshold {rule.drifted_share:.0%}) "
                        f"against {baseline_drift.reference}")
        evidence["drift"] = {
            "reference": baseline_drift.reference, "drifted_share": share,
            "features": {name: {k: stats.get(k) for k in ("psi", "wasserstein", "jensen_shannon", "ks_statistic",
                                                          "chi_square", "p_value_adjusted", "reason")}
                         for name, stats in baseline_drift.features.items() if stats.get("drifted")},
        }
    if rule.concept_drift and alarms:
        triggers.append(f"{len(alarms)} concept-drift alarm(s) on the error stream "
                        f"({', '.join(sorted({str(a['detector']) for a in alarms}))})")
        evidence["concept_drift"] = list(alarms)
    if rule.new_labels is not None and state.labels_since_training >= rule.new_labels:
        triggers.append(f"{state.labels_since_training:.0f} new labels since training (threshold {rule.new_labels})")
        evidence["labels_since_training"] = state.labels_since_training
    if not triggers:
        return state, []
    if state.last_issued_end is not None and window_end - state.last_issued_end < rule.cooldown_ms:
        return state, []  # the last request is recent: the team is (or should be) on it

    train_from = max(trained_at, window_end - rule.train_window_ms)
    evidence["train_on"] = {"from": train_from, "to": window_end}
    evidence["triggers"] = triggers
    kind = CommandKind.RETRAIN
    command = Command(
        command_id=command_id(topology.model, topology.baseline_version, topology.candidate_version, kind,
                              rule.name, train_from, window_end),
        kind=kind,
        model=topology.model,
        baseline_version=topology.baseline_version,
        candidate_version=topology.candidate_version,
        traffic={},  # a retrain request routes nothing
        reason=f"retrain {topology.model} (v{topology.baseline_version} in production): " + "; ".join(triggers),
        rule=rule.name,
        window_start=train_from,
        window_end=window_end,
        evidence=json.dumps(evidence, sort_keys=True, allow_nan=False),
        policy_version=topology.policy_version,
        issued_at=now_ms,
    )
    return replace(state, labels_since_training=0.0, last_issued_end=window_end), [command]
