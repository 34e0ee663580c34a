"""The secrets store (Databricks' Secrets API): scopes, encrypted secrets, and scope ACLs.

A secret's value is only ever stored encrypted (``endpoints_app.encryption``); no API returns it.
Endpoints refer to it as ``{{secrets/<scope>/<key>}}`` and the gateway resolves it at serving time.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class SecretBackendType(models.TextChoices):
    DATABRICKS = "DATABRICKS"  # stored in our own database (Azure Key Vault scopes are not supported)


class SecretPermission(models.TextChoices):
    """Ordered: MANAGE includes WRITE, which includes READ."""

    READ = "READ"  # list the keys; reference the secrets from an endpoint
    WRITE = "WRITE"  # … and put and delete secrets
    MANAGE = "MANAGE"  # … and change the ACLs and delete the scope


class SecretScope(models.Model):
    name = models.CharField(max_length=128, unique=True)
    backend_type = models.CharField(
        max_length=16, choices=SecretBackendType.choices, default=SecretBackendType.DATABRICKS
    )
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # System-owned: holds the credentials that endpoints were given as ``*_plaintext``. It has no
    # ACLs of its own, so only admins see it; users cannot create or take over such a scope.
    managed = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Secret(models.Model):
    scope = models.ForeignKey(SecretScope, on_delete=models.CASCADE, related_name="secrets")
    key = models.CharField(max_length=128)
    # The value, encrypted (a Fernet token: authenticated, with its own random IV).
    encrypted_value = models.BinaryField()
    # Epoch milliseconds, strictly increasing per key on every put, so that it also versions the
    # value (the decrypted-value cache is keyed by it).
    last_updated_timestamp = models.BigIntegerField()
    # Who last put it. In a managed scope that user may reference the secret (check_can_read).
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="unique_secret_scope_key")]

    def __str__(self) -> str:
        return f"{self.scope_id}/{self.key}"


class SecretAcl(models.Model):
    """One principal's permission on a scope: a user name or a group name (``users`` = everyone)."""

    scope = models.ForeignKey(SecretScope, on_delete=models.CASCADE, related_name="acls")
    principal = models.CharField(max_length=255)
    permission = models.CharField(max_length=8, choices=SecretPermission.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "principal"], name="unique_secret_acl_principal")]
        indexes = [
            # list_scopes: "which scopes name this user or one of their groups".
            models.Index(fields=["principal"], name="secret_acl_principal_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.principal}: {self.permission} on {self.scope_id}"
