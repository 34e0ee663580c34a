"""Roles in one workspace: an admin grants a user or a group viewer, editor or approver in a
workspace, on top of their global role (``access`` turns grants into the role in effect).

- ``set_grant`` puts one principal's grant (``{"user_name"|"group_name", "role"}``): it creates or
  changes the grant an admin gives; ``delete_grant`` removes it. The grants single sign-on gives
  (``mapping`` set: a per-workspace group → role mapping, ``services.sso``) are listed with their
  mapping but changed only through it, so a sign-in never undoes an admin's grant and an admin's
  revoke never fights the provider.
- Admins only, ``local`` included: a grant changes who may do what, as a global role does, so a
  workspace editor or approver cannot grant themselves or anyone more.
- Each change is one transaction with its audit row (``workspace.grant`` / ``workspace.revoke``,
  object the workspace, the principal and role before and after) and bumps the access generation,
  so gateways drop cached levels within a second.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from endpoints_app import access, access_generation, audit
from endpoints_app.errors import InvalidParameterValue, ResourceConflict, ResourceDoesNotExist
from endpoints_app.models import Role, Workspace, WorkspaceGrant, WorkspaceRole
from endpoints_app.services.workspaces import get_workspace

WHAT = "Roles in workspaces"
MAX_PRINCIPAL_LENGTH = 150  # Django's user and group names
ROLES = tuple(WorkspaceRole.values)


def _workspace(actor: User, name: object) -> Workspace:
    access.require_admin(actor, WHAT)
    return get_workspace(user=actor, name=name)


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PRINCIPAL_LENGTH:
        raise InvalidParameterValue(f"{field} must be a string of 1–{MAX_PRINCIPAL_LENGTH} characters")
    return value


def _principal(values: dict[str, Any]) -> tuple[User | None, Group | None]:
    """The user or group ``values`` names (exactly one of ``user_name``, ``group_name``); 404 when
    there is no such user or group."""
    given = [f for f in ("user_name", "group_name") if values.get(f) is not None]
    if len(given) != 1:
        raise InvalidParameterValue("Give exactly one of user_name and group_name")
    if given[0] == "user_name":
        username = _name(values["user_name"], "user_name")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise ResourceDoesNotExist(f"User '{username}' does not exist")
        return user, None
    group_name = _name(values["group_name"], "group_name")
    group = Group.objects.filter(name=group_name).first()
    if group is None:
        raise ResourceDoesNotExist(f"Group '{group_name}' does not exist")
    return None, group


def _role(value: object) -> str:
    if value == Role.ADMIN:
        raise InvalidParameterValue("admin is a global role only: a workspace grant is viewer, editor or approver")
    if not isinstance(value, str) or value not in ROLES:
        raise InvalidParameterValue(f"role must be one of {', '.join(ROLES)}")
    return value


def grant_snapshot(grant: WorkspaceGrant) -> dict[str, Any]:
    """A grant as the API lists it and the audit log records it."""
    shown: dict[str, Any] = {"user_name": grant.user.get_username()} if grant.user is not None else {}
    if grant.group is not None:
        shown["group_name"] = grant.group.name
    shown["role"] = grant.role
    if grant.mapping is not None:
        shown |= {"source": "group_role_mapping", "mapped_group": grant.mapping.group_name}
    else:
        shown["source"] = "api"
    return shown


def _own(workspace: Workspace, user: User | None, group: Group | None) -> QuerySet[WorkspaceGrant]:
    """The admin-given grant of this principal in this workspace (none or one row)."""
    if user is not None:
        return WorkspaceGrant.objects.filter(workspace=workspace, user=user, mapping__isnull=True)
    return WorkspaceGrant.objects.filter(workspace=workspace, group=group)


def _audit(actor: User, action: str, workspace: Workspace, **values: Any) -> None:
    audit.record(
        actor=actor,
        action=action,
        object_type="workspace",
        object_id=str(workspace.pk),
        object_name=workspace.name,
        **values,
    )


# -- reads ------------------------------------------------------------------------------------


def list_grants(*, actor: User, workspace: object) -> list[WorkspaceGrant]:
    """Every grant in the workspace (admins): users', then groups', by name; one query."""
    found = _workspace(actor, workspace)
    rows = WorkspaceGrant.objects.filter(workspace=found).select_related("user", "group", "mapping")
    return sorted(rows, key=lambda g: (g.user is None, _principal_name(g), g.mapping_id or 0))


def _principal_name(grant: WorkspaceGrant) -> str:
    if grant.user is not None:
        return grant.user.get_username()
    return grant.group.name if grant.group is not None else ""


# -- changes ----------------------------------------------------------------------------------


def set_grant(*, actor: User, workspace: object, body: object) -> WorkspaceGrant:
    """Give ``{"user_name"|"group_name", "role"}`` that role in the workspace (admins), replacing
    the principal's earlier grant there."""
    found = _workspace(actor, workspace)
    if not isinstance(body, dict):
        raise InvalidParameterValue("The request body must be a JSON object with user_name or group_name, and role")
    unknown = sorted(str(k) for k in body if k not in ("user_name", "group_name", "role"))
    if unknown:
        raise InvalidParameterValue(
            f"Unknown field '{unknown[0][:64]}': a grant takes user_name or group_name, and role"
        )
    user, group = _principal(body)
    role = _role(body.get("role"))
    try:
        with transaction.atomic():
            before = _own(found, user, group).select_for_update(of=("self",)).select_related("user", "group").first()
            shown_before = grant_snapshot(before) if before is not None else None
            if before is None:
                grant = WorkspaceGrant.objects.create(workspace=found, user=user, group=group, role=role)
            else:
                grant = before
                grant.role = role
                grant.save(update_fields=["role"])
            _audit(actor, "workspace.grant", found, before=shown_before, after=grant_snapshot(grant))
            access_generation.bump()  # a role in local sets endpoint baselines: gateways drop cached levels
    except IntegrityError:  # the same grant created meanwhile
        raise ResourceConflict("This grant changed meanwhile; try again") from None
    return grant


def delete_grant(*, actor: User, workspace: object, principal: dict[str, Any]) -> None:
    """Remove the grant an admin gave ``{"user_name"|"group_name"}`` in the workspace (admins);
    404 when there is none. Grants from single sign-on go with their mapping, not here."""
    found = _workspace(actor, workspace)
    user, group = _principal(principal)
    with transaction.atomic():
        grant = _own(found, user, group).select_for_update(of=("self",)).select_related("user", "group").first()
        if grant is None:
            who = user.get_username() if user is not None else group.name  # type: ignore[union-attr]
            raise ResourceDoesNotExist(f"'{who}' has no role granted in workspace '{found.name}'")
        _audit(actor, "workspace.revoke", found, before=grant_snapshot(grant))
        grant.delete()
        access_generation.bump()
