"""An endpoint's AI-gateway settings (reference §2.9): guardrails, rate limits, usage tracking,
fallbacks and inference tables. ``validation.parse_ai_gateway`` checks the block (in create and in
``PUT …/ai-gateway``); ``put_ai_gateway`` is the one state change, shared by the API, the CLI
(through the API), the dashboard and approved change requests.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from endpoints_app import audit
from endpoints_app.models import ChangeRequest
from endpoints_app.services import checks, gate
from endpoints_app.services.gate import OnApprovalNeeded, Outcome
from endpoints_app.validation import parse_ai_gateway, require_object


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
    with transaction.atomic():
        endpoint = checks.get_endpoint_for_update(name, if_match=if_match)
        before = endpoint.ai_gateway
        config = parse_ai_gateway(raw, current=before if isinstance(before, dict) else None)
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
    return Outcome(config)
