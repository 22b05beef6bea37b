"""Entries for the dead-letter topic: JSON, one per unusable message or record.

Fields: reason, field ('' when the whole message is unreadable), source_topic, partition, offset,
record_index (null for the whole message), at (epoch ms), and either payload_base64 (the raw
message) or record (the decoded record, when the message was readable but one record was not
usable). The Kafka key is the source topic name.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def dead_letter_entry(*, reason: str, field: str, source_topic: str, partition: int, offset: int,
                      record_index: int | None, at: int, payload: bytes | None = None,
                      record: dict[str, Any] | None = None) -> bytes:
    entry: dict[str, Any] = {
        "reason": reason,
        "field": field,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "record_index": record_index,
        "at": at,
    }
    if payload is not None:
        entry["payload_base64"] = base64.b64encode(payload).decode()
    if record is not None:
        entry["record"] = record
    return json.dumps(entry, sort_keys=True).encode()
