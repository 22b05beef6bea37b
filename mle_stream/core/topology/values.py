"""The kinds of value a topology key takes: how each is checked, named in the reference, and shown.

A `Kind` ties the converter the parser runs to the type the reference table prints and to how a
default is written there, so the documented type and the checked one cannot disagree. A converter
raises ValueError saying what was expected; the parser adds the file, line and key path.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mle_stream.core.durations import parse_duration_ms

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))


def format_duration(ms: int) -> str:
    """The shortest way a topology writes `ms`: 60000 -> '1m' (the inverse of parse_duration_ms)."""
    for unit, size in _UNITS:
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _show(value: Any) -> str:
    """A default as the reference table writes it: code for words and lists, plain numbers."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, tuple):
        return f"`[{', '.join(map(str, value))}]`"
    return f"`{value}`"


@dataclass(frozen=True)
class Kind:
    """One kind of value: its name in the reference, its converter, and how a default is shown."""

    type: str
    convert: Callable[[Any], Any]
    show: Callable[[Any], str] = _show
    many: bool = False  # a YAML list of values, each converted

    def list_of(self, name: str) -> Kind:
        """A list of this kind's values; `type` names it in the reference ("list of fractions")."""
        return Kind(name, self.convert, self.show, many=True)


def _text(v: Any) -> str:
    if v is None or isinstance(v, (dict, list)) or str(v) == "":
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return str(v)


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


def _fraction(v: Any) -> float:
    if not _is_number(v) or not 0 <= v <= 1:
        raise ValueError(f"expected a number between 0 and 1, got {v!r}")
    return float(v)


def _positive(v: Any) -> float:
    if not _is_number(v) or not v > 0 or v != v or v == math.inf:
        raise ValueError(f"expected a number > 0, got {v!r}")
    return float(v)


def _number(v: Any) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    return float(v)


def _open_fraction(v: Any) -> float:
    value = _number(v)
    if not 0 < value < 1:
        raise ValueError(f"expected a number between 0 and 1 (exclusive), got {v!r}")
    return value


def _non_negative(v: Any) -> float:
    value = _number(v)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {v!r}")
    return value


def _percent(v: Any) -> int:
    if not _is_int(v) or not 0 < v <= 100:
        raise ValueError(f"expected a whole percentage in 1..100, got {v!r}")
    return int(v)


def _non_negative_int(v: Any) -> int:
    if not _is_int(v) or v < 0:
        raise ValueError(f"expected a whole number >= 0, got {v!r}")
    return int(v)


def _positive_int(v: Any) -> int:
    if not _is_int(v) or v < 1:
        raise ValueError(f"expected a whole number >= 1, got {v!r}")
    return int(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


TEXT = Kind("string", _text)
BOOL = Kind("bool", _bool)
FRACTION = Kind("fraction", _fraction)
OPEN_FRACTION = Kind("fraction in (0, 1)", _open_fraction)
NUMBER = Kind("number", _number)
NON_NEGATIVE = Kind("number ≥ 0", _non_negative)
POSITIVE = Kind("number > 0", _positive)
POSITIVE_INT = Kind("int ≥ 1", _positive_int)
NON_NEGATIVE_INT = Kind("int ≥ 0", _non_negative_int)
PERCENT = Kind("percent", _percent)
DURATION = Kind("duration", parse_duration_ms, show=format_duration)
TEXTS = TEXT.list_of("list of strings")


def choice(options: tuple[str, ...]) -> Kind:
    """One of `options`, e.g. a task or a routing backend."""
    def convert(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)
    return Kind(", ".join(f"`{o}`" for o in options), convert)


def template(*required: str, allowed: tuple[str, ...] = ("model", "version")) -> Kind:
    """A non-empty format string using every field in `required` and none outside `allowed`."""
    braced = ", ".join("{" + a + "}" for a in allowed)

    def convert(v: Any) -> str:
        text = _text(v)
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid template ({exc})") from None
        missing = [n for n in required if n not in names]
        if missing:
            raise ValueError(f"template {text!r} must use {', '.join('{' + n + '}' for n in missing)}")
        unknown = sorted(names - set(allowed))
        if unknown:
            raise ValueError(f"template {text!r} may use only {braced}, not "
                             f"{', '.join('{' + n + '}' for n in unknown)}")
        return text
    return Kind(f"template ({', '.join('`{' + a + '}`' for a in allowed)})", convert)
