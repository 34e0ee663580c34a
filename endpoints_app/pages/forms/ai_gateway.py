"""The AI-gateway editor: rate limits, guardrails, usage tracking, fallbacks and the inference table,
turned into ``PUT …/ai-gateway``'s body; the service validates it and its refusals are shown next to
the field they name."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.http import QueryDict

from endpoints_app.errors import DomainError, PreconditionFailed
from endpoints_app.pages.forms.common import STALE_FORM_MESSAGE

RATE_LIMIT_KEY_CHOICES = [
    ("endpoint", "Everyone together"),
    ("user", "Per user"),
    ("user_group", "Per group"),
]
PII_CHOICES = [("NONE", "Off"), ("BLOCK", "Block text with personal data"), ("MASK", "Mask personal data")]


class RateLimitForm(forms.Form):
    calls = forms.IntegerField(
        label="Calls per minute",
        required=False,
        widget=forms.NumberInput(attrs={"min": 0, "inputmode": "numeric", "aria-label": "Calls per minute"}),
    )
    tokens = forms.IntegerField(
        label="Tokens per minute",
        required=False,
        widget=forms.NumberInput(attrs={"min": 0, "inputmode": "numeric", "aria-label": "Tokens per minute"}),
    )
    key = forms.ChoiceField(
        label="Applies to",
        choices=RATE_LIMIT_KEY_CHOICES,
        initial="endpoint",
        widget=forms.Select(attrs={"aria-label": "Applies to"}),
    )
    principal = forms.CharField(
        label="User or group",
        required=False,
        max_length=255,
        help_text="Per user or per group only: name one, or leave blank for each one separately.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "aria-label": "User or group"}),
    )

    def is_blank(self) -> bool:
        data = self.cleaned_data
        return data.get("calls") is None and data.get("tokens") is None and not (data.get("principal") or "").strip()


RateLimitFormSet = forms.formset_factory(RateLimitForm, extra=0, can_delete=True)


class GuardrailForm(forms.Form):
    """One direction of the guardrails (``input`` or ``output``, the form's prefix)."""

    invalid_keywords = forms.CharField(
        label="Invalid keywords",
        required=False,
        help_text="One word or phrase per line; whole words, any case. A match blocks the request.",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
    )
    pii = forms.ChoiceField(label="Personal data (PII)", choices=PII_CHOICES, initial="NONE", required=False)

    def block(self) -> dict[str, Any]:
        keywords = [k.strip() for k in (self.cleaned_data.get("invalid_keywords") or "").splitlines() if k.strip()]
        out: dict[str, Any] = {}
        if keywords:
            out["invalid_keywords"] = keywords
        if (self.cleaned_data.get("pii") or "NONE") != "NONE":
            out["pii"] = {"behavior": self.cleaned_data["pii"]}
        return out


class AiGatewaySettingsForm(forms.Form):
    usage_tracking = forms.BooleanField(label="Track usage (requests and tokens per user)", required=False)
    fallbacks = forms.BooleanField(
        label="Fall back to the other served entities, in order, when a provider answers 429 or 5xx", required=False
    )
    inference_table = forms.BooleanField(label="Log requests and responses (inference table)", required=False)
    catalog_name = forms.CharField(label="Catalog", required=False, max_length=255)
    schema_name = forms.CharField(label="Schema", required=False, max_length=255)
    table_name_prefix = forms.CharField(label="Table name prefix", required=False, max_length=255)


_GATEWAY_FIELD = re.compile(r"^ai_gateway\.(\w+)(?:\[(\d+)\])?(?:\.(\w+))?(?:\.(\w+))?")
_INFERENCE_FIELDS = ("catalog_name", "schema_name", "table_name_prefix")


class AiGatewayEditor:
    """The AI-gateway form as a whole: rate-limit rows, guardrails per direction, the toggles and
    the inference table. ``body`` is ``PUT …/ai-gateway``'s body; the service validates it."""

    def __init__(self, *, current: dict[str, Any] | None, data: QueryDict | None = None, etag: str = "") -> None:
        current = current or {}
        self.current = current
        table = current.get("inference_table_config") or {}
        self.settings = AiGatewaySettingsForm(
            data,
            initial={
                "usage_tracking": bool((current.get("usage_tracking_config") or {}).get("enabled")),
                "fallbacks": bool((current.get("fallback_config") or {}).get("enabled")),
                "inference_table": bool(table.get("enabled")),
                **{name: table.get(name, "") for name in _INFERENCE_FIELDS},
            },
        )
        self.limits = RateLimitFormSet(
            data,
            prefix="limits",
            initial=[
                {k: limit.get(k) for k in ("calls", "tokens", "key", "principal")}
                for limit in current.get("rate_limits") or []
            ],
        )
        rails = current.get("guardrails") or {}
        self.guardrails = {
            direction: GuardrailForm(
                data,
                prefix=direction,
                initial={
                    "invalid_keywords": "\n".join((rails.get(direction) or {}).get("invalid_keywords") or []),
                    "pii": ((rails.get(direction) or {}).get("pii") or {}).get("behavior", "NONE"),
                },
            )
            for direction in ("input", "output")
        }
        self.etag = (data.get("etag", "") if data is not None else etag) or ""
        self.errors: list[str] = []
        self._sent_limits: list[RateLimitForm] = []

    def is_valid(self) -> bool:
        valid = self.settings.is_valid() and self.limits.is_valid()
        return all([form.is_valid() for form in self.guardrails.values()]) and valid

    def has_errors(self) -> bool:
        forms_ = [self.settings, *self.guardrails.values(), *self.limits.forms]
        return bool(self.errors) or any(f.is_bound and f.errors for f in forms_)

    def add_limit_row(self) -> None:
        """Offer one more rate-limit row (the form's "Add rate limit" without JavaScript)."""
        data = QueryDict(mutable=True)
        data.update(self.limits.data)  # request.POST, or {} when unbound: every value of every key
        key = f"{self.limits.prefix}-TOTAL_FORMS"
        data[key] = str(int(data.get(key) or 0) + 1)
        self.limits = RateLimitFormSet(data, prefix=self.limits.prefix, initial=self.limits.initial)

    def body(self) -> dict[str, Any]:
        """The settings as ``PUT …/ai-gateway`` takes them. A block the form leaves empty is left out
        (which unsets it), except the toggles the endpoint had, kept as they are set now."""
        current, settings = self.current, self.settings.cleaned_data
        body: dict[str, Any] = {}
        self._sent_limits = [
            f for f in self.limits.forms if f.cleaned_data and not f.cleaned_data.get("DELETE") and not f.is_blank()
        ]
        if self._sent_limits:
            body["rate_limits"] = []
            for form in self._sent_limits:
                limit: dict[str, Any] = {"renewal_period": "minute", "key": form.cleaned_data["key"]}
                for amount in ("calls", "tokens"):
                    if form.cleaned_data.get(amount) is not None:
                        limit[amount] = form.cleaned_data[amount]
                if principal := (form.cleaned_data.get("principal") or "").strip():
                    limit["principal"] = principal
                body["rate_limits"].append(limit)
        rails = {direction: form.block() for direction, form in self.guardrails.items() if form.block()}
        if rails:
            body["guardrails"] = rails
        for field, block in (("usage_tracking", "usage_tracking_config"), ("fallbacks", "fallback_config")):
            if settings.get(field) or current.get(block) is not None:
                body[block] = {"enabled": bool(settings.get(field))}
        names = {name: settings[name].strip() for name in _INFERENCE_FIELDS if (settings.get(name) or "").strip()}
        if settings.get("inference_table") or names or current.get("inference_table_config") is not None:
            body["inference_table_config"] = {"enabled": bool(settings.get("inference_table")), **names}
        return body

    def add_domain_error(self, exc: DomainError) -> None:
        """Show the service's refusal next to the field its message names."""
        if isinstance(exc, PreconditionFailed):
            self.errors.append(STALE_FORM_MESSAGE)
            return
        match = _GATEWAY_FIELD.match(exc.message)
        block, index, field, subfield = match.groups() if match else (None, None, None, None)
        if block == "rate_limits" and index is not None and int(index) < len(self._sent_limits):
            row = self._sent_limits[int(index)]
            row.add_error(field if field in row.fields else None, exc.message)
        elif block == "guardrails" and field in self.guardrails:
            form = self.guardrails[field]
            form.add_error(subfield if subfield in form.fields else None, exc.message)
        elif block == "inference_table_config":
            self.settings.add_error(field if field in _INFERENCE_FIELDS else "inference_table", exc.message)
        else:
            self.errors.append(exc.message)
