"""The secrets store (Databricks' Secrets API, reference §7) and the helpers endpoints use to refer
to secrets as ``{{secrets/<scope>/<key>}}``.

Who may do what (scope permissions READ < WRITE < MANAGE, who sees which scope, who may refer to
a secret) is decided in ``endpoints_app.access``, with the rules for endpoints and change
requests; every function here asks it first. The creator of a scope gets MANAGE on it. Managed
scopes (``store_plaintext``) hold credentials given to endpoints as ``*_plaintext``.

No function here returns, logs or audits a secret's value. Only ``resolve`` decrypts, for the
gateway.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from endpoints_app import access, access_generation, audit, encryption
from endpoints_app.access import ALL_USERS
from endpoints_app.errors import (
    DomainError,
    InvalidParameterValue,
    ResourceAlreadyExists,
    ResourceConflict,
    ResourceDoesNotExist,
)
from endpoints_app.models import Secret, SecretAcl, SecretBackendType, SecretPermission, SecretScope
from endpoints_app.secret_references import parse_reference, reference

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_VALUE_BYTES = 128 * 1024
MAX_SECRETS_PER_SCOPE = 1000
# Scopes with this prefix belong to Modelfleet (store_plaintext): users cannot create or squat them.
RESERVED_PREFIX = "modelfleet-"
MANAGED_SCOPE = "modelfleet-managed"


class ResourceLimitExceeded(DomainError):
    error_code = "RESOURCE_LIMIT_EXCEEDED"
    status = 400  # not 429: the Databricks SDK would retry that for minutes


@dataclass(frozen=True)
class SecretMetadata:
    key: str
    last_updated_timestamp: int


# -- access (the rules are ``access``'s) --------------------------------------------------------


def _scope(user: User | None, name: str, needed: str, *, lock: bool = False) -> SecretScope:
    """The scope, if the user may do what ``needed`` allows (404 when they cannot see it, else 403)."""
    qs = SecretScope.objects.select_for_update() if lock else SecretScope.objects.all()
    scope = qs.filter(name=name).first() if isinstance(name, str) else None
    access.require_scope(user, scope, name, needed)
    assert scope is not None  # require_scope refused a missing scope
    return scope


# -- validation -------------------------------------------------------------------------------


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidParameterValue(
            f"{what} must be 1–128 characters: letters, digits, dashes, underscores and periods"
        )
    return value


def _permission(value: object) -> str:
    if isinstance(value, str) and value.upper() in SecretPermission.values:
        return value.upper()
    raise InvalidParameterValue("permission must be one of MANAGE, WRITE, READ")


def _value_bytes(*, string_value: object, bytes_value: object) -> bytes:
    """The value to store. Error messages never repeat the input."""
    if (string_value is None) == (bytes_value is None):
        raise InvalidParameterValue("Exactly one of string_value and bytes_value must be given")
    if string_value is not None:
        if not isinstance(string_value, str):
            raise InvalidParameterValue("string_value must be a string")
        try:
            data = string_value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameterValue("string_value is not valid Unicode text") from None
    else:
        if not isinstance(bytes_value, str):
            raise InvalidParameterValue("bytes_value must be a base64 string")
        try:
            data = base64.b64decode(bytes_value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParameterValue("bytes_value must be valid base64") from None
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidParameterValue(
            f"A secret value may be at most {MAX_VALUE_BYTES} bytes (128 KiB); this one is {len(data)} bytes"
        )
    return data


def _principal_exists(principal: str) -> bool:
    return (
        principal == ALL_USERS
        or get_user_model().objects.filter(username=principal).exists()
        or Group.objects.filter(name=principal).exists()
    )


# -- snapshots for the audit log (never a value) ------------------------------------------------


def _scope_snapshot(scope: SecretScope) -> dict[str, Any]:
    return {
        "name": scope.name,
        "backend_type": scope.backend_type,
        "managed": scope.managed,
        "keys": sorted(scope.secrets.values_list("key", flat=True)),
        "acls": {a.principal: a.permission for a in scope.acls.order_by("principal")},
    }


def _audit(actor: User | None, action: str, scope: SecretScope, **values: Any) -> None:
    audit.record(
        actor=actor,
        action=action,
        object_type="secret_scope",
        object_id=str(scope.pk),
        object_name=scope.name,
        **values,
    )


# -- scopes -----------------------------------------------------------------------------------


def create_scope(
    *,
    actor: User,
    scope: object,
    initial_manage_principal: object = None,
    scope_backend_type: object = None,
) -> SecretScope:
    """A new scope; MANAGE goes to the creator, or to every user with ``initial_manage_principal="users"``."""
    access.require_create_scope(actor)
    name = _name(scope, "Scope name")
    backend = str(scope_backend_type or SecretBackendType.DATABRICKS).upper()
    if backend != SecretBackendType.DATABRICKS:
        raise InvalidParameterValue(
            f"scope_backend_type {backend} is not supported: only DATABRICKS-backed scopes can be created"
        )
    if initial_manage_principal not in (None, "", ALL_USERS):
        raise InvalidParameterValue(
            f"initial_manage_principal may only be '{ALL_USERS}' (every user); leave it out to get MANAGE yourself"
        )
    if name.startswith(RESERVED_PREFIX):
        raise InvalidParameterValue(f"Scope names starting with '{RESERVED_PREFIX}' are reserved for Modelfleet")
    manager = ALL_USERS if initial_manage_principal == ALL_USERS else actor.get_username()
    try:
        with transaction.atomic():
            created = SecretScope.objects.create(name=name, backend_type=backend, creator=actor)
            SecretAcl.objects.create(scope=created, principal=manager, permission=SecretPermission.MANAGE)
            _audit(actor, "secret_scope.create", created, after=_scope_snapshot(created))
    except IntegrityError:
        raise ResourceAlreadyExists(f"Scope {name} already exists!") from None
    return created


def delete_scope(*, actor: User, scope: object) -> None:
    """Delete the scope with its secrets and ACLs (MANAGE)."""
    with transaction.atomic():
        found = _scope(actor, _name(scope, "Scope name"), SecretPermission.MANAGE, lock=True)
        before = _scope_snapshot(found)
        _audit(actor, "secret_scope.delete", found, before=before)
        found.delete()
        access_generation.bump()  # gateways drop route tables holding its values on commit


def list_scopes(*, user: User) -> QuerySet[SecretScope]:
    """The scopes the user can see, by name."""
    return access.visible_scopes(user, SecretScope.objects.order_by("name"))


# -- secrets ----------------------------------------------------------------------------------


def _store(
    *, actor: User | None, scope: SecretScope, key: str, value: bytes, managed_by: User | None
) -> Secret:
    """Encrypt and store under a scope row the caller has locked; one audit row (never the value)."""
    now_ms = int(timezone.now().timestamp() * 1000)
    secret = Secret.objects.filter(scope=scope, key=key).first()
    if secret is None:
        if scope.secrets.count() >= MAX_SECRETS_PER_SCOPE:
            raise ResourceLimitExceeded(f"Scope {scope.name} already holds {MAX_SECRETS_PER_SCOPE} secrets, the most")
        before = None
        secret = Secret(scope=scope, key=key)
    else:
        before = {"key": key, "last_updated_timestamp": secret.last_updated_timestamp}
        # Strictly increasing, so that it also versions the value for resolve's cache.
        now_ms = max(now_ms, secret.last_updated_timestamp + 1)
    secret.encrypted_value = encryption.encrypt(value)
    secret.last_updated_timestamp = now_ms
    secret.updated_by = managed_by
    secret.save()
    _audit(actor, "secret.put", scope, before=before, after={"key": key, "last_updated_timestamp": now_ms})
    if before is not None:
        access_generation.bump()  # a rotated credential: gateways drop the old value on commit
    return secret


def put_secret(
    *, actor: User, scope: object, key: object, string_value: object = None, bytes_value: object = None
) -> Secret:
    """Create or overwrite a secret (WRITE): exactly one of ``string_value`` or base64 ``bytes_value``."""
    scope_name = _name(scope, "Scope name")
    key_name = _name(key, "Secret key")
    value = _value_bytes(string_value=string_value, bytes_value=bytes_value)
    with transaction.atomic():
        # The scope row's lock serialises puts in the scope: timestamps and the per-scope limit stay exact.
        found = _scope(actor, scope_name, SecretPermission.WRITE, lock=True)
        return _store(actor=actor, scope=found, key=key_name, value=value, managed_by=actor)


def delete_secret(*, actor: User, scope: object, key: object) -> None:
    """Delete one secret (WRITE)."""
    scope_name = _name(scope, "Scope name")
    key_name = _name(key, "Secret key")
    with transaction.atomic():
        found = _scope(actor, scope_name, SecretPermission.WRITE, lock=True)
        secret = Secret.objects.filter(scope=found, key=key_name).first()
        if secret is None:
            raise ResourceDoesNotExist(f"Secret {key_name} does not exist in scope {scope_name}!")
        _audit(
            actor,
            "secret.delete",
            found,
            before={"key": key_name, "last_updated_timestamp": secret.last_updated_timestamp},
        )
        secret.delete()
        access_generation.bump()  # gateways drop route tables holding its value on commit


def list_secrets(*, user: User, scope: object) -> list[SecretMetadata]:
    """The keys in the scope and when each was last put (READ); never the values."""
    found = _scope(user, _name(scope, "Scope name"), SecretPermission.READ)
    return [
        SecretMetadata(key=k, last_updated_timestamp=t)
        for k, t in found.secrets.order_by("key").values_list("key", "last_updated_timestamp")
    ]


# -- ACLs -------------------------------------------------------------------------------------


def put_acl(*, actor: User, scope: object, principal: object, permission: object) -> SecretAcl:
    """Grant ``principal`` (a user name, a group name, or ``users``) a permission, replacing theirs (MANAGE)."""
    scope_name = _name(scope, "Scope name")
    level = _permission(permission)
    if not isinstance(principal, str) or not principal or len(principal) > 255:
        raise InvalidParameterValue("principal must be a user name or group name")
    with transaction.atomic():
        found = _scope(actor, scope_name, SecretPermission.MANAGE, lock=True)
        if not _principal_exists(principal):
            raise InvalidParameterValue(f"Principal {principal} is not a user or group")
        existing = SecretAcl.objects.filter(scope=found, principal=principal).first()
        before = {"principal": principal, "permission": existing.permission} if existing else None
        acl, _ = SecretAcl.objects.update_or_create(scope=found, principal=principal, defaults={"permission": level})
        _audit(actor, "secret_acl.put", found, before=before, after={"principal": principal, "permission": level})
        access_generation.bump()
    return acl


def delete_acl(*, actor: User, scope: object, principal: object) -> None:
    """Remove a principal's ACL (MANAGE)."""
    scope_name = _name(scope, "Scope name")
    with transaction.atomic():
        found = _scope(actor, scope_name, SecretPermission.MANAGE, lock=True)
        acl = SecretAcl.objects.filter(scope=found, principal=principal).first() if isinstance(principal, str) else None
        if acl is None:
            raise ResourceDoesNotExist(f"No ACL for principal {principal} in scope {scope_name}")
        _audit(actor, "secret_acl.delete", found, before={"principal": acl.principal, "permission": acl.permission})
        acl.delete()
        access_generation.bump()


def get_acl(*, user: User, scope: object, principal: object) -> SecretAcl:
    """One principal's ACL (MANAGE, as in Databricks)."""
    found = _scope(user, _name(scope, "Scope name"), SecretPermission.MANAGE)
    acl = SecretAcl.objects.filter(scope=found, principal=principal).first() if isinstance(principal, str) else None
    if acl is None:
        raise ResourceDoesNotExist(f"No ACL for principal {principal} in scope {found.name}")
    return acl


def list_acls(*, user: User, scope: object) -> list[SecretAcl]:
    """Every ACL of the scope (MANAGE, as in Databricks)."""
    found = _scope(user, _name(scope, "Scope name"), SecretPermission.MANAGE)
    return list(found.acls.order_by("principal"))


# -- system use: endpoints --------------------------------------------------------------------


def store_plaintext(*, user: User | None, scope: str, key: str, value: str) -> str:
    """Store a credential an endpoint was given as ``*_plaintext``; returns its ``{{secrets/…}}`` reference.

    The scope is system-owned (``managed``), created when missing; use ``MANAGED_SCOPE`` or another
    name starting with ``RESERVED_PREFIX`` so that no user can have created it first. ``user`` is
    recorded as the actor and may reference the secret later (``check_can_read``); None is the system.
    """
    scope_name = _name(scope, "Scope name")
    key_name = _name(key, "Secret key")
    data = _value_bytes(string_value=value, bytes_value=None)
    with transaction.atomic():
        found = SecretScope.objects.select_for_update().filter(name=scope_name).first()
        if found is None:
            try:
                with transaction.atomic():
                    found = SecretScope.objects.create(name=scope_name, managed=True)
                    _audit(user, "secret_scope.create", found, after=_scope_snapshot(found))
            except IntegrityError:  # created meanwhile by another request
                found = SecretScope.objects.select_for_update().get(name=scope_name)
        if not found.managed:
            raise ResourceConflict(f"Scope {scope_name} belongs to users, not to Modelfleet: use a managed scope")
        _store(actor=user, scope=found, key=key_name, value=data, managed_by=user)
    return reference(scope_name, key_name)


def delete_managed(*, actor: User | None, references: set[str]) -> int:
    """Delete the managed-scope secrets among ``references`` (an endpoint's plaintext credentials,
    when the endpoint is deleted); references to users' scopes are left alone. Returns how many."""
    deleted = 0
    for text in sorted(references):
        parsed = parse_reference(text)
        if parsed is None:
            continue
        secret = (
            Secret.objects.select_related("scope")
            .filter(scope__name=parsed[0], scope__managed=True, key=parsed[1])
            .first()
        )
        if secret is None:
            continue
        _audit(actor, "secret.delete", secret.scope, before={"key": secret.key})
        secret.delete()
        deleted += 1
    if deleted:
        access_generation.bump()
    return deleted


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str], tuple[int, int, str]] = OrderedDict()
_CACHE_SIZE = 1024


def resolve(*, scope: str, key: str) -> str:
    """The secret's value as text, for the gateway (no user check: check_can_read was asked at config time).

    One indexed query per call; decryption only when the secret changed since the last call (the
    cache is keyed by the row and its strictly increasing ``last_updated_timestamp``). A deleted
    secret raises RESOURCE_DOES_NOT_EXIST at once.
    """
    row = (
        Secret.objects.filter(scope__name=scope, key=key)
        .values_list("pk", "last_updated_timestamp", "encrypted_value")
        .first()
    )
    cache_key = (scope, key)
    if row is None:
        with _cache_lock:
            _cache.pop(cache_key, None)
        raise ResourceDoesNotExist(f"Secret {key} does not exist in scope {scope}!")
    pk, updated, token = row
    with _cache_lock:
        hit = _cache.get(cache_key)
        if hit is not None and hit[:2] == (pk, updated):
            _cache.move_to_end(cache_key)
            return hit[2]
    try:
        text = encryption.decrypt(token, what=f"{scope}/{key}").decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameterValue(
            f"Secret {scope}/{key} holds bytes that are not UTF-8 text, so it cannot be used here"
        ) from None
    with _cache_lock:
        _cache[cache_key] = (pk, updated, text)
        _cache.move_to_end(cache_key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return text
