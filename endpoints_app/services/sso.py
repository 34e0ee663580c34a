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
3. the global role becomes the highest role mapped to the user's provider groups (mappings set
   through the API first, then ``MODELFLEET_OIDC_GROUP_ROLES``); none when no group is mapped.
   The provider is the source of truth: a role set by hand lasts until the next sign-in;
4. audit rows: ``user.create`` on a first sign-in, ``user.role`` when the role changes, and
   ``auth.login`` with the provider, the groups and the role.
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
from django.utils import timezone

from endpoints_app import access_generation, audit, auth_throttle
from endpoints_app.access import role_of
from endpoints_app.errors import InvalidParameterValue, PermissionDenied, ResourceDoesNotExist
from endpoints_app.models import GroupRoleMapping, Role, SsoIdentity, UserProfile
from endpoints_app.services.users import user_snapshot

ROLE_RANK = {Role.NONE: 0, Role.VIEWER: 1, Role.EDITOR: 2, Role.APPROVER: 3, Role.ADMIN: 4}
_NAME_CHARS = re.compile(r"[^\w.@+-]")


class SignInRefused(Exception):
    """A verified identity that may not sign in (deactivated user, unusable claims)."""


# --- password sign-in policy -----------------------------------------------------------------------


def local_login_allowed(username: str | None) -> bool:
    """Password sign-in: everyone's when ``MODELFLEET_LOCAL_LOGIN`` is on; else only the break-glass
    admin's (``MODELFLEET_BREAK_GLASS_ADMIN``), for when the provider is down or misconfigured."""
    return settings.LOCAL_LOGIN or (bool(username) and username == settings.BREAK_GLASS_ADMIN)


# --- group → role mappings ------------------------------------------------------------------------


def mapping_snapshot(group_name: str, role: str, source: str) -> dict[str, str]:
    return {"group": group_name, "role": role, "source": source}


def list_mappings() -> list[dict[str, str]]:
    """Every mapping in force: the API's, then the settings' for groups the API does not map."""
    stored = {m.group_name: m.role for m in GroupRoleMapping.objects.order_by("group_name")}
    rows = [mapping_snapshot(g, r, "api") for g, r in stored.items()]
    rows += [
        mapping_snapshot(g, r, "settings") for g, r in sorted(settings.OIDC_GROUP_ROLES.items()) if g not in stored
    ]
    return rows


def _group_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 150:
        raise InvalidParameterValue("group must be a string of 1–150 characters")
    return value


def set_mapping(*, actor: User, group_name: object, role: object) -> GroupRoleMapping:
    name = _group_name(group_name)
    if role not in Role.values or not role:
        raise InvalidParameterValue(f"role must be one of {', '.join(r for r in Role.values if r)}")
    with transaction.atomic():
        before = GroupRoleMapping.objects.select_for_update().filter(group_name=name).first()
        mapping, _ = GroupRoleMapping.objects.update_or_create(group_name=name, defaults={"role": role})
        audit.record(
            actor=actor,
            action="sso.group_role.set",
            object_type="group_role_mapping",
            object_id=str(mapping.pk),
            object_name=name,
            before=mapping_snapshot(name, before.role, "api") if before else None,
            after=mapping_snapshot(name, mapping.role, "api"),
        )
    return mapping


def delete_mapping(*, actor: User, group_name: str) -> None:
    with transaction.atomic():
        mapping = GroupRoleMapping.objects.select_for_update().filter(group_name=group_name).first()
        if mapping is None:
            raise ResourceDoesNotExist(f"No role is mapped to group '{group_name}'")
        audit.record(
            actor=actor,
            action="sso.group_role.delete",
            object_type="group_role_mapping",
            object_id=str(mapping.pk),
            object_name=group_name,
            before=mapping_snapshot(group_name, mapping.role, "api"),
        )
        mapping.delete()


def role_for_groups(groups: Iterable[str]) -> str:
    """The highest role mapped to any of the groups; none when no group is mapped."""
    names = list(groups)
    stored = dict(GroupRoleMapping.objects.filter(group_name__in=names).values_list("group_name", "role"))
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
            if role_of(user) != role and not user.is_superuser:
                UserProfile.objects.update_or_create(user=user, defaults={"role": role})
                user = get_user_model().objects.get(pk=user.pk)  # a fresh profile for role_of
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
            identity.groups = groups
            identity.last_sign_in_at = timezone.now()
            identity.save(update_fields=["groups", "last_sign_in_at"])
            audit.record(
                actor=user,
                action="auth.login",
                object_type="user",
                object_id=str(user.pk),
                object_name=user.get_username(),
                after={"method": "sso", "issuer": issuer, "groups": groups, "role": role_of(user)},
            )
            if changed:
                access_generation.bump()  # gateways drop cached levels: groups and role changed
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
    if role_of(user) != Role.ADMIN:
        raise PermissionDenied("This needs the admin role")
