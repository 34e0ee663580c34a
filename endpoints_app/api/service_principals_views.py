"""Service principals (admins only; ``services.service_principals`` says what they are):

- ``GET|POST /api/2.0/modelfleet/service-principals``: list; create (``display_name``, optional
  ``role``), answering the principal and its first ``secret``, shown this once;
- ``GET|DELETE …/service-principals/<application_id>``;
- ``POST …/<application_id>/secrets`` (another secret, to rotate) and
  ``DELETE …/<application_id>/secrets/<id>``.
"""

from __future__ import annotations

from django.db.models import Prefetch
from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.serializers.service_principals import serialize_principal, serialize_secret
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.models import ServicePrincipal, ServicePrincipalSecret
from endpoints_app.services import service_principals as principal_services
from endpoints_app.validation import require_object

WHAT = "Service principals"


def _listed(principal: ServicePrincipal | None = None) -> list[dict]:
    """Principals (or the one) with their secrets and roles: three queries, however many."""
    qs = ServicePrincipal.objects.select_related("user__profile").prefetch_related(
        Prefetch("secrets", queryset=ServicePrincipalSecret.objects.order_by("-created_at"))
    )
    if principal is not None:
        qs = qs.filter(pk=principal.pk)
    return [serialize_principal(p, access.global_role(p.user)) for p in qs]


class ServicePrincipalListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        access.require_admin(request.user, WHAT)
        return Response({"service_principals": _listed()})

    def post(self, request: AuthenticatedRequest) -> Response:
        access.require_admin(request.user, WHAT)
        body = require_object(request_body(request), "request body")
        principal, raw = principal_services.create_principal(
            actor=request.user, display_name=body.get("display_name"), role=body.get("role")
        )
        # The only time the secret is shown: it is stored as a hash.
        return Response({**_listed(principal)[0], "secret": raw})


class ServicePrincipalDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, application_id: str) -> Response:
        access.require_admin(request.user, WHAT)
        return Response(_listed(principal_services.get_principal(application_id))[0])

    def delete(self, request: AuthenticatedRequest, application_id: str) -> Response:
        access.require_admin(request.user, WHAT)
        principal = principal_services.get_principal(application_id)
        principal_services.delete_principal(actor=request.user, principal=principal)
        return Response({})


class ServicePrincipalSecretListView(ApiView):
    def post(self, request: AuthenticatedRequest, application_id: str) -> Response:
        access.require_admin(request.user, WHAT)
        principal = principal_services.get_principal(application_id)
        secret, raw = principal_services.create_secret(actor=request.user, principal=principal)
        return Response({**serialize_secret(secret), "secret": raw})


class ServicePrincipalSecretDetailView(ApiView):
    def delete(self, request: AuthenticatedRequest, application_id: str, secret_id: int) -> Response:
        access.require_admin(request.user, WHAT)
        principal = principal_services.get_principal(application_id)
        principal_services.delete_secret(actor=request.user, principal=principal, secret_id=secret_id)
        return Response({})


P = "api/2.0/modelfleet/service-principals"
urlpatterns = [
    path(P, ServicePrincipalListView.as_view()),
    path(f"{P}/<str:application_id>", ServicePrincipalDetailView.as_view()),
    path(f"{P}/<str:application_id>/secrets", ServicePrincipalSecretListView.as_view()),
    path(f"{P}/<str:application_id>/secrets/<int:secret_id>", ServicePrincipalSecretDetailView.as_view()),
]
