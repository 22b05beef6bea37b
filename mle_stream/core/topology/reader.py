"""Walks a topology's YAML node tree, collecting every problem with its file:line and key path, so
that a reviewer fixes a file in one pass instead of one error per run."""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import MISSING
from typing import Any

import yaml

from mle_stream.core.topology.model import default_of, key_of


class Reader:
    """One file's YAML tree (`root`) and the problems found in it so far (`errors`)."""

    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source = source
        self.errors: list[str] = []
        self.root = root

    def where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        self.errors.append(f"{self.where(node)}: {path}: {message}")

    def mapping(self, node: yaml.Node, path: str, allowed: Set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path or "(top level)", "expected a mapping of keys to values")
            return {}
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key not in allowed:
                self.error(key_node, f"{path}.{key}" if path else key,
                           f"unknown key; expected one of {', '.join(sorted(allowed))}")
            elif key in out:
                self.error(key_node, f"{path}.{key}" if path else key, "duplicate key")
            else:
                out[key] = value_node
        return out

    def section(self, parent: dict[str, yaml.Node], key: str,
                allowed: Set[str]) -> tuple[dict[str, yaml.Node], yaml.Node | None]:
        """The mapping under `key` (empty when the file has none) and its node."""
        node = parent.get(key)
        return (self.mapping(node, key, allowed), node) if node is not None else ({}, None)

    def value(self, fields: dict[str, yaml.Node], key: str, path: str, convert: Callable[[Any], Any],
              default: Any = None, required: bool = False, parent: yaml.Node | None = None) -> Any:
        full = f"{path}.{key}" if path else key
        node = fields.get(key)
        if node is None:
            if required:
                self.error(parent or self.root, full, "is required")
            return default
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, full, "expected a single value")
            return default
        try:
            return convert(yaml.safe_load(yaml.serialize(node)))
        except (ValueError, TypeError) as exc:
            self.error(node, full, str(exc))
            return default

    def field(self, fields: dict[str, yaml.Node], path: str, model: type, name: str, *,
              default: Any = None, parent: yaml.Node | None = None) -> Any:
        """The value of `model`'s field `name` from its YAML key under `path`, converted as its Key
        says. Absent or wrong, it is `default` when given (a default that depends on other keys),
        else the field's own; a list-valued key that is absent or empty gets the same."""
        key = key_of(model, name)
        fallback = default_of(model, name)
        if default is None and fallback is not MISSING:
            default = fallback
        if key.kind.many:
            return tuple(self.sequence(fields, key.leaf, path, key.kind.convert)) or default
        return self.value(fields, key.leaf, path, key.kind.convert, default, key.required, parent)

    def sequence(self, fields: dict[str, yaml.Node], key: str, path: str, convert: Callable[[Any], Any]) -> list[Any]:
        """A YAML list of single values, each converted; an error names the item and its line."""
        node = fields.get(key)
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{path}.{key}", "expected a list, e.g. [a, b]")
            return []
        out = []
        for i, item in enumerate(node.value):
            value = self.value({f"{key}[{i}]": item}, f"{key}[{i}]", path, convert)
            if value is not None:
                out.append(value)
        return out
