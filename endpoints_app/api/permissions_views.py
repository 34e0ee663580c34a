"""The Databricks permissions API for serving endpoints (reference §1 rows 10–13, §2.11).

The path names the endpoint by its id. Reading needs CAN_VIEW, changing needs CAN_MANAGE.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import ResourceDoesNotExist
from endpoints_app.models import Endpoint, EndpointPermission, PermissionLevel
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


def serialize_permissions(endpoint: Endpoint) -> dict[str, Any]:
    acl: list[dict[str, Any]] = []
    grants = EndpointPermission.objects.filter(endpoint=endpoint).select_related("user", "group").order_by("id")
    for grant in grants:
        entry: dict[str, Any] = {"all_permissions": [{"permission_level": grant.level, "inherited": False}]}
        if grant.user is not None:
            entry["user_name"] = grant.user.get_username()
            entry["display_name"] = grant.user.get_full_name() or grant.user.get_username()
        elif grant.group is not None:  # always, when there is no user (the model's check constraint)
            entry["group_name"] = grant.group.name
        acl.append(entry)
    acl.append(
        {
            "group_name": "admins",
            "all_permissions": [
                {
                    "permission_level": PermissionLevel.CAN_MANAGE,
                    "inherited": True,
                    "inherited_from_object": ["/serving-endpoints/"],
                }
            ],
        }
    )
    return {
        "object_id": f"/serving-endpoints/{endpoint.id}",
        "object_type": "serving-endpoint",
        "access_control_list": acl,
    }


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
