"""The audit log API (admins only): filter, page, and export as JSON lines."""

from __future__ import annotations

import base64
import json
from typing import Any

from django.http import HttpResponseBase, StreamingHttpResponse
from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.views import RawResponseApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue, PermissionDenied
from endpoints_app.filters import AuditEventFilterSet
from endpoints_app.models import AuditEvent, Role
from endpoints_app.selectors import audit_event_export, audit_event_page

MAX_LIMIT = 1000
MAX_ID = 2**63 - 1  # a bigint: a larger id in a forged page_token would overflow the query


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


def _before_id(token: str | None) -> int | None:
    """The id a ``page_token`` (from this API's ``next_page_token``) stands for."""
    if not token:
        return None
    try:
        before_id = int(base64.urlsafe_b64decode(token.encode()).decode())
    except ValueError:
        before_id = None
    if before_id is None or abs(before_id) > MAX_ID:
        raise InvalidParameterValue("page_token is not one this API returned")
    return before_id


class AuditEventListView(RawResponseApiView):
    """``GET /api/2.0/modelfleet/audit-events?actor=&action=&object_type=&object_id=&object_name=&since=&until=``
    ``&limit=&page_token=``, newest first; ``format=jsonl`` streams every matching event, oldest first,
    as JSON lines (an export). The filters are the audit page's (``AuditEventFilterSet``)."""

    def get(self, request: AuthenticatedRequest) -> HttpResponseBase:
        if access.role_of(request.user) != Role.ADMIN:
            raise PermissionDenied("Reading the audit log needs the admin role")
        params = request.query_params
        filters = AuditEventFilterSet(params)
        filters.raise_if_invalid()
        events = filters.filter_queryset(AuditEvent.objects.all())
        if params.get("format") == "jsonl":
            rows = (json.dumps(serialize_event(e)) + "\n" for e in audit_event_export(events))
            response = StreamingHttpResponse(rows, content_type="application/x-ndjson")
            response["Content-Disposition"] = 'attachment; filename="modelfleet-audit.jsonl"'
            return response
        raw_limit = params.get("limit") or "100"
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise InvalidParameterValue(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        page, next_id = audit_event_page(events, before_id=_before_id(params.get("page_token")), limit=int(raw_limit))
        body: dict[str, Any] = {"events": [serialize_event(e) for e in page]}
        if next_id is not None:
            body["next_page_token"] = base64.urlsafe_b64encode(str(next_id).encode()).decode()
        return Response(body)


urlpatterns = [path("api/2.0/modelfleet/audit-events", AuditEventListView.as_view())]
