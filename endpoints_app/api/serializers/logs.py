"""Stored log lines (``…/log-lines``)."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import LogLine


def serialize_log_line(line: LogLine) -> dict[str, Any]:
    return {
        "ts": ms(line.ts),
        "level": line.level,
        "served_model_name": line.served_entity_name,
        "replica": line.replica,
        "kind": line.kind,
        "message": line.message,
    }
