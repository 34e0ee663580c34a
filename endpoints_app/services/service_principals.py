"""Service principals: identities for automation that sign in with OAuth machine-to-machine.

A principal is a user row of its own (``ServicePrincipal.user``), so grants, groups, global roles,
the gateway's caches and the audit log treat it exactly as a person: it has its own rights and no
others. Its user name is its application id (a UUID: the OAuth ``client_id``, and the
``service_principal_name`` of the permissions API, as in Databricks); it has no password. It signs
in only by exchanging one of its secrets at ``/oidc/v1/token`` (``services.oauth``) for a workspace
token that lives an hour.

Secrets are shown once, at creation, and stored as SHA-256 digests. Deleting a secret ends every
token exchanged for it; deleting the principal deletes its user row (its grants, secrets and
tokens with it), and both tell every gateway process at once (``access_generation``). Creating a
principal, creating or deleting a secret and deleting a principal are audit events; so is each
token the token endpoint issues (``oauth.token``).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction

from endpoints_app import access_generation, audit
from endpoints_app.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from endpoints_app.models import Role, ScimUser, ServicePrincipal, ServicePrincipalSecret, UserProfile
from endpoints_app.models.tokens import generate_secret, hash_token

MAX_DISPLAY_NAME = 255
# Secrets per principal: enough to rotate (create the new one, move clients, delete the old).
MAX_SECRETS = 5


def snapshot(principal: ServicePrincipal) -> dict[str, Any]:
    """What the audit log keeps of a principal (never a secret)."""
    profile = UserProfile.objects.filter(user=principal.user).first()
    return {
        "application_id": str(principal.application_id),
        "display_name": principal.display_name,
        "role": profile.role if profile is not None else Role.NONE,
    }


def get_principal(application_id: str) -> ServicePrincipal:
    """The principal with this application id, or RESOURCE_DOES_NOT_EXIST (also for text that is no UUID)."""
    try:
        parsed = uuid.UUID(application_id)
    except (ValueError, AttributeError, TypeError):
        parsed = None
    principal = (
        ServicePrincipal.objects.select_related("user").filter(application_id=parsed).first() if parsed else None
    )
    if principal is None:
        raise ResourceDoesNotExist(f"Service principal {str(application_id)[:64]} does not exist")
    return principal


def _display_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_DISPLAY_NAME or "\x00" in value:
        raise InvalidParameterValue(f"display_name must be a non-empty string of at most {MAX_DISPLAY_NAME} characters")
    return value.strip()


def _role(value: object) -> str:
    if value is None:
        return Role.NONE
    if value not in Role.values:
        raise InvalidParameterValue(f"role must be one of {', '.join(repr(r) for r in Role.values)}")
    return str(value)


def create_principal(
    *,
    actor: User,
    display_name: object,
    role: object = None,
    application_id: uuid.UUID | None = None,
    with_secret: bool = True,
) -> tuple[ServicePrincipal, str]:
    """A new principal, with one secret unless ``with_secret`` is false (SCIM provisioning: an
    admin adds one later); returns the principal and the raw secret (its only copy, "" without).
    ``role`` is its global role (none by default: it sees only what it is granted);
    ``application_id`` one the identity provider chose (Microsoft Entra's), else a new one."""
    name, role_value = _display_name(display_name), _role(role)
    application_id = application_id or uuid.uuid4()
    if ServicePrincipal.objects.filter(application_id=application_id).exists() or (
        get_user_model().objects.filter(username=str(application_id)).exists()
    ):
        raise ResourceAlreadyExists(f"A service principal with application id {application_id} exists")
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=str(application_id), first_name=name[:150])
        user.set_unusable_password()  # never signs in with a password: only with its secrets
        user.save(update_fields=["password"])
        UserProfile.objects.create(user=user, role=role_value)
        principal = ServicePrincipal.objects.create(user=user, application_id=application_id, display_name=name)
        audit.record(
            actor=actor,
            action="service_principal.create",
            object_type="service_principal",
            object_id=str(application_id),
            object_name=name,
            after=snapshot(principal),
        )
        raw = _add_secret(actor=actor, principal=principal)[1] if with_secret else ""
    return principal, raw


def external_id(principal: ServicePrincipal) -> str:
    """The identity provider's id for the principal (SCIM's ``externalId``; "" when none)."""
    return ScimUser.objects.filter(user_id=principal.user_id).values_list("external_id", flat=True).first() or ""


def update_principal(
    *, actor: User, principal: ServicePrincipal, display_name: object, active: bool, external: str | None = None
) -> None:
    """A new display name (and identity provider's id, unless ``external`` is None), and
    deactivation (every token of the principal stops at once, in every process; its secrets sign
    in again only once it is reactivated) or reactivation."""
    name = _display_name(display_name)
    user = principal.user
    old_external = external_id(principal)
    new_external = old_external if external is None else external
    if len(new_external) > 255:
        raise InvalidParameterValue("externalId must be at most 255 characters")
    if (name, active, new_external) == (principal.display_name, user.is_active, old_external):
        return
    with transaction.atomic():
        before = {**snapshot(principal), "active": user.is_active, "external_id": old_external}
        principal.display_name = name
        principal.save(update_fields=["display_name"])
        if new_external != old_external:
            ScimUser.objects.update_or_create(user=user, defaults={"external_id": new_external})
        if active != user.is_active:
            user.is_active = active
            user.save(update_fields=["is_active"])
            access_generation.bump()
        audit.record(
            actor=actor,
            action="service_principal.update",
            object_type="service_principal",
            object_id=str(principal.application_id),
            object_name=name,
            before=before,
            after={**snapshot(principal), "active": active, "external_id": new_external},
        )


def create_secret(*, actor: User, principal: ServicePrincipal) -> tuple[ServicePrincipalSecret, str]:
    """Another secret for ``principal`` (to rotate); the raw secret is returned once."""
    with transaction.atomic():
        # Lock the principal so two concurrent creations cannot both pass the limit.
        ServicePrincipal.objects.select_for_update().filter(pk=principal.pk).first()
        if ServicePrincipalSecret.objects.filter(principal=principal).count() >= MAX_SECRETS:
            raise InvalidParameterValue(
                f"A service principal has at most {MAX_SECRETS} secrets: delete one before creating another"
            )
        return _add_secret(actor=actor, principal=principal)


def _add_secret(*, actor: User, principal: ServicePrincipal) -> tuple[ServicePrincipalSecret, str]:
    raw = generate_secret()
    secret = ServicePrincipalSecret.objects.create(principal=principal, digest=hash_token(raw), hint=raw[:9])
    audit.record(
        actor=actor,
        action="service_principal.secret_create",
        object_type="service_principal",
        object_id=str(principal.application_id),
        object_name=principal.display_name,
        after={"secret_id": secret.pk, "hint": secret.hint},
    )
    return secret, raw


def delete_secret(*, actor: User, principal: ServicePrincipal, secret_id: int) -> None:
    """The secret stops working, and so does every token exchanged for it, in every process at once."""
    with transaction.atomic():
        secret = ServicePrincipalSecret.objects.filter(pk=secret_id, principal=principal).first()
        if secret is None:
            raise ResourceDoesNotExist(
                f"Secret {secret_id} of service principal {principal.application_id} does not exist"
            )
        secret.delete()
        audit.record(
            actor=actor,
            action="service_principal.secret_delete",
            object_type="service_principal",
            object_id=str(principal.application_id),
            object_name=principal.display_name,
            before={"secret_id": secret_id, "hint": secret.hint},
        )
        access_generation.bump()  # gateways forget the tokens it gave on commit


def delete_principal(*, actor: User, principal: ServicePrincipal) -> None:
    """The principal, its secrets, its grants and its tokens are gone; every gateway process
    forgets its cached tokens and levels on commit."""
    with transaction.atomic():
        before = snapshot(principal)
        principal.user.delete()  # cascades: the principal, its secrets, profile, grants and tokens
        audit.record(
            actor=actor,
            action="service_principal.delete",
            object_type="service_principal",
            object_id=before["application_id"],
            object_name=before["display_name"],
            before=before,
        )
        access_generation.bump()
