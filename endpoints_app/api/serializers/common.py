"""What every area's wire shapes share: times as epoch milliseconds, people as one label."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import User


def ms(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value else None


def user_label(user: User | None) -> str:
    """How a creator is shown (Databricks shows an email): the email, else the username."""
    if user is None:
        return ""
    return user.email or user.username
