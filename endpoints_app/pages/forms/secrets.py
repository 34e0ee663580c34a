"""The secrets pages' forms: a new scope, a secret put into it, and an ACL on it."""

from __future__ import annotations

from django import forms


class SecretScopeForm(forms.Form):
    scope = forms.CharField(
        label="Scope name",
        max_length=128,
        help_text="Letters, digits, dashes, underscores and periods.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    everyone_manages = forms.BooleanField(
        label="Every user may manage it (initial_manage_principal = users)", required=False
    )


class SecretPutForm(forms.Form):
    """Put a secret. The value's widget never renders what was typed, even when the form is shown
    again with an error; nothing here repeats it."""

    key = forms.CharField(
        label="Key",
        max_length=128,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    value = forms.CharField(
        label="Value",
        strip=False,
        help_text="Stored encrypted; it is never shown again, here or anywhere. Putting an existing key replaces it.",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}),
    )


SECRET_PERMISSION_CHOICES = [
    ("READ", "READ: list, use in endpoints"),
    ("WRITE", "WRITE: … and put, delete"),
    ("MANAGE", "MANAGE: … and ACLs, delete scope"),
]


class SecretAclForm(forms.Form):
    principal = forms.CharField(
        label="User or group",
        max_length=255,
        help_text="A user name, a group name, or users (everyone).",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "list": "acl-principals"}),
    )
    permission = forms.ChoiceField(label="Permission", choices=SECRET_PERMISSION_CHOICES, initial="READ")
