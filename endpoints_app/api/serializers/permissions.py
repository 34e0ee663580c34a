"""An endpoint's permissions in the Databricks shape (reference §2.11): its direct grants (users,
groups and service principals, the last by application id), then the admins' CAN_MANAGE,
inherited from the serving-endpoints root."""

from __future__ import annotations

from typing import Any

from endpoints_app.models import Endpoint, EndpointPermission, PermissionLevel


def serialize_permissions(endpoint: Endpoint) -> dict[str, Any]:
    acl: list[dict[str, Any]] = []
    grants = (
        EndpointPermission.objects.filter(endpoint=endpoint)
        .select_related("user__service_principal", "group")
        .order_by("id")
    )
    for grant in grants:
        entry: dict[str, Any] = {"all_permissions": [{"permission_level": grant.level, "inherited": False}]}
        principal = getattr(grant.user, "service_principal", None) if grant.user is not None else None
        if principal is not None:  # named by its application id, as Databricks does
            entry["service_principal_name"] = str(principal.application_id)
            entry["display_name"] = principal.display_name
        elif grant.user is not None:
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
