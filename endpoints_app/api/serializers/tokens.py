"""Personal access tokens (``/api/2.0/modelfleet/tokens``, and Databricks' ``/api/2.0/token/…``
shape): the hint, never the token or its digest. ``expiry_time`` is epoch milliseconds, -1 for a
token that never expires (as Databricks gives it)."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import AccessToken


def _expiry(t: AccessToken) -> int:
    return ms(t.expires_at) or -1


def serialize_token(t: AccessToken) -> dict[str, Any]:
    return {
        "id": t.pk,
        "user": t.user.get_username(),
        "hint": t.hint,
        "comment": t.comment,
        "created_at": ms(t.created_at),
        "last_used_at": ms(t.last_used_at),
        "expiry_time": _expiry(t),
        "revoked": t.revoked_at is not None,
    }


def serialize_token_info(t: AccessToken) -> dict[str, Any]:
    """Databricks' ``PublicTokenInfo``."""
    return {
        "token_id": str(t.pk),
        "creation_time": ms(t.created_at),
        "expiry_time": _expiry(t),
        "comment": t.comment,
    }
