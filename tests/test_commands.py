import dataclasses
import hashlib
import hmac
import json

import pytest

from mle_stream.core.commands import canonical_bytes, sign, verify
from mle_stream.core.events import Command, CommandKind

COMMAND = Command(
    command_id="abc", kind=CommandKind.ROLLBACK, model="fraud", baseline_version="1", candidate_version="2",
    traffic={"1": 100, "2": 0}, reason="worse", rule="r", window_start=0, window_end=10, evidence="{}",
    policy_version="p", issued_at=5,
)


def test_signature_is_hmac_sha256_of_sorted_compact_json() -> None:
    key = b"secret"
    fields = {**dataclasses.asdict(COMMAND), "kind": "ROLLBACK"}
    del fields["signature"]
    expected = hmac.new(key, json.dumps(fields, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()
    assert canonical_bytes(COMMAND) == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert sign(COMMAND, key).signature == expected


def test_verify_rejects_unsigned_forged_and_tampered_commands() -> None:
    signed = sign(COMMAND, b"secret")
    assert verify(signed, b"secret")
    assert not verify(COMMAND, b"secret")
    assert not verify(signed, b"other key")
    assert not verify(dataclasses.replace(signed, traffic={"1": 0, "2": 100}), b"secret")
    assert not verify(signed, b"")
    with pytest.raises(ValueError, match="MLE_SIGNING_KEY"):
        sign(COMMAND, b"")
