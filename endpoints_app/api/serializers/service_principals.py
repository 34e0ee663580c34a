"""Service principals (``/api/2.0/modelfleet/service-principals``): never a secret or its digest,
except the new secret in the answer that created it."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import ServicePrincipal, ServicePrincipalSecret


def serialize_secret(s: ServicePrincipalSecret) -> dict[str, Any]:
    return {"id": s.pk, "hint": s.hint, "created_at": ms(s.created_at), "last_used_at": ms(s.last_used_at)}


def serialize_principal(p: ServicePrincipal, role: str) -> dict[str, Any]:
    """``p`` with its ``secrets`` prefetched and ``role`` its global role."""
    return {
        "application_id": str(p.application_id),
        "display_name": p.display_name,
        "role": role,
        "created_at": ms(p.created_at),
        "secrets": [serialize_secret(s) for s in p.secrets.all()],
    }
