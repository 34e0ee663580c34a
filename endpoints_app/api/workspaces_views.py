"""The workspace registry (``services.workspaces`` says what a workspace is and how it is checked):

- ``GET /api/2.0/modelfleet/workspaces``: every workspace the caller may see, ``local`` first;
- ``POST`` the same path with ``{"name", "host", "token"}``: register a remote (admins);
- ``GET …/workspaces/<name>``; ``PATCH`` it with ``{"host"?, "token"?}`` (admins; a new host needs
  the token too); ``DELETE`` it (admins; its token leaves the secrets store with it);
- ``GET …/workspaces/<name>/grants``: the roles granted in it (admins); ``PUT`` the same path with
  ``{"user_name"|"group_name", "role"}`` grants viewer, editor or approver there; ``DELETE`` it with
  ``?user_name=`` or ``?group_name=`` removes that grant (``services.workspace_grants``).

POST and PATCH check the remote first and refuse the change with a 400 when the check fails;
``?validate=false`` stores it anyway, with the failure as its status. No answer holds the token.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.response import Response

from endpoints_app.api.serializers.workspaces import serialize_workspace
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.services import workspace_grants as grant_services
from endpoints_app.services import workspaces as workspace_services

WORKSPACES = "api/2.0/modelfleet/workspaces"


class WorkspaceListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        rows = workspace_services.list_workspaces(user=request.user)
        return Response({"workspaces": [serialize_workspace(w) for w in rows]})

    def post(self, request: AuthenticatedRequest) -> Response:
        workspace = workspace_services.create_workspace(
            actor=request.user, body=request_body(request), validate=request.query_params.get("validate", "true")
        )
        return Response(serialize_workspace(workspace))


class WorkspaceDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        return Response(serialize_workspace(workspace_services.get_workspace(user=request.user, name=name)))

    def patch(self, request: AuthenticatedRequest, name: str) -> Response:
        workspace = workspace_services.update_workspace(
            actor=request.user,
            name=name,
            body=request_body(request),
            validate=request.query_params.get("validate", "true"),
        )
        return Response(serialize_workspace(workspace))

    def delete(self, request: AuthenticatedRequest, name: str) -> Response:
        workspace_services.delete_workspace(actor=request.user, name=name)
        return Response({})


class WorkspaceGrantsView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        grants = grant_services.list_grants(actor=request.user, workspace=name)
        return Response({"grants": [grant_services.grant_snapshot(g) for g in grants]})

    def put(self, request: AuthenticatedRequest, name: str) -> Response:
        grant = grant_services.set_grant(actor=request.user, workspace=name, body=request_body(request))
        return Response(grant_services.grant_snapshot(grant))

    def delete(self, request: AuthenticatedRequest, name: str) -> Response:
        principal = {k: request.query_params.get(k) for k in ("user_name", "group_name")}
        grant_services.delete_grant(actor=request.user, workspace=name, principal=principal)
        return Response({})


urlpatterns = [
    path(WORKSPACES, WorkspaceListView.as_view()),
    path(f"{WORKSPACES}/<str:name>", WorkspaceDetailView.as_view()),
    path(f"{WORKSPACES}/<str:name>/grants", WorkspaceGrantsView.as_view()),
]
