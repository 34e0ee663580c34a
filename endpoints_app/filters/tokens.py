"""Filters of the personal access tokens list (``/api/2.0/modelfleet/tokens``)."""

from __future__ import annotations

from django import forms

from endpoints_app.filters.fields import FilterSet


class TokenFilterSet(FilterSet):
    """``user``: whose tokens an admin lists (everyone else only ever sees their own)."""

    user = forms.CharField(required=False, label="User")
