"""Deterministic command ids, and when a command may still be applied.

The id is a hash of what was decided (model, versions, action, rule, windows), so re-emitting the
same decision after a restart gives the same id and the actuator can skip the duplicate. The
signature is core/signing.py's.

Freshness (`stale_reason`): a validly signed command is not valid forever, or one captured from
the commands topic could be published again later and undo what came after it (a SET_TRAFFIC 50
replayed after a rollback would send half the traffic back to the rolled-back version). So:

- a command expires: past `expires_at` it is refused; one without (0) is refused too;
- a command is refused when its `issued_at` is earlier than that of the newest command already
  applied to its model (`AppliedMarker`, which the actuator reads back from the route and the
  registry). Equal `issued_at` is allowed: the worker stamps every command of one batch with the
  same instant, and they must all apply, in the order of the commands topic;
- `issued_at` comes from the signer's clock, so signers' clocks must agree: a command issued more
  than `max_skew_ms` ahead of the actuator's clock is refused, which bounds how long a signer whose
  clock runs ahead can hold back the commands of the others (at most that skew).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from mle_stream.core.events import Command, CommandKind

# A command the signer does not give its own expiry is valid this long after it was issued.
DEFAULT_TTL_MS = 3_600_000

# How far ahead of the actuator's clock a signer's clock may run (see the module docstring).
MAX_CLOCK_SKEW_MS = 60_000
STALE = "STALE"


def command_id(
    model: str,
    baseline_version: str,
    candidate_version: str,
    kind: CommandKind,
    rule: str,
    window_start: int,
    window_end: int,
) -> str:
    material = json.dumps(
        [model, baseline_version, candidate_version, kind.value, rule, window_start, window_end],
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def iso_utc(millis: int) -> str:
    """Epoch milliseconds as '2026-01-02T03:04:05.678Z' (for messages and tags)."""
    try:
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{millis} ms since the epoch"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AppliedMarker:
    """The newest command applied to a model, as a backend recorded it; `where` names that record."""

    command_id: str
    issued_at: int
    where: str


def newest(markers: list[AppliedMarker | None]) -> AppliedMarker | None:
    """The marker with the latest issued_at (the first of equals), None when there is none."""
    found = [m for m in markers if m is not None]
    return max(found, key=lambda m: m.issued_at) if found else None


def stale_reason(command: Command, now_ms: int, applied: AppliedMarker | None = None,
                 max_skew_ms: int = MAX_CLOCK_SKEW_MS) -> str | None:
    """Why `command` may not be applied at `now_ms` after `applied` ("STALE: ..."), None when it may."""
    issued, expires = command.issued_at, command.expires_at
    if not expires:
        return (f"{STALE}: the command has no expiry (expires_at is 0): its signer predates expiring commands; "
                "issue it again with a current mle-stream")
    if now_ms >= expires:
        return (f"{STALE}: expired at {iso_utc(expires)} ({(now_ms - expires) / 1000:.0f} s ago; issued "
                f"{iso_utc(issued)}): a command is valid for its TTL only (MLE_COMMAND_TTL); issue it again if it "
                "still applies")
    if issued > now_ms + max_skew_ms:
        return (f"{STALE}: issued at {iso_utc(issued)}, {(issued - now_ms) / 1000:.0f} s ahead of the actuator's "
                f"clock (at most {max_skew_ms / 1000:.0f} s allowed): the signer's clock runs ahead; set it right "
                "(NTP) and issue the command again")
    if applied is not None and issued < applied.issued_at and applied.command_id != command.command_id:
        return (f"{STALE}: issued at {iso_utc(issued)}, before command {applied.command_id} (issued "
                f"{iso_utc(applied.issued_at)}) that the {applied.where} records as the newest applied to model "
                f"{command.model}: applying it would undo a newer decision (a replayed or long-delayed command); "
                "issue a new command if it still applies")
    return None
