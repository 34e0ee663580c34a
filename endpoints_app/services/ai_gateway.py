"""An endpoint's AI-gateway settings (reference §2.9): guardrails, rate limits, usage tracking,
fallbacks and inference tables. ``parse`` validates the block (in create and in
``PUT …/ai-gateway``); ``update_ai_gateway`` is the one state change, shared by the API, the CLI
(through the API), the dashboard and approved change requests.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from endpoints_app import audit
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway import guardrails, ratelimit
from endpoints_app.models import Endpoint

FIELDS = ("guardrails", "inference_table_config", "rate_limits", "usage_tracking_config", "fallback_config")
_UC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")


def _flag_block(raw: Any, where: str, *, required: bool) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{where} must be an object")
    unknown = set(raw) - {"enabled"}
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    enabled = raw.get("enabled")
    if enabled is None and required:
        raise InvalidParameterValue(f"{where}.enabled is required")
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidParameterValue(f"{where}.enabled must be true or false")
    return {"enabled": bool(enabled)}


def _inference_table(raw: Any, where: str, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{where} must be an object")
    unknown = set(raw) - {"catalog_name", "schema_name", "table_name_prefix", "enabled"}
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"enabled": bool(raw.get("enabled", False))}
    for name in ("catalog_name", "schema_name", "table_name_prefix"):
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _UC_NAME.match(value):
            raise InvalidParameterValue(f"{where}.{name} must be a name of letters, digits, _ and -")
        out[name] = value
    if out["enabled"] and not (out.get("catalog_name") and out.get("schema_name")):
        raise InvalidParameterValue(f"{where}: catalog_name and schema_name are required when enabling")
    if current and current.get("enabled") and out["enabled"]:
        for name in ("catalog_name", "schema_name", "table_name_prefix"):
            if name in out and current.get(name) not in (None, out[name]):
                raise InvalidParameterValue(f"{where}: disable the inference table before changing {name}")
    return out


def parse(raw: Any, where: str = "ai_gateway", *, current: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The AI-gateway block as stored, or InvalidParameterValue naming the bad field. ``None`` (or
    an object with no fields) unsets it, as Databricks does."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{where} must be an object")
    unknown = set(raw) - set(FIELDS)
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    try:
        if raw.get("guardrails") is not None:
            out["guardrails"] = guardrails.validate(raw["guardrails"], f"{where}.guardrails")
        if raw.get("rate_limits") is not None:
            out["rate_limits"] = ratelimit.validate(raw["rate_limits"], f"{where}.rate_limits")
    except ValueError as exc:
        raise InvalidParameterValue(str(exc)) from None
    if (
        usage := _flag_block(raw.get("usage_tracking_config"), f"{where}.usage_tracking_config", required=False)
    ) is not None:
        out["usage_tracking_config"] = usage
    if (fallback := _flag_block(raw.get("fallback_config"), f"{where}.fallback_config", required=True)) is not None:
        out["fallback_config"] = fallback
    table = _inference_table(
        raw.get("inference_table_config"),
        f"{where}.inference_table_config",
        (current or {}).get("inference_table_config"),
    )
    if table is not None:
        out["inference_table_config"] = table
    return out or None


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
    from endpoints_app.services.endpoints import get_endpoint_for_update

    with transaction.atomic():
        endpoint = get_endpoint_for_update(name, if_match=if_match)
        config = parse(raw, current=endpoint.ai_gateway if isinstance(endpoint.ai_gateway, dict) else None)
        update_ai_gateway(actor=actor, endpoint=endpoint, config=config)
    return config
