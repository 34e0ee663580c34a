"""The audit log API (admins only): filter, page, and export as JSON lines."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.views import RawResponseApiView
from endpoints_app.errors import InvalidParameterValue, PermissionDenied
from endpoints_app.models import AuditEvent, Role

MAX_LIMIT = 1000


def serialize_event(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": int(e.at.timestamp() * 1000),
        "actor": e.actor_name or None,
        "source": e.source,
        "action": e.action,
        "object_type": e.object_type,
        "object_id": e.object_id,
        "object_name": e.object_name,
        "before": e.before,
        "after": e.after,
    }


def _ms(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    if not raw.isdigit():
        raise InvalidParameterValue(f"{name} must be epoch milliseconds")
    return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)


class AuditEventListView(RawResponseApiView):
    """``GET /api/2.0/modelfleet/audit-events?actor=&action=&object_type=&object_id=&since=&until=&limit=&page_token=``;
    ``format=jsonl`` streams every matching event as JSON lines (an export)."""

    def get(self, request: Request) -> HttpResponse:
        if access.role_of(request.user) != Role.ADMIN:
            raise PermissionDenied("Reading the audit log needs the admin role")
        qs = AuditEvent.objects.all()
        params = request.query_params
        if params.get("actor"):
            qs = qs.filter(actor_name=params["actor"])
        if params.get("action"):
            qs = qs.filter(action__startswith=params["action"])
        if params.get("object_type"):
            qs = qs.filter(object_type=params["object_type"])
        if params.get("object_id"):
            qs = qs.filter(object_id=params["object_id"])
        if params.get("object_name"):
            qs = qs.filter(object_name=params["object_name"])
        if since := _ms(request, "since"):
            qs = qs.filter(at__gte=since)
        if until := _ms(request, "until"):
            qs = qs.filter(at__lt=until)
        if params.get("format") == "jsonl":
            rows = (json.dumps(serialize_event(e)) + "\n" for e in qs.order_by("at", "id").iterator(chunk_size=500))
            response = StreamingHttpResponse(rows, content_type="application/x-ndjson")
            response["Content-Disposition"] = 'attachment; filename="modelfleet-audit.jsonl"'
            return response
        raw_limit = params.get("limit") or "100"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise InvalidParameterValue(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        if token := params.get("page_token"):
            try:
                before_id = int(base64.urlsafe_b64decode(token.encode()).decode())
            except ValueError:
                raise InvalidParameterValue("page_token is not one this API returned") from None
            qs = qs.filter(id__lt=before_id)
        limit = int(raw_limit)
        events = list(qs.order_by("-id")[: limit + 1])
        body: dict[str, Any] = {"events": [serialize_event(e) for e in events[:limit]]}
        if len(events) > limit:
            body["next_page_token"] = base64.urlsafe_b64encode(str(events[limit - 1].id).encode()).decode()
        return Response(body)


urlpatterns = [path("api/2.0/modelfleet/audit-events", AuditEventListView.as_view())]
