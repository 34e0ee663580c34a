"""Filters of an AI-gateway endpoint's usage (``…/usage``)."""

from __future__ import annotations

from datetime import timedelta

from endpoints_app.filters.fields import ChoiceParamField, TimeRangeFilterSet, TimestampField

GROUPS = ("user", "served_entity", "minute")


class UsageFilterSet(TimeRangeFilterSet):
    """Usage over ``[start, end)`` (epoch ms, the last day unless told), summed per ``group_by``."""

    range_names = ("start", "end")
    default_span = timedelta(days=1)
    empty_range_allowed = False

    start = TimestampField(label="From (UTC)")
    end = TimestampField(label="Until (UTC)")
    group_by = ChoiceParamField(values=GROUPS, default="user", label="Group by")
