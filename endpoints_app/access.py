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

Roles, global and per workspace.
A user's role in a workspace (``role_of(user, workspace)``) is the highest of their global role
and the workspace grants to them or to their groups (viewer, editor, approver; ``admin`` is global
only, so every "admins only" check reads the global role in effect). Everything this installation
serves is the workspace ``local``, the default: the endpoint baselines below, creating endpoints
and scopes, approving, all use the role in ``local``, so a user with no global role and editor on
``local`` creates endpoints here. ``global_role`` is the global role alone (what a user's record
shows, what single sign-on sets). A user's grants are read once per user object (one query) and
kept on it, as Django keeps its profile: a request sees one set of rights throughout.

Workspaces.
A user sees a workspace where their role is at least viewer: users with a global role see every
workspace (name, host, status; never a token), anyone else the workspaces granted to them, and
``local``, the installation they are signed in to, which every signed-in user sees (their endpoint
grants are in it). Only admins register, change or remove workspaces and grant roles in them
(``require_admin``). No one, admins included, may have an endpoint refer to a workspace's token
(``check_can_read``).

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
    WorkspaceGrant,
    WorkspaceKind,
)
from endpoints_app.models.workspaces import LOCAL_WORKSPACE, WORKSPACE_TOKEN_SCOPE

RANK: dict[str | None, int] = {
    None: 0,
    PermissionLevel.CAN_VIEW: 1,
    PermissionLevel.CAN_QUERY: 2,
    PermissionLevel.CAN_MANAGE: 3,
}
CREATE_ROLES = (Role.EDITOR, Role.APPROVER, Role.ADMIN)
APPROVER_ROLES = (Role.APPROVER, Role.ADMIN)
SECRET_RANK: dict[str | None, int] = {
    None: 0,
    SecretPermission.READ: 1,
    SecretPermission.WRITE: 2,
    SecretPermission.MANAGE: 3,
}
ALL_USERS = "users"  # Databricks' group of every user


ROLE_RANK: dict[str, int] = {Role.NONE: 0, Role.VIEWER: 1, Role.EDITOR: 2, Role.APPROVER: 3, Role.ADMIN: 4}
# Above this, no workspace grant can raise a global role (grants stop at approver).
_HIGHEST_GRANTED = ROLE_RANK[Role.APPROVER]
_GRANTS_CACHE = "_modelfleet_workspace_roles"


def global_role(user: User | None) -> str:
    """The user's global role alone (superusers are admins); none for anyone signed out or deactivated."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Role.NONE
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    profile = getattr(user, "profile", None)
    try:
        return profile.role if profile is not None else Role.NONE
    except Exception:  # RelatedObjectDoesNotExist: no profile yet
        return Role.NONE


def higher_role(a: str, b: str) -> str:
    return a if ROLE_RANK[a] >= ROLE_RANK[b] else b


def workspace_roles(user: User | None) -> dict[str, str]:
    """Workspace name → the highest role granted there to the user or their groups (one query,
    then kept on the user object for the rest of the request)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return {}
    cached: dict[str, str] | None = getattr(user, _GRANTS_CACHE, None)
    if cached is not None:
        return cached
    roles: dict[str, str] = {}
    grants = WorkspaceGrant.objects.filter(Q(user_id=user.pk) | Q(group__user=user.pk))
    for name, role in grants.values_list("workspace__name", "role"):
        roles[name] = higher_role(roles.get(name, Role.NONE), role)
    setattr(user, _GRANTS_CACHE, roles)
    return roles


def forget_workspace_roles(user: User) -> None:
    """Drop the grants kept on this user object (after changing them within one request)."""
    if hasattr(user, _GRANTS_CACHE):
        delattr(user, _GRANTS_CACHE)


def role_of(user: User | None, workspace: str = LOCAL_WORKSPACE) -> str:
    """The user's role in ``workspace`` (``local``, this installation, unless named): the highest of
    their global role and their grants there."""
    role = global_role(user)
    if ROLE_RANK[role] >= _HIGHEST_GRANTED:
        return role  # no grant can raise it: no query
    return higher_role(role, workspace_roles(user).get(workspace, Role.NONE))


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


def visible_fleet_endpoints(user: User | None, queryset: QuerySet[Endpoint]) -> QuerySet[Endpoint]:
    """Every workspace's endpoints the user may see (issue 16): local ones as ``visible_endpoints``
    says, remote ones in the workspaces where the user has a role (a global one, or a grant there)."""
    if global_role(user):
        return queryset
    if user is None or not user.is_authenticated or not user.is_active:
        return queryset.none()
    granted = [name for name, role in workspace_roles(user).items() if role and name != LOCAL_WORKSPACE]
    local = Q(workspace__isnull=True)
    if not role_of(user):
        local &= Q(id__in=_grants(user).values("endpoint_id"))
    return queryset.filter(local | Q(workspace__name__in=granted))


def require_remote_view(user: User | None, endpoint: Endpoint) -> str:
    """The user's role in a remote endpoint's workspace, when they may see it (404 otherwise)."""
    assert endpoint.workspace is not None
    role = role_of(user, endpoint.workspace.name)
    if not role:
        raise ResourceDoesNotExist(
            f"Endpoint '{endpoint.name}' does not exist in workspace '{endpoint.workspace.name}'"
        )
    return role


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
    if global_role(user) != Role.ADMIN:
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
    if global_role(user) == Role.ADMIN:
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
    if global_role(user) == Role.ADMIN:
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
    if scope_obj is not None and scope_obj.managed and global_role(user) != Role.ADMIN:
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


def may_approve(user: User | None, workspace: str = LOCAL_WORKSPACE) -> bool:
    """Approvers and admins decide change requests (never their own: ``services.changes``), and
    for the same reason change endpoints that a policy covers without proposing first; in
    ``workspace`` (``local`` unless named), so an approver granted in one workspace decides its
    changes only."""
    return role_of(user, workspace) in APPROVER_ROLES


def require_remote_edit(user: User | None, workspace: Workspace) -> None:
    """Changing a remote workspace's endpoints (proposing, or applying where no policy covers
    them): the editor role or higher there (global, or granted in it); 404 for a user who cannot
    see the workspace, 403 for a viewer."""
    role = role_of(user, workspace.name)
    if not role:
        raise ResourceDoesNotExist(f"Workspace '{workspace.name}' does not exist")
    if role not in CREATE_ROLES:
        raise PermissionDenied(
            f"Changing endpoints of workspace '{workspace.name}' needs the editor, approver or admin role there; "
            f"you have {role}"
        )


def approvers(workspace: str = LOCAL_WORKSPACE) -> Q:
    """Users who may approve in ``workspace`` (for a ``User`` query; may repeat a user: add
    ``distinct``): superusers, the approver and admin global roles, and approver grants there."""
    granted = Q(workspace_grants__workspace__name=workspace, workspace_grants__role=Role.APPROVER)
    via_group = Q(groups__workspace_grants__workspace__name=workspace, groups__workspace_grants__role=Role.APPROVER)
    return Q(is_superuser=True) | Q(profile__role__in=APPROVER_ROLES) | granted | via_group


def visible_change_requests(user: User | None, queryset: QuerySet[ChangeRequest]) -> QuerySet[ChangeRequest]:
    """Global approvers and admins see every change request; anyone else their own, and those of
    the workspaces where a grant makes them an approver (``local``'s name no workspace)."""
    if global_role(user) in APPROVER_ROLES:
        return queryset
    if user is None or not user.is_authenticated:
        return queryset.none()
    approving = [name for name, role in workspace_roles(user).items() if role in APPROVER_ROLES]
    seen = Q(author_id=user.pk) | Q(workspace__name__in=approving)
    if LOCAL_WORKSPACE in approving:
        seen |= Q(workspace__isnull=True)
    return queryset.filter(seen)


# --- workspaces --------------------------------------------------------------------------------


def visible_workspaces(user: User | None, queryset: QuerySet[Workspace]) -> QuerySet[Workspace]:
    """Every workspace for users with a global role; for the others ``local`` and the workspaces
    where a grant gives them a role."""
    if global_role(user):
        return queryset
    if user is None or not user.is_authenticated or not user.is_active:
        return queryset.none()
    granted = [name for name, role in workspace_roles(user).items() if role]
    return queryset.filter(Q(kind=WorkspaceKind.LOCAL) | Q(name__in=granted))
