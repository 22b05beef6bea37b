"""Avro single-object encoding, the framing mle-stream writes: the marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body;
and what every decoder does first with a message value, whatever its framing (`as_bytes`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import fastavro

from mle_stream.wire.avro_schemas import WireSchema, fingerprint_hex, schema_for_fingerprint

__all__ = ["AVRO_MARKER", "SINGLE_OBJECT_HEADER_LEN", "as_bytes", "read_body", "trailing_bytes", "write_single_object",
           "wrong_schema"]

AVRO_MARKER = b"\xc3\x01"
SINGLE_OBJECT_HEADER_LEN = 10  # marker (2) + fingerprint (8)


def write_single_object(schema: WireSchema, datum: Mapping[str, object]) -> bytes:
    """`datum` as a single-object message of `schema`."""
    out = io.BytesIO()
    out.write(AVRO_MARKER)
    out.write(schema.fingerprint)
    fastavro.schemaless_writer(out, schema.parsed, datum)
    return out.getvalue()


def read_body(stream: io.BytesIO, schema: WireSchema) -> Any:
    """One Avro body with fastavro, timestamps as ints (the parsed schema has no logical types)."""
    return fastavro.schemaless_reader(stream, schema.parsed, None)


def wrong_schema(fp: bytes, expected: Sequence[WireSchema], noun: str) -> str:
    """Why a message's fingerprint is refused: which schema it is, if the wire format knows it, and which
    fingerprints a `noun` message may carry."""
    def accepted(s: WireSchema) -> str:
        others = sorted(map(fingerprint_hex, s.fingerprints - {s.fingerprint}))
        also = f"; also {', '.join(others)}" if others else ""
        return f"{s.name} {fingerprint_hex(s.fingerprint)} (schemas/{s.file}{also})"

    found = schema_for_fingerprint(fp)
    if found is None:
        what = ("is none of mle-stream's schemas: the producer's schema differs from schemas/*.avsc "
                "(a changed name, namespace, field, type or field order changes the fingerprint) or its "
                "Avro library computes fingerprints another way")
    elif found.file.startswith("history/"):
        what = f"is an older version of the {found.name} schema (schemas/{found.file})"
        if found.name not in {s.name for s in expected}:
            what += f", not a {noun} schema"
    else:
        what = f"is the {found.name} schema (schemas/{found.file}), not a {noun} schema (a message on the wrong topic?)"
    # The header bytes too: fastavro's fingerprint() returns them in this spelling.
    return (f"Avro schema fingerprint {fingerprint_hex(fp)} (header bytes {fp.hex()}) {what}. A {noun} message carries "
            f"{', '.join(map(accepted, expected))} (docs/producing.md)")


def trailing_bytes(stream: io.BytesIO, size: int, what: str) -> str | None:
    """Why a body read from `stream` is refused when it ends before the message's `size` bytes do."""
    extra = size - stream.tell()
    if not extra:
        return None
    return f"{extra} unexpected bytes after the Avro {what} body (corrupt or written with another schema)"


def as_bytes(payload: bytes | bytearray | memoryview | None) -> bytes:
    """What every decoder reads first: the message value as bytes, whatever the Kafka client gave."""
    # A Kafka tombstone has no value (None); a memoryview cannot be .decode()d or json.loads()ed.
    if payload is None:
        return b""
    return payload if isinstance(payload, bytes) else bytes(payload)
