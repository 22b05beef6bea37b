"""Command ids and the freshness rules of core/commands.py (expiry, clock skew, newest applied)."""

import dataclasses

from mle_stream.core.commands import MAX_CLOCK_SKEW_MS, AppliedMarker, command_id, newest, stale_reason
from mle_stream.core.events import Command, CommandKind

NOW = 1_700_000_000_000
TTL = 3_600_000
COMMAND = Command(
    command_id="abc", kind=CommandKind.SET_TRAFFIC, model="fraud", baseline_version="1", candidate_version="2",
    traffic={"1": 50, "2": 50}, reason="step", rule="r", window_start=0, window_end=10, evidence="{}",
    policy_version="p", issued_at=NOW, expires_at=NOW + TTL,
)


def test_command_ids_are_deterministic_and_differ_by_what_was_decided() -> None:
    a = command_id("fraud", "1", "2", CommandKind.ROLLBACK, "r", 0, 10)
    assert a == command_id("fraud", "1", "2", CommandKind.ROLLBACK, "r", 0, 10) and len(a) == 32
    assert a != command_id("fraud", "1", "2", CommandKind.ROLLBACK, "r", 0, 11)
    assert a != command_id("fraud", "1", "2", CommandKind.PROMOTE, "r", 0, 10)


def test_a_fresh_command_passes() -> None:
    assert stale_reason(COMMAND, NOW) is None
    assert stale_reason(COMMAND, NOW + TTL - 1) is None


def test_an_expired_command_or_one_without_expiry_is_stale() -> None:
    reason = stale_reason(COMMAND, NOW + TTL)
    assert reason is not None and reason.startswith("STALE: expired at 2023-11-14T23:13:20.000Z")
    assert "MLE_COMMAND_TTL" in reason
    no_expiry = stale_reason(dataclasses.replace(COMMAND, expires_at=0), NOW)
    assert no_expiry is not None and no_expiry.startswith("STALE: the command has no expiry")


def test_a_command_from_a_clock_too_far_ahead_is_stale() -> None:
    assert stale_reason(COMMAND, NOW - MAX_CLOCK_SKEW_MS) is None
    reason = stale_reason(COMMAND, NOW - MAX_CLOCK_SKEW_MS - 1)
    assert reason is not None and "ahead of the actuator's clock" in reason and "NTP" in reason


def test_an_older_command_than_the_newest_applied_is_stale_and_ties_are_not() -> None:
    rollback = AppliedMarker("rollback-1", NOW + 5_000, "route")
    reason = stale_reason(COMMAND, NOW + 6_000, rollback)
    assert reason is not None and reason.startswith("STALE: issued at") and "command rollback-1" in reason
    assert "newest applied to model fraud" in reason
    # The worker stamps every command of one batch with the same instant: all of them apply.
    assert stale_reason(COMMAND, NOW, AppliedMarker("same-batch", NOW, "route")) is None
    assert stale_reason(COMMAND, NOW, AppliedMarker("older", NOW - 1, "route")) is None
    # The command itself as the newest (a resumed half-applied command) is not stale.
    assert stale_reason(dataclasses.replace(COMMAND, issued_at=NOW - 1), NOW,
                        AppliedMarker("abc", NOW, "route")) is None


def test_newest_takes_the_latest_marker() -> None:
    route, registry = AppliedMarker("a", 5, "route"), AppliedMarker("b", 7, "registry")
    assert newest([route, None, registry]) == registry
    assert newest([None, None]) is None
