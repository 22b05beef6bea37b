"""Entries for the dead-letter topic: JSON, one per unusable message or record.

Fields: reason, field ('' when the whole message is unreadable), source_topic, partition, offset,
record_index (null for the whole message), at (epoch ms), and either the raw message or the
decoded record (when the message was readable but one record was not usable). The Kafka key is the
source topic name.

An entry always fits the broker's message limit, whatever it is about: a dead letter that cannot be
published would stop the component that writes it on the same input after every restart. So the
raw message is kept as an excerpt of at most EXCERPT_BYTES (`payload_base64`) with its full size
(`payload_bytes`), a SHA-256 of the whole (`payload_sha256`) and `payload_truncated`; topic,
partition and offset find the rest. A large record is kept the same way as the start of its JSON
text (`record_excerpt`, `record_bytes`, `record_sha256`); reason and field are cut at a few
thousand characters.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

EXCERPT_BYTES = 64 * 1024  # of a payload or record, before base64: entries stay well under 1 MB
MAX_REASON_CHARS = 4096
MAX_FIELD_CHARS = 256


def bounded_text(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out: reasons quote the
    values they refuse, and a value may be megabytes."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def dead_letter_entry(*, reason: str, field: str, source_topic: str, partition: int, offset: int,
                      record_index: int | None, at: int, payload: bytes | None = None,
                      record: dict[str, Any] | None = None) -> bytes:
    entry: dict[str, Any] = {
        "reason": bounded_text(reason),
        "field": bounded_text(field, MAX_FIELD_CHARS),
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "record_index": record_index,
        "at": at,
    }
    if payload is not None:
        entry.update({
            "payload_base64": base64.b64encode(payload[:EXCERPT_BYTES]).decode(),
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_truncated": len(payload) > EXCERPT_BYTES,
        })
    if record is not None:
        text = json.dumps(record, sort_keys=True)
        if len(text) <= EXCERPT_BYTES:
            entry["record"] = record
        else:
            raw = text.encode()
            entry.update({"record_excerpt": text[:EXCERPT_BYTES], "record_bytes": len(raw),
                          "record_sha256": hashlib.sha256(raw).hexdigest()})
    # ensure_ascii: a reason or a key may hold any character, and the entry must be valid UTF-8.
    return json.dumps(entry, sort_keys=True).encode()
