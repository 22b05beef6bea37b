"""Structured logs: one JSON object per line (`mle-stream --log-format json`, MLE_LOG_FORMAT=json).

Every line has time (ISO 8601, UTC), level, logger and message; a log call that passes any of
FIELDS through `extra=` (the worker's and the actuator's decision lines do) gets them as fields
of their own, so a log pipeline can follow one model, window or command without parsing text.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

FIELDS = ("model", "version", "window_start", "window_end", "command_id", "kind", "verdict", "status")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def json_logging_enabled() -> bool:
    """Whether the root logger writes JSON lines (a worker keeps Faust from replacing its handler)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
