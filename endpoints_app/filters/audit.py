"""The audit log's filters, shared by the page (``/audit/``) and the API (``/audit-events``)."""

from __future__ import annotations

import base64

from django import forms
from django.db.models import QuerySet

from endpoints_app.filters.fields import LimitField, PageTokenField, TimeRangeFilterSet, TimestampField
from endpoints_app.models import AuditEvent

MAX_LIMIT = 1000
MAX_ID = 2**63 - 1  # a bigint: a larger id in a forged page_token would overflow the query


def encode_page_token(before_id: int) -> str:
    return base64.urlsafe_b64encode(str(before_id).encode()).decode()


def decode_page_token(token: str) -> int:
    """The event id a ``next_page_token`` stands for: the next page lists the events below it."""
    before_id = int(base64.urlsafe_b64decode(token.encode()).decode())  # a ValueError when it is not one
    if abs(before_id) > MAX_ID:
        raise ValueError("beyond any id")
    return before_id


class AuditEventFilterSet(TimeRangeFilterSet):
    """Filters of the audit log.

    ``action`` is a prefix (``endpoint`` matches every ``endpoint.*``); the others match exactly.
    ``since`` is inclusive and ``until`` exclusive.
    """

    actor = forms.CharField(required=False, label="Actor")
    action = forms.CharField(
        required=False,
        label="Action",
        help_text="A prefix: endpoint, change_request.approve…",
        widget=forms.TextInput(attrs={"list": "audit-actions"}),
    )
    object_type = forms.CharField(
        required=False, label="Object type", widget=forms.TextInput(attrs={"list": "audit-object-types"})
    )
    # Not a field of the page's form, but links (and the API) may name one object by its id.
    object_id = forms.CharField(required=False, label="Object id")
    object_name = forms.CharField(required=False, label="Object name")
    since = TimestampField(label="From (UTC)")
    until = TimestampField(label="Until (UTC)")

    def filter_queryset(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """``events`` narrowed by every filter that parsed (validate first: ``is_valid()``)."""
        data = getattr(self, "cleaned_data", {})
        for name, lookup in (
            ("actor", "actor_name"),
            ("action", "action__startswith"),
            ("object_type", "object_type"),
            ("object_id", "object_id"),
            ("object_name", "object_name"),
            ("since", "at__gte"),
            ("until", "at__lt"),
        ):
            if value := data.get(name):
                events = events.filter(**{lookup: value})
        return events


class AuditEventListFilterSet(AuditEventFilterSet):
    """The API's list: the filters, newest first, ``limit`` events a page from ``page_token`` on
    (keyset paging by id: no COUNT, no OFFSET over a table that only grows)."""

    limit = LimitField(default=100, max_value=MAX_LIMIT)
    page_token = PageTokenField(decode=decode_page_token)


class AuditPageFilterSet(AuditEventFilterSet):
    """The page's: the filters, and where the page is: ``before`` an event id (the id the API's
    ``page_token`` stands for, in the address bar as it is)."""

    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)
