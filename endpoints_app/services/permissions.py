"""Setting per-endpoint grants (Databricks permissions API semantics: PUT replaces, PATCH merges).

One service for the API, the CLI (through the API) and the endpoint page's permissions panel
(whose script calls the API): CAN_MANAGE on the endpoint, the approval gate, then the grants and
an audit row in one transaction; every gateway process drops its cached levels on commit.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import Q

from endpoints_app import access, access_generation, audit
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import Endpoint, EndpointPermission, PermissionLevel, ServicePrincipal
from endpoints_app.services import gate
from endpoints_app.validation import require_object


def parse_acl(raw: Any) -> list[tuple[str, str, str]]:
    """[(kind "user"|"group"|"service_principal", name, level)] from ``{"access_control_list": [...]}``
    (a service principal is named by its application id, as in Databricks)."""
    body = require_object(raw, "request body")
    items = body.get("access_control_list")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise InvalidParameterValue("access_control_list must be an array")
    acl = []
    for i, item in enumerate(items):
        where = f"access_control_list[{i}]"
        entry = require_object(item, where)
        level = entry.get("permission_level")
        if level not in PermissionLevel.values:
            raise InvalidParameterValue(f"{where}.permission_level must be one of {', '.join(PermissionLevel.values)}")
        if isinstance(entry.get("service_principal_name"), str) and entry["service_principal_name"]:
            acl.append(("service_principal", entry["service_principal_name"], level))
        elif isinstance(entry.get("user_name"), str) and entry["user_name"]:
            acl.append(("user", entry["user_name"], level))
        elif isinstance(entry.get("group_name"), str) and entry["group_name"]:
            acl.append(("group", entry["group_name"], level))
        else:
            raise InvalidParameterValue(f"{where} must name a user_name, a group_name or a service_principal_name")
    return acl


def _principal(kind: str, name: str) -> dict[str, Any]:
    if kind == "service_principal":
        try:
            application_id: uuid.UUID | None = uuid.UUID(name)
        except ValueError:
            application_id = None
        principal = (
            ServicePrincipal.objects.select_related("user").filter(application_id=application_id).first()
            if application_id is not None
            else None
        )
        if principal is None:
            raise InvalidParameterValue(f"Principal: ServicePrincipalName({name[:64]}) does not exist")
        return {"user": principal.user}
    if kind == "user":
        user = get_user_model().objects.filter(Q(username=name) | Q(email=name)).order_by("id").first()
        if user is None:
            raise InvalidParameterValue(f"Principal: UserName({name}) does not exist")
        return {"user": user}
    group = Group.objects.filter(name=name).first()
    if group is None:
        raise InvalidParameterValue(f"Principal: GroupName({name}) does not exist")
    return {"group": group}


def set_permissions(*, actor: User, endpoint: Endpoint, body: Any, replace: bool) -> None:
    """Grant what ``body``'s ``access_control_list`` says: replacing every direct grant
    (``replace``, PUT) or adding to them (PATCH)."""
    access.require(actor, endpoint, PermissionLevel.CAN_MANAGE)
    acl = parse_acl(body)
    gate.admit(actor=actor, action=gate.PERMISSIONS, endpoint_name=endpoint.name, body=body)
    principals = [(_principal(kind, name), level) for kind, name, level in acl]
    with transaction.atomic():
        before = grants_snapshot(endpoint)
        if replace:
            EndpointPermission.objects.filter(endpoint=endpoint).delete()
        for who, level in principals:
            EndpointPermission.objects.update_or_create(endpoint=endpoint, **who, defaults={"level": level})
        audit.record(
            actor=actor,
            action="permissions.set" if replace else "permissions.update",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before=before,
            after=grants_snapshot(endpoint),
        )
        access_generation.bump()  # every gateway process drops its cached levels on commit


def grants_snapshot(endpoint: Endpoint) -> list[dict[str, str]]:
    grants = (
        EndpointPermission.objects.filter(endpoint=endpoint)
        .select_related("user__service_principal", "group")
        .order_by("id")
    )
    return [{**_grantee(g), "level": g.level} for g in grants]


def _grantee(grant: EndpointPermission) -> dict[str, str]:
    """``{"user": …}`` or ``{"group": …}``: a grant names exactly one (the model's check constraint)."""
    if grant.user is not None and hasattr(grant.user, "service_principal"):
        return {"service_principal": grant.user.get_username()}
    if grant.user is not None:
        return {"user": grant.user.get_username()}
    if grant.group is not None:
        return {"group": grant.group.name}
    raise ValueError(f"permission grant {grant.pk} names neither a user nor a group")
