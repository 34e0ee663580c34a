"""Users and their global roles (administration)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from endpoints_app import access_generation, audit
from endpoints_app.access import global_role
from endpoints_app.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from endpoints_app.models import AccessToken, Role, ScimGroup, ScimUser, UserProfile

EMAIL_MAX_CHARS = 254  # django.contrib.auth's User.email


def get_user(username: str) -> User:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ResourceDoesNotExist(f"User '{username}' does not exist")
    return user


def _role(value: object) -> str:
    if value is None:
        return Role.NONE
    if value not in Role.values:
        raise InvalidParameterValue(f"role must be one of {', '.join(r or 'none' for r in Role.values)}")
    return str(value)


def user_snapshot(user: User) -> dict:
    return {"username": user.get_username(), "email": user.email, "role": global_role(user), "active": user.is_active}


def check_password(password: str, *, username: str, email: str = "") -> None:
    """Django's AUTH_PASSWORD_VALIDATORS (length, common, numeric, like the username), as a 400
    listing every validator's message: the one rule for every place a password is set."""
    try:
        validate_password(password, user=get_user_model()(username=username, email=email or ""))
    except ValidationError as exc:
        raise InvalidParameterValue("password is too weak: " + " ".join(exc.messages)) from None


def create_user(
    *, actor: User, username: str, email: str = "", role: object = None, password: str | None = None
) -> User:
    if (
        not username
        or len(username) > 150
        or not username.replace("-", "").replace("_", "").replace(".", "").replace("@", "").replace("+", "").isalnum()
    ):
        # Django's own rule: an address with a tag (first.last+ml@example.com) is a user name, as
        # identity providers send it over SCIM and single sign-on takes it from the email claim.
        raise InvalidParameterValue("username must be 1–150 letters, digits and . _ - @ +")
    if len(email) > EMAIL_MAX_CHARS:  # the column's length (PostgreSQL refuses longer, SQLite would keep it)
        raise InvalidParameterValue(f"email must be at most {EMAIL_MAX_CHARS} characters")
    role_value = _role(role)
    if password:
        check_password(password, username=username, email=email)
    try:
        with transaction.atomic():
            user = get_user_model().objects.create_user(username, email or "", password or None)
            if not password:
                user.set_unusable_password()  # API-only users sign in with tokens
                user.save(update_fields=["password"])
            UserProfile.objects.create(user=user, role=role_value)
            audit.record(
                actor=actor,
                action="user.create",
                object_type="user",
                object_id=str(user.pk),
                object_name=username,
                after=user_snapshot(user),
            )
    except IntegrityError:
        raise ResourceAlreadyExists(f"User '{username}' already exists") from None
    return user


def set_role(*, actor: User, user: User, role: object) -> None:
    role_value = _role(role)
    with transaction.atomic():
        before = user_snapshot(user)
        UserProfile.objects.update_or_create(user=user, defaults={"role": role_value})
        user.refresh_from_db()
        audit.record(
            actor=actor,
            action="user.role",
            object_type="user",
            object_id=str(user.pk),
            object_name=user.get_username(),
            before=before,
            after=user_snapshot(user),
        )
        access_generation.bump()  # the role sets a baseline level everywhere: gateways drop cached levels


def end_sessions(user: User) -> int:
    """Delete the user's dashboard sessions (the database session store): they are signed out now,
    not at their next request, and stay signed out if the account is reactivated. Sessions name
    their user only inside their encoded data, so every live session is read: one pass per
    deactivation, not per request."""
    mine = [
        s.pk
        for s in Session.objects.filter(expire_date__gt=timezone.now()).iterator()
        if s.get_decoded().get("_auth_user_id") == str(user.pk)
    ]
    Session.objects.filter(pk__in=mine).delete()
    return len(mine)


def deactivate(*, actor: User, user: User) -> None:
    """The user can no longer sign in; their dashboard sessions end and every token they hold is
    revoked (so reactivating them later brings none back); every gateway process drops the user's
    cached tokens on commit."""
    with transaction.atomic():
        before = user_snapshot(user)
        user.is_active = False
        user.save(update_fields=["is_active"])
        live = AccessToken.objects.filter(user=user, revoked_at__isnull=True)
        hints = sorted(live.values_list("hint", flat=True))
        live.update(revoked_at=timezone.now())
        sessions = end_sessions(user)
        audit.record(
            actor=actor,
            action="user.deactivate",
            object_type="user",
            object_id=str(user.pk),
            object_name=user.get_username(),
            before=before,
            after={**user_snapshot(user), "revoked_tokens": hints, "ended_sessions": sessions},
        )
        access_generation.bump()


def activate(*, actor: User, user: User) -> None:
    """The user may sign in again (with new tokens: deactivation revoked the old ones)."""
    with transaction.atomic():
        before = user_snapshot(user)
        user.is_active = True
        user.save(update_fields=["is_active"])
        audit.record(
            actor=actor,
            action="user.activate",
            object_type="user",
            object_id=str(user.pk),
            object_name=user.get_username(),
            before=before,
            after=user_snapshot(user),
        )
        access_generation.bump()


def directory_snapshot(user: User) -> dict:
    """The user's name, address and identity-provider attributes, for before/after."""
    scim = ScimUser.objects.filter(user=user).first()
    return {
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "display_name": scim.display_name if scim else "",
        "external_id": scim.external_id if scim else "",
    }


def update_user(
    *,
    actor: User,
    user: User,
    email: str,
    first_name: str,
    last_name: str,
    display_name: str,
    external_id: str,
) -> None:
    """Set the user's name, address and identity-provider attributes (SCIM), audited when any changed."""
    for label, value, limit in (
        ("email", email, EMAIL_MAX_CHARS),
        ("givenName", first_name, 150),
        ("familyName", last_name, 150),
        ("displayName", display_name, 255),
        ("externalId", external_id, 255),
    ):
        if len(value) > limit:  # the column's length (PostgreSQL refuses longer)
            raise InvalidParameterValue(f"{label} must be at most {limit} characters")
    with transaction.atomic():
        before = directory_snapshot(user)
        user.email, user.first_name, user.last_name = email, first_name, last_name
        user.save(update_fields=["email", "first_name", "last_name"])
        ScimUser.objects.update_or_create(
            user=user, defaults={"display_name": display_name, "external_id": external_id}
        )
        after = directory_snapshot(user)
        if after != before:
            audit.record(
                actor=actor,
                action="user.update",
                object_type="user",
                object_id=str(user.pk),
                object_name=user.get_username(),
                before=before,
                after=after,
            )


def delete_user(*, actor: User, user: User) -> None:
    """Remove the user: their tokens, grants, memberships and sessions go with them; what they did
    stays in the audit log and history under their name."""
    if user.pk == actor.pk:
        raise InvalidParameterValue("You cannot delete yourself")
    with transaction.atomic():
        before = {**user_snapshot(user), **directory_snapshot(user)}
        user_id, name = user.pk, user.get_username()
        end_sessions(user)
        user.delete()
        audit.record(
            actor=actor,
            action="user.delete",
            object_type="user",
            object_id=str(user_id),
            object_name=name,
            before=before,
        )
        access_generation.bump()  # cached tokens, names and grants of the user go everywhere at once


def create_group(*, actor: User, name: str) -> Group:
    if not name or len(name) > 150:
        raise InvalidParameterValue("group name must be 1–150 characters")
    try:
        with transaction.atomic():
            group = Group.objects.create(name=name)
            audit.record(
                actor=actor, action="group.create", object_type="group", object_id=str(group.pk), object_name=name
            )
    except IntegrityError:
        raise ResourceAlreadyExists(f"Group '{name}' already exists") from None
    return group


def get_group(name: str) -> Group:
    group = Group.objects.filter(name=name).first()
    if group is None:
        raise ResourceDoesNotExist(f"Group '{name}' does not exist")
    return group


def set_membership(*, actor: User, group: Group, user: User, member: bool) -> None:
    with transaction.atomic():
        if member:
            user.groups.add(group)
        else:
            user.groups.remove(group)
        audit.record(
            actor=actor,
            action="group.add_member" if member else "group.remove_member",
            object_type="group",
            object_id=str(group.pk),
            object_name=group.name,
            after={"user": user.get_username()},
        )
        access_generation.bump()  # grants to the group (and group rate limits) follow membership at once


def group_snapshot(group: Group) -> dict:
    scim = ScimGroup.objects.filter(group=group).first()
    return {"name": group.name, "external_id": scim.external_id if scim else ""}


def update_group(*, actor: User, group: Group, name: str, external_id: str) -> None:
    """Rename the group and set its identity-provider id (SCIM); grants follow the group, not its name."""
    if not name or len(name) > 150:
        raise InvalidParameterValue("group name must be 1–150 characters")
    if len(external_id) > 255:
        raise InvalidParameterValue("externalId must be at most 255 characters")
    before = group_snapshot(group)
    try:
        with transaction.atomic():
            if group.name != name:
                group.name = name
                group.save(update_fields=["name"])
            ScimGroup.objects.update_or_create(group=group, defaults={"external_id": external_id})
            after = group_snapshot(group)
            if after != before:
                audit.record(
                    actor=actor,
                    action="group.update",
                    object_type="group",
                    object_id=str(group.pk),
                    object_name=name,
                    before=before,
                    after=after,
                )
                access_generation.bump()  # caches hold group names (rate limits, grants by name)
    except IntegrityError:
        group.name = before["name"]
        raise ResourceAlreadyExists(f"Group '{name}' already exists") from None


def set_members(*, actor: User, group: Group, users: list[User]) -> None:
    """Make ``users`` exactly the group's members, in one audit row naming who came and went."""
    with transaction.atomic():
        current = {u.pk: u for u in group.user_set.all()}
        wanted = {u.pk: u for u in users}
        added = [wanted[pk] for pk in wanted.keys() - current.keys()]
        removed = [current[pk] for pk in current.keys() - wanted.keys()]
        if not added and not removed:
            return
        group.user_set.add(*added)
        group.user_set.remove(*removed)
        audit.record(
            actor=actor,
            action="group.set_members",
            object_type="group",
            object_id=str(group.pk),
            object_name=group.name,
            after={
                "added": sorted(u.get_username() for u in added),
                "removed": sorted(u.get_username() for u in removed),
            },
        )
        access_generation.bump()  # grants to the group (and group rate limits) follow membership at once


def delete_group(*, actor: User, group: Group) -> None:
    """Remove the group and its grants (members lose what it gave them at once)."""
    with transaction.atomic():
        before = {**group_snapshot(group), "members": sorted(u.get_username() for u in group.user_set.all())}
        group_id = group.pk
        group.delete()
        audit.record(
            actor=actor,
            action="group.delete",
            object_type="group",
            object_id=str(group_id),
            object_name=before["name"],
            before=before,
        )
        access_generation.bump()
