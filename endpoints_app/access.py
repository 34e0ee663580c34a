"""One rule for who may do what with an endpoint; pages, API, CLI (through the API) and the
gateway all ask it.

A user's level on an endpoint is the highest of: their global role's baseline (admin →
CAN_MANAGE on everything; viewer, editor, approver → CAN_VIEW on everything) and the direct
grants to them or to their groups (the creator gets CAN_MANAGE when creating). No level means
the endpoint does not exist for them: 404, not 403 (healthchecks' habit). A level too low for the
action is 403 PERMISSION_DENIED naming the level needed.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from endpoints_app.errors import PermissionDenied, ResourceDoesNotExist
from endpoints_app.models import Endpoint, EndpointPermission, PermissionLevel, Role

RANK = {None: 0, PermissionLevel.CAN_VIEW: 1, PermissionLevel.CAN_QUERY: 2, PermissionLevel.CAN_MANAGE: 3}
CREATE_ROLES = (Role.EDITOR, Role.APPROVER, Role.ADMIN)


def role_of(user: AbstractBaseUser | None) -> str:
    if user is None or not user.is_authenticated or not user.is_active:
        return Role.NONE
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    profile = getattr(user, "profile", None)
    try:
        return profile.role if profile is not None else Role.NONE
    except Exception:  # RelatedObjectDoesNotExist: no profile yet
        return Role.NONE


def _grants(user: AbstractBaseUser) -> QuerySet[EndpointPermission]:
    return EndpointPermission.objects.filter(Q(user=user) | Q(group__in=user.groups.all()))


def endpoint_level(user: AbstractBaseUser | None, endpoint: Endpoint) -> str | None:
    role = role_of(user)
    if role == Role.ADMIN:
        return PermissionLevel.CAN_MANAGE
    best: str | None = PermissionLevel.CAN_VIEW if role else None
    if user is not None and user.is_authenticated:
        for level in _grants(user).filter(endpoint=endpoint).values_list("level", flat=True):
            if RANK[level] > RANK[best]:
                best = level
    return best


def levels_for(user: AbstractBaseUser | None, endpoint_ids: list[str]) -> dict[str, str | None]:
    """endpoint_level for many endpoints in one query (list views)."""
    role = role_of(user)
    if role == Role.ADMIN:
        return dict.fromkeys(endpoint_ids, PermissionLevel.CAN_MANAGE)
    base: str | None = PermissionLevel.CAN_VIEW if role else None
    levels: dict[str, str | None] = dict.fromkeys(endpoint_ids, base)
    if user is not None and user.is_authenticated:
        for endpoint_id, level in (
            _grants(user).filter(endpoint_id__in=endpoint_ids).values_list("endpoint_id", "level")
        ):
            if RANK[level] > RANK[levels[endpoint_id]]:
                levels[endpoint_id] = level
    return levels


def visible_endpoints(user: AbstractBaseUser | None, queryset: QuerySet[Endpoint]) -> QuerySet[Endpoint]:
    if role_of(user):
        return queryset
    if user is None or not user.is_authenticated:
        return queryset.none()
    return queryset.filter(id__in=_grants(user).values("endpoint_id"))


def require(user: AbstractBaseUser | None, endpoint: Endpoint, needed: str) -> str:
    """The user's level, if it is at least ``needed``; else 404 (cannot see) or 403 (cannot act)."""
    level = endpoint_level(user, endpoint)
    if level is None:
        raise ResourceDoesNotExist(f"Endpoint '{endpoint.name}' does not exist")
    if RANK[level] < RANK[needed]:
        raise PermissionDenied(
            f"This needs {needed} on endpoint '{endpoint.name}'; you have {level}. Ask someone with CAN_MANAGE to grant it."
        )
    return level


def require_create(user: AbstractBaseUser | None) -> None:
    """Creating endpoints and registering models: the editor, approver or admin role."""
    if role_of(user) not in CREATE_ROLES:
        raise PermissionDenied("This needs the editor, approver or admin role")
