"""Personal access tokens (``/api/2.0/modelfleet/tokens``): the hint, never the token or its digest."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import AccessToken


def serialize_token(t: AccessToken) -> dict[str, Any]:
    return {
        "id": t.pk,
        "user": t.user.get_username(),
        "hint": t.hint,
        "comment": t.comment,
        "created_at": ms(t.created_at),
        "last_used_at": ms(t.last_used_at),
        "revoked": t.revoked_at is not None,
    }
