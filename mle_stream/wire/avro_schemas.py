"""The Avro schemas of mle-stream's topics (schemas/*.avsc) as the wire format uses them: their
Parsing Canonical Forms, the fingerprints a single-object header may carry for each, and the
earlier versions that are still read.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

__all__ = ["WireSchema", "fingerprint_hex", "history", "schema_dir", "schema_for_fingerprint", "schemas",
           "without_logical_types"]


def schema_dir() -> Path:
    """Where the .avsc files are: inside the package for a wheel install, at the repo top otherwise.

    This file's folder is `Path(mle_stream.__file__).parent / "wire"`; taking it from here keeps the
    wire format importable however the package is laid out.
    """
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "schemas", package_dir.parent / "schemas"):
        if (candidate / "prediction.avsc").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Avro schemas found in {package_dir / 'schemas'} or {package_dir.parent / 'schemas'}: "
        "reinstall mle-stream (the wheel ships them as mle_stream/schemas)"
    )


@dataclass(frozen=True)
class WireSchema:
    """One Avro schema as the wire format uses it.

    `canonical_form` is the Parsing Canonical Form of the fully expanded schema (named types
    defined in other files inlined at first use), as the Avro spec defines it and Java's
    ``SchemaNormalization`` computes it: its fingerprint is what the wire format writes. `fingerprints`
    holds every fingerprint a reader accepts for this schema (_wire_schema). `parsed` is the
    fastavro schema with logical types removed, so timestamps stay ints; the binary encoding is
    the same with or without them. `file` is where it is, relative to the schemas folder.
    """

    name: str
    fullname: str
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian, exactly as in the single-object header
    parsed: Any
    file: str
    fingerprints: frozenset[bytes]  # `fingerprint` and the others readers accept

    @property
    def fingerprint_hex(self) -> str:
        return fingerprint_hex(self.fingerprint)


def fingerprint_hex(fp: bytes) -> str:
    """A fingerprint as Java's parsingFingerprint64 prints it: the 64-bit value the header's 8
    little-endian bytes spell."""
    return f"0x{int.from_bytes(fp, 'little'):016x}"


# Records first: the batch schemas refer to io.mlestream.Prediction / io.mlestream.Label by name.
_SCHEMA_FILES = {
    "Prediction": "prediction.avsc",
    "Label": "label.avsc",
    "PredictionBatch": "prediction_batch.avsc",
    "LabelBatch": "label_batch.avsc",
    "Command": "command.avsc",
    "RolloutEvent": "rollout_event.avsc",
    "MetricSnapshot": "metric_snapshot.avsc",
    "DriftTable": "drift_table.avsc",
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _inline_named(node: Any, namespace: str, defined: set[str], known: Mapping[str, Any]) -> Any:
    """A copy of `node` where each reference to a schema of another file is replaced by that schema
    at its first use, as the Parsing Canonical Form requires.

    fastavro's to_parsing_canonical_form leaves such a reference as a bare name, which gives
    another fingerprint than Java's (accepted too, see _wire_schema).
    """
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _fullname(node, namespace)
        if full in defined or full not in known:
            return node
        return _inline_named(copy.deepcopy(known[full]), namespace, defined, known)
    if isinstance(node, list):
        return [_inline_named(branch, namespace, defined, known) for branch in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    kind = node.get("type")
    if kind in _NAMED:
        namespace = node.get("namespace", namespace) if "." not in node["name"] else node["name"].rpartition(".")[0]
        defined.add(_fullname(node["name"], namespace))
        if kind in ("record", "error"):
            out["fields"] = [
                {**f, "type": _inline_named(f["type"], namespace, defined, known)} for f in node["fields"]
            ]
    elif kind == "array":
        out["items"] = _inline_named(node["items"], namespace, defined, known)
    elif kind == "map":
        out["values"] = _inline_named(node["values"], namespace, defined, known)
    elif isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _PRIMITIVES):
        out["type"] = _inline_named(kind, namespace, defined, known)
    return out



def _read_schema(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"cannot load Avro schema {path}: {exc}") from exc


def _fingerprint(canonical_form: str) -> bytes:
    # fastavro spells the fingerprint as the hex of its little-endian bytes: the header bytes.
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


def _canonical_form(node: Any, *, logical_as_object: bool = False) -> str:
    """The Parsing Canonical Form of `node`, a schema that defines every named type it uses (an
    expanded one).

    With `logical_as_object`, a primitive with a logical type is written ``{"type":"long"}``
    instead of the spec's ``"long"``: the form goavro and the ``avro`` package for Python produce,
    and so the fingerprint they write.
    """
    def form(n: Any, ns: str) -> str:
        if isinstance(n, str):
            return json.dumps(n if n in _PRIMITIVES else _fullname(n, ns))
        if isinstance(n, list):
            return "[" + ",".join(form(branch, ns) for branch in n) + "]"
        kind = n["type"]
        if kind in _PRIMITIVES:
            return f'{{"type":"{kind}"}}' if logical_as_object and "logicalType" in n else f'"{kind}"'
        if kind == "array":
            return '{"type":"array","items":' + form(n["items"], ns) + "}"
        if kind == "map":
            return '{"type":"map","values":' + form(n["values"], ns) + "}"
        if kind not in _NAMED:  # {"type": {...}}, {"type": [...]} or {"type": "io.mlestream.Name"}
            return form(kind, ns)
        name = _fullname(n["name"], n.get("namespace", ns))
        ns = name.rpartition(".")[0]
        head = f'{{"name":{json.dumps(name)},"type":"{kind}"'
        if kind == "enum":
            return head + ',"symbols":' + json.dumps(n["symbols"], separators=(",", ":")) + "}"
        if kind == "fixed":
            return head + f',"size":{int(n["size"])}}}'
        fields = ",".join(f'{{"name":{json.dumps(f["name"])},"type":{form(f["type"], ns)}}}' for f in n["fields"])
        return head + ',"fields":[' + fields + "]}"

    return form(node, "")


def without_logical_types(node: Any) -> Any:
    """The schema with its logicalType annotations dropped: timestamps stay plain ints, as everywhere
    in the wire format; the binary encoding is the same."""
    if isinstance(node, list):
        return [without_logical_types(n) for n in node]
    if isinstance(node, dict):
        return {k: without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node


def _wire_schema(name: str, file: str, schema: Any, expanded: Any, named: dict[str, Any]) -> WireSchema:
    """`schema` as the wire format uses it; `expanded` is it with other files' named types inlined.

    Besides the spec's fingerprint (Java's, written by the wire format), a reader accepts those that
    common implementations compute for the same schema, each of them different only where an
    implementation departs from the spec; the binary body is the same:
    - fastavro's, for a schema parsed with ``parse_schema(..., named_schemas=...)``: a named type
      of another file stays a bare name (``"items":"io.mlestream.Prediction"``), so it differs
      for the batches;
    - goavro's and the ``avro`` Python package's: a timestamp is ``{"type":"long"}``.
    """
    canonical = _canonical_form(expanded)
    fp = _fingerprint(canonical)
    parsed = fastavro.parse_schema(without_logical_types(schema), named_schemas=named)
    fastavro_fp = _fingerprint(to_parsing_canonical_form(parsed))
    goavro_fp = _fingerprint(_canonical_form(expanded, logical_as_object=True))
    fullname = _fullname(schema["name"], schema.get("namespace", ""))
    return WireSchema(name, fullname, canonical, fp, parsed, file, frozenset({fp, fastavro_fp, goavro_fp}))


def _load_schemas() -> dict[str, WireSchema]:
    folder = schema_dir()
    raw = {name: _read_schema(folder / filename) for name, filename in _SCHEMA_FILES.items()}
    by_fullname = {_fullname(s["name"], s.get("namespace", "")): s for s in raw.values()}
    named: dict[str, Any] = {}  # shared, so the batch schemas resolve io.mlestream.Prediction/Label
    return {name: _wire_schema(name, _SCHEMA_FILES[name], schema,
                               _inline_named(schema, "", set(), by_fullname), named)
            for name, schema in raw.items()}


_SCHEMAS = _load_schemas()

# Earlier versions of a schema (schemas/history/), still read: a message names its writer schema
# by fingerprint, and one written before a field was added is resolved against today's schema,
# the added field taking its default. Only schemas that gained fields with defaults are here.
_HISTORY_FILES = {"Command": ("history/command-1.avsc",)}


def _load_history() -> dict[str, list[WireSchema]]:
    out: dict[str, list[WireSchema]] = {}
    for name, files in _HISTORY_FILES.items():
        for filename in files:
            schema = _read_schema(schema_dir() / filename)
            # Its own named types: an old Command redefines io.mlestream.CommandKind.
            out.setdefault(name, []).append(_wire_schema(name, filename, schema, schema, {}))
    return out


_HISTORY = _load_history()
# Every fingerprint the wire format knows, for naming the schema of a message on the wrong topic.
_BY_FINGERPRINT = {fp: s for s in [*_SCHEMAS.values(), *(w for h in _HISTORY.values() for w in h)]
                   for fp in s.fingerprints}


def schemas() -> Mapping[str, WireSchema]:
    """Every schema the wire format knows, by short name (Prediction, PredictionBatch, Label, ...)."""
    return dict(_SCHEMAS)


def history(name: str) -> tuple[WireSchema, ...]:
    """The earlier versions of schema `name` that are still read, oldest first (none for most)."""
    return tuple(_HISTORY.get(name, ()))


def schema_for_fingerprint(fp: bytes) -> WireSchema | None:
    """The schema, current or earlier, whose single-object header carries `fp`; None for a stranger."""
    return _BY_FINGERPRINT.get(fp)
