"""Filter sets: one per list that both a page and the API filter (NetBox's habit), so that the two
take the same parameter names, parse them the same way and pick the same rows.

A filter set is a Django form. The page renders it (each field with its label and inline error);
the API binds it to the query string and answers the first error as INVALID_PARAMETER_VALUE. Either
way ``filter_queryset`` applies the fields that parsed and leaves out the ones that did not.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import AuditEvent

_EPOCH_MS_RE = re.compile(r"[0-9]+")  # ASCII digits only (str.isdigit also takes "²")


class TimestampField(forms.DateTimeField):
    """A moment in time, as epoch milliseconds (what the API answers and the CLI sends) or as a date
    and time (what the page's datetime-local input sends; naive values are in UTC, the server's zone)."""

    default_error_messages = {
        "invalid": "Enter epoch milliseconds or a date and time in UTC, such as 2025-01-31T09:30.",
    }
    input_formats = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]

    def to_python(self, value: Any) -> datetime | None:
        if isinstance(value, str) and _EPOCH_MS_RE.fullmatch(value.strip()):
            try:
                return datetime.fromtimestamp(int(value.strip()) / 1000, tz=UTC)
            except (OverflowError, OSError, ValueError):  # past the year 9999, or too many digits
                raise ValidationError(self.error_messages["invalid"], code="invalid") from None
        return super().to_python(value)


class AuditEventFilterSet(forms.Form):
    """Filters of the audit log, for the page (``/audit/``) and the API (``/audit-events``).

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
    since = TimestampField(
        required=False,
        label="From (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    until = TimestampField(
        required=False,
        label="Until (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

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

    def raise_if_invalid(self) -> None:
        """For the API: INVALID_PARAMETER_VALUE naming the first parameter that did not parse."""
        if not self.is_valid():
            name, errors = next(iter(self.errors.items()))
            raise InvalidParameterValue(f"{name}: {' '.join(errors)}")
