"""Single sign-on's state changes: a verified sign-in becomes a user, their groups and their role;
admins map provider groups to roles; password sign-in follows ``MODELFLEET_LOCAL_LOGIN``.

The protocol (discovery, PKCE, state, the ID token's signature, issuer, audience, expiry and
nonce) is Authlib's, in ``pages.sso``; what arrives here is claims it has verified.

Sign-in, in one transaction:

1. the user is found by (issuer, subject), never by name: a provider may reuse or change names.
   A first sign-in links an existing user of the same name only if that user cannot sign in any
   other way (no password, not a superuser, no other identity: one provisioned ahead, e.g. over
   SCIM or by an admin through the API); else it creates a user, under another name if the
   provider's is taken (``alice-3f9a2c``), so a provider account can never take over a local one;
2. the groups claim becomes group memberships: groups are created as needed, and memberships the
   previous sign-in's claim gave and this one's does not are removed (memberships admins set by
   hand are left alone);
3. the global role becomes the highest role mapped globally to the user's provider groups
   (mappings set through the API first, then ``MODELFLEET_OIDC_GROUP_ROLES``); none when no group
   is mapped. The provider is the source of truth: a role set by hand lasts until the next sign-in;
4. per-workspace mappings (API only) become workspace grants owned by their mapping, one per
   mapping of a group in the claim: those of groups no longer in the claim are removed, so leaving
   a provider group takes the role away at the next sign-in. Grants an admin gave are left alone;
5. audit rows: ``user.create`` on a first sign-in, ``user.role`` when the role changes,
   ``user.workspace_roles`` when the mapped workspace roles change, and ``auth.login`` with the
   provider, the groups and the role.

Deleting a per-workspace mapping removes the grants it gave at once, and changing its role changes
them at once (both bump the access generation); new members get it at their next sign-in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from endpoints_app import access_generation, audit, auth_throttle
from endpoints_app.access import ROLE_RANK, global_role
from endpoints_app.errors import InvalidParameterValue, PermissionDenied, ResourceDoesNotExist
from endpoints_app.models import (
    GroupRoleMapping,
    Role,
    SsoIdentity,
    UserProfile,
    Workspace,
    WorkspaceGrant,
    WorkspaceRole,
)
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.services.users import user_snapshot
from endpoints_app.services.workspaces import ensure_local

_NAME_CHARS = re.compile(r"[^\w.@+-]")


class SignInRefused(Exception):
    """A verified identity that may not sign in (deactivated user, unusable claims)."""


# --- password sign-in policy -----------------------------------------------------------------------


def local_login_allowed(username: str | None) -> bool:
    """Password sign-in: everyone's when ``MODELFLEET_LOCAL_LOGIN`` is on; else only the break-glass
    admin's (``MODELFLEET_BREAK_GLASS_ADMIN``), for when the provider is down or misconfigured."""
    return settings.LOCAL_LOGIN or (bool(username) and username == settings.BREAK_GLASS_ADMIN)


# --- group → role mappings ------------------------------------------------------------------------


def mapping_snapshot(group_name: str, role: str, source: str, workspace: str | None = None) -> dict[str, str | None]:
    """A mapping as the API shows it; ``workspace`` None for a global one."""
    return {"group": group_name, "role": role, "source": source, "workspace": workspace}


def snapshot_of(mapping: GroupRoleMapping) -> dict[str, str | None]:
    workspace = mapping.workspace
    return mapping_snapshot(mapping.group_name, mapping.role, "api", workspace.name if workspace is not None else None)


def list_mappings() -> list[dict[str, str | None]]:
    """Every mapping in force: the API's global ones, then the settings' for groups the API does not
    map globally, then the per-workspace ones (by group, then workspace)."""
    stored = GroupRoleMapping.objects.select_related("workspace").order_by("group_name", "workspace__name")
    global_ = {m.group_name: m for m in stored if m.workspace_id is None}
    rows = [snapshot_of(m) for m in global_.values()]
    rows += [
        mapping_snapshot(g, r, "settings") for g, r in sorted(settings.OIDC_GROUP_ROLES.items()) if g not in global_
    ]
    rows += [snapshot_of(m) for m in stored if m.workspace_id is not None]
    return rows


def _group_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 150:
        raise InvalidParameterValue("group must be a string of 1–150 characters")
    return value


def _workspace(value: object) -> Workspace | None:
    """The workspace a mapping is for: None (global) or an existing workspace's name (404 else)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 63:
        raise InvalidParameterValue("workspace must be a workspace's name (or null for a global mapping)")
    found = ensure_local() if value == LOCAL_WORKSPACE else Workspace.objects.filter(name=value).first()
    if found is None:
        raise ResourceDoesNotExist(f"Workspace '{value}' does not exist")
    return found


def _role(value: object, workspace: Workspace | None) -> str:
    if workspace is not None:
        if value == Role.ADMIN:
            raise InvalidParameterValue("admin is a global role only: in a workspace, map viewer, editor or approver")
        if not isinstance(value, str) or value not in WorkspaceRole.values:
            raise InvalidParameterValue(f"role must be one of {', '.join(WorkspaceRole.values)}")
        return value
    if not isinstance(value, str) or value not in Role.values or not value:
        raise InvalidParameterValue(f"role must be one of {', '.join(r for r in Role.values if r)}")
    return value


def _mappings(name: str, workspace: Workspace | None) -> QuerySet[GroupRoleMapping]:
    return GroupRoleMapping.objects.filter(group_name=name, workspace=workspace).select_related("workspace")


def set_mapping(*, actor: User, group_name: object, role: object, workspace: object = None) -> GroupRoleMapping:
    """Map a provider group to a role, globally or (``workspace``) in one workspace. Changing a
    per-workspace mapping's role changes the grants it gave at once."""
    name = _group_name(group_name)
    where = _workspace(workspace)
    role_value = _role(role, where)
    with transaction.atomic():
        before = _mappings(name, where).select_for_update(of=("self",)).first()
        if before is None:
            mapping = GroupRoleMapping.objects.create(group_name=name, role=role_value, workspace=where)
        else:
            mapping = before
            shown_before = snapshot_of(before)
            mapping.role = role_value
            mapping.save(update_fields=["role"])
            if where is not None and WorkspaceGrant.objects.filter(mapping=mapping).update(role=role_value):
                access_generation.bump()  # the grants it gave changed role
        audit.record(
            actor=actor,
            action="sso.group_role.set",
            object_type="group_role_mapping",
            object_id=str(mapping.pk),
            object_name=name,
            before=shown_before if before is not None else None,
            after=snapshot_of(mapping),
        )
    return mapping


def delete_mapping(*, actor: User, group_name: str, workspace: object = None) -> None:
    """Remove a group's global mapping, or (``workspace``) its mapping there with the grants it gave."""
    where = _workspace(workspace)
    with transaction.atomic():
        mapping = _mappings(group_name, where).select_for_update(of=("self",)).first()
        if mapping is None:
            in_workspace = f" in workspace '{where.name}'" if where is not None else ""
            raise ResourceDoesNotExist(f"No role is mapped to group '{group_name}'{in_workspace}")
        audit.record(
            actor=actor,
            action="sso.group_role.delete",
            object_type="group_role_mapping",
            object_id=str(mapping.pk),
            object_name=group_name,
            before=snapshot_of(mapping),
        )
        if mapping.grants.exists():
            access_generation.bump()  # its grants go with it
        mapping.delete()


def role_for_groups(groups: Iterable[str]) -> str:
    """The highest global role mapped to any of the groups; none when no group is mapped."""
    names = list(groups)
    stored = dict(
        GroupRoleMapping.objects.filter(group_name__in=names, workspace__isnull=True).values_list("group_name", "role")
    )
    best: str = Role.NONE
    for name in names:
        role = stored.get(name) or settings.OIDC_GROUP_ROLES.get(name) or Role.NONE
        if ROLE_RANK[Role(role)] > ROLE_RANK[Role(best)]:
            best = role
    return best


# --- sign-in -----------------------------------------------------------------------------------------


def claimed_groups(claims: Mapping[str, Any]) -> list[str]:
    """The groups claim as a sorted list of names (a single string is one group; anything that is
    not a string is dropped)."""
    value = claims.get(settings.OIDC_GROUPS_CLAIM)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({g for g in value if isinstance(g, str) and g.strip() and len(g) <= 150})


def _wanted_username(claims: Mapping[str, Any], subject: str) -> str:
    for claim in (settings.OIDC_USERNAME_CLAIM, "preferred_username", "email"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return _NAME_CHARS.sub("-", value.strip())[:120]
    return _NAME_CHARS.sub("-", subject)[:120]


def _linkable(user: User) -> bool:
    return not user.has_usable_password() and not user.is_superuser and not hasattr(user, "sso_identity")


def _user_for_first_sign_in(issuer: str, subject: str, claims: Mapping[str, Any]) -> tuple[User, bool]:
    """(user, created): a provisioned user of the wanted name, else a new user under a free name."""
    users = get_user_model().objects
    wanted = _wanted_username(claims, subject)
    existing = users.filter(username=wanted).first()
    if existing is not None and _linkable(existing):
        return existing, False
    name = wanted
    if existing is not None:
        name = f"{wanted}-{hashlib.sha256(f'{issuer} {subject}'.encode()).hexdigest()[:6]}"
    email = claims.get("email") if isinstance(claims.get("email"), str) else ""
    user = users.create_user(name, (email or "")[:254], None)  # no password: signs in through the provider
    UserProfile.objects.create(user=user, role=Role.NONE)
    return user, True


def _sync_groups(user: User, identity: SsoIdentity, groups: list[str]) -> bool:
    """Memberships follow the claim; returns whether any changed."""
    previous = set(identity.groups or [])
    current = set(user.groups.values_list("name", flat=True))
    to_add = [g for g in groups if g not in current]
    to_remove = (previous - set(groups)) & current
    for name in to_add:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    if to_remove:
        user.groups.remove(*Group.objects.filter(name__in=to_remove))
    return bool(to_add or to_remove)


def _mapped_roles(grants: Iterable[WorkspaceGrant]) -> dict[str, str]:
    """Workspace name → the highest role these grants give there (for the audit row)."""
    roles: dict[str, str] = {}
    for grant in grants:
        name = grant.workspace.name
        roles[name] = grant.role if ROLE_RANK[grant.role] > ROLE_RANK[roles.get(name, Role.NONE)] else roles[name]
    return dict(sorted(roles.items()))


def _sync_workspace_grants(user: User, groups: list[str]) -> tuple[dict[str, str], dict[str, str]] | None:
    """The grants per-workspace mappings give follow the claim (step 4); (before, after) by
    workspace when they changed, else None."""
    wanted = {
        m.pk: m
        for m in GroupRoleMapping.objects.filter(group_name__in=groups, workspace__isnull=False).select_related(
            "workspace"
        )
    }
    have = list(WorkspaceGrant.objects.filter(user=user, mapping__isnull=False).select_related("workspace"))
    before = _mapped_roles(have)
    stale = [g.pk for g in have if g.mapping_id not in wanted or g.role != wanted[g.mapping_id].role]
    kept = {g.mapping_id for g in have if g.pk not in stale}
    if stale:
        WorkspaceGrant.objects.filter(pk__in=stale).delete()
    added = [
        WorkspaceGrant(workspace=m.workspace, user=user, role=m.role, mapping=m)
        for pk, m in wanted.items()
        if pk not in kept
    ]
    WorkspaceGrant.objects.bulk_create(added)
    if not stale and not added:
        return None
    return before, _mapped_roles(
        WorkspaceGrant.objects.filter(user=user, mapping__isnull=False).select_related("workspace")
    )


def sign_in(*, issuer: str, claims: Mapping[str, Any]) -> User:
    """The user for claims from a verified ID token (see the module's docstring)."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise SignInRefused("the ID token has no usable subject")
    groups = claimed_groups(claims)
    try:
        with transaction.atomic():
            identity = (
                SsoIdentity.objects.select_for_update()
                .select_related("user")
                .filter(issuer=issuer, subject=subject)
                .first()
            )
            created = False
            if identity is None:
                user, created = _user_for_first_sign_in(issuer, subject, claims)
                identity = SsoIdentity.objects.create(user=user, issuer=issuer, subject=subject, groups=[])
                if created:
                    audit.record(
                        actor=None,
                        action="user.create",
                        object_type="user",
                        object_id=str(user.pk),
                        object_name=user.get_username(),
                        after={**user_snapshot(user), "sso_issuer": issuer},
                    )
            user = identity.user
            if not user.is_active:
                raise SignInRefused(f"user '{user.get_username()}' is deactivated")
            changed = _sync_groups(user, identity, groups)
            before = user_snapshot(user)
            role = role_for_groups(groups)
            if global_role(user) != role and not user.is_superuser:
                UserProfile.objects.update_or_create(user=user, defaults={"role": role})
                user = get_user_model().objects.get(pk=user.pk)  # a fresh profile for global_role
                audit.record(
                    actor=None,
                    action="user.role",
                    object_type="user",
                    object_id=str(user.pk),
                    object_name=user.get_username(),
                    before=before,
                    after={**user_snapshot(user), "from_groups": groups},
                )
                changed = True
            workspace_roles = _sync_workspace_grants(user, groups)
            if workspace_roles is not None:
                audit.record(
                    actor=None,
                    action="user.workspace_roles",
                    object_type="user",
                    object_id=str(user.pk),
                    object_name=user.get_username(),
                    before={"workspace_roles": workspace_roles[0]},
                    after={"workspace_roles": workspace_roles[1], "from_groups": groups},
                )
                changed = True
            identity.groups = groups
            identity.last_sign_in_at = timezone.now()
            identity.save(update_fields=["groups", "last_sign_in_at"])
            audit.record(
                actor=user,
                action="auth.login",
                object_type="user",
                object_id=str(user.pk),
                object_name=user.get_username(),
                after={"method": "sso", "issuer": issuer, "groups": groups, "role": global_role(user)},
            )
            if changed:
                access_generation.bump()  # gateways drop cached levels: groups, role or grants changed
    except IntegrityError:
        # Two first sign-ins of one identity at once: the other created it; this one may retry.
        raise SignInRefused("a sign-in of this identity was in progress; try again") from None
    return user


def record_failure(address: str, *, reason: str) -> None:
    """A failed single sign-on: counted against the address with failed passwords and bad tokens,
    and audited (``auth.failed``, object type ``sso``) once per address and window. ``reason`` is
    ours to write (what failed), never a token or a code."""
    auth_throttle.record_failure(address, kind="sso", tried=reason)


def require_admin(user: User) -> None:
    if global_role(user) != Role.ADMIN:
        raise PermissionDenied("This needs the admin role")
