"""The change-request pages' forms: the list's filters and the approver's decision."""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import QueryDict

from endpoints_app.models import ChangeRequestStatus


class ChangeRequestFilterForm(forms.Form):
    """The page's filters, named as the API's (``status`` in any case, ``endpoint_name``)."""

    status = forms.ChoiceField(
        required=False, choices=[("", "Any status"), *ChangeRequestStatus.choices], label="Status"
    )
    endpoint_name = forms.CharField(required=False, max_length=255, label="Endpoint")

    def __init__(self, data: QueryDict | None = None, *args: Any, **kwargs: Any) -> None:
        status = data.get("status") if data is not None else None
        if data is not None and status:
            data = data.copy()
            data["status"] = status.upper()
        super().__init__(data, *args, **kwargs)


class DecisionForm(forms.Form):
    comment = forms.CharField(
        required=False, max_length=4000, label="Comment", widget=forms.Textarea(attrs={"rows": 3})
    )
