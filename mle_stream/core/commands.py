"""Deterministic command ids and HMAC-SHA256 signatures.

The id is a hash of what was decided (model, versions, action, rule, windows), so re-emitting the
same decision after a restart gives the same id and the actuator can skip the duplicate. The
signature covers the canonical JSON of every field but the signature itself, so a consumer in any
language can check it: json with sorted keys, no spaces, UTF-8.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

from mle_stream.core.events import Command, CommandKind


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


def canonical_bytes(command: Command) -> bytes:
    """The bytes the signature covers."""
    fields = dataclasses.asdict(command)
    fields.pop("signature")
    fields["kind"] = command.kind.value
    fields["traffic"] = dict(command.traffic)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(command: Command, key: bytes) -> Command:
    if not key:
        raise ValueError("signing key is empty: set MLE_SIGNING_KEY")
    digest = hmac.new(key, canonical_bytes(command), hashlib.sha256).hexdigest()
    return dataclasses.replace(command, signature=digest)


def verify(command: Command, key: bytes) -> bool:
    """True only for a command signed with `key` and unchanged since."""
    if not key or not command.signature:
        return False
    expected = hmac.new(key, canonical_bytes(command), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, command.signature)
