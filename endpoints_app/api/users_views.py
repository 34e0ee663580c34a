"""Administration API: users and roles (admins), personal access tokens (admins, or your own), and
Databricks' token API (``/api/2.0/token/create|list|delete``: your own tokens, as the SDK's
``w.tokens`` calls it)."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.serializers.tokens import serialize_token, serialize_token_info
from endpoints_app.api.serializers.users import serialize_group
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue, PermissionDenied, ResourceDoesNotExist
from endpoints_app.filters import TokenFilterSet
from endpoints_app.models import AccessToken, Role
from endpoints_app.services import tokens as token_services
from endpoints_app.services import users as user_services
from endpoints_app.validation import require_object, string_field


def _require_admin(request: AuthenticatedRequest) -> None:
    if access.role_of(request.user) != Role.ADMIN:
        raise PermissionDenied("This needs the admin role")


class UserListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        _require_admin(request)
        # People: service principals have user rows of their own, listed by their own API.
        users = (
            get_user_model()
            .objects.filter(service_principal__isnull=True)
            .select_related("profile")
            .order_by("username")
        )
        return Response({"users": [user_services.user_snapshot(u) for u in users]})

    def post(self, request: AuthenticatedRequest) -> Response:
        _require_admin(request)
        body = require_object(request_body(request), "request body")
        email = body.get("email") or ""
        if not isinstance(email, str) or len(email) > 254:  # the column's length (PostgreSQL refuses longer)
            raise InvalidParameterValue("email must be a string of at most 254 characters")
        user = user_services.create_user(
            actor=request.user,
            username=string_field(body, "username"),
            email=email,
            role=body.get("role"),
            password=body.get("password") if isinstance(body.get("password"), str) else None,
        )
        return Response(user_services.user_snapshot(user))


class UserDetailView(ApiView):
    def patch(self, request: AuthenticatedRequest, username: str) -> Response:
        _require_admin(request)
        body = require_object(request_body(request), "request body")
        user = user_services.get_user(username)
        if "role" in body:
            user_services.set_role(actor=request.user, user=user, role=body["role"])
        if "max_token_lifetime_seconds" in body:
            seconds = token_services.parse_lifetime(body["max_token_lifetime_seconds"], "max_token_lifetime_seconds")
            token_services.set_max_lifetime(actor=request.user, user=user, seconds=seconds)
        if body.get("active") is False:
            user_services.deactivate(actor=request.user, user=user)
        elif "active" in body and body["active"] is not True:
            raise InvalidParameterValue("active may only be set to false (deactivate)")
        user.refresh_from_db()
        return Response(
            {**user_services.user_snapshot(user), "max_token_lifetime_seconds": token_services.max_lifetime(user)}
        )


class TokenListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        filters = TokenFilterSet(request.query_params)
        filters.raise_if_invalid()
        qs = AccessToken.objects.select_related("user").order_by("-created_at")
        if access.role_of(request.user) != Role.ADMIN:
            qs = qs.filter(user=request.user)
        elif filters.value("user"):
            qs = qs.filter(user__username=filters.value("user"))
        return Response({"tokens": [serialize_token(t) for t in qs]})

    def post(self, request: AuthenticatedRequest) -> Response:
        body = require_object(request_body(request), "request body")
        owner = request.user
        if body.get("user") and body["user"] != request.user.get_username():
            _require_admin(request)
            owner = user_services.get_user(string_field(body, "user"))
        token, raw = token_services.create_token(
            user=owner,
            comment=_comment(body),
            actor=request.user,
            lifetime_seconds=token_services.parse_lifetime(body.get("lifetime_seconds")),
        )
        # The only time the token is shown: it is stored as a hash.
        return Response({**serialize_token(token), "token": raw})


def _comment(body: dict) -> str:
    comment = body.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > 255:
        raise InvalidParameterValue("comment must be a string of at most 255 characters")
    return comment


class DatabricksTokenCreateView(ApiView):
    """``POST /api/2.0/token/create``: a token for the caller (``comment``, ``lifetime_seconds``)."""

    def post(self, request: AuthenticatedRequest) -> Response:
        body = require_object(request_body(request), "request body")
        token, raw = token_services.create_token(
            user=request.user,
            comment=_comment(body),
            actor=request.user,
            lifetime_seconds=token_services.parse_lifetime(body.get("lifetime_seconds")),
        )
        return Response({"token_value": raw, "token_info": serialize_token_info(token)})


class DatabricksTokenListView(ApiView):
    """``GET /api/2.0/token/list``: the caller's live tokens."""

    def get(self, request: AuthenticatedRequest) -> Response:
        live = AccessToken.objects.filter(user=request.user, revoked_at__isnull=True).order_by("-created_at")
        return Response({"token_infos": [serialize_token_info(t) for t in live]})


class DatabricksTokenDeleteView(ApiView):
    """``POST /api/2.0/token/delete`` with ``token_id``: revokes one of the caller's tokens."""

    def post(self, request: AuthenticatedRequest) -> Response:
        body = require_object(request_body(request), "request body")
        token_id = string_field(body, "token_id")
        token = (
            AccessToken.objects.select_related("user")
            .filter(pk=int(token_id) if re.fullmatch(r"[0-9]{1,18}", token_id) else -1, user=request.user)
            .first()
        )
        if token is None:
            raise ResourceDoesNotExist(f"Token {token_id[:40]} does not exist")
        token_services.revoke_token(token=token, actor=request.user)
        return Response({})


class TokenDetailView(ApiView):
    def delete(self, request: AuthenticatedRequest, token_id: int) -> Response:
        token = AccessToken.objects.select_related("user").filter(pk=token_id).first()
        is_admin = access.role_of(request.user) == Role.ADMIN
        if token is None or (not is_admin and token.user_id != request.user.pk):
            raise ResourceDoesNotExist(f"Token {token_id} does not exist")
        token_services.revoke_token(token=token, actor=request.user)
        return Response({})


class GroupListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        _require_admin(request)
        groups = Group.objects.prefetch_related("user_set").order_by("name")
        return Response({"groups": [serialize_group(g) for g in groups]})

    def post(self, request: AuthenticatedRequest) -> Response:
        _require_admin(request)
        body = require_object(request_body(request), "request body")
        group = user_services.create_group(actor=request.user, name=string_field(body, "name"))
        return Response(serialize_group(group))


class GroupMemberView(ApiView):
    """``PUT …/groups/<group>/members/<user>`` adds, ``DELETE`` removes."""

    def put(self, request: AuthenticatedRequest, group: str, username: str) -> Response:
        return self._set(request, group, username, member=True)

    def delete(self, request: AuthenticatedRequest, group: str, username: str) -> Response:
        return self._set(request, group, username, member=False)

    def _set(self, request: AuthenticatedRequest, group: str, username: str, *, member: bool) -> Response:
        _require_admin(request)
        the_group = user_services.get_group(group)
        user_services.set_membership(
            actor=request.user, group=the_group, user=user_services.get_user(username), member=member
        )
        return Response(serialize_group(the_group))


urlpatterns = [
    path("api/2.0/modelfleet/groups", GroupListView.as_view()),
    path("api/2.0/modelfleet/groups/<str:group>/members/<str:username>", GroupMemberView.as_view()),
    path("api/2.0/modelfleet/users", UserListView.as_view()),
    path("api/2.0/modelfleet/users/<str:username>", UserDetailView.as_view()),
    path("api/2.0/modelfleet/tokens", TokenListView.as_view()),
    path("api/2.0/modelfleet/tokens/<int:token_id>", TokenDetailView.as_view()),
    path("api/2.0/token/create", DatabricksTokenCreateView.as_view()),
    path("api/2.0/token/list", DatabricksTokenListView.as_view()),
    path("api/2.0/token/delete", DatabricksTokenDeleteView.as_view()),
]
