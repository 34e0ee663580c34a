"""Filters of an endpoint's logged payloads (inference tables, ``…/payloads``)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.filters.fields import (
    LimitField,
    PageTokenField,
    StrictBooleanField,
    TimeRangeFilterSet,
    TimestampField,
)
from endpoints_app.monitoring import payloads


class StatusField(forms.CharField):
    """An HTTP status code (``404``) or a class (``5xx``), as ``payloads.status_range`` reads it."""

    default_error_messages = {"invalid": "Enter an HTTP status code (e.g. 404) or a class (e.g. 5xx)."}

    def validate(self, value: Any) -> None:
        super().validate(value)
        if value:
            try:
                payloads.status_range(value)
            except InvalidParameterValue:
                raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class PayloadFilterSet(TimeRangeFilterSet):
    """Logged payloads, newest first: ``since`` inclusive, ``until`` exclusive (epoch ms), keyset
    paged by ``page_token``; ``include_bodies=false`` leaves the request and response out."""

    served_model = forms.CharField(required=False, label="Served model")
    status = StatusField(required=False, label="Status")
    since = TimestampField(label="From (UTC)")
    until = TimestampField(label="Until (UTC)")
    client_request_id = forms.CharField(required=False, label="Client request id")
    limit = LimitField(default=100, max_value=payloads.MAX_PAGE_SIZE)
    page_token = PageTokenField(decode=payloads.decode_page_token)
    include_bodies = StrictBooleanField(default=True, label="Include bodies")
