"""Who may do what: endpoints, secret scopes and change requests. Pages, API, CLI (through the
API), the gateway and the services all ask here; nothing else decides access.

Endpoints.

A user's level on an endpoint is the highest of: their global role's baseline (admin →
CAN_MANAGE on everything; viewer, editor, approver → CAN_VIEW on everything) and the direct
grants to them or to their groups (the creator gets CAN_MANAGE when creating). No level means
the endpoint does not exist for them: 404, not 403 (healthchecks' habit). A level too low for the
action is 403 PERMISSION_DENIED naming the level needed.

Secret scopes (Databricks' rules, reference §7).
A user's permission on a scope is the highest of the ACLs naming them, one of their groups, or
``users`` (every user); admins have MANAGE on every scope. READ lists the keys and lets an
endpoint refer to the secrets; WRITE also puts and deletes secrets; MANAGE also reads and changes
the ACLs and deletes the scope. Users with a global role see that every scope exists; without a
role a user sees only the scopes an ACL gives them. A scope the caller cannot see is 404; one they
see without enough permission is 403 naming the permission needed. Creating a scope needs the
editor, approver or admin role. Managed scopes (credentials given to endpoints as ``*_plaintext``)
have no ACLs that count: only admins see them, and the user who stored a secret there may refer
to that secret.

Workspaces.
Every user with a global role sees every workspace (name, host, status; never a token): they see
every endpoint already, and the fleet names each endpoint's workspace. A user without a role sees
only ``local``. Only admins register, change or remove workspaces (``require_admin``). No one,
admins included, may have an endpoint refer to a workspace's token (``check_can_read``).

Change requests.
Approvers and admins see and decide every change request (never their own) and change endpoints
that an approval policy covers without proposing; anyone else sees only their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet

from endpoints_app.errors import PermissionDenied, ResourceDoesNotExist
from endpoints_app.models import (
    ChangeRequest,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
    Secret,
    SecretAcl,
    SecretPermission,
    SecretScope,
    Workspace,
    WorkspaceKind,
)
from endpoints_app.models.workspaces import WORKSPACE_TOKEN_SCOPE

RANK: dict[str | None, int] = {None: 0, PermissionLevel.CAN_VIEW: 1, PermissionLevel.CAN_QUERY: 2, PermissionLevel.CAN_MANAGE: 3}
CREATE_ROLES = (Role.EDITOR, Role.APPROVER, Role.ADMIN)
APPROVER_ROLES = (Role.APPROVER, Role.ADMIN)
SECRET_RANK: dict[str | None, int] = {
    None: 0,
    SecretPermission.READ: 1,
    SecretPermission.WRITE: 2,
    SecretPermission.MANAGE: 3,
}
ALL_USERS = "users"  # Databricks' group of every user


def role_of(user: User | None) -> str:
    if user is None or not user.is_authenticated or not user.is_active:
        return Role.NONE
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    profile = getattr(user, "profile", None)
    try:
        return profile.role if profile is not None else Role.NONE
    except Exception:  # RelatedObjectDoesNotExist: no profile yet
        return Role.NONE


def _grants(user: User) -> QuerySet[EndpointPermission]:
    return EndpointPermission.objects.filter(Q(user=user) | Q(group__in=user.groups.all()))


def endpoint_level(user: User | None, endpoint: Endpoint) -> str | None:
    role = role_of(user)
    if role == Role.ADMIN:
        return PermissionLevel.CAN_MANAGE
    best: str | None = PermissionLevel.CAN_VIEW if role else None
    if user is not None and user.is_authenticated:
        for level in _grants(user).filter(endpoint=endpoint).values_list("level", flat=True):
            if RANK[level] > RANK[best]:
                best = level
    return best


def levels_for(user: User | None, endpoint_ids: list[str]) -> dict[str, str | None]:
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


def visible_endpoints(user: User | None, queryset: QuerySet[Endpoint]) -> QuerySet[Endpoint]:
    if role_of(user):
        return queryset
    if user is None or not user.is_authenticated:
        return queryset.none()
    return queryset.filter(id__in=_grants(user).values("endpoint_id"))


def require(user: User | None, endpoint: Endpoint, needed: str) -> str:
    """The user's level, if it is at least ``needed``; else 404 (cannot see) or 403 (cannot act)."""
    level = endpoint_level(user, endpoint)
    if level is None:
        raise ResourceDoesNotExist(f"Endpoint '{endpoint.name}' does not exist")
    if RANK[level] < RANK[needed]:
        raise PermissionDenied(
            f"This needs {needed} on endpoint '{endpoint.name}'; you have {level}. Ask someone with CAN_MANAGE to grant it."
        )
    return level


def require_create(user: User | None) -> None:
    """Creating endpoints and registering models: the editor, approver or admin role."""
    if role_of(user) not in CREATE_ROLES:
        raise PermissionDenied("This needs the editor, approver or admin role")


def require_admin(user: User | None, what: str) -> None:
    """Changes to how the whole fleet is governed (approval policies): admins only."""
    if role_of(user) != Role.ADMIN:
        raise PermissionDenied(f"{what} are set by admins")


# --- secret scopes -----------------------------------------------------------------------------


def _principals(user: User) -> list[str]:
    return [user.get_username(), ALL_USERS, *user.groups.values_list("name", flat=True)]


def scope_permission(user: User | None, scope: SecretScope) -> str | None:
    """The user's permission on the scope: the highest of their ACLs; MANAGE for admins."""
    return scope_permissions(user, [scope])[scope.pk]


def scope_permissions(user: User | None, scopes: Iterable[SecretScope]) -> dict[int, str | None]:
    """``scope_permission`` for many scopes at once, by scope id, in two queries whatever their number
    (the user's groups, then their ACLs on these scopes); none for an admin."""
    scopes = list(scopes)
    if role_of(user) == Role.ADMIN:
        return {scope.pk: SecretPermission.MANAGE for scope in scopes}
    best: dict[int, str | None] = {scope.pk: None for scope in scopes}
    if user is None or not user.is_authenticated or not user.is_active:
        return best
    # Managed scopes have no ACLs that count: only admins (above) have a permission on them.
    ids = [scope.pk for scope in scopes if not scope.managed]
    if not ids:
        return best
    acls = SecretAcl.objects.filter(scope_id__in=ids, principal__in=_principals(user))
    for scope_id, permission in acls.values_list("scope_id", "permission"):
        if SECRET_RANK[permission] > SECRET_RANK[best[scope_id]]:
            best[scope_id] = permission
    return best


def scope_allows(permission: str | None, needed: str) -> bool:
    return SECRET_RANK[permission] >= SECRET_RANK[needed]


def _can_see_scope(user: User | None, scope: SecretScope, permission: str | None) -> bool:
    if permission is not None:
        return True
    return bool(role_of(user)) and not scope.managed


def require_scope(user: User | None, scope: SecretScope | None, name: str, needed: str) -> str | None:
    """The user's permission on ``scope`` (None: no such scope), if it allows ``needed``; else 404
    when they cannot see the scope, 403 when they can but lack the permission."""
    permission = scope_permission(user, scope) if scope is not None else None
    if scope is None or not _can_see_scope(user, scope, permission):
        raise ResourceDoesNotExist(f"Scope {name} does not exist!")
    if not scope_allows(permission, needed):
        raise PermissionDenied(
            f"This needs {needed} on secret scope '{name}'; you have {permission or 'no permission'}. "
            "Ask someone with MANAGE on it to grant it."
        )
    return permission


def visible_scopes(user: User | None, queryset: QuerySet[SecretScope]) -> QuerySet[SecretScope]:
    """Admins see every scope; users with a role every scope but the managed ones; anyone else the
    scopes an ACL names them in."""
    if role_of(user) == Role.ADMIN:
        return queryset
    queryset = queryset.filter(managed=False)
    if role_of(user):
        return queryset
    if user is None or not user.is_authenticated:
        return queryset.none()
    return queryset.filter(acls__principal__in=_principals(user)).distinct()


def require_create_scope(user: User | None) -> None:
    if role_of(user) not in CREATE_ROLES:
        raise PermissionDenied("Creating a secret scope needs the editor, approver or admin role")


def check_can_read(*, user: User | None, scope: str, key: str) -> None:
    """May ``user`` have an endpoint use ``{{secrets/scope/key}}``? Raises the domain error if not.

    404 when the scope (for them) or the key does not exist, 403 when they lack READ.
    """
    if scope == WORKSPACE_TOKEN_SCOPE:
        # Remote workspaces' tokens go only to their own hosts (services.workspaces), never to
        # an endpoint: not even an admin may refer to them.
        raise ResourceDoesNotExist(f"Scope {scope} does not exist!")
    scope_obj = SecretScope.objects.filter(name=scope).first()
    if scope_obj is not None and scope_obj.managed and role_of(user) != Role.ADMIN:
        # A managed scope: only the user who stored the secret (or an admin) may use it.
        stored_by_them = (
            user is not None
            and user.is_authenticated
            and Secret.objects.filter(scope=scope_obj, key=key, updated_by_id=user.pk).exists()
        )
        if not stored_by_them:
            raise ResourceDoesNotExist(f"Scope {scope} does not exist!")
        return
    require_scope(user, scope_obj, scope, SecretPermission.READ)
    if not Secret.objects.filter(scope=scope_obj, key=key).exists():
        raise ResourceDoesNotExist(f"Secret {key} does not exist in scope {scope}!")


# --- change requests ---------------------------------------------------------------------------


def may_approve(user: User | None) -> bool:
    """Approvers and admins decide change requests (never their own: ``services.changes``), and
    for the same reason change endpoints that a policy covers without proposing first."""
    return role_of(user) in APPROVER_ROLES


def visible_change_requests(
    user: User | None, queryset: QuerySet[ChangeRequest]
) -> QuerySet[ChangeRequest]:
    """Approvers and admins see every change request; anyone else only their own."""
    if may_approve(user):
        return queryset
    if user is None or not user.is_authenticated:
        return queryset.none()
    return queryset.filter(author_id=user.pk)


# --- workspaces --------------------------------------------------------------------------------


def visible_workspaces(user: User | None, queryset: QuerySet[Workspace]) -> QuerySet[Workspace]:
    """Every workspace for users with a global role; ``local`` only for the others."""
    if role_of(user):
        return queryset
    if user is None or not user.is_authenticated:
        return queryset.none()
    return queryset.filter(kind=WorkspaceKind.LOCAL)
