"""The audit log API (admins only): filter, page, and export as JSON lines."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponseBase, StreamingHttpResponse
from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.serializers.audit import serialize_audit_event
from endpoints_app.api.views import RawResponseApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import PermissionDenied
from endpoints_app.filters import AuditEventListFilterSet
from endpoints_app.filters.audit import encode_page_token
from endpoints_app.models import AuditEvent, Role
from endpoints_app.selectors import audit_event_export, audit_event_page


class AuditEventListView(RawResponseApiView):
    """``GET /api/2.0/modelfleet/audit-events?actor=&action=&object_type=&object_id=&object_name=&since=&until=``
    ``&limit=&page_token=``, newest first; ``format=jsonl`` streams every matching event, oldest first,
    as JSON lines (an export). The filters are the audit page's (``AuditEventFilterSet``)."""

    def get(self, request: AuthenticatedRequest) -> HttpResponseBase:
        if access.role_of(request.user) != Role.ADMIN:
            raise PermissionDenied("Reading the audit log needs the admin role")
        filters = AuditEventListFilterSet(request.query_params)
        filters.raise_if_invalid()
        events = filters.filter_queryset(AuditEvent.objects.all())
        if request.query_params.get("format") == "jsonl":
            rows = (json.dumps(serialize_audit_event(e)) + "\n" for e in audit_event_export(events))
            response = StreamingHttpResponse(rows, content_type="application/x-ndjson")
            response["Content-Disposition"] = 'attachment; filename="modelfleet-audit.jsonl"'
            return response
        page, next_id = audit_event_page(events, before_id=filters.value("page_token"), limit=filters.value("limit"))
        body: dict[str, Any] = {"events": [serialize_audit_event(e) for e in page]}
        if next_id is not None:
            body["next_page_token"] = encode_page_token(next_id)
        return Response(body)


urlpatterns = [path("api/2.0/modelfleet/audit-events", AuditEventListView.as_view())]
