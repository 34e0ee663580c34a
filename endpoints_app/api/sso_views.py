"""Administration API for single sign-on: which provider groups give which global role (admins).

``GET …/group-role-mappings`` lists every mapping in force (``source``: "api", or "settings" for
``MODELFLEET_OIDC_GROUP_ROLES`` entries the API does not override); ``PUT …/<group>`` with
``{"role": "editor"}`` sets one, ``DELETE`` removes it. A mapping takes effect at each user's next
sign-in. With ``"workspace": NAME`` in the body (``?workspace=NAME`` on ``DELETE``), the mapping is
the group's role in that workspace (viewer, editor or approver), given to each member as a
workspace grant at sign-in; without, the global one.
"""

from __future__ import annotations

from django.urls import path
from rest_framework.response import Response

from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.services import sso as sso_services
from endpoints_app.validation import require_object

MAPPINGS = "api/2.0/modelfleet/group-role-mappings"


class GroupRoleMappingListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        sso_services.require_admin(request.user)
        return Response({"mappings": sso_services.list_mappings()})


class GroupRoleMappingDetailView(ApiView):
    def put(self, request: AuthenticatedRequest, group: str) -> Response:
        sso_services.require_admin(request.user)
        body = require_object(request_body(request), "request body")
        unknown = sorted(str(k) for k in body if k not in ("role", "workspace"))
        if unknown:
            raise InvalidParameterValue(f"Unknown field '{unknown[0][:64]}': a mapping takes role and workspace")
        mapping = sso_services.set_mapping(
            actor=request.user, group_name=group, role=body.get("role"), workspace=body.get("workspace")
        )
        return Response(sso_services.snapshot_of(mapping))

    def delete(self, request: AuthenticatedRequest, group: str) -> Response:
        sso_services.require_admin(request.user)
        sso_services.delete_mapping(
            actor=request.user, group_name=group, workspace=request.query_params.get("workspace")
        )
        return Response({})


urlpatterns = [
    path(MAPPINGS, GroupRoleMappingListView.as_view()),
    path(f"{MAPPINGS}/<str:group>", GroupRoleMappingDetailView.as_view()),
]
