"""Durations as the topologies and the environment write them ('500ms', '30s', '5m', '2h', '7d').

A module of its own so that the settings (mle_stream/config.py), which the client imports, can
read durations without importing the topology loader and what it needs (YAML, SciPy)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """'500ms', '30s', '5m', '2h', '7d' -> milliseconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like 30s, 5m, 2h or 7d, got {text!r}")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])
