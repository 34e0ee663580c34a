"""Change requests (``/api/2.0/modelfleet/change-requests``). An approval policy's shape is
``services.approval_policies.snapshot``, which its audit rows record too."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import ChangeRequest
from endpoints_app.services import proposals


def serialize_change_request(change: ChangeRequest) -> dict[str, Any]:
    return {
        "id": change.pk,
        "endpoint_name": change.endpoint_name,
        "workspace": change.workspace.name if change.workspace is not None else "local",
        "base_config_version": change.base_config_version,
        "action": change.action,
        "status": change.status,
        "author": change.author.get_username() if change.author else None,
        "created_at": ms(change.created_at),
        "decided_by": change.decided_by.get_username() if change.decided_by else None,
        "decided_at": ms(change.decided_at),
        "comment": change.comment,
        "error": change.error,
        "proposed": proposals.shown_proposal(change.action, change.proposed),
        "diff": change.diff,
    }
