"""Log lines as text (the default) or one JSON object per line (``MODELFLEET_LOG_FORMAT=json``).

Each JSON line has ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
``request_id`` (null outside a request), ``process`` (the role: web, worker, beat, agent) and
``pid``; ``exc_info`` when an exception is logged. Multi-line messages stay one line (JSON escapes
the newlines), so a log shipper never splits a traceback into several events.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def process_role() -> str:
    """The role this process runs as (set by whoever starts it), for log lines and heartbeats."""
    return os.environ.get("MODELFLEET_PROCESS_ROLE", "") or "-"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == "-" else request_id,
            "process": process_role(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def json_line(message: str, *, logger: str, level: str = "INFO", process: str | None = None) -> str:
    """One JSON log line for text that did not come through logging (a child's raw output)."""
    entry = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level,
        "logger": logger,
        "message": message,
        "request_id": None,
        "process": process or logger,
    }
    return json.dumps(entry, ensure_ascii=False)
