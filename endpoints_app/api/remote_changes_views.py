"""Changes to a remote workspace's endpoints (issue 16), at the Databricks paths under the workspace:

- ``POST /api/2.0/modelfleet/workspaces/<workspace>/serving-endpoints``: create;
- ``PUT …/serving-endpoints/<name>/config``: config (served entities, traffic split);
- ``PATCH …/serving-endpoints/<name>/tags``; ``PUT …/serving-endpoints/<name>/ai-gateway``;
- ``DELETE …/serving-endpoints/<name>``.

Each calls one service of ``services.remote_changes`` and answers as the local API does: the
remote's own answer (Databricks wire format) when the change applied, or the 403 naming how to
propose it (``POST /api/2.0/modelfleet/change-requests`` with ``workspace``) when an approval
policy covers it. A remote that refused or could not be reached is a 502 (its own 400/404/409
pass through), with ``{"error_code", "message"}``.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.response import Response

from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.services import remote_changes


class RemoteEndpointListView(ApiView):
    def post(self, request: AuthenticatedRequest, workspace: str) -> Response:
        found = remote_changes.remote_workspace(user=request.user, name=workspace)
        outcome = remote_changes.create_remote_endpoint(actor=request.user, workspace=found, body=request_body(request))
        return Response(outcome.applied())


class RemoteEndpointDetailView(ApiView):
    def delete(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        found = remote_changes.remote_workspace(user=request.user, name=workspace)
        remote_changes.delete_remote_endpoint(actor=request.user, workspace=found, name=name).applied()
        return Response({})


class RemoteEndpointConfigView(ApiView):
    def put(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        """The config itself, or wrapped as ``{"config": {...}}``, as the local API takes it."""
        found = remote_changes.remote_workspace(user=request.user, name=workspace)
        body = request_body(request)
        if isinstance(body, dict) and "config" in body and not {"served_entities", "served_models"} & set(body):
            body = body["config"]
        outcome = remote_changes.update_remote_config(actor=request.user, workspace=found, name=name, body=body)
        return Response(outcome.applied())


class RemoteEndpointTagsView(ApiView):
    def patch(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        found = remote_changes.remote_workspace(user=request.user, name=workspace)
        outcome = remote_changes.patch_remote_tags(
            actor=request.user, workspace=found, name=name, body=request_body(request)
        )
        return Response(outcome.applied())


class RemoteEndpointAiGatewayView(ApiView):
    def put(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        found = remote_changes.remote_workspace(user=request.user, name=workspace)
        outcome = remote_changes.put_remote_ai_gateway(
            actor=request.user, workspace=found, name=name, body=request_body(request)
        )
        return Response(outcome.applied())


W = "api/2.0/modelfleet/workspaces/<str:workspace>/serving-endpoints"
urlpatterns = [
    path(W, RemoteEndpointListView.as_view()),
    path(f"{W}/<str:name>", RemoteEndpointDetailView.as_view()),
    path(f"{W}/<str:name>/config", RemoteEndpointConfigView.as_view()),
    path(f"{W}/<str:name>/tags", RemoteEndpointTagsView.as_view()),
    path(f"{W}/<str:name>/ai-gateway", RemoteEndpointAiGatewayView.as_view()),
]
