"""SCIM 2.0 (RFC 7644) under ``/api/2.0/preview/scim/v2/``: Users and Groups, the paths the
databricks-sdk's ``w.users`` and ``w.groups`` call, for an identity provider to provision with;
``/Me`` for ``w.current_user.me()``; ServicePrincipals (``w.service_principals``: a principal's
id is its user row's, its secrets are made with ``modelfleet service-principals create-secret``);
and the discovery endpoints (ServiceProviderConfig, Schemas, ResourceTypes).

Everything but ``/Me`` needs the admin role. Errors are SCIM errors
(``{"schemas": [...Error], "status": "404", "detail": ..., "scimType": ...}``), which the SDK
reads too, except a 401: authentication answers before SCIM does, alike for every API.
Every change goes through ``services.scim``, which writes the audit rows.

A new resource type is a list view and a detail view on ``ScimView`` (``_list``/``_one``/``_get``
do paging, filters and attribute selection), a filter table like ``USER_FILTERS``, its schema in
``scim_schemas.SCHEMAS`` and its entry in ``RESOURCE_TYPES``, and two paths in ``urlpatterns``
before the catch-all ``<scim_rest:rest>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db.models import Model, QuerySet
from django.http import Http404
from django.urls import path, register_converter
from rest_framework import exceptions
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints_app import access, scim_filter
from endpoints_app.api.errors import exception_handler as api_exception_handler
from endpoints_app.api.serializers.scim import (
    SCIM_ROOT,
    select_attributes,
    serialize_group,
    serialize_service_principal,
    serialize_user,
)
from endpoints_app.api.views import ApiView, base_url, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import DomainError, PermissionDenied, ResourceAlreadyExists, ResourceDoesNotExist
from endpoints_app.models import Role
from endpoints_app.scim_schemas import (
    ERROR,
    GROUP_SCHEMA,
    LIST_RESPONSE,
    MAX_PAGE_SIZE,
    RESOURCE_TYPE_SCHEMA,
    RESOURCE_TYPES,
    SCHEMA_SCHEMA,
    SCHEMAS,
    SERVICE_PRINCIPAL_SCHEMA,
    SERVICE_PROVIDER,
    USER_SCHEMA,
)
from endpoints_app.services import scim as scim_services
from endpoints_app.services import service_principals as principal_services
from endpoints_app.services.scim import ScimError

A = scim_filter.Attribute
USER_FILTERS = {
    "username": A("username"),
    "displayname": A("scim__display_name"),
    "externalid": A("scim__external_id", case_exact=True),
    "emails": A("email"),
    "emails.value": A("email"),
    "name.givenname": A("first_name"),
    "name.familyname": A("last_name"),
    "id": A("pk", "id"),
    "active": A("is_active", "boolean"),
}
SERVICE_PRINCIPAL_FILTERS = {
    "applicationid": A("username"),  # a principal's user name is its application id
    "displayname": A("service_principal__display_name"),
    "externalid": A("scim__external_id", case_exact=True),
    "id": A("pk", "id"),
    "active": A("is_active", "boolean"),
}
GROUP_FILTERS = {
    "displayname": A("name"),
    "externalid": A("scim__external_id", case_exact=True),
    "id": A("pk", "id"),
    "members": A("user__pk", "id"),
    "members.value": A("user__pk", "id"),
}


class ScimRenderer(JSONRenderer):
    media_type = "application/scim+json"


def scim_error(status: int, detail: str, scim_type: str | None = None) -> Response:
    body = {"schemas": [ERROR], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return Response(body, status=status)


def scim_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return api_exception_handler(exc, context)  # the API's 401, with WWW-Authenticate
    if isinstance(exc, ScimError):
        return scim_error(exc.status, exc.message, exc.scim_type)
    if isinstance(exc, DomainError):
        scim_type = "uniqueness" if isinstance(exc, ResourceAlreadyExists) else None
        if exc.status == 400:
            scim_type = "invalidValue"
        return scim_error(exc.status, exc.message, scim_type)
    if isinstance(exc, Http404):
        return scim_error(404, str(exc) or "Not found")
    if isinstance(exc, exceptions.APIException):
        scim_type = "invalidSyntax" if isinstance(exc, exceptions.ParseError) else None
        response = scim_error(exc.status_code, str(exc.detail), scim_type)
        if isinstance(exc, exceptions.Throttled):
            wait: float | None = exc.wait  # type: ignore[attr-defined]  # set by Throttled.__init__; DRF's stubs omit it
            if wait is not None:
                response["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    return None


class ScimView(ApiView):
    """SCIM's renderer whatever the Accept (``application/scim+json`` or JSON), SCIM's errors,
    and the admin role for everything."""

    renderer_classes = [ScimRenderer]
    admin_only = True

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        renderer = ScimRenderer()
        return renderer, renderer.media_type

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return scim_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # Authentication has run (IsAuthenticated): the user is signed in.
        if self.admin_only and access.role_of(cast(AuthenticatedRequest, request).user) != Role.ADMIN:
            raise PermissionDenied("SCIM provisioning needs the admin role")


def _comma_list(request: Request, name: str) -> list[str]:
    value = request.query_params.get(name) or ""
    if len(value) > 2000:
        raise ScimError(f"{name} is too long")
    return [v.strip() for v in value.split(",") if v.strip()]


def _integer(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.lstrip("-").isdigit() and len(value) <= 9):
        raise ScimError(f"{name} must be an integer")
    return int(value)


def _resource_id(value: str) -> int:
    """An id in a path; one that cannot be ours is a 404, like an unknown one."""
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ResourceDoesNotExist(f"Resource {value[:40]} not found")
    return int(value)


def _list_response(resources: list[dict[str, Any]], *, total: int, start: int) -> Response:
    return Response(
        {
            "schemas": [LIST_RESPONSE],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(resources),
            "Resources": resources,
        }
    )


def _list(
    request: Request,
    queryset: QuerySet[Any],
    filters: dict[str, scim_filter.Attribute],
    urn: str,
    serialize: Callable[[Any, str], dict[str, Any]],
) -> Response:
    """A filtered, sorted page (RFC 7644 §3.4.2): ``filter``, ``sortBy``/``sortOrder``,
    ``startIndex`` (from 1)/``count`` (at most ``MAX_PAGE_SIZE``), ``attributes``/``excludedAttributes``."""
    text = request.query_params.get("filter")
    if text:
        try:
            queryset = queryset.filter(scim_filter.parse_filter(text, filters, (urn,))).distinct()
        except scim_filter.InvalidFilter as exc:
            raise ScimError(str(exc), scim_type="invalidFilter") from None
    order = "pk"
    sort_by = request.query_params.get("sortBy")
    if sort_by:
        key = sort_by[len(urn) + 1 :] if sort_by.lower().startswith(urn.lower() + ":") else sort_by
        attribute = filters.get(key.lower())
        if attribute is None or attribute.kind == "boolean" or "__pk" in attribute.field:
            raise ScimError(f"cannot sort by {sort_by[:100]!r}")
        order = attribute.field
    if (request.query_params.get("sortOrder") or "ascending").lower() == "descending":
        order = "-" + order
    start = max(1, _integer(request, "startIndex", 1))
    count = min(max(0, _integer(request, "count", MAX_PAGE_SIZE)), MAX_PAGE_SIZE)
    total = queryset.count()
    page = list(queryset.order_by(order, "pk")[start - 1 : start - 1 + count]) if count else []
    attributes, excluded = _comma_list(request, "attributes"), _comma_list(request, "excludedAttributes")
    url = base_url(request)
    return _list_response(
        [select_attributes(serialize(o, url), attributes, excluded) for o in page], total=total, start=start
    )


def _one(request: Request, body: dict[str, Any], status: int = 200) -> Response:
    attributes, excluded = _comma_list(request, "attributes"), _comma_list(request, "excludedAttributes")
    response = Response(select_attributes(body, attributes, excluded), status=status)
    if "meta" in body:
        response["Location"] = body["meta"]["location"]
    return response


def _everyone() -> QuerySet[User]:
    return get_user_model().objects.select_related("scim").prefetch_related("groups")


def _users() -> QuerySet[User]:
    """People: a service principal has a user row of its own, but is not a SCIM User."""
    return _everyone().filter(service_principal__isnull=True)


def _service_principals() -> QuerySet[User]:
    return _everyone().filter(service_principal__isnull=False).select_related("service_principal")


def _groups() -> QuerySet[Group]:
    return Group.objects.select_related("scim").prefetch_related("user_set__service_principal")


M = TypeVar("M", bound=Model)


def _get(queryset: QuerySet[M], resource_id: str, kind: str) -> M:
    found = queryset.filter(pk=_resource_id(resource_id)).first()
    if found is None:
        raise ResourceDoesNotExist(f"{kind} {resource_id[:40]} not found")
    return found


class UserListView(ScimView):
    def get(self, request: AuthenticatedRequest) -> Response:
        return _list(request, _users(), USER_FILTERS, USER_SCHEMA, serialize_user)

    def post(self, request: AuthenticatedRequest) -> Response:
        user = scim_services.create_user(actor=request.user, body=request_body(request))
        return _one(request, serialize_user(_get(_users(), str(user.pk), "User"), base_url(request)), status=201)


class UserDetailView(ScimView):
    def get(self, request: AuthenticatedRequest, user_id: str) -> Response:
        return _one(request, serialize_user(_get(_users(), user_id, "User"), base_url(request)))

    def put(self, request: AuthenticatedRequest, user_id: str) -> Response:
        user = _get(_users(), user_id, "User")
        scim_services.replace_user(actor=request.user, user=user, body=request_body(request))
        return self.get(request, user_id)

    def patch(self, request: AuthenticatedRequest, user_id: str) -> Response:
        user = _get(_users(), user_id, "User")
        scim_services.patch_user(actor=request.user, user=user, body=request_body(request))
        return self.get(request, user_id)

    def delete(self, request: AuthenticatedRequest, user_id: str) -> Response:
        scim_services.delete_user(actor=request.user, user=_get(_users(), user_id, "User"))
        return Response(status=204)


class GroupListView(ScimView):
    def get(self, request: AuthenticatedRequest) -> Response:
        return _list(request, _groups(), GROUP_FILTERS, GROUP_SCHEMA, serialize_group)

    def post(self, request: AuthenticatedRequest) -> Response:
        group = scim_services.create_group(actor=request.user, body=request_body(request))
        return _one(request, serialize_group(_get(_groups(), str(group.pk), "Group"), base_url(request)), status=201)


class GroupDetailView(ScimView):
    def get(self, request: AuthenticatedRequest, group_id: str) -> Response:
        return _one(request, serialize_group(_get(_groups(), group_id, "Group"), base_url(request)))

    def put(self, request: AuthenticatedRequest, group_id: str) -> Response:
        group = _get(_groups(), group_id, "Group")
        scim_services.replace_group(actor=request.user, group=group, body=request_body(request))
        return self.get(request, group_id)

    def patch(self, request: AuthenticatedRequest, group_id: str) -> Response:
        group = _get(_groups(), group_id, "Group")
        scim_services.patch_group(actor=request.user, group=group, body=request_body(request))
        return self.get(request, group_id)

    def delete(self, request: AuthenticatedRequest, group_id: str) -> Response:
        scim_services.delete_group(actor=request.user, group=_get(_groups(), group_id, "Group"))
        return Response(status=204)


class ServicePrincipalListView(ScimView):
    def get(self, request: AuthenticatedRequest) -> Response:
        return _list(
            request,
            _service_principals(),
            SERVICE_PRINCIPAL_FILTERS,
            SERVICE_PRINCIPAL_SCHEMA,
            serialize_service_principal,
        )

    def post(self, request: AuthenticatedRequest) -> Response:
        principal = scim_services.create_service_principal(actor=request.user, body=request_body(request))
        created = _get(_service_principals(), str(principal.user_id), "ServicePrincipal")
        return _one(request, serialize_service_principal(created, base_url(request)), status=201)


class ServicePrincipalDetailView(ScimView):
    def get(self, request: AuthenticatedRequest, user_id: str) -> Response:
        found = _get(_service_principals(), user_id, "ServicePrincipal")
        return _one(request, serialize_service_principal(found, base_url(request)))

    def put(self, request: AuthenticatedRequest, user_id: str) -> Response:
        principal = _get(_service_principals(), user_id, "ServicePrincipal").service_principal
        scim_services.replace_service_principal(actor=request.user, principal=principal, body=request_body(request))
        return self.get(request, user_id)

    def patch(self, request: AuthenticatedRequest, user_id: str) -> Response:
        principal = _get(_service_principals(), user_id, "ServicePrincipal").service_principal
        scim_services.patch_service_principal(actor=request.user, principal=principal, body=request_body(request))
        return self.get(request, user_id)

    def delete(self, request: AuthenticatedRequest, user_id: str) -> Response:
        principal = _get(_service_principals(), user_id, "ServicePrincipal").service_principal
        principal_services.delete_principal(actor=request.user, principal=principal)
        return Response(status=204)


class MeView(ScimView):
    """``w.current_user.me()``: any signed-in user, as SCIM shows them."""

    admin_only = False

    def get(self, request: AuthenticatedRequest) -> Response:
        return _one(request, serialize_user(_get(_everyone(), str(request.user.pk), "User"), base_url(request)))


def _schema(schema: dict[str, Any], url: str) -> dict[str, Any]:
    location = f"{url}{SCIM_ROOT}/Schemas/{schema['id']}"
    return {"schemas": [SCHEMA_SCHEMA], **schema, "meta": {"resourceType": "Schema", "location": location}}


def _resource_type(resource_type: dict[str, Any], url: str) -> dict[str, Any]:
    location = f"{url}{SCIM_ROOT}/ResourceTypes/{resource_type['id']}"
    meta = {"resourceType": "ResourceType", "location": location}
    return {"schemas": [RESOURCE_TYPE_SCHEMA], **resource_type, "meta": meta}


class ServiceProviderConfigView(ScimView):
    def get(self, request: AuthenticatedRequest) -> Response:
        location = f"{base_url(request)}{SCIM_ROOT}/ServiceProviderConfig"
        return Response({**SERVICE_PROVIDER, "meta": {"resourceType": "ServiceProviderConfig", "location": location}})


class SchemaListView(ScimView):
    def get(self, request: AuthenticatedRequest) -> Response:
        url = base_url(request)
        return _list_response([_schema(s, url) for s in SCHEMAS], total=len(SCHEMAS), start=1)


class SchemaDetailView(ScimView):
    def get(self, request: AuthenticatedRequest, schema_id: str) -> Response:
        found = next((s for s in SCHEMAS if s["id"] == schema_id), None)
        if found is None:
            raise ResourceDoesNotExist(f"Schema {schema_id[:100]} not found")
        return Response(_schema(found, base_url(request)))


class ResourceTypeListView(ScimView):
    def get(self, request: AuthenticatedRequest) -> Response:
        url = base_url(request)
        return _list_response([_resource_type(t, url) for t in RESOURCE_TYPES], total=len(RESOURCE_TYPES), start=1)


class ResourceTypeDetailView(ScimView):
    def get(self, request: AuthenticatedRequest, type_id: str) -> Response:
        found = next((t for t in RESOURCE_TYPES if t["id"] == type_id), None)
        if found is None:
            raise ResourceDoesNotExist(f"ResourceType {type_id[:100]} not found")
        return Response(_resource_type(found, base_url(request)))


class UnknownView(ScimView):
    """Anything else under the SCIM root: a SCIM 404 (a server-wide ``POST /.search``: 501)."""

    def get(self, request: AuthenticatedRequest, rest: str) -> Response:
        raise ResourceDoesNotExist(f"No SCIM resource at {request.path[:200]}")

    def post(self, request: AuthenticatedRequest, rest: str) -> Response:
        if rest == ".search":
            return scim_error(501, "Searching several resource types at once is not supported")
        return self.get(request, rest)

    def put(self, request: AuthenticatedRequest, rest: str) -> Response:
        return self.get(request, rest)

    def patch(self, request: AuthenticatedRequest, rest: str) -> Response:
        return self.get(request, rest)

    def delete(self, request: AuthenticatedRequest, rest: str) -> Response:
        return self.get(request, rest)


class AnyRest:
    """The rest of a path, line breaks included: Django's ``path`` converter stops at one, and the
    path would fall through to the API's 404 instead of SCIM's."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyRest, "scim_rest")

R = SCIM_ROOT.lstrip("/")
urlpatterns = [
    path(f"{R}/Users", UserListView.as_view()),
    path(f"{R}/Users/<str:user_id>", UserDetailView.as_view()),
    path(f"{R}/Groups", GroupListView.as_view()),
    path(f"{R}/Groups/<str:group_id>", GroupDetailView.as_view()),
    path(f"{R}/ServicePrincipals", ServicePrincipalListView.as_view()),
    path(f"{R}/ServicePrincipals/<str:user_id>", ServicePrincipalDetailView.as_view()),
    path(f"{R}/Me", MeView.as_view()),
    path(f"{R}/ServiceProviderConfig", ServiceProviderConfigView.as_view()),
    path(f"{R}/Schemas", SchemaListView.as_view()),
    path(f"{R}/Schemas/<str:schema_id>", SchemaDetailView.as_view()),
    path(f"{R}/ResourceTypes", ResourceTypeListView.as_view()),
    path(f"{R}/ResourceTypes/<str:type_id>", ResourceTypeDetailView.as_view()),
    path(f"{R}/<scim_rest:rest>", UnknownView.as_view()),
]
