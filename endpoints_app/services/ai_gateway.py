"""An endpoint's AI-gateway settings (reference §2.9): guardrails, rate limits, usage tracking,
fallbacks and inference tables. ``validation.parse_ai_gateway`` checks the block (in create and in
``PUT …/ai-gateway``); ``put_ai_gateway`` is the one state change, shared by the API, the CLI
(through the API), the dashboard and approved change requests. ``put_rate_limits`` is the legacy
``PUT …/rate-limits`` (mlflow's ``update_endpoint_rate_limits``, the SDK's ``put``): the same
change, to the rate limits alone, through the same gate, lock and audit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from endpoints_app import audit
from endpoints_app.models import ChangeRequest
from endpoints_app.services import checks, gate
from endpoints_app.services.gate import OnApprovalNeeded, Outcome
from endpoints_app.validation import legacy_rate_limits, parse_ai_gateway, parse_legacy_rate_limits, require_object


def put_ai_gateway(
    *,
    actor: User | None,
    name: str,
    body: Any,
    if_match: str | None = None,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[dict[str, Any] | None]:
    """``PUT …/ai-gateway``: CAN_MANAGE, the approval gate, then the settings checked against the
    current ones under the row lock and stored with an audit row; the value is what is stored
    (None: unset). The gateway picks them up with its next route-table refresh."""
    checks.managed_endpoint(actor, name, approved=approved)
    proposal = gate.admit(
        actor=actor,
        action=ChangeRequest.Action.AI_GATEWAY,
        endpoint_name=name,
        body=body,
        on_approval_needed=on_approval_needed,
        approved=approved,
        if_match=if_match,
    )
    if proposal is not None:
        return Outcome(change_request=proposal)
    raw = require_object(body or {}, "request body")
    return Outcome(
        _store(actor=actor, name=name, if_match=if_match, action="endpoint.update_ai_gateway", build=lambda _: raw)
    )


def put_rate_limits(
    *,
    actor: User | None,
    name: str,
    body: Any,
    if_match: str | None = None,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[list[dict[str, Any]]]:
    """``PUT …/rate-limits``: the legacy ``{"rate_limits": [{calls, key, renewal_period}]}``
    replaces the endpoint's AI-gateway rate limits; its other AI-gateway settings stay. The value
    is the rate limits now stored, in the legacy shape.

    The gate sees it as the AI-gateway change it is, carrying the whole settings it would leave
    (so a proposal applies as ``put_ai_gateway``); the rate limits are merged into the current
    settings under the row lock, so a concurrent change to the guardrails is not undone."""
    endpoint = checks.managed_endpoint(actor, name, approved=approved)
    data = require_object(body if body is not None else {}, "request body")
    limits = parse_legacy_rate_limits(data.get("rate_limits") or [], "rate_limits")
    proposal = gate.admit(
        actor=actor,
        action=ChangeRequest.Action.AI_GATEWAY,
        endpoint_name=name,
        body={**_settings(endpoint.ai_gateway), "rate_limits": limits},
        on_approval_needed=on_approval_needed,
        approved=approved,
        if_match=if_match,
    )
    if proposal is not None:
        return Outcome(change_request=proposal)
    stored = _store(
        actor=actor,
        name=name,
        if_match=if_match,
        action="endpoint.update_rate_limits",
        build=lambda current: {**_settings(current), "rate_limits": limits},
    )
    return Outcome(legacy_rate_limits(stored))


def _settings(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _store(
    *,
    actor: User | None,
    name: str,
    if_match: str | None,
    action: str,
    build: Callable[[dict[str, Any] | None], dict[str, Any]],
) -> dict[str, Any] | None:
    """Under the row lock: the settings ``build`` makes from the current ones, checked against
    them, stored with an audit row; returns what is stored (None: unset)."""
    with transaction.atomic():
        endpoint = checks.get_endpoint_for_update(name, if_match=if_match)
        before = endpoint.ai_gateway if isinstance(endpoint.ai_gateway, dict) else None
        config = parse_ai_gateway(build(before), current=before)
        endpoint.ai_gateway = config
        endpoint.save(update_fields=["ai_gateway", "updated_at"])
        audit.record(
            actor=actor,
            action=action,
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before={"ai_gateway": before},
            after={"ai_gateway": config},
        )
    return config
