"""Filters of an endpoint's stored log lines: the log-lines API and the endpoint page's log tail."""

from __future__ import annotations

from typing import Any

from django import forms

from endpoints_app.filters.fields import (
    ChoiceParamField,
    LimitField,
    PageTokenField,
    TimeRangeFilterSet,
    TimestampField,
)
from endpoints_app.models import LogKind
from endpoints_app.monitoring import logs

MAX_LIMIT = 2000
DEFAULT_LIMIT = 200
MAX_SEARCH_CHARS = 1000


class LogLineFilterSet(TimeRangeFilterSet):
    """Which lines (``kind``, ``served_model``, text ``q``, at least ``level``, ``since``/``until``)
    and which page of them (``order``, ``limit``, ``page_token``). The page binds it with the
    prefix ``logs`` (``logs_kind``, ``logs_q``…) beside the endpoint page's other parameters."""

    kind = ChoiceParamField(values=LogKind.values, default=LogKind.SERVER, labels=dict(LogKind.choices), label="Log")
    served_model = forms.CharField(required=False, label="Served entity")
    q = forms.CharField(required=False, strip=False, max_length=MAX_SEARCH_CHARS, label="Filter")
    level = ChoiceParamField(
        values=logs.LEVELS,
        empty_label="Any level",
        fold=str.upper,
        aliases={"WARN": "WARNING", "FATAL": "CRITICAL"},
        label="At least",
    )
    since = TimestampField(label="From (UTC)")
    until = TimestampField(label="Until (UTC)")
    order = ChoiceParamField(values=("desc", "asc"), default="desc", label="Order")
    limit = LimitField(default=DEFAULT_LIMIT, max_value=MAX_LIMIT)
    page_token = PageTokenField()  # decoded below: a token holds the order it was made for

    def clean_page_token(self) -> Any:
        token = self.cleaned_data.get("page_token")
        if token is None:
            return None
        descending = self.value("order") == "desc"
        return PageTokenField.decode_with(token, lambda t: logs.decode_page_token(t, descending=descending))

    def log_query(self) -> logs.LogQuery:
        """What ``logs.log_lines`` reads: every filter that parsed, the defaults for the rest."""
        since, until = self.range()
        return logs.LogQuery(
            kind=self.value("kind"),
            served_model=self.value("served_model") or None,
            q=self.value("q") or "",
            min_level=self.value("level") or None,
            since=since,
            until=until,
            limit=self.value("limit"),
            descending=self.value("order") == "desc",
            after=self.value("page_token"),
        )
