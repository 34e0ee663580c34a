"""External models in the endpoint editor: each provider's config fields, from the provider module's
declaration (``Provider.fields``), so a provider's fields are written down once, there.

Credentials are a ``{{secrets/scope/key}}`` picked from the secrets the user may read, or a value
typed into a password input (sent as ``<field>_plaintext``, which the service stores as a secret; it
is never rendered back).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django import forms

from endpoints_app.gateway.providers import PROVIDERS, Provider
from endpoints_app.gateway.providers.base import Field as ProviderField

DEFAULT_PROVIDER = "openai" if "openai" in PROVIDERS else min(PROVIDERS)
NO_SECRET = ""
# Words spelt differently in a label than in a field name.
_LABEL_WORDS = {
    "api": "API",
    "openai": "OpenAI",
    "url": "URL",
    "id": "ID",
    "aws": "AWS",
    "arn": "ARN",
    "uc": "UC",
    "ai21labs": "AI21 Labs",
    "databricks": "Databricks",
    "microsoft": "Microsoft",
    "entra": "Entra",
    "cohere": "Cohere",
    "palm": "PaLM",
}


def field_label(name: str) -> str:
    """``openai_api_key`` → "OpenAI API key"."""
    text = " ".join(_LABEL_WORDS.get(word, word) for word in name.split("_"))
    return text[:1].upper() + text[1:]


def provider_choices() -> list[tuple[str, str]]:
    return [
        (p.name, p.name if p.translated else f"{p.name} (config stored; queries not supported yet)")
        for p in sorted(PROVIDERS.values(), key=lambda p: p.name)
    ]


@dataclass(frozen=True)
class ConfigInput:
    """One field of a provider's config block (``Provider.fields``) as the editor shows it."""

    provider: Provider
    spec: ProviderField
    path: str  # inside the block, dotted in a nested object: "api_key_auth.value"

    @property
    def field_name(self) -> str:
        """The form field: ``<config block>__<path>``, e.g. ``custom_provider_config__api_key_auth__value``."""
        return f"{self.provider.config_key}__{self.path.replace('.', '__')}"

    @property
    def plaintext_name(self) -> str:
        return f"{self.field_name}_plaintext"

    @property
    def api_name(self) -> str:
        return f"{self.provider.config_key}.{self.path}"

    @property
    def group(self) -> str:
        """The nested object holding the field ("" at the top of the block)."""
        return self.path.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]


def config_inputs(provider: Provider) -> list[ConfigInput]:
    """Every leaf field of the provider's config block, nested objects flattened, in declared order."""

    def walk(fields: tuple[ProviderField, ...], prefix: str) -> Iterator[ConfigInput]:
        for spec in fields:
            if spec.fields is not None:
                yield from walk(spec.fields, f"{prefix}{spec.name}.")
            else:
                yield ConfigInput(provider, spec, f"{prefix}{spec.name}")

    return list(walk(provider.fields, ""))


def config_form_field(config_input: ConfigInput, secret_choices: list) -> forms.Field:
    """The editor's field for one config input: a secret picker, a choice, or a text or URL input."""
    spec = config_input.spec
    required = " (required)" if spec.required and not config_input.group else ""
    label = f"{field_label(config_input.key)}{required}"
    help_text = config_input.api_name
    if spec.secret:
        return forms.ChoiceField(
            label=label,
            required=False,
            choices=[(NO_SECRET, "— pick a secret —"), *secret_choices],
            help_text=help_text,
        )
    if spec.choices:
        return forms.ChoiceField(
            label=label, required=False, choices=[("", "—"), *((c, c) for c in spec.choices)], help_text=help_text
        )
    widget_attrs = {"autocomplete": "off", "spellcheck": "false"}
    widget = forms.URLInput(attrs=widget_attrs) if spec.url else forms.TextInput(attrs=widget_attrs)
    return forms.CharField(label=label, required=False, max_length=2048, help_text=help_text, widget=widget)


def plaintext_form_field() -> forms.Field:
    # render_value=False: a value typed here is never sent back to the browser, even when the form
    # is shown again with errors.
    return forms.CharField(
        label="…or type its value",
        required=False,
        max_length=128 * 1024,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}),
        help_text="Stored encrypted as a secret; the endpoint keeps only its reference. Replaces the picked secret.",
    )


def value_at(block: dict[str, Any], path: str) -> Any:
    """The value at the dotted ``path`` of a stored config block (None where a step is missing)."""
    value: Any = block
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
