"""Filters of an endpoint's health history and alert events (``…/health``, ``…/alert-events``)."""

from __future__ import annotations

from endpoints_app.filters.fields import ChoiceParamField, FilterSet, LimitField
from endpoints_app.models import AlertEvent

MAX_LIMIT = 1000


class HealthHistoryFilterSet(FilterSet):
    """The health changes listed with the current status, newest first."""

    limit = LimitField(default=50, max_value=MAX_LIMIT)


class AlertEventFilterSet(FilterSet):
    """Alert events, newest first, in one ``state`` (FIRING or RESOLVED) or any."""

    state = ChoiceParamField(values=AlertEvent.State.values, empty_label="Any state", label="State")
    limit = LimitField(default=100, max_value=MAX_LIMIT)
