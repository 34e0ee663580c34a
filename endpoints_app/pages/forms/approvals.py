"""The change-request pages' form: the approver's decision. The list's filters are the API's
(``filters.ChangeRequestFilterSet``)."""

from __future__ import annotations

from django import forms


class DecisionForm(forms.Form):
    comment = forms.CharField(
        required=False, max_length=4000, label="Comment", widget=forms.Textarea(attrs={"rows": 3})
    )
