"""API views for logged payloads (inference tables).

``GET /api/2.0/modelfleet/serving-endpoints/<name>/payloads`` → ``{"payloads": [...],
"next_page_token": "..."}``, newest first; ``next_page_token`` is omitted on the last page (the
Databricks list convention). Query parameters: ``served_model``, ``status`` (404 or 5xx),
``since`` / ``until`` (epoch ms, inclusive / exclusive), ``client_request_id``, ``limit``
(1–1000, default 100), ``page_token``, ``include_bodies`` (default true).
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints_app.api.views import ApiView
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import PayloadLog, PermissionLevel
from endpoints_app.monitoring import payloads

MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


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


class EndpointPayloadsView(ApiView):
    def get(self, request: Request, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_MANAGE)
        params = request.query_params
        include_bodies = _bool(params, "include_bodies", default=True)
        limit = _int(params, "limit", minimum=1, maximum=payloads.MAX_PAGE_SIZE)
        since = _int(params, "since", minimum=0, maximum=MAX_MS)
        until = _int(params, "until", minimum=0, maximum=MAX_MS)
        page = payloads.payload_logs(
            endpoint,
            served_entity=params.get("served_model") or None,
            status=params.get("status") or None,
            since_ms=since,
            until_ms=until,
            client_request_id=params.get("client_request_id") or None,
            limit=limit if limit is not None else 100,
            page_token=params.get("page_token") or None,
            include_bodies=include_bodies,
        )
        body: dict[str, Any] = {"payloads": [serialize_payload(r, include_bodies=include_bodies) for r in page.rows]}
        if page.next_page_token:
            body["next_page_token"] = page.next_page_token
        return Response(body)


def _int(params: Any, key: str, *, minimum: int, maximum: int) -> int | None:
    raw = params.get(key)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterValue(f"{key} must be an integer, got '{raw[:40]}'") from None
    if not minimum <= value <= maximum:
        raise InvalidParameterValue(f"{key} must be between {minimum} and {maximum}, got {value}")
    return value


def _bool(params: Any, key: str, *, default: bool) -> bool:
    raw = params.get(key)
    if raw in (None, ""):
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise InvalidParameterValue(f"{key} must be true or false, got '{raw[:40]}'")


urlpatterns: list[URLPattern] = [
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/payloads", EndpointPayloadsView.as_view()),
]
