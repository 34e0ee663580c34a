"""The workspaces page: every workspace the user may see, with its status; admins add and remove.

The add form's token field is write-only: it is a password input that is never filled in, not
even when the form comes back with an error. Every change goes through ``services.workspaces``,
the functions the API and the CLI call (checks, the egress policy, the secrets store, audit).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as Forbidden
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods, require_POST

from endpoints_app import access
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError
from endpoints_app.models import Role, WorkspaceState
from endpoints_app.pages.errors import error_page
from endpoints_app.services import workspaces as workspace_services

BADGES: dict[str, str] = {
    WorkspaceState.OK: "ready",
    WorkspaceState.ERROR: "failed",
    WorkspaceState.UNKNOWN: "scaled_to_zero",
}


def _require_admin(request: AuthenticatedHttpRequest) -> None:
    if access.role_of(request.user) != Role.ADMIN:
        raise Forbidden("Adding and removing workspaces needs the admin role")


def _page(
    request: AuthenticatedHttpRequest, *, name: str = "", host: str = "", error: str = "", status: int = 200
) -> HttpResponse:
    rows = workspace_services.list_workspaces(user=request.user)
    return render(
        request,
        "dashboard/workspaces.html",
        {
            "nav": "workspaces",
            "workspaces": [(w, BADGES.get(w.state, "scaled_to_zero")) for w in rows],
            "is_admin": access.role_of(request.user) == Role.ADMIN,
            "name": name,
            "host": host,
            "error": error,
            "max_host": workspace_services.MAX_HOST_LENGTH,
            "max_token": workspace_services.MAX_TOKEN_LENGTH,
        },
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def workspace_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request)
    _require_admin(request)
    name, host = request.POST.get("name", ""), request.POST.get("host", "")
    body = {"name": name, "host": host, "token": request.POST.get("token", "")}
    try:
        workspace = workspace_services.create_workspace(
            actor=request.user, body=body, validate="false" if request.POST.get("skip_check") else "true"
        )
    except DomainError as err:
        return _page(request, name=name[:63], host=host[:512], error=err.message, status=err.status)
    messages.success(request, f"Workspace {workspace.name} is registered: {workspace.state} {workspace.status_message}")
    return redirect("workspace_list")


@login_required
@require_POST
def workspace_delete(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    _require_admin(request)
    try:
        workspace_services.delete_workspace(actor=request.user, name=name)
    except DomainError as err:
        return error_page(request, err.status, err.message)
    messages.success(request, f"Workspace {name} is removed, with its stored token.")
    return redirect("workspace_list")


urlpatterns = [
    path("workspaces/", workspace_list, name="workspace_list"),
    path("workspaces/<str:name>/delete", workspace_delete, name="workspace_delete"),
]
