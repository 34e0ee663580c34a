"""The service principals page (admins only): list, create (the secret shown once, in the answer
to the POST that created it, never stored but as its digest), and delete.

Every change goes through ``services.service_principals``, the functions the API and the CLI call
(they write the audit rows and tell the gateways).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as Forbidden
from django.db.models import Prefetch
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods, require_POST

from endpoints_app import access
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError
from endpoints_app.models import Role, ServicePrincipal, ServicePrincipalSecret
from endpoints_app.pages.errors import error_page
from endpoints_app.services import service_principals as principal_services

ROLES = [(Role.NONE, "none: only what it is granted"), (Role.VIEWER, "viewer"), (Role.EDITOR, "editor")]


def _require_admin(request: AuthenticatedHttpRequest) -> None:
    if access.role_of(request.user) != Role.ADMIN:
        raise Forbidden("Managing service principals needs the admin role")


def _page(
    request: AuthenticatedHttpRequest,
    *,
    created: ServicePrincipal | None = None,
    secret: str = "",
    name: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    principals = ServicePrincipal.objects.select_related("user__profile").prefetch_related(
        Prefetch("secrets", queryset=ServicePrincipalSecret.objects.order_by("-created_at"))
    )
    response = render(
        request,
        "dashboard/service_principals.html",
        {
            "nav": "service_principals",
            "principals": [(p, access.global_role(p.user) or "none") for p in principals],
            "created": created,
            "secret": secret,
            "name": name,
            "error": error,
            "roles": ROLES,
            "host": request.build_absolute_uri("/").rstrip("/"),
            "max_name": principal_services.MAX_DISPLAY_NAME,
        },
        status=status,
    )
    if secret:
        response["Cache-Control"] = "no-store"  # the only copy of the secret: keep it out of caches
    return response


@login_required
@require_http_methods(["GET", "POST"])
def service_principal_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    _require_admin(request)
    if request.method == "GET":
        return _page(request)
    name = request.POST.get("display_name", "")
    role = request.POST.get("role", "")
    if role not in dict(ROLES):
        return _page(request, name=name, error="Pick one of the roles offered.", status=400)
    try:
        principal, raw = principal_services.create_principal(actor=request.user, display_name=name, role=role)
    except DomainError as err:
        return _page(request, name=name, error=err.message, status=400)
    return _page(request, created=principal, secret=raw, status=201)


@login_required
@require_POST
def service_principal_delete(request: AuthenticatedHttpRequest, application_id: str) -> HttpResponse:
    _require_admin(request)
    try:
        principal = principal_services.get_principal(application_id)
    except DomainError as err:
        return error_page(request, err.status, err.message)
    principal_services.delete_principal(actor=request.user, principal=principal)
    messages.success(request, f"Service principal {principal.display_name} is deleted: its tokens no longer work.")
    return redirect("service_principal_list")


urlpatterns = [
    path("service-principals/", service_principal_list, name="service_principal_list"),
    path("service-principals/<str:application_id>/delete", service_principal_delete, name="service_principal_delete"),
]
