"""The audit log page (admins only): filters by actor, action, object and time; newest first,
paged by id like the API (no COUNT over a table that only grows). The filters and the paging are
the API's (``filters.audit``, ``audit_event_page``): the same query gives the same rows."""

from __future__ import annotations

import difflib
import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as Forbidden
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET

from endpoints_app import access
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.filters import AuditPageFilterSet
from endpoints_app.models import AuditEvent, Role
from endpoints_app.selectors import audit_event_page

PAGE_SIZE = 50


def _json_lines(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines() if value is not None else []


def before_after(event: AuditEvent) -> list[tuple[str, str]]:
    """Before → after as a unified diff of their JSON, as (kind, line) pairs; the whole value when
    only one side exists (a create or a delete)."""
    lines = difflib.unified_diff(
        _json_lines(event.before), _json_lines(event.after), "before", "after", lineterm="", n=3
    )
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            continue
        kind = "hunk" if line.startswith("@@") else "add" if line[:1] == "+" else "del" if line[:1] == "-" else "same"
        out.append((kind, line))
    return out


@login_required
@require_GET
def audit_log(request: AuthenticatedHttpRequest) -> HttpResponse:
    if access.role_of(request.user) != Role.ADMIN:
        raise Forbidden("Reading the audit log needs the admin role")
    filters = AuditPageFilterSet(request.GET or None)
    filters.is_valid()  # a field that does not parse is shown with its error and left out
    before_id = filters.value("before")
    rows, older = audit_event_page(
        filters.filter_queryset(AuditEvent.objects.all()), before_id=before_id, limit=PAGE_SIZE
    )
    query = request.GET.copy()
    query.pop("before", None)
    context = {
        "nav": "audit",
        "filters": filters,
        "events": [{"event": e, "changes": before_after(e)} for e in rows],
        "older": older,
        "paged": bool(before_id),
        "query": query.urlencode(),
        # Suggestions for the filter inputs (each an index-only scan: audit_action_idx, audit_object_idx).
        "actions": list(AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()[:200]),
        "object_types": [
            t
            for t in AuditEvent.objects.order_by("object_type").values_list("object_type", flat=True).distinct()[:100]
            if t
        ],
    }
    return render(request, "dashboard/audit.html", context)


urlpatterns = [path("audit/", audit_log, name="audit_log")]
