"""Change requests and approval policies. A proposal for a remote workspace's endpoint names
its ``workspace`` (``services.proposals.propose_remote``); none, or ``local``, is this installation's."""

from __future__ import annotations

from django.urls import path
from rest_framework.response import Response

from endpoints_app.api.serializers.changes import serialize_change_request
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.filters import ChangeRequestFilterSet
from endpoints_app.models import ApprovalPolicy
from endpoints_app.selectors import change_request_for, change_requests_for
from endpoints_app.services import approval_policies, changes, proposals
from endpoints_app.services import workspaces as workspace_services
from endpoints_app.validation import require_object, string_field


def _comment(request: AuthenticatedRequest) -> str:
    body = require_object(request_body(request), "request body")
    comment = body.get("comment") or ""
    if not isinstance(comment, str):
        raise InvalidParameterValue("comment must be a string")
    return comment


class ChangeRequestListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        filters = ChangeRequestFilterSet(request.query_params)
        filters.raise_if_invalid()
        requests = change_requests_for(
            request.user, status=filters.value("status") or None, endpoint_name=filters.value("endpoint_name") or None
        )
        return Response({"change_requests": [serialize_change_request(c) for c in requests[:500]]})

    def post(self, request: AuthenticatedRequest) -> Response:
        body = require_object(request_body(request), "request body")
        name = body.get("endpoint_name")
        if not isinstance(name, str) or not name:
            raise InvalidParameterValue("endpoint_name is required")
        workspace = body.get("workspace")
        found = workspace_services.get_workspace(user=request.user, name=workspace) if workspace is not None else None
        change = proposals.propose(
            actor=request.user,
            endpoint_name=name,
            action=string_field(body, "action"),
            body=body.get("body"),
            workspace=found,
        )
        return Response(serialize_change_request(change))


class ChangeRequestDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, request_id: int) -> Response:
        return Response(serialize_change_request(change_request_for(request.user, request_id)))


class ChangeRequestApproveView(ApiView):
    def post(self, request: AuthenticatedRequest, request_id: int) -> Response:
        change = change_request_for(request.user, request_id)
        return Response(
            serialize_change_request(changes.approve(actor=request.user, request=change, comment=_comment(request)))
        )


class ChangeRequestRejectView(ApiView):
    def post(self, request: AuthenticatedRequest, request_id: int) -> Response:
        change = change_request_for(request.user, request_id)
        return Response(
            serialize_change_request(changes.reject(actor=request.user, request=change, comment=_comment(request)))
        )


class ApprovalPolicyListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        policies = ApprovalPolicy.objects.select_related("workspace").order_by("id")
        return Response({"policies": [approval_policies.snapshot(p) for p in policies]})

    def post(self, request: AuthenticatedRequest) -> Response:
        policy = approval_policies.create_policy(actor=request.user, body=request_body(request))
        return Response(approval_policies.snapshot(policy))


class ApprovalPolicyDetailView(ApiView):
    def delete(self, request: AuthenticatedRequest, policy_id: int) -> Response:
        approval_policies.delete_policy(actor=request.user, policy_id=policy_id)
        return Response({})


urlpatterns = [
    path("api/2.0/modelfleet/change-requests", ChangeRequestListView.as_view()),
    path("api/2.0/modelfleet/change-requests/<int:request_id>", ChangeRequestDetailView.as_view()),
    path("api/2.0/modelfleet/change-requests/<int:request_id>/approve", ChangeRequestApproveView.as_view()),
    path("api/2.0/modelfleet/change-requests/<int:request_id>/reject", ChangeRequestRejectView.as_view()),
    path("api/2.0/modelfleet/approval-policies", ApprovalPolicyListView.as_view()),
    path("api/2.0/modelfleet/approval-policies/<int:policy_id>", ApprovalPolicyDetailView.as_view()),
]
