"""Usage of an AI-gateway endpoint (``…/usage``), from the sums ``UsageRecord`` rows aggregate to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

USAGE_SUMS = ("requests", "input_tokens", "output_tokens")


def serialize_usage(
    groups: Iterable[Mapping[str, Any]], totals: Mapping[str, int | None], *, group_by: str, column: str
) -> dict[str, Any]:
    """``groups``: one row per value of ``column`` with its sums; a minute is shown in epoch ms."""
    return {
        "usage": [
            {
                group_by: row[column] * 1000 if group_by == "minute" else row[column],
                **{k: row[k] for k in USAGE_SUMS},
            }
            for row in groups
        ],
        "totals": {k: totals[k] or 0 for k in USAGE_SUMS},
    }
