"""The Confluent Schema Registry wire format: its framing, and how a writer schema from the registry
is resolved against the schema mle-stream reads with.

A Confluent-framed message (what Java's KafkaAvroSerializer and confluent-kafka's AvroSerializer
write) is the byte 0x00, the 4-byte big-endian id of the writer schema in the registry, then the
Avro binary body. The writer schema may differ from ours as the Avro specification's schema
resolution allows (a field added with a default, an int where we read a long, ...): `resolve`
checks that once per writer schema, by the specification's rules, and says which field does not
resolve, so that an incompatible producer gets one clear reason instead of a read error per message.
No I/O here: the decoders get the writer schema's text through a lookup they are given
(`WriterSchemas`), and each writer schema is resolved once per process.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from mle_stream.errors import InvalidEvent
from mle_stream.wire.avro_schemas import WireSchema, without_logical_types
from mle_stream.wire.framing import trailing_bytes
from mle_stream.wire.schema_registry import RegistryUnavailable, SchemaRegistryError, WriterSchemas

MAGIC = b"\x00"
HEADER_LEN = 5  # magic byte (1) + schema id (4)

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# The Avro specification's promotions: what a writer's type may be read as besides itself.
_PROMOTIONS = frozenset({("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"),
                         ("long", "double"), ("float", "double"), ("string", "bytes"), ("bytes", "string")})


def schema_id(payload: bytes) -> int:
    """The schema id of a framed message (at least HEADER_LEN bytes)."""
    return int.from_bytes(payload[1:HEADER_LEN], "big")


@dataclass(frozen=True)
class ReaderSchema:
    """One schema mle-stream reads with: its name for messages, its Parsing Canonical Form and its
    fastavro-parsed form (logical types removed)."""

    name: str
    canonical_form: str
    parsed: Any


@dataclass(frozen=True)
class Resolution:
    """How to read the bodies of one writer schema: with `reader`, and `writer` (parsed) when the
    writer schema is not the reader's own (None: it is, by Parsing Canonical Form)."""

    reader: ReaderSchema
    writer: Any | None


def reader_schema(schema: WireSchema) -> ReaderSchema:
    """`schema` as the reader side of a resolution."""
    return ReaderSchema(schema.name, schema.canonical_form, schema.parsed)


# (writer schema text, what it is read as) -> how to read it, or why it cannot be read. Schema ids
# are immutable and few: each writer schema is resolved once per process.
_RESOLUTIONS: dict[tuple[str, str], Resolution | str] = {}


def framed_resolution(payload: bytes, registry: WriterSchemas | None, key: str, single: WireSchema,
                      batch: WireSchema | None = None) -> Resolution | str:
    """How to read this framed message's body as `single` or, when there is one, `batch` (`key`
    names the pair: prediction, label, or a single-event schema's name), or the reason it cannot be
    read (a dead letter). RegistryUnavailable passes through: a registry that does not answer is
    not the message's fault."""
    if len(payload) < HEADER_LEN:
        return (f"truncated Confluent Schema Registry message: {len(payload)} bytes, the header alone "
                f"(0x00 and a 4-byte schema id) is {HEADER_LEN}")
    framed_id = schema_id(payload)
    if registry is None:
        return (f"Confluent Schema Registry framing (magic byte 0x00, schema id {framed_id}) but no schema "
                "registry is configured: set MLE_SCHEMA_REGISTRY_URL to the registry the producer uses")
    try:
        text = registry.writer_schema(framed_id)
    except RegistryUnavailable:
        raise
    except SchemaRegistryError as exc:
        return f"Confluent schema id {framed_id}: {exc}"
    cache_key = (text, key)
    resolution = _RESOLUTIONS.get(cache_key)
    if resolution is None:
        try:
            resolution = resolve(text, reader_schema(single), None if batch is None else reader_schema(batch))
        except ValueError as exc:
            resolution = str(exc)
        _RESOLUTIONS[cache_key] = resolution
    if isinstance(resolution, str):
        subjects = ", ".join(registry.subjects(framed_id)) or "none the registry could name"
        return f"the writer schema of Confluent schema id {framed_id} (subjects: {subjects}) {resolution}"
    return resolution


def read_framed(payload: bytes, resolution: Resolution) -> Any:
    """The body of a framed message read as `resolution` says; InvalidEvent when it does not read."""
    reader, writer = resolution.reader, resolution.writer
    stream = io.BytesIO(payload)
    stream.seek(HEADER_LEN)
    what = f"Avro {reader.name} (Confluent schema id {schema_id(payload)})"
    try:
        datum = fastavro.schemaless_reader(stream, writer or reader.parsed, None if writer is None else reader.parsed)
    except Exception as exc:  # noqa: BLE001 - fastavro's many corrupt-input errors, reported
        raise InvalidEvent(f"unreadable {what}: {type(exc).__name__}: {exc}") from None
    problem = trailing_bytes(stream, len(payload), what)
    if problem:
        raise InvalidEvent(problem)
    return datum


def resolve(writer_text: str, single: ReaderSchema, batch: ReaderSchema | None = None) -> Resolution:
    """How to read a body written with `writer_text` as one record (`single`) or, when there is one,
    a batch (`batch`); ValueError saying what does not resolve, as the end of a sentence about the
    writer schema."""
    try:
        return _resolve(writer_text, single, batch)
    except RecursionError:  # the registry is not ours to trust: a schema may nest arrays 100,000 deep
        raise ValueError("is nested too deeply to be read") from None


def _resolve(writer_text: str, single: ReaderSchema, batch: ReaderSchema | None) -> Resolution:
    try:
        writer = without_logical_types(json.loads(writer_text))
    except ValueError as exc:
        raise ValueError(f"is not JSON ({exc})") from None
    try:
        canonical = to_parsing_canonical_form(writer)
        parsed = fastavro.parse_schema(writer, named_schemas={})
    except Exception as exc:  # noqa: BLE001 - fastavro's SchemaParseException, KeyError, TypeError...
        raise ValueError(f"is not an Avro schema mle-stream can read ({type(exc).__name__}: {exc}); schema "
                         "references to other subjects are not supported") from None
    for ours in (batch, single):
        if ours is not None and canonical == ours.canonical_form:
            return Resolution(ours, None)
    # A record with an array field `records` is meant as a batch; anything else as one record.
    fields = parsed.get("fields", []) if isinstance(parsed, dict) else []
    is_batch = any(f["name"] == "records" and _type(_named(f["type"], _names(parsed))) == "array" for f in fields)
    reader = batch if is_batch and batch is not None else single
    problem = _mismatch(parsed, reader.parsed, "", _names(parsed), _names(reader.parsed), set())
    if problem:
        raise ValueError(f"does not resolve against mle-stream's {reader.name} schema: {problem}")
    return Resolution(reader, parsed)


def _names(parsed: Any) -> dict[str, Any]:
    return parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}


def _named(node: Any, names: dict[str, Any]) -> Any:
    return names.get(node, node) if isinstance(node, str) else node


def _type(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    return node if isinstance(node, str) else str(node.get("type"))


def _show(node: Any) -> str:
    if isinstance(node, list):
        return "[" + ", ".join(_show(b) for b in node) + "]"
    if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
        return str(node["name"])
    return _type(node)


def _unqualified(name: str) -> str:
    return name.rpartition(".")[2]


def _mismatch(w: Any, r: Any, where: str, wn: dict[str, Any], rn: dict[str, Any],
              seen: set[tuple[str, str]]) -> str | None:
    """Why data written as `w` cannot be read as `r` by the Avro specification's schema resolution,
    naming the field (`where`); None when it can."""
    w, r = _named(w, wn), _named(r, rn)
    at = f"field '{where}'" if where else "the top-level type"
    if isinstance(w, list):  # every branch the writer may write must be readable
        for branch in w:
            problem = _mismatch(branch, r, where, wn, rn, seen)
            if problem:
                return problem
        return None
    if isinstance(r, list):
        if any(_mismatch(w, branch, where, wn, rn, seen) is None for branch in r):
            return None
        return f"{at}: the writer's {_show(w)} is none of the reader's {_show(r)}"
    wt, rt = _type(w), _type(r)
    if wt in _PRIMITIVES or rt in _PRIMITIVES or wt != rt:
        if wt == rt or (wt, rt) in _PROMOTIONS:
            return None
        return f"{at}: the writer's {_show(w)} cannot be read as {_show(r)}"
    if wt == "array":
        return _mismatch(w["items"], r["items"], f"{where}[]", wn, rn, seen)
    if wt == "map":
        return _mismatch(w["values"], r["values"], f"{where}{{}}", wn, rn, seen)
    names = {_unqualified(r["name"]), *(_unqualified(a) for a in r.get("aliases", ()))}
    if _unqualified(w["name"]) not in names:
        return f"{at}: the writer's {wt} {w['name']} is not the reader's {r['name']}"
    if wt == "fixed" and w.get("size") != r.get("size"):
        return f"{at}: fixed {w['name']} has size {w.get('size')}, the reader's {r.get('size')}"
    if wt == "enum":
        extra = [s for s in w.get("symbols", ()) if s not in r.get("symbols", ())]
        if extra and "default" not in r:
            return f"{at}: the writer's enum {w['name']} has symbols the reader lacks: {', '.join(extra)}"
        return None
    key = (w["name"], r["name"])
    if key in seen:  # a recursive type: already being checked further up
        return None
    seen.add(key)
    by_name = {f["name"]: f for f in w.get("fields", ())}
    for rf in r.get("fields", ()):
        sub = f"{where}.{rf['name']}" if where else rf["name"]
        wf = next((by_name[n] for n in (rf["name"], *rf.get("aliases", ())) if n in by_name), None)
        if wf is None:
            if "default" not in rf:
                return f"field '{sub}' is required by the reader (it has no default) and missing from the writer"
            continue
        problem = _mismatch(wf["type"], rf["type"], sub, wn, rn, seen)
        if problem:
            return problem
    return None
