"""The reference table of every topology key, rendered from the model (core/topology/model.py).

docs/topologies.md holds the table between two markers; regenerate it after changing a key:

    python -m mle_stream.core.topology.reference --write docs/topologies.md

Without --write, the table is printed. tests/test_topology_reference.py fails when the doc's
table and the model disagree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import MISSING
from pathlib import Path
from typing import NamedTuple

from mle_stream.core.topology.model import Key, Topology, default_of, documented

START = "<!-- topology-reference:start -->"
END = "<!-- topology-reference:end -->"
HEADER = ("key", "type", "default", "unit", "meaning")


class Entry(NamedTuple):
    """One documented key: its full path, the model and field it fills, and its Key."""

    path: str
    model: type
    field: str
    key: Key

    def default(self) -> str:
        """The default as the table shows it."""
        value, words = default_of(self.model, self.field), self.key.default
        if words is None:
            return "required" if self.key.required or value is MISSING else self.key.kind.show(value)
        return words.replace("{}", self.key.kind.show(value)) if "{}" in words else words


def entries(model: type = Topology, prefix: str = "") -> Iterator[Entry]:
    """Every key of `model` and of the sections it holds, in the model's order."""
    for name, item in documented(model):
        if isinstance(item, Key):
            yield Entry(f"{prefix}{item.name}", model, name, item)
        else:
            for section in item:
                yield from entries(section.model, f"{prefix}{section.name}.")


def table() -> str:
    """The markdown table: one row per key."""
    def row(cells: tuple[str, ...]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    lines = [row(HEADER), row(("---",) * len(HEADER))]
    lines += [row((f"`{e.path}`", e.key.kind.type, e.default(), e.key.unit, e.key.meaning)) for e in entries()]
    return "\n".join(lines) + "\n"


def replace_table(text: str, source: str = "the document") -> str:
    """`text` with the part between the markers replaced by the current table."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{source} has no {START} ... {END} block to hold the table")
    return f"{text[:start]}{START}\n{table()}{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mle_stream.core.topology.reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", metavar="FILE", type=Path,
                        help="replace the table between the markers in FILE (docs/topologies.md)")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(table())
        return 0
    try:
        args.write.write_text(replace_table(args.write.read_text(encoding="utf-8"), str(args.write)), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
