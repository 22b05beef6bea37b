"""StatusBoard (mle_stream/status/model.py) from hand-made events: phases, traffic, bounded series,
the timeline's order, idempotence, the JSON the page and `mle-stream status` render, and what it
leaves off: forged commands, unknown models, rollout events of no verified command."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from mle_stream.core.events import Command, CommandKind, DriftTable, MetricSnapshot, RolloutEvent, RolloutStatus
from mle_stream.core.signing import Signer
from mle_stream.keys import HMAC_KEY_ID
from mle_stream.status.model import DEFAULT_WATCHED, StatusBoard
from mle_stream.status.terminal import render
from mle_stream.verification import hmac_verifier

M = "fraud-detector"
KEY = b"status-test-key-0123456789abcdef"  # an HMAC key needs 32 bytes
SIGNER = Signer(HMAC_KEY_ID, KEY)
VERIFIER = SIGNER.verifier()
VERIFY = hmac_verifier(KEY)


def new_board(watched: dict[str, list[str]] | None = None, **limits: int) -> StatusBoard:
    """A board of model M (or `watched`'s models) that trusts commands signed with KEY."""
    return StatusBoard({M: []} if watched is None else watched, verify=VERIFY, **limits)


def snapshot(version: str, start: int, error_rate: float | None, *, role: str = "", status: str = "CLOSED",
             segment: str | None = None, verdict: str | None = None) -> MetricSnapshot:
    return MetricSnapshot(model=M, version=version, role=role or ("baseline" if version == "1" else "candidate"),
                          segment=segment, window_start=start, window_end=start + 5000, predictions=100,
                          labeled=90, metrics={"error_rate": error_rate, "accuracy": None if error_rate is None
                                               else 1 - error_rate, "latency_p99_ms": float("nan")},
                          verdict=verdict, status=status)


def command(kind: CommandKind, at: int, percent: int = 0, rule: str = "r", command_id: str = "",
            key: bytes | None = KEY, model: str = M) -> Command:
    """A command signed with `key` (None: unsigned)."""
    traffic = {"1": 100 - percent, "2": percent}
    unsigned = Command(command_id=command_id or f"{kind.value}-{at}", kind=kind, model=model, baseline_version="1",
                       candidate_version="2", traffic=traffic, reason=f"{kind.value} because", rule=rule,
                       window_start=at - 5000, window_end=at,
                       evidence=json.dumps({"windows": [{"verdict": "FAIL", "checks": []}]}),
                       policy_version="p", issued_at=at)
    return unsigned if key is None else Signer(HMAC_KEY_ID, key).sign(unsigned)


def event(cmd: Command, at: int, status: RolloutStatus = RolloutStatus.APPLIED,
          weights: dict[str, int] | None = None) -> RolloutEvent:
    return RolloutEvent(event_id=f"e-{cmd.command_id}-{status.value}", command_id=cmd.command_id, model=M,
                        action=cmd.kind.value, status=status, route_weights=weights if weights is not None else
                        dict(cmd.traffic), champion="1", challenger=None if cmd.kind is CommandKind.ROLLBACK else "2",
                        reason=cmd.reason, details="done", at=at)


def test_the_model_module_is_pure() -> None:
    tree = ast.parse(Path(__file__).resolve().parent.parent.joinpath("mle_stream/status/model.py").read_text())
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not {m for m in imported if m and m.split(".")[0] in ("confluent_kafka", "asyncio", "faust", "mlflow",
                                                                   "kubernetes", "http", "threading", "socket")}


def test_series_keep_judged_whole_version_windows_and_revisions_replace() -> None:
    board = new_board({M: ["error_rate"]})
    board.apply(snapshot("1", 0, 0.08))
    board.apply(snapshot("2", 0, 0.10, verdict="PASS"))
    board.apply(snapshot("2", 5000, 0.5, status="OPEN"))  # partial: not plotted
    board.apply(snapshot("2", 5000, 0.9, segment="country=DE"))  # a segment: not plotted
    board.apply(snapshot("2", 0, 0.12, status="REVISED"))  # the verdict stands
    m = board.to_json()["models"][0]
    assert m["watched"] == ["error_rate"] and m["baseline"] == "1" and m["candidate"] == "2"
    v1, v2 = m["versions"]
    assert (v1["version"], v1["role"], v2["version"], v2["role"]) == ("1", "baseline", "2", "candidate")
    assert [w["metrics"]["error_rate"] for w in v2["windows"]] == [0.12]
    assert v2["windows"][0]["status"] == "REVISED" and v2["windows"][0]["verdict"] == "PASS"
    assert v2["windows"][0]["metrics"]["latency_p99_ms"] is None  # NaN would not parse in a browser
    json.dumps(board.to_json(), allow_nan=False)
    assert m["phase"] == "evaluating" and m["traffic"] is None and v1["traffic"] is None


def test_series_are_bounded_to_the_last_windows() -> None:
    board = new_board(max_windows=5)
    for i in range(12):
        board.apply(snapshot("2", i * 5000, 0.1))
    windows = board.to_json()["models"][0]["versions"][0]["windows"]
    assert [w["window_start"] for w in windows] == [i * 5000 for i in range(7, 12)]
    assert board.to_json()["models"][0]["watched"] == list(DEFAULT_WATCHED)


def test_drift_series_take_max_psi_and_drifted_share() -> None:
    board = new_board()
    board.apply(DriftTable(model=M, version="2", role="candidate", window_start=0, window_end=5000, status="CLOSED",
                           reference="baseline window", features={"amount": {"psi": 0.3, "drifted": True},
                                                                  "hour": {"psi": 0.02, "drifted": False}},
                           drifted=("amount",), drifted_share=0.5))
    board.apply(DriftTable(model=M, version="2", role="candidate", window_start=5000, window_end=10000,
                           status="OPEN", reference="baseline window", features={}, drifted=(), drifted_share=None))
    (drift,) = board.to_json()["models"][0]["versions"][0]["drift"]
    assert drift["max_psi"] == 0.3 and drift["drifted_share"] == 0.5 and drift["drifted"] == ["amount"]


def test_phases_follow_commands_and_the_actuator_reports() -> None:
    board = new_board()
    step = command(CommandKind.SET_TRAFFIC, 10_000, 25)
    step50 = command(CommandKind.SET_TRAFFIC, 22_000, 50)
    rollback = command(CommandKind.ROLLBACK, 40_000, 0)
    script: list[tuple[Command | RolloutEvent, str]] = [
        (step, "rolling out: step 25% (pending)"),
        (event(step, 11_000), "rolling out: step 25%"),
        (command(CommandKind.HOLD, 20_000, 25, rule="await-approval:step-50"), "waiting for approval: step 50%"),
        (command(CommandKind.APPROVE, 21_000, 50), "approved: step 50%"),
        (step50, "rolling out: step 50% (pending)"),
        (event(step50, 22_500), "rolling out: step 50%"),
        (command(CommandKind.HOLD, 30_000, 50, rule="outage"), "held"),
        (rollback, "rolling back"),
        (event(rollback, 40_500, RolloutStatus.FAILED), "rollback failed: done"),
        (event(rollback, 41_000), "rolled back"),
        (command(CommandKind.HOLD, 50_000, 0, rule="outage"), "rolled back"),  # after the end: timeline only
    ]
    for item, phase in script:
        board.apply(item)
        assert board.to_json()["models"][0]["phase"] == phase, item
    m = board.to_json()["models"][0]
    assert m["traffic"] == {"1": 100, "2": 0} and m["champion"] == "1" and m["challenger"] is None
    assert [v["traffic"] for v in m["versions"]] == [100, 0]
    rb = next(d for d in m["decisions"] if d["kind"] == "ROLLBACK")
    assert rb["outcome"] == "APPLIED" and rb["evidence"]["windows"][0]["verdict"] == "FAIL"


def test_promotion_and_traffic_from_the_last_applied_event_only() -> None:
    board = new_board()
    step = command(CommandKind.SET_TRAFFIC, 10_000, 10)
    board.apply(step)
    board.apply(event(step, 11_000, RolloutStatus.DRY_RUN))
    assert board.to_json()["models"][0]["traffic"] is None  # a dry run changed nothing
    board.apply(event(step, 12_000))
    promote = command(CommandKind.PROMOTE, 20_000, 100)
    board.apply(promote)
    board.apply(event(promote, 20_100))
    m = board.to_json()["models"][0]
    assert m["phase"] == "promoted" and m["traffic"] == {"1": 0, "2": 100}


def test_timeline_is_in_time_order_and_duplicates_count_once() -> None:
    board = new_board(max_timeline=4)
    a = command(CommandKind.SET_TRAFFIC, 10_000, 10)
    b = command(CommandKind.ROLLBACK, 30_000)
    board.apply(b)
    board.apply(a)  # read from another partition, later
    board.apply(a)  # a worker restart re-emits it: same id
    board.apply(event(a, 20_000))
    board.apply(event(a, 20_000))
    board.apply(event(b, 31_000))
    m = board.to_json()["models"][0]
    assert [(t["at"], t["source"], t["kind"]) for t in m["timeline"]] == [
        (10_000, "command", "SET_TRAFFIC"), (20_000, "rollout-event", "SET_TRAFFIC"), (30_000, "command", "ROLLBACK"),
        (31_000, "rollout-event", "ROLLBACK")]
    board.apply(command(CommandKind.RETRAIN, 40_000))
    assert [t["at"] for t in board.to_json()["models"][0]["timeline"]] == [20_000, 30_000, 31_000, 40_000]
    assert len(board.to_json()["models"][0]["decisions"]) == 3


def test_to_json_for_one_model_and_the_terminal_tables() -> None:
    board = new_board({M: ["error_rate"]})
    for i in range(3):
        board.apply(snapshot("1", i * 5000, 0.08))
        board.apply(snapshot("2", i * 5000, 0.2, verdict="FAIL"))
    rollback = command(CommandKind.ROLLBACK, 20_000)
    board.apply(rollback)
    board.apply(event(rollback, 21_000))
    assert board.to_json("other") == {"models": [], "events_applied": 8, "ignored": {}}
    text = render(board.to_json(M))
    assert f"== {M}: rolled back ==" in text
    assert "0.08 | 0.2" in text and "FAIL" in text
    assert "APPLIED ROLLBACK" in text and "v1 100%, v2 0%" in text
    assert render({"models": []}).startswith("no model")


def test_bad_parameters_and_events_are_refused() -> None:
    with pytest.raises(ValueError):
        new_board(max_windows=0)
    with pytest.raises(ValueError):
        new_board(max_versions=0)
    with pytest.raises(TypeError):
        new_board().apply("not an event")  # type: ignore[arg-type]


def test_a_labels_silent_hold_is_said_until_the_candidate_has_labels_again() -> None:
    board = new_board({M: ["error_rate"]})
    step = command(CommandKind.SET_TRAFFIC, 4_000, 25)
    board.apply(step)
    board.apply(event(step, 4_500))
    silent = Signer(HMAC_KEY_ID, KEY).sign(dataclasses.replace(
        command(CommandKind.HOLD, 20_000, rule="labels-silent", key=None), traffic={}, window_start=5_000,
        evidence=json.dumps({"label_coverage": {"floor": 0.05, "windows": 3},
                             "coverage": [{"window_start": s, "window_end": s + 5000, "predictions": 100,
                                           "labeled": 0, "coverage": 0.0} for s in (5_000, 10_000, 15_000)]})))
    board.apply(silent)
    m = board.to_json()["models"][0]
    assert m["phase"] == "held: labels silent"
    assert m["labels_silent"] == {"command_id": silent.command_id, "candidate": "2", "since": 5_000, "until": 20_000,
                                  "floor": 0.05, "coverage": 0.0}
    text = render(board.to_json(M))
    assert f"== {M}: held: labels silent ==" in text and "labels silent since" in text and "(floor 5.00%)" in text
    # A window of the silence itself, revised or not, does not end it; nor does one still below the floor.
    board.apply(coverage_snapshot("2", 15_000, labeled=0, status="REVISED"))
    board.apply(coverage_snapshot("2", 20_000, labeled=4))
    assert board.to_json()["models"][0]["phase"] == "held: labels silent"
    # A later judged window with coverage back at the floor: the phase before the HOLD stands again.
    board.apply(coverage_snapshot("2", 25_000, labeled=5))
    m = board.to_json()["models"][0]
    assert m["phase"] == "rolling out: step 25%" and m["labels_silent"] is None
    assert "labels silent" not in render(board.to_json(M))
    decision = next(d for d in m["decisions"] if d["rule"] == "labels-silent")
    assert [w["coverage"] for w in decision["evidence"]["coverage"]] == [0.0, 0.0, 0.0]


def coverage_snapshot(version: str, start: int, *, labeled: int, status: str = "CLOSED") -> MetricSnapshot:
    """A whole-version window of 100 predictions, `labeled` of them labeled."""
    return dataclasses.replace(snapshot(version, start, 0.1, status=status), predictions=100, labeled=labeled)
