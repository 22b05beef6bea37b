"""What the status board leaves off: forged commands, records of models no topology names, rollout
events that report no verified command, versions beyond the limit; and the verifier that decides,
which must never raise whatever a forger puts in a command."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mle_stream.core.events import Command, CommandKind, RolloutEvent, RolloutStatus
from mle_stream.status.model import UNKNOWN_MODEL, UNMATCHED, UNVERIFIED, VERSION_LIMIT
from mle_stream.status.terminal import render
from mle_stream.verification import hmac_verifier, never_raising
from test_status_model import KEY, SIGNER, VERIFY, M, command, event, new_board, snapshot

# Anything a forger can put in a string field, with the characters that broke verify() often.
any_text = st.text(st.one_of(st.characters(codec=None, categories=None), st.sampled_from("\ud800\udfffé\x00€")),
                   max_size=30)


def test_forged_commands_change_no_phase_and_are_no_decisions() -> None:
    board = new_board()
    hold = command(CommandKind.HOLD, 10_000, 25, rule="await-approval:step-50")
    board.apply(hold)
    forged = [command(CommandKind.APPROVE, 11_000, 50, key=None),  # unsigned
              command(CommandKind.PROMOTE, 12_000, 100,
                      key=b"another key, not the trusted one: forged"),  # signed, not by us
              dataclasses.replace(command(CommandKind.PROMOTE, 13_000, 100), reason="changed after signing")]
    assert [board.apply(c) for c in forged] == [UNVERIFIED] * 3
    m = board.to_json()["models"][0]
    assert m["phase"] == "waiting for approval: step 50%"
    assert [d["kind"] for d in m["decisions"]] == ["HOLD"]
    assert [t["kind"] for t in m["timeline"]] == ["HOLD"]
    assert board.to_json()["ignored"] == {UNVERIFIED: 3}
    assert board.apply(command(CommandKind.APPROVE, 14_000, 50)) is None  # the operator's own, signed
    assert board.to_json()["models"][0]["phase"] == "approved: step 50%"


def test_a_flood_of_forged_model_names_leaves_the_topologies_models() -> None:
    board = new_board({M: ["error_rate"], "churn": []})
    for i in range(5000):
        name = f"forged-{i}"
        board.apply(command(CommandKind.PROMOTE, 10_000 + i, 100, key=None, model=name))
        board.apply(dataclasses.replace(snapshot("2", i * 5000, 0.1), model=name))
    # Signed by us but of a model these topologies do not name (another deployment's): counted, left off.
    board.apply(command(CommandKind.ROLLBACK, 20_000, model="elsewhere"))
    assert board.models() == ["churn", M]
    data = board.to_json()
    assert [m["model"] for m in data["models"]] == ["churn", M]
    assert all(m["decisions"] == [] and m["versions"] == [] for m in data["models"])
    assert data["ignored"] == {UNVERIFIED: 5000, UNKNOWN_MODEL: 5001} and data["events_applied"] == 0
    text = render(data)
    assert "forged-" not in text and "elsewhere" not in text and "forged-" not in json.dumps(data)
    assert "left off (counted, not shown): 5001 record(s) of models no topology names, 5000 unverified " \
           "command(s)" in text


def test_rollout_events_show_only_as_reports_of_verified_commands() -> None:
    board = new_board(max_decisions=10)
    step = command(CommandKind.SET_TRAFFIC, 10_000, 25)
    # Read before its command (another topic): held back, then shown when the command comes.
    assert board.apply(event(step, 11_000)) is None
    assert board.to_json()["models"][0]["traffic"] is None
    board.apply(step)
    m = board.to_json()["models"][0]
    assert m["traffic"] == {"1": 75, "2": 25} and m["phase"] == "rolling out: step 25%" and m["unmatched_events"] == 0

    # The actuator's REJECTED reports of forged commands: dropped at once, so they cannot push a
    # waiting report out, however many there are.
    late = command(CommandKind.ROLLBACK, 19_000)
    board.apply(event(late, 19_500))
    for i in range(1000):
        forged = command(CommandKind.PROMOTE, 20_000 + i, 100, key=None, command_id=f"f{i}")
        assert board.apply(forged) == UNVERIFIED
        assert board.apply(event(forged, 20_500 + i, RolloutStatus.REJECTED)) == UNMATCHED
    assert board.to_json()["models"][0]["unmatched_events"] == 1
    board.apply(late)
    assert board.to_json()["models"][0]["phase"] == "rolled back"
    assert board.ignored == {UNVERIFIED: 1000, UNMATCHED: 1000}

    # Reports forged outright on the rollout-events topic: never shown; the oldest waiting are dropped.
    for i in range(1000):
        board.apply(RolloutEvent(event_id=f"x{i}", command_id=f"c{i}", model=M, action="PROMOTE",
                                 status=RolloutStatus.APPLIED, route_weights={"2": 100, f"v{i}": 0}, champion="2",
                                 challenger=None, reason="forged", details="forged", at=30_000 + i))
    assert board.ignored == {UNVERIFIED: 1000, UNMATCHED: 1000 + 990}
    m = board.to_json()["models"][0]
    assert m["traffic"] == {"1": 100, "2": 0} and m["champion"] == "1" and m["phase"] == "rolled back"
    assert [(t["source"], t["kind"]) for t in m["timeline"]] == [
        ("command", "SET_TRAFFIC"), ("rollout-event", "SET_TRAFFIC"), ("command", "ROLLBACK"),
        ("rollout-event", "ROLLBACK")]
    assert m["unmatched_events"] == 10  # bounded: the oldest waiting events are dropped
    assert [v["version"] for v in m["versions"]] == ["1", "2"]
    assert "unmatched" not in render(board.to_json()) and "10 rollout event(s) of no verified command seen" in \
        render(board.to_json())


def test_a_late_report_does_not_undo_a_later_one() -> None:
    board = new_board()
    step, rollback = command(CommandKind.SET_TRAFFIC, 10_000, 25), command(CommandKind.ROLLBACK, 20_000)
    board.apply(event(step, 11_000))  # waits for its command
    board.apply(rollback)
    board.apply(event(rollback, 21_000))
    board.apply(step)  # now the older report is shown; the traffic stays the rollback's
    m = board.to_json()["models"][0]
    assert m["traffic"] == {"1": 100, "2": 0} and m["phase"] == "rolled back"
    assert [t["at"] for t in m["timeline"]] == [10_000, 11_000, 20_000, 21_000]


def test_versions_per_model_are_bounded() -> None:
    board = new_board(max_versions=4)
    reasons = [board.apply(snapshot(str(v), 0, 0.1)) for v in range(10)]
    assert reasons == [None] * 4 + [VERSION_LIMIT] * 6
    board = new_board(max_versions=4)
    for v in range(3):
        board.apply(snapshot(str(v), 0, 0.1))
    # A command of two new versions when one would fit: left off whole, nothing half-applied.
    step = SIGNER.sign(dataclasses.replace(command(CommandKind.ROLLBACK, 1_000, key=None), baseline_version="8",
                                           candidate_version="9"))
    assert board.apply(step) == VERSION_LIMIT
    m = board.to_json()["models"][0]
    assert sorted(v["version"] for v in m["versions"]) == ["0", "1", "2"] and m["decisions"] == []
    assert board.to_json()["ignored"] == {VERSION_LIMIT: 1}


def test_the_verifier_never_raises_on_what_broke_verify() -> None:
    good = command(CommandKind.ROLLBACK, 1_000)
    assert VERIFY(good) is True
    assert VERIFY(dataclasses.replace(good, signature="é" * 64)) is False  # compare_digest raised on non-ASCII
    assert VERIFY(dataclasses.replace(good, model="fraud\ud800")) is False  # encode() raised on a lone surrogate

    def broken(c: Command) -> bool:
        raise RuntimeError("a bug in a signature scheme")

    assert never_raising(broken)(good) is False
    assert never_raising(lambda c: "yes")(good) is False  # only True is True  # type: ignore[arg-type,return-value]


@settings(max_examples=300, deadline=None)
@given(model=any_text, base=any_text, cand=any_text, reason=any_text, signature=any_text, command_id=any_text,
       kind=st.sampled_from(CommandKind), traffic=st.dictionaries(any_text, st.integers(-2**40, 2**40), max_size=3))
def test_any_forged_command_is_left_off_and_counted(model: str, base: str, cand: str, reason: str, signature: str,
                                                    command_id: str, kind: CommandKind,
                                                    traffic: dict[str, int]) -> None:
    board = new_board()
    forged = Command(command_id=command_id, kind=kind, model=model, baseline_version=base, candidate_version=cand,
                     traffic=traffic, reason=reason, rule="r", window_start=0, window_end=1, evidence="{",
                     policy_version="p", issued_at=1, signature=signature)
    assert board.apply(forged) == UNVERIFIED
    assert board.to_json() == new_board().to_json() | {"ignored": {UNVERIFIED: 1}}
    assert hmac_verifier(KEY)(forged) is False


def test_who_can_write_rollout_events_can_hide_a_waiting_report_but_not_forge_a_phase() -> None:
    # The limit of what an unsigned topic allows (docs/status-and-notifications-trust.md): forged
    # reports push out a real one read before its command; none of them is shown.
    board = new_board(max_decisions=10)
    rollback = command(CommandKind.ROLLBACK, 10_000)
    board.apply(event(rollback, 11_000))
    for i in range(10):
        board.apply(dataclasses.replace(event(rollback, 12_000 + i), event_id=f"x{i}", command_id=f"c{i}"))
    board.apply(rollback)
    m = board.to_json()["models"][0]
    assert m["phase"] == "rolling back" and m["traffic"] is None  # the report is lost, nothing false shown
    assert board.ignored == {UNMATCHED: 1}
