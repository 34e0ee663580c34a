"""Groups (``/api/2.0/modelfleet/groups``). A user's shape is ``services.users.user_snapshot``,
which the audit rows record too, so the API and the audit log show a user alike."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group


def serialize_group(group: Group) -> dict[str, Any]:
    """The group and its members' usernames, sorted (prefetch ``user_set`` for a list)."""
    return {"name": group.name, "members": sorted(u.get_username() for u in group.user_set.all())}
