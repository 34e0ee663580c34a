"""Audit events (``/api/2.0/modelfleet/audit-events``), in the page and in a JSON-lines export."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import AuditEvent


def serialize_audit_event(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": ms(e.at),
        "actor": e.actor_name or None,
        "source": e.source,
        "action": e.action,
        "object_type": e.object_type,
        "object_id": e.object_id,
        "object_name": e.object_name,
        "before": e.before,
        "after": e.after,
    }
