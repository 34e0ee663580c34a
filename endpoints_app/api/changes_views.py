"""Change requests and approval policies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.urls import path
from rest_framework.response import Response

from endpoints_app import access, audit
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue, PermissionDenied, ResourceDoesNotExist
from endpoints_app.models import ApprovalPolicy, ChangeRequest, Role
from endpoints_app.selectors import change_request_for, change_requests_for
from endpoints_app.services import changes
from endpoints_app.validation import require_object


def _ms(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value else None


def serialize(request: ChangeRequest) -> dict[str, Any]:
    return {
        "id": request.pk,
        "endpoint_name": request.endpoint_name,
        "action": request.action,
        "status": request.status,
        "author": request.author.get_username() if request.author else None,
        "created_at": _ms(request.created_at),
        "decided_by": request.decided_by.get_username() if request.decided_by else None,
        "decided_at": _ms(request.decided_at),
        "comment": request.comment,
        "error": request.error,
        "proposed": changes.shown_proposal(request.action, request.proposed),
        "diff": request.diff,
    }


def _comment(request: AuthenticatedRequest) -> str:
    body = require_object(request_body(request), "request body")
    comment = body.get("comment") or ""
    if not isinstance(comment, str):
        raise InvalidParameterValue("comment must be a string")
    return comment


class ChangeRequestListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        params = request.query_params
        requests = change_requests_for(
            request.user, status=params.get("status"), endpoint_name=params.get("endpoint_name")
        )
        return Response({"change_requests": [serialize(c) for c in requests[:500]]})

    def post(self, request: AuthenticatedRequest) -> Response:
        body = require_object(request_body(request), "request body")
        name = body.get("endpoint_name")
        if not isinstance(name, str) or not name:
            raise InvalidParameterValue("endpoint_name is required")
        change = changes.propose(
            actor=request.user, endpoint_name=name, action=str(body.get("action") or ""), body=body.get("body")
        )
        return Response(serialize(change))


class ChangeRequestDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, request_id: int) -> Response:
        return Response(serialize(change_request_for(request.user, request_id)))


class ChangeRequestApproveView(ApiView):
    def post(self, request: AuthenticatedRequest, request_id: int) -> Response:
        change = change_request_for(request.user, request_id)
        return Response(serialize(changes.approve(actor=request.user, request=change, comment=_comment(request))))


class ChangeRequestRejectView(ApiView):
    def post(self, request: AuthenticatedRequest, request_id: int) -> Response:
        change = change_request_for(request.user, request_id)
        return Response(serialize(changes.reject(actor=request.user, request=change, comment=_comment(request))))


def _require_admin(request: AuthenticatedRequest) -> None:
    if access.role_of(request.user) != Role.ADMIN:
        raise PermissionDenied("Approval policies are set by admins")


def serialize_policy(p: ApprovalPolicy) -> dict[str, Any]:
    return {
        "id": p.pk,
        "endpoint_name": p.endpoint_name or None,
        "tag_key": p.tag_key or None,
        "tag_value": p.tag_value or None,
    }


def _policy_field(body: dict[str, Any], key: str, max_length: int) -> str:
    """A string field of a policy, within its column's length (PostgreSQL refuses longer)."""
    value = body.get(key) or ""
    if not isinstance(value, str) or len(value) > max_length:
        raise InvalidParameterValue(f"{key} must be a string of at most {max_length} characters")
    return value


class ApprovalPolicyListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        return Response({"policies": [serialize_policy(p) for p in ApprovalPolicy.objects.order_by("id")]})

    def post(self, request: AuthenticatedRequest) -> Response:
        _require_admin(request)
        body = require_object(request_body(request), "request body")
        endpoint_name = _policy_field(body, "endpoint_name", 255)
        tag_key, tag_value = _policy_field(body, "tag_key", 255), _policy_field(body, "tag_value", 1024)
        if bool(endpoint_name) == bool(tag_key):
            raise InvalidParameterValue("give endpoint_name, or tag_key (with tag_value) — exactly one")
        policy = ApprovalPolicy.objects.create(
            endpoint_name=endpoint_name, tag_key=tag_key, tag_value=tag_value, created_by=request.user
        )
        audit.record(
            actor=request.user,
            action="approval_policy.create",
            object_type="approval_policy",
            object_id=str(policy.pk),
            after=serialize_policy(policy),
        )
        return Response(serialize_policy(policy))


class ApprovalPolicyDetailView(ApiView):
    def delete(self, request: AuthenticatedRequest, policy_id: int) -> Response:
        _require_admin(request)
        policy = ApprovalPolicy.objects.filter(pk=policy_id).first()
        if policy is None:
            raise ResourceDoesNotExist(f"Approval policy {policy_id} does not exist")
        audit.record(
            actor=request.user,
            action="approval_policy.delete",
            object_type="approval_policy",
            object_id=str(policy.pk),
            before=serialize_policy(policy),
        )
        policy.delete()
        return Response({})


urlpatterns = [
    path("api/2.0/modelfleet/change-requests", ChangeRequestListView.as_view()),
    path("api/2.0/modelfleet/change-requests/<int:request_id>", ChangeRequestDetailView.as_view()),
    path("api/2.0/modelfleet/change-requests/<int:request_id>/approve", ChangeRequestApproveView.as_view()),
    path("api/2.0/modelfleet/change-requests/<int:request_id>/reject", ChangeRequestRejectView.as_view()),
    path("api/2.0/modelfleet/approval-policies", ApprovalPolicyListView.as_view()),
    path("api/2.0/modelfleet/approval-policies/<int:policy_id>", ApprovalPolicyDetailView.as_view()),
]
