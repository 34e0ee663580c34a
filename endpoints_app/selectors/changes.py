"""Change-request reads: the requests a user may see, and one of them."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from endpoints_app import access
from endpoints_app.errors import ResourceDoesNotExist
from endpoints_app.models import ChangeRequest


def change_requests_for(
    user: User, *, status: str | None = None, endpoint_name: str | None = None
) -> QuerySet[ChangeRequest]:
    """The change requests ``user`` may see, newest first: approvers and admins see every one, anyone
    else only their own. ``status`` (any case) and ``endpoint_name`` narrow it; an unknown status
    matches nothing. The page, the API and the CLI (through the API) all list through here; the
    visibility rule is ``access.visible_change_requests``."""
    requests = access.visible_change_requests(
        user, ChangeRequest.objects.select_related("author", "decided_by", "workspace").order_by("-id")
    )
    if status:
        requests = requests.filter(status=status.upper())
    if endpoint_name:
        requests = requests.filter(endpoint_name=endpoint_name)
    return requests


def change_request_for(user: User, request_id: int) -> ChangeRequest:
    """One change request ``user`` may see; one they may not is as missing as one that never was."""
    change = change_requests_for(user).filter(pk=request_id).first()
    if change is None:
        raise ResourceDoesNotExist(f"Change request {request_id} does not exist")
    return change
