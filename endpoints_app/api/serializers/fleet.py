"""The fleet API's endpoints (``/api/2.0/modelfleet/fleet/endpoints``): every workspace's, one shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import Endpoint, ServedEntity
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.monitoring.remote import stale_reason


def _entity(entity: ServedEntity) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entity.name}
    if entity.external_model:
        out["external_model"] = {k: entity.external_model.get(k) for k in ("provider", "name", "task")}
    else:
        out.update(entity_name=entity.entity_name, entity_version=entity.entity_version)
    return out


def serialize_fleet_endpoint(
    endpoint: Endpoint, *, ready: str, now: datetime, last_polled: datetime | None = None
) -> dict[str, Any]:
    """``ready`` is READY / NOT_READY as the endpoint's workspace says it (the caller works it out)."""
    remote = endpoint.workspace is not None
    config = endpoint.active_config
    stale = stale_reason(endpoint, now=now)
    out: dict[str, Any] = {
        "workspace": endpoint.workspace.name if endpoint.workspace is not None else LOCAL_WORKSPACE,
        "name": endpoint.name,
        "id": endpoint.id,
        "state": {"ready": ready, "config_update": endpoint.config_update},
        "health": endpoint.health,
        "health_reason": endpoint.health_reason,
        "stale": bool(stale),
        "config_version": config.version if config is not None else None,
        "served_entities": [_entity(e) for e in config.served_entities.all()] if config is not None else [],
        "tags": [{"key": t.key, "value": t.value} for t in endpoint.tags.all()],
        "last_polled": ms(last_polled) if last_polled is not None else None,
    }
    if stale:
        out["stale_reason"] = stale
    if remote:
        out["remote_id"] = endpoint.remote_id
        out["creator"] = (endpoint.remote_state or {}).get("creator") or None
        out["gone"] = endpoint.remote_gone_at is not None
    else:
        out["creator"] = endpoint.creator.username if endpoint.creator is not None else None
    return out
