"""An endpoint's AI-gateway settings (reference §2.9): guardrails, rate limits, usage tracking,
fallbacks and inference tables. ``validation.parse_ai_gateway`` checks the block (in create and in
``PUT …/ai-gateway``); ``update_ai_gateway`` is the one state change, shared by the API, the CLI
(through the API), the dashboard and approved change requests.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from endpoints_app import audit
from endpoints_app.models import Endpoint
from endpoints_app.services.endpoints import get_endpoint_for_update
from endpoints_app.validation import parse_ai_gateway


def update_ai_gateway(*, actor: AbstractBaseUser | None, endpoint: Endpoint, config: dict[str, Any] | None) -> Endpoint:
    """Store new AI-gateway settings on a locked endpoint (the caller holds the row lock, having
    checked If-Match); the gateway picks them up with its next route-table refresh."""
    before = endpoint.ai_gateway
    endpoint.ai_gateway = config
    endpoint.save(update_fields=["ai_gateway", "updated_at"])
    audit.record(
        actor=actor,
        action="endpoint.update_ai_gateway",
        object_type="endpoint",
        object_id=endpoint.id,
        object_name=endpoint.name,
        before={"ai_gateway": before},
        after={"ai_gateway": config},
    )
    return endpoint


def put_ai_gateway(
    *, actor: AbstractBaseUser | None, name: str, raw: Any, if_match: str | None = None
) -> dict[str, Any] | None:
    """``PUT …/ai-gateway``: validate against the current settings, then store; returns what is stored."""
    with transaction.atomic():
        endpoint = get_endpoint_for_update(name, if_match=if_match)
        config = parse_ai_gateway(raw, current=endpoint.ai_gateway if isinstance(endpoint.ai_gateway, dict) else None)
        update_ai_gateway(actor=actor, endpoint=endpoint, config=config)
    return config
