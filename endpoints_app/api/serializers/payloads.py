"""Logged payloads (inference tables, ``…/payloads``)."""

from __future__ import annotations

from typing import Any

from endpoints_app.models import PayloadLog
from endpoints_app.monitoring import payloads


def serialize_payload(row: PayloadLog, *, include_bodies: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "ts": payloads.to_ms(row.ts),
        "served_model_name": row.served_entity_name,
        "status_code": row.status_code,
        "latency_ms": row.latency_ms,
        "client_request_id": row.client_request_id,
    }
    if include_bodies:
        out["request"] = row.request
        out["response"] = row.response
    out["too_large"] = row.too_large
    return out
