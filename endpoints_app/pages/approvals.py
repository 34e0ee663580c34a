"""Change requests: the list (pending ones first in the eye), the detail with its diff, and the
approve / reject decision, which the service refuses for the author and for non-approvers whatever
the page shows."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from endpoints_app import access, validation
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError, ResourceDoesNotExist
from endpoints_app.filters import ChangeRequestFilterSet
from endpoints_app.models import ChangeRequest, ChangeRequestStatus, Role
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.pages.forms.approvals import DecisionForm
from endpoints_app.selectors import change_request_for, change_requests_for
from endpoints_app.services import changes, proposals

PAGE_SIZE = 25


def _visible(user: User, request_id: int) -> ChangeRequest:
    try:
        return change_request_for(user, request_id)
    except ResourceDoesNotExist as exc:
        raise Http404(exc.message) from None


@login_required
@require_GET
def change_request_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    filters = ChangeRequestFilterSet(request.GET or None)  # the API's filters
    filters.is_valid()  # a field that does not parse is shown with its error and left out
    requests = change_requests_for(
        request.user, status=filters.value("status") or None, endpoint_name=filters.value("endpoint_name") or None
    )
    page = Paginator(requests, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "nav": "changes",
        "filters": filters,
        "page": page,
        "query": query.urlencode(),
        "is_approver": access.may_approve(request.user),
    }
    return render(request, "dashboard/approvals/list.html", context)


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """A unified diff as (kind, line) pairs, for colouring: add, del, hunk, file or same."""
    kinds = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            kinds.append(("file", line))
        elif line.startswith("@@"):
            kinds.append(("hunk", line))
        elif line.startswith("+"):
            kinds.append(("add", line))
        elif line.startswith("-"):
            kinds.append(("del", line))
        else:
            kinds.append(("same", line))
    return kinds


def proposed_summary(change: ChangeRequest) -> list[dict[str, Any]] | None:
    """The proposed served entities with their share of the traffic, read through validation (which
    names unnamed entities and fills the single-entity route), for reading at a glance."""
    body = change.proposed or {}
    config = body.get("config") if change.action == ChangeRequest.Action.CREATE else body
    if change.action == ChangeRequest.Action.DELETE or not isinstance(config, dict):
        return None
    try:
        parsed = validation.parse_core_config(config)
    except DomainError:  # rules changed since it was proposed: the JSON below still shows it
        return None
    shares = {r["served_model_name"]: r["traffic_percentage"] for r in parsed.routes}
    return [{"index": i, "spec": spec, "share": shares.get(spec.name)} for i, spec in enumerate(parsed.served_entities)]


def _render_detail(
    request: AuthenticatedHttpRequest,
    change: ChangeRequest,
    *,
    form: DecisionForm | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    user = request.user
    # A remote workspace's request is decided by approvers there (services.changes decides; this shows it).
    where = change.workspace.name if change.workspace is not None else LOCAL_WORKSPACE
    may_decide = (
        change.status == ChangeRequestStatus.PENDING and access.may_approve(user, where) and change.author_id != user.pk
    )
    endpoint_url = (
        reverse("remote_endpoint_detail", args=[change.workspace.name, change.endpoint_name])
        if change.workspace is not None
        else f"/endpoints/{quote(change.endpoint_name, safe='')}/"
    )
    context = {
        "nav": "changes",
        "change": change,
        "diff": diff_lines(change.diff),
        "summary": proposed_summary(change),
        "proposed_json": json.dumps(proposals.shown_proposal(change.action, change.proposed), indent=2, sort_keys=True),
        "may_decide": may_decide,
        "is_author": change.author_id == user.pk,
        "is_approver": access.may_approve(user, where),
        "is_admin": access.role_of(user) == Role.ADMIN,
        "endpoint_url": endpoint_url,
        "form": form or DecisionForm(),
        "error": error,
    }
    return render(request, "dashboard/approvals/detail.html", context, status=status)


@login_required
@require_GET
def change_request_detail(request: AuthenticatedHttpRequest, request_id: int) -> HttpResponse:
    return _render_detail(request, _visible(request.user, request_id))


def _decide(request: AuthenticatedHttpRequest, request_id: int, *, approve: bool) -> HttpResponse:
    change = _visible(request.user, request_id)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _render_detail(request, change, form=form, status=400)
    comment = form.cleaned_data["comment"]
    try:
        if approve:
            changes.approve(actor=request.user, request=change, comment=comment)
        else:
            changes.reject(actor=request.user, request=change, comment=comment)
    except DomainError as exc:
        change.refresh_from_db()
        return _render_detail(request, change, form=form, error=exc.message, status=exc.status)
    if approve:
        messages.success(request, f"Approved and applied: {change.endpoint_name} is being changed.")
    else:
        messages.success(request, f"Change request #{change.pk} rejected.")
    return redirect("change_request_detail", request_id=change.pk)


@login_required
@require_POST
def change_request_approve(request: AuthenticatedHttpRequest, request_id: int) -> HttpResponse:
    return _decide(request, request_id, approve=True)


@login_required
@require_POST
def change_request_reject(request: AuthenticatedHttpRequest, request_id: int) -> HttpResponse:
    return _decide(request, request_id, approve=False)


urlpatterns = [
    path("change-requests/", change_request_list, name="change_request_list"),
    path("change-requests/<int:request_id>/", change_request_detail, name="change_request_detail"),
    path("change-requests/<int:request_id>/approve", change_request_approve, name="change_request_approve"),
    path("change-requests/<int:request_id>/reject", change_request_reject, name="change_request_reject"),
]
