"""`mle-stream status` in the terminal: the status page's content as plain text tables.

Renders StatusBoard.to_json() output (the same data the page gets), so the two never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

LAST_WINDOWS = 8
LAST_DECISIONS = 5
LAST_TIMELINE = 10


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def _value(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _traffic(traffic: Mapping[str, int] | None) -> str:
    return ", ".join(f"v{v} {p}%" for v, p in sorted((traffic or {}).items()))


def render_model(m: Mapping[str, Any], windows: int = LAST_WINDOWS) -> str:
    out = [f"== {m['model']}: {m['phase']} =="]
    silent = m.get("labels_silent")
    if silent:
        coverage = "-" if silent["coverage"] is None else f"{silent['coverage']:.2%}"
        floor = "-" if silent["floor"] is None else f"{silent['floor']:.2%}"
        out.append(f"labels silent since {_clock(silent['since'])}: v{silent['candidate']} has labels for {coverage} "
                   f"of its predictions (floor {floor}); the rollout was held (command {silent['command_id'][:12]})")
    out.append(table(["version", "role", "alias", "traffic", "judged windows"], [
        [f"v{v['version']}", v["role"], v["alias"] or "", "unknown" if v["traffic"] is None else f"{v['traffic']}%",
         len(v["windows"])] for v in m["versions"]]))
    baseline = next((v for v in m["versions"] if v["role"] == "baseline"), None)
    others = [v for v in m["versions"] if v is not baseline and v["windows"]]
    by_start = {w["window_start"]: w for w in baseline["windows"]} if baseline else {}
    for cand in others:
        rows = []
        for w in cand["windows"][-windows:]:
            base = by_start.get(w["window_start"], {"metrics": {}})
            rows.append([f"{_clock(w['window_start'])}-{_clock(w['window_end'])}", w["verdict"] or "", w["labeled"]]
                        + [f"{_value(base['metrics'].get(k))} | {_value(w['metrics'].get(k))}" for k in m["watched"]])
        out.append(f"\nlast windows, v{baseline['version'] if baseline else '?'} | v{cand['version']} "
                   f"({cand['role']}):")
        out.append(table(["window", "verdict", "labeled"] + list(m["watched"]), rows))
    drifted = [(v, d) for v in m["versions"] for d in v["drift"][-windows:] if d["drifted"]]
    if drifted:
        out.append("\ndrifted windows:")
        out.append(table(["version", "window", "max PSI", "drifted share", "features"], [
            [f"v{v['version']}", _clock(d["window_start"]), _value(d["max_psi"]), _value(d["drifted_share"]),
             ", ".join(d["drifted"])] for v, d in drifted]))
    decisions = m["decisions"][-LAST_DECISIONS:]
    out.append("\ndecisions:" if decisions else "\ndecisions: none yet")
    if decisions:
        out.append(table(["issued", "kind", "traffic", "outcome", "command", "reason"], [
            [_clock(d["issued_at"]), d["kind"], _traffic(d["traffic"]), d["outcome"] or "", d["command_id"][:12],
             d["reason"]] for d in decisions]))
    timeline = m["timeline"][-LAST_TIMELINE:]
    if timeline:
        out.append("\ntimeline:")
        out.append(table(["at", "from", "what", "traffic", "command"], [
            [_clock(t["at"]), "worker" if t["source"] == "command" else "actuator",
             t["kind"] if t["source"] == "command" else f"{t['status']} {t['kind']}", _traffic(t["traffic"]),
             (t["command_id"] or "")[:12]] for t in timeline]))
    if m.get("unmatched_events"):
        out.append(f"\n{m['unmatched_events']} rollout event(s) of no verified command seen: not shown")
    return "\n".join(out)


# How `ignored` reasons (StatusBoard.apply) read in a sentence.
_LEFT_OFF = {"unverified": "unverified command(s)", "unknown_model": "record(s) of models no topology names",
             "version_limit": "record(s) beyond a model's version limit",
             "unmatched": "rollout event(s) of no verified command"}


def render(status: Mapping[str, Any]) -> str:
    """Every model of a StatusBoard.to_json() result, one block each, then what was left off."""
    blocks = [render_model(m) for m in status["models"]] or ["no model to show: the topologies name none"]
    ignored = status.get("ignored") or {}
    if ignored:
        blocks.append("left off (counted, not shown): " + ", ".join(
            f"{n} {_LEFT_OFF.get(reason, reason)}" for reason, n in sorted(ignored.items())))
    return "\n\n".join(blocks)
