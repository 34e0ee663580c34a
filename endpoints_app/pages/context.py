"""Template context every page gets: the pending change-request count for the nav badge."""

from __future__ import annotations

from django.http import HttpRequest

from endpoints_app import access
from endpoints_app.models import ChangeRequest, ChangeRequestStatus


def navigation(request: HttpRequest) -> dict[str, int]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not access.role_of(user):
        return {}
    return {"pending_change_requests": ChangeRequest.objects.filter(status=ChangeRequestStatus.PENDING).count()}
