"""Users and their global roles (administration)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from endpoints_app import access_generation, audit
from endpoints_app.access import role_of
from endpoints_app.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from endpoints_app.models import Role, UserProfile


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
    return {"username": user.get_username(), "email": user.email, "role": role_of(user), "active": user.is_active}


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
        or not username.replace("-", "").replace("_", "").replace(".", "").replace("@", "").isalnum()
    ):
        raise InvalidParameterValue("username must be 1–150 letters, digits and . _ - @")
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


def deactivate(*, actor: User, user: User) -> None:
    """The user can no longer sign in; every token stops working at once (auth checks is_active, and
    every gateway process drops the user's cached tokens on commit)."""
    with transaction.atomic():
        before = user_snapshot(user)
        user.is_active = False
        user.save(update_fields=["is_active"])
        audit.record(
            actor=actor,
            action="user.deactivate",
            object_type="user",
            object_id=str(user.pk),
            object_name=user.get_username(),
            before=before,
            after=user_snapshot(user),
        )
        access_generation.bump()


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
