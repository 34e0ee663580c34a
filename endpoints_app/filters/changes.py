"""Filters of the change requests, shared by the approvals page (``/change-requests/``) and the API
(``/api/2.0/modelfleet/change-requests``); both list through ``selectors.change_requests_for``."""

from __future__ import annotations

from django import forms

from endpoints_app.filters.fields import ChoiceParamField, FilterSet
from endpoints_app.models import ChangeRequestStatus


class ChangeRequestFilterSet(FilterSet):
    """``status`` in any case (``pending`` is ``PENDING``) and ``endpoint_name``, matched exactly."""

    status = ChoiceParamField(
        values=ChangeRequestStatus.values,
        labels=dict(ChangeRequestStatus.choices),
        empty_label="Any status",
        fold=str.upper,
        label="Status",
    )
    endpoint_name = forms.CharField(required=False, max_length=255, label="Endpoint")
