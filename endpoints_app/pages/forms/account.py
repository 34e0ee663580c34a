"""The sign-in form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from endpoints_app import audit, auth_throttle


class ThrottledAuthenticationForm(AuthenticationForm):
    """The sign-in form, refusing an address over the failed sign-in limit before any password is
    checked (``auth_throttle``), with a message saying when to try again."""

    throttle: auth_throttle.Throttle | None = None

    def clean(self) -> dict[str, Any]:
        if self.request is not None:
            self.throttle = auth_throttle.check(audit.client_address(self.request))
            if self.throttle is not None:
                raise forms.ValidationError(self.throttle.message, code="throttled")
        return super().clean()
