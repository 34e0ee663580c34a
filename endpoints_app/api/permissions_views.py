"""The Databricks permissions API for serving endpoints (reference §1 rows 10–13, §2.11).

The path names the endpoint by its id. Reading needs CAN_VIEW, changing needs CAN_MANAGE.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.serializers.permissions import serialize_permissions
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import ResourceDoesNotExist
from endpoints_app.models import Endpoint, PermissionLevel
from endpoints_app.services import permissions as permission_services

DESCRIPTIONS = {
    PermissionLevel.CAN_VIEW: "Can view the endpoint, its config, logs and metrics",
    PermissionLevel.CAN_QUERY: "Can view and query the endpoint",
    PermissionLevel.CAN_MANAGE: "Can view, query, update, delete the endpoint and change its permissions",
}


def _endpoint(request: AuthenticatedRequest, endpoint_id: str, needed: str) -> Endpoint:
    endpoint = Endpoint.objects.filter(id=endpoint_id).first()
    if endpoint is None:
        raise ResourceDoesNotExist(f"Serving endpoint with id '{endpoint_id}' does not exist")
    access.require(request.user, endpoint, needed)
    return endpoint


class EndpointPermissionsView(ApiView):
    def get(self, request: AuthenticatedRequest, endpoint_id: str) -> Response:
        return Response(serialize_permissions(_endpoint(request, endpoint_id, PermissionLevel.CAN_VIEW)))

    def put(self, request: AuthenticatedRequest, endpoint_id: str) -> Response:
        return self._change(request, endpoint_id, replace=True)

    def patch(self, request: AuthenticatedRequest, endpoint_id: str) -> Response:
        return self._change(request, endpoint_id, replace=False)

    def _change(self, request: AuthenticatedRequest, endpoint_id: str, *, replace: bool) -> Response:
        endpoint = _endpoint(request, endpoint_id, PermissionLevel.CAN_VIEW)  # 404 by id for outsiders
        permission_services.set_permissions(
            actor=request.user, endpoint=endpoint, body=request_body(request), replace=replace
        )
        return Response(serialize_permissions(endpoint))


class EndpointPermissionLevelsView(ApiView):
    def get(self, request: AuthenticatedRequest, endpoint_id: str) -> Response:
        _endpoint(request, endpoint_id, PermissionLevel.CAN_VIEW)
        return Response(
            {
                "permission_levels": [
                    {"permission_level": level, "description": text} for level, text in DESCRIPTIONS.items()
                ]
            }
        )


urlpatterns = [
    path("api/2.0/permissions/serving-endpoints/<str:endpoint_id>", EndpointPermissionsView.as_view()),
    path(
        "api/2.0/permissions/serving-endpoints/<str:endpoint_id>/permissionLevels",
        EndpointPermissionLevelsView.as_view(),
    ),
]
