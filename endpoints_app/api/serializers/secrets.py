"""Databricks' Secrets API shapes (reference §7). No shape here holds a secret's value."""

from __future__ import annotations

from typing import Any

from endpoints_app.models import SecretAcl, SecretScope
from endpoints_app.services.secrets import SecretMetadata


def serialize_scope(scope: SecretScope) -> dict[str, str]:
    return {"name": scope.name, "backend_type": scope.backend_type}


def serialize_secret(secret: SecretMetadata) -> dict[str, Any]:
    return {"key": secret.key, "last_updated_timestamp": secret.last_updated_timestamp}


def serialize_acl(acl: SecretAcl) -> dict[str, str]:
    return {"principal": acl.principal, "permission": acl.permission}
