"""Databricks' Secrets API (reference §7): scopes, secrets and ACLs under ``/api/2.0/secrets``.

Void calls answer ``{}``. No call ever answers a secret's value; see ``SecretGetView``.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.serializers.secrets import serialize_acl, serialize_scope, serialize_secret
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue, PermissionDenied
from endpoints_app.filters import SecretAclFilterSet, SecretKeyFilterSet, SecretScopeFilterSet
from endpoints_app.filters.fields import FilterSet
from endpoints_app.services import secrets as secret_services
from endpoints_app.validation import require_object

BASE = "api/2.0/secrets"


def _body(request: AuthenticatedRequest) -> dict[str, Any]:
    return require_object(request_body(request), "request body")


def _query(request: AuthenticatedRequest, filter_set: type[FilterSet]) -> FilterSet:
    """The read's query parameters, parsed (400 naming the first missing one)."""
    filters = filter_set(request.query_params)
    filters.raise_if_invalid()
    return filters


class ScopeCreateView(ApiView):
    def post(self, request: AuthenticatedRequest) -> Response:
        body = _body(request)
        if body.get("backend_azure_keyvault"):
            raise InvalidParameterValue("Azure Key Vault-backed scopes are not supported: only DATABRICKS")
        secret_services.create_scope(
            actor=request.user,
            scope=body.get("scope"),
            initial_manage_principal=body.get("initial_manage_principal"),
            scope_backend_type=body.get("scope_backend_type"),
        )
        return Response({})


class ScopeDeleteView(ApiView):
    def post(self, request: AuthenticatedRequest) -> Response:
        secret_services.delete_scope(actor=request.user, scope=_body(request).get("scope"))
        return Response({})


class ScopeListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        scopes = secret_services.list_scopes(user=request.user)
        return Response({"scopes": [serialize_scope(s) for s in scopes]})


class SecretPutView(ApiView):
    def post(self, request: AuthenticatedRequest) -> Response:
        body = _body(request)
        secret_services.put_secret(
            actor=request.user,
            scope=body.get("scope"),
            key=body.get("key"),
            string_value=body.get("string_value"),
            bytes_value=body.get("bytes_value"),
        )
        return Response({})


class SecretDeleteView(ApiView):
    def post(self, request: AuthenticatedRequest) -> Response:
        body = _body(request)
        secret_services.delete_secret(actor=request.user, scope=body.get("scope"), key=body.get("key"))
        return Response({})


class SecretListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        scope = _query(request, SecretScopeFilterSet).value("scope")
        secrets = secret_services.list_secrets(user=request.user, scope=scope)
        return Response({"secrets": [serialize_secret(s) for s in secrets]})


class SecretGetView(ApiView):
    """``GET …/secrets/get`` exists in Databricks' API, answering the value in base64, but Databricks
    itself refuses it outside a notebook's DBUtils. Here no API ever shows a value (a stolen token
    must not read every credential it can reference), so after the usual checks (404 for a missing
    scope or key, 403 without READ) it always answers 403: secrets are for endpoints to use.
    """

    def get(self, request: AuthenticatedRequest) -> Response:
        query = _query(request, SecretKeyFilterSet)
        scope, key = query.value("scope"), query.value("key")
        access.check_can_read(user=request.user, scope=scope, key=key)
        raise PermissionDenied(
            "Secret values are never returned by the API. Reference the secret as "
            f"{secret_services.reference(scope, key)} in an endpoint's environment_vars or credentials."
        )


class AclPutView(ApiView):
    def post(self, request: AuthenticatedRequest) -> Response:
        body = _body(request)
        secret_services.put_acl(
            actor=request.user,
            scope=body.get("scope"),
            principal=body.get("principal"),
            permission=body.get("permission"),
        )
        return Response({})


class AclDeleteView(ApiView):
    def post(self, request: AuthenticatedRequest) -> Response:
        body = _body(request)
        secret_services.delete_acl(actor=request.user, scope=body.get("scope"), principal=body.get("principal"))
        return Response({})


class AclGetView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        query = _query(request, SecretAclFilterSet)
        acl = secret_services.get_acl(user=request.user, scope=query.value("scope"), principal=query.value("principal"))
        return Response(serialize_acl(acl))


class AclListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        acls = secret_services.list_acls(user=request.user, scope=_query(request, SecretScopeFilterSet).value("scope"))
        return Response({"items": [serialize_acl(a) for a in acls]})


urlpatterns = [
    path(f"{BASE}/scopes/create", ScopeCreateView.as_view()),
    path(f"{BASE}/scopes/delete", ScopeDeleteView.as_view()),
    path(f"{BASE}/scopes/list", ScopeListView.as_view()),
    path(f"{BASE}/put", SecretPutView.as_view()),
    path(f"{BASE}/delete", SecretDeleteView.as_view()),
    path(f"{BASE}/list", SecretListView.as_view()),
    path(f"{BASE}/get", SecretGetView.as_view()),
    path(f"{BASE}/acls/put", AclPutView.as_view()),
    path(f"{BASE}/acls/delete", AclDeleteView.as_view()),
    path(f"{BASE}/acls/get", AclGetView.as_view()),
    path(f"{BASE}/acls/list", AclListView.as_view()),
]
