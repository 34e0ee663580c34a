"""Filters of the chart series (``…/metric-series``) and the autoscaler's decisions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from endpoints_app.filters.fields import FilterSet, LimitField, TimeRangeFilterSet, TimestampField, refuse_nul
from endpoints_app.monitoring import metrics


class MetricNamesField(forms.Field):
    """A comma-separated list of series names (``request_rate,p99_ms``); empty is ``request_rate``."""

    default = ("request_rate",)

    def to_python(self, value: Any) -> list[str]:
        refuse_nul(value)
        if value in self.empty_values:
            return list(self.default)
        names = [name for name in str(value).split(",") if name]
        unknown = [name[:40] for name in names if name not in metrics.SERIES]
        if unknown:
            raise ValidationError(
                f"Choose from {', '.join(metrics.SERIES)}; unknown metric(s): {', '.join(unknown[:5])}.",
                code="invalid_choice",
            )
        return names


class MetricSeriesFilterSet(TimeRangeFilterSet):
    """Which series of which served model over ``[start, end)`` (epoch ms): the last hour unless
    told, at most 90 days (the coarsest resolution keeps that to a few thousand points)."""

    range_names = ("start", "end")
    default_span = timedelta(hours=1)
    max_span = timedelta(days=90)
    empty_range_allowed = False

    metrics = MetricNamesField(required=False, label="Metrics")
    start = TimestampField(label="From (UTC)")
    end = TimestampField(label="Until (UTC)")
    served_model = forms.CharField(required=False, label="Served model")


class ScalingDecisionFilterSet(FilterSet):
    """The autoscaler's decisions for an endpoint, newest first."""

    limit = LimitField(default=100, max_value=1000)
