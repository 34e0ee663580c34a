"""Personal access tokens and service principals' OAuth secrets. Only a SHA-256 digest is stored;
the token or secret is shown once."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models

TOKEN_PREFIX = "mf-"
SECRET_PREFIX = "mfsp-"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(20)


def generate_secret() -> str:
    """An OAuth client secret: told apart from a personal access token by its prefix, so a secret
    is never accepted as a bearer token (it is only ever exchanged at the token endpoint)."""
    return SECRET_PREFIX + secrets.token_hex(24)


class AccessToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    digest = models.CharField(max_length=64, unique=True)  # lookup by digest on every request
    hint = models.CharField(max_length=16)  # the first characters, to tell tokens apart in lists
    comment = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # None: never expires. Checked on every use (services.tokens); the gateway caches a token no
    # longer than this (gateway.app), so an expired token is refused at once everywhere.
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.hint}… ({self.user})"


class ServicePrincipal(models.Model):
    """An identity for automation (Databricks' service principal): a user row of its own, so grants,
    groups, roles and audit treat it as any user, named by its ``application_id`` (the OAuth client
    id, and the ``service_principal_name`` of the permissions API). It has no password; it signs in
    only by exchanging one of its secrets at ``/oidc/v1/token`` for a short-lived token."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="service_principal")
    application_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)  # the token exchange's lookup
    display_name = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["display_name", "id"]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.application_id})"


class ServicePrincipalSecret(models.Model):
    """One OAuth client secret of a principal: a SHA-256 digest; deleting the row (or the principal)
    ends every token exchanged for it."""

    principal = models.ForeignKey(ServicePrincipal, on_delete=models.CASCADE, related_name="secrets")
    digest = models.CharField(max_length=64, unique=True)  # the token exchange looks the secret up by digest
    hint = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.hint}… ({self.principal})"
