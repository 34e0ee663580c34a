"""Workspace shapes: name, kind, host, status and a hint of the token, never the token."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms, user_label
from endpoints_app.models import Workspace


def serialize_workspace(workspace: Workspace) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "name": workspace.name,
        "kind": workspace.kind,
        "status": {
            "state": workspace.state,
            "message": workspace.status_message,
            "since": ms(workspace.status_since),
            "checked_at": ms(workspace.checked_at),
        },
        "created_at": ms(workspace.created_at),
        "updated_at": ms(workspace.updated_at),
    }
    if not workspace.is_local:
        shape |= {"host": workspace.host, "token_hint": workspace.token_hint, "creator": user_label(workspace.creator)}
    return shape
