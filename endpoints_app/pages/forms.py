"""Forms of the dashboard: the endpoint editor, and the filters of the change-request and audit pages.

Forms are thin. They read what the user typed and turn it into the JSON body the API takes; every
rule about a valid config stays in endpoints_app.validation and the services. When a service
refuses the body, ``EndpointEditor.add_domain_error`` puts its message next to the field the
message names (``config.served_entities[1].workload_size …`` → the workload size of the second
served entity; ``….external_model.openai_config.openai_api_key …`` → that credential's picker), or
at the top of the form when it names none.

A served entity is a registered model version or an external model. The external model's config
fields come from the provider modules' own declarations (``Provider.fields``), so a provider's
fields are written down once, there; credentials are a ``{{secrets/scope/key}}`` picked from the
secrets the user may read, or a value typed into a password input (sent as ``<field>_plaintext``,
which the service stores as a secret; it is never rendered back).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.http import QueryDict

from endpoints_app import audit, auth_throttle, capacity, validation
from endpoints_app.errors import DomainError, PreconditionFailed, ResourceAlreadyExists, ResourceConflict
from endpoints_app.gateway.providers import PROVIDERS, Provider
from endpoints_app.gateway.providers.base import CHAT, TASKS
from endpoints_app.gateway.providers.base import Field as ProviderField
from endpoints_app.models import ChangeRequestStatus
from endpoints_app.services.secrets import parse_reference

# Registered model names cannot contain "/" (registry.register_model_dir refuses them), so
# "<model>/<version>" names one model version without ambiguity.
ENTITY_SEPARATOR = "/"
NOT_IN_REGISTRY = "Not in the registry"


def entity_value(entity_name: str, entity_version: str) -> str:
    return f"{entity_name}{ENTITY_SEPARATOR}{entity_version}"


def split_entity_value(value: str) -> tuple[str, str]:
    name, _, version = value.rpartition(ENTITY_SEPARATOR)
    return name, version


def model_version_choices(
    registered_models: list[dict[str, Any]], current: Iterable[tuple[str, str]] = ()
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Grouped choices for the model-version select: one group per registered model, newest version
    first, labelled "model vN" so that the plain select reads well without JavaScript. Versions the
    endpoint serves now but the registry no longer has stay choosable (the service says what is
    wrong with them when saving)."""
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    known: set[str] = set()
    for model in registered_models:
        options = [
            (entity_value(model["name"], v["version"]), f"{model['name']} v{v['version']}")
            for v in sorted(model["versions"], key=lambda v: int(v["version"]), reverse=True)
        ]
        known.update(value for value, _ in options)
        if options:
            groups.append((model["name"], options))
    missing = [(entity_value(n, v), f"{n} v{v}") for n, v in current if entity_value(n, v) not in known]
    if missing:
        groups.append((NOT_IN_REGISTRY, missing))
    return groups


WORKLOAD_SIZE_CHOICES = [
    (size, f"{size} ({low}–{high} concurrent requests)" if low != high else f"{size} ({low} concurrent requests)")
    for size, (low, high) in capacity.SIZE_CONCURRENCY.items()
] + [("", "Custom: min/max concurrency below")]
WORKLOAD_TYPE_CHOICES = [(t, t) for t in validation.WORKLOAD_TYPES]

# --- external models: each provider's config fields, from the provider module's declaration ------

MODEL, EXTERNAL = "model", "external"
KIND_CHOICES = [(MODEL, "A registered model version"), (EXTERNAL, "An external model (OpenAI, Anthropic, …)")]
TASK_CHOICES = [(t, t) for t in TASKS]
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


def _label(name: str) -> str:
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


def _config_form_field(config_input: ConfigInput, secret_choices: list) -> forms.Field:
    spec = config_input.spec
    required = " (required)" if spec.required and not config_input.group else ""
    label = f"{_label(config_input.key)}{required}"
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


def _plaintext_form_field() -> forms.Field:
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


def _dig(block: dict[str, Any], path: str) -> Any:
    value: Any = block
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def default_external_entity_name(model_name: str) -> str:
    """Mirrors ``validation``'s default name of an external served entity (reference §3: the model's
    name with "." and ":" replaced by "-"), for labels and routes; the service names it the same."""
    return re.sub(r"[.:]", "-", model_name)


class EndpointNameForm(forms.Form):
    name = forms.CharField(
        label="Endpoint name",
        max_length=255,
        help_text="Letters, digits, dashes and underscores; up to 63 characters.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


class ServedEntityForm(forms.Form):
    """One served entity of the config, with its share of the traffic and its environment variables.

    The variables are key/value rows (``<prefix>-env_key`` / ``<prefix>-env_value`` repeated), read
    here because a form field holds one value; one blank row is always offered for a new variable.
    """

    # Not required here: a row keeping an external model has none, and a custom row without one is
    # refused by validation ("entity_name is required") next to this field.
    entity = forms.ChoiceField(label="Model version", required=False)
    name = forms.CharField(
        label="Served entity name",
        required=False,
        max_length=255,
        help_text="Leave blank for <model>-<version>, or for an external model its name.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    workload_size = forms.ChoiceField(
        label="Workload size", choices=WORKLOAD_SIZE_CHOICES, required=False, initial="Small"
    )
    workload_type = forms.ChoiceField(
        label="Workload type", choices=WORKLOAD_TYPE_CHOICES, initial="CPU", required=False
    )
    scale_to_zero = forms.BooleanField(label="Scale to zero when idle", required=False)
    min_concurrency = forms.IntegerField(label="Min provisioned concurrency", required=False)
    max_concurrency = forms.IntegerField(label="Max provisioned concurrency", required=False)
    kind = forms.ChoiceField(label="Serves", choices=KIND_CHOICES, initial=MODEL, required=False)
    provider = forms.ChoiceField(label="Provider", choices=provider_choices, initial=DEFAULT_PROVIDER, required=False)
    external_name = forms.CharField(
        label="Model name at the provider",
        required=False,
        max_length=255,
        help_text="e.g. gpt-4o or claude-3-5-sonnet-20241022",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    task = forms.ChoiceField(label="Task", choices=TASK_CHOICES, initial=CHAT, required=False)
    traffic = forms.IntegerField(
        label="Traffic %",
        required=False,
        widget=forms.NumberInput(attrs={"min": 0, "max": 100, "step": 1, "inputmode": "numeric"}),
    )

    def __init__(self, *args: Any, entity_choices: list, secret_choices: list | None = None, **kwargs: Any) -> None:
        """``secret_choices``: the ``{{secrets/scope/key}}`` references the user may pick, grouped by
        scope (optgroups), plus those the endpoint uses now."""
        super().__init__(*args, **kwargs)
        self.fields["entity"].choices = entity_choices
        self.env_errors: list[str] = []
        for provider in PROVIDERS.values():
            for config_input in config_inputs(provider):
                self.fields[config_input.field_name] = _config_form_field(config_input, secret_choices or [])
                if config_input.spec.secret:
                    self.fields[config_input.plaintext_name] = _plaintext_form_field()

    @property
    def is_external(self) -> bool:
        return self["kind"].value() == EXTERNAL

    @property
    def selected_provider(self) -> str:
        value = self["provider"].value()
        return value if value in PROVIDERS else DEFAULT_PROVIDER

    def provider_sections(self) -> list[dict[str, Any]]:
        """Each provider's config fields, for the template: the selected provider's section shows,
        the others are rendered hidden and disabled (the script switches between them)."""
        sections = []
        for provider in sorted(PROVIDERS.values(), key=lambda p: p.name):
            groups: dict[str, list[dict[str, Any]]] = {}
            for config_input in config_inputs(provider):
                groups.setdefault(config_input.group, []).append(
                    {
                        "input": config_input,
                        "field": self[config_input.field_name],
                        "plaintext": self[config_input.plaintext_name] if config_input.spec.secret else None,
                    }
                )
            sections.append(
                {
                    "provider": provider,
                    "selected": provider.name == self.selected_provider,
                    "groups": [{"name": name, "label": _label(name), "inputs": rows} for name, rows in groups.items()],
                }
            )
        return sections

    def external_model_body(self) -> dict[str, Any]:
        """``external_model`` as the API takes it, from the cleaned fields of an external row."""
        data = self.cleaned_data
        provider = PROVIDERS.get(data.get("provider") or "")
        if provider is None:  # the choice field refused it already; let the service say it too
            return {"provider": data.get("provider") or "", "name": data.get("external_name") or ""}
        block: dict[str, Any] = {}
        for config_input in config_inputs(provider):
            key, value = config_input.key, data.get(config_input.field_name)
            if config_input.spec.secret:
                plaintext = data.get(config_input.plaintext_name) or ""
                if plaintext.strip():
                    key, value = f"{key}_plaintext", plaintext
            if not value:
                continue
            holder = block
            for part in config_input.group.split(".") if config_input.group else []:
                holder = holder.setdefault(part, {})
            holder[key] = value.strip() if isinstance(value, str) and not key.endswith("_plaintext") else value
        return {
            "provider": provider.name,
            "name": (data.get("external_name") or "").strip(),
            "task": data.get("task") or CHAT,
            provider.config_key: block,
        }

    def add_external_error(self, path: str, message: str) -> None:
        """Put a service message about ``external_model.<path>`` next to the field it names."""
        head = path.split(".")[0]
        if head in ("provider", "name", "task"):
            self.add_error({"provider": "provider", "name": "external_name", "task": "task"}[head], message)
            return
        provider = PROVIDERS.get(self.cleaned_data.get("provider") or "")
        if provider is None or head != provider.config_key:
            self.add_error(None, message)
            return
        inputs = config_inputs(provider)
        rest = path[len(head) + 1 :]
        named = [i for i in inputs if rest and (i.path == rest or i.path.startswith(f"{rest}."))]
        if not named:
            # "<block>: give a or a_plaintext, not both", "<block>: openai_api_type 'azure' needs …":
            # the first of the block's fields the message mentions.
            tail = message.split(":", 1)[-1]
            for word in re.findall(r"[A-Za-z_][\w.]*", tail):
                word = word.removesuffix("_plaintext")
                named = [i for i in inputs if i.path == word or i.path.startswith(f"{word}.")]
                if named:
                    break
        self.add_error(named[0].field_name if named else "provider", message)

    def secret_references(self) -> list[tuple[str, str]]:
        """``(form field, reference)`` for each credential picked in this external row."""
        provider = PROVIDERS.get(self.cleaned_data.get("provider") or "") if self.is_external else None
        if provider is None:
            return []
        return [
            (i.field_name, self.cleaned_data.get(i.field_name) or "")
            for i in config_inputs(provider)
            if i.spec.secret and self.cleaned_data.get(i.field_name)
        ]

    @property
    def env_rows(self) -> list[tuple[str, str]]:
        """The variable rows to show: what was posted (or the saved variables), then one blank row."""
        if self.is_bound:
            data = self.data if isinstance(self.data, QueryDict) else QueryDict(mutable=True)
            keys = data.getlist(self.add_prefix("env_key"))
            values = data.getlist(self.add_prefix("env_value"))
            rows = [(k, values[i] if i < len(values) else "") for i, k in enumerate(keys)]
            rows = [(k, v) for k, v in rows if k.strip() or v]
        else:
            rows = list((self.initial.get("environment_vars") or {}).items())
        return [*rows, ("", "")]

    def environment_vars(self) -> dict[str, str]:
        return {k.strip(): v for k, v in self.env_rows if k.strip() or v}

    def display_name(self) -> str:
        """The served entity's name as the split editor labels it (its routes name it so too)."""
        if name := (self["name"].value() or "").strip():
            return name
        if self.is_external:
            model_name = (self["external_name"].value() or "").strip()
            return default_external_entity_name(model_name) if model_name else "new entity"
        entity_name, version = split_entity_value(self["entity"].value() or "")
        return validation.default_served_entity_name(entity_name, version) if entity_name else "new entity"

    def traffic_value(self) -> int:
        try:
            return max(0, min(100, int(self["traffic"].value())))
        except (TypeError, ValueError):
            return 0


EntityFormSet = forms.formset_factory(ServedEntityForm, extra=0, can_delete=True)

_ENTITY_FIELD = re.compile(r"^config\.served_entities\[(\d+)\](?:\.(\w+))?")
_ROUTE_FIELD = re.compile(r"^config\.traffic_config\.routes\[(\d+)\]")
_DUPLICATE_NAME = re.compile(r"served entity name '([^']*)' is used twice")
_EXTERNAL_PATH = re.compile(r"^config\.served_entities\[\d+\]\.external_model\.([\w.]+)")
# Messages of services.secrets about a scope (not found, or not readable).
_SECRET_SCOPE = re.compile(r"^Scope (\S+) does not exist|does not exist in scope (\S+?)!|secret scope '([^']+)'")
_MISSING_MODEL = re.compile(r"^(?:Model version '([^']*)' of registered model|Registered model) '([^']*)'")
# The API's field names → the form's.
_FORM_FIELD = {
    "entity_name": "entity",
    "entity_version": "entity",
    "name": "name",
    "workload_size": "workload_size",
    "workload_type": "workload_type",
    "scale_to_zero_enabled": "scale_to_zero",
    "min_provisioned_concurrency": "min_concurrency",
    "max_provisioned_concurrency": "max_concurrency",
}
STALE_FORM_MESSAGE = (
    "This endpoint changed since you opened this form (someone saved a change, or a rollout finished). "
    "Nothing was saved: reload the form to start from the current config, then make your change again."
)


class EndpointEditor:
    """The create/edit form as a whole: the name (create only), the served entities with their
    variables, and the traffic split. ``config_body`` is the API's config JSON."""

    def __init__(
        self,
        *,
        creating: bool,
        entity_choices: list,
        secret_choices: list | None = None,
        data: QueryDict | None = None,
        initial_entities: list[dict[str, Any]] | None = None,
        etag: str = "",
        name: str = "",
    ) -> None:
        self.creating = creating
        self.name_form = EndpointNameForm(data, initial={"name": name}) if creating else None
        self.entities = EntityFormSet(
            data,
            prefix="entities",
            initial=initial_entities,
            form_kwargs={"entity_choices": entity_choices, "secret_choices": secret_choices or []},
        )
        self.etag = (data.get("etag", "") if data is not None else etag) or ""
        self.errors: list[str] = []  # about the whole form: no field named
        self.split_errors: list[str] = []  # about the traffic split as a whole (the sum)
        self._kept: list[ServedEntityForm] = []

    @property
    def name(self) -> str:
        if self.name_form is None:
            return ""
        return (self.name_form.cleaned_data.get("name") or "").strip()

    def is_valid(self) -> bool:
        valid = self.entities.is_valid()
        if self.name_form is not None:
            valid = self.name_form.is_valid() and valid
        return valid

    def has_errors(self) -> bool:
        name_errors = bool(self.name_form.errors) if self.name_form is not None and self.name_form.is_bound else False
        entity_errors = self.entities.is_bound and (
            any(f.errors or f.env_errors for f in self.entities.forms) or bool(self.entities.non_form_errors())
        )
        return bool(self.errors or self.split_errors or name_errors or entity_errors)

    def add_entity_row(self) -> None:
        """Offer one more served entity (the form's "Add served entity" without JavaScript)."""
        data = self.entities.data.copy()
        key = f"{self.entities.prefix}-TOTAL_FORMS"
        index = int(data.get(key) or 0)
        data[key] = str(index + 1)
        defaults = {"workload_size": "Small", "workload_type": "CPU", "traffic": "0"}
        for field, value in defaults.items():
            data[f"{self.entities.prefix}-{index}-{field}"] = value
        self.entities = EntityFormSet(
            data, prefix=self.entities.prefix, form_kwargs=self.entities.form_kwargs, initial=self.entities.initial
        )

    def kept_forms(self) -> list[ServedEntityForm]:
        """The served-entity forms that make the config: filled in and not marked for removal."""
        return [f for f in self.entities.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]

    def config_body(
        self, *, extras: dict[str, dict[str, Any]] | None = None, stored_env: dict[str, dict[str, str]] | None = None
    ) -> dict[str, Any]:
        """The config as the API takes it (``PUT …/config``, or ``config`` of a create).

        ``extras`` are the fields this form does not show, by served entity name, carried over
        from the current config so that saving the form does not drop them. ``stored_env``: the
        current environment variables by served entity name; a variable of the same entity posted
        back as ``[REDACTED]`` (the form never shows plain values) keeps its stored value.
        """
        self._kept = self.kept_forms()
        entities: list[dict[str, Any]] = []
        routes: list[dict[str, Any]] = []
        for form in self._kept:
            data = form.cleaned_data
            if data.get("kind") == EXTERNAL:
                external = form.external_model_body()
                name = (data.get("name") or "").strip()
                route_name = name or default_external_entity_name(external["name"])
                entity = {**((extras or {}).get(route_name) or {}), "external_model": external}
                if name:
                    entity["name"] = name
                entities.append(entity)
                routes.append({"served_model_name": route_name, "traffic_percentage": data.get("traffic")})
                continue
            entity_name, entity_version = split_entity_value(data.get("entity") or "")
            name = (data.get("name") or "").strip()
            stored = (stored_env or {}).get(name or validation.default_served_entity_name(entity_name, entity_version))
            env = {
                k: stored[k] if v == validation.REDACTED and stored and k in stored else v
                for k, v in form.environment_vars().items()
            }
            entity: dict[str, Any] = {
                **((extras or {}).get(name) or {}),
                "entity_name": entity_name,
                "entity_version": entity_version,
                "workload_type": data.get("workload_type") or "CPU",
                "scale_to_zero_enabled": bool(data.get("scale_to_zero")),
                "environment_vars": env,
            }
            if name:
                entity["name"] = name
            if data.get("workload_size"):
                entity["workload_size"] = data["workload_size"]
            for field, key in (
                ("min_concurrency", "min_provisioned_concurrency"),
                ("max_concurrency", "max_provisioned_concurrency"),
            ):
                if data.get(field) is not None:
                    entity[key] = data[field]
            entities.append(entity)
            routes.append(
                {
                    "served_model_name": name or validation.default_served_entity_name(entity_name, entity_version),
                    "traffic_percentage": data.get("traffic"),
                }
            )
        body: dict[str, Any] = {"served_entities": entities}
        if any(r["traffic_percentage"] is not None for r in routes):
            body["traffic_config"] = {"routes": routes}
        return body

    def add_domain_error(self, exc: DomainError) -> None:
        """Show the service's refusal next to the field its message names."""
        message = exc.message
        kept = self._kept or self.kept_forms()
        if isinstance(exc, PreconditionFailed):
            self.errors.append(STALE_FORM_MESSAGE)
            return
        if self.name_form is not None and (
            message.startswith("name ")
            or isinstance(exc, ResourceAlreadyExists)
            or (isinstance(exc, ResourceConflict) and "already exists" in message)
        ):
            self.name_form.add_error("name", message)
            return
        if match := _ENTITY_FIELD.match(message):
            index, api_field = int(match.group(1)), match.group(2)
            if index < len(kept):
                form, local = kept[index], _without_location(message)
                if api_field == "external_model" and (path := _EXTERNAL_PATH.match(message)):
                    form.add_external_error(path.group(1), local)
                elif api_field == "environment_vars":
                    form.env_errors.append(local)
                elif api_field in _FORM_FIELD:
                    form.add_error(_FORM_FIELD[api_field], local)
                else:
                    form.add_error(None, local)
                return
        if match := _ROUTE_FIELD.match(message):
            index = int(match.group(1))
            if index < len(kept):
                kept[index].add_error("traffic", _without_location(message))
                return
        if message.startswith("config.traffic_config"):
            self.split_errors.append(message.replace("config.traffic_config.routes must", "The shares must", 1))
            return
        if match := _DUPLICATE_NAME.search(message):
            duplicates = [f for f in kept if f.display_name() == match.group(1)]
            if duplicates:
                duplicates[-1].add_error("name", message)
                return
        if match := _SECRET_SCOPE.search(message):
            # The service's check that the user may read each referenced secret names no field.
            scope = next(g for g in match.groups() if g)
            for form in kept:
                for field, reference in form.secret_references():
                    parsed = parse_reference(reference)
                    if parsed and parsed[0] == scope:
                        form.add_error(field, message)
                        return
        if match := _MISSING_MODEL.match(message):
            version, model = match.group(1), match.group(2)
            for form in kept:
                entity_name, entity_version = split_entity_value(form.cleaned_data.get("entity") or "")
                if entity_name == model and (version is None or entity_version == version):
                    form.add_error("entity", message)
                    return
        self.errors.append(message)


def _without_location(message: str) -> str:
    """``config.served_entities[1].environment_vars: 'x' is …`` → ``environment_vars: 'x' is …``: next to
    the served entity's own fields, the index into the body says nothing the page does not show."""
    return message[message.index("]") + 1 :].lstrip(".: ") or message


def entity_initial(entity: Any, traffic: int | None) -> dict[str, Any]:
    """A served entity row (endpoints_app.models.ServedEntity) as the editor's initial values."""
    if entity.external_model is not None:
        external = entity.external_model
        initial: dict[str, Any] = {
            "kind": EXTERNAL,
            "name": entity.name,
            "provider": external.get("provider"),
            "external_name": external.get("name"),
            "task": external.get("task"),
            "traffic": traffic,
            "workload_size": "Small",
            "workload_type": "CPU",
        }
        provider = PROVIDERS.get(external.get("provider") or "")
        block = external.get(provider.config_key) if provider is not None else None
        for config_input in config_inputs(provider) if provider is not None and isinstance(block, dict) else []:
            # Stored configs hold references only (plaintext is stored as a secret on the way in).
            value = _dig(block, config_input.path)
            if isinstance(value, str):
                initial[config_input.field_name] = value
        return initial
    return {
        "kind": MODEL,
        "entity": entity_value(entity.entity_name, entity.entity_version),
        "name": entity.name,
        "workload_size": entity.workload_size,
        "workload_type": entity.workload_type,
        "scale_to_zero": entity.scale_to_zero_enabled,
        "min_concurrency": entity.min_provisioned_concurrency,
        "max_concurrency": entity.max_provisioned_concurrency,
        "traffic": traffic,
        # Plain values are never sent back to the browser; saving the form keeps them (config_body).
        "environment_vars": validation.redact_environment_vars(entity.environment_vars),
    }


class ChangeRequestFilterForm(forms.Form):
    """The page's filters, named as the API's (``status`` in any case, ``endpoint_name``)."""

    status = forms.ChoiceField(
        required=False, choices=[("", "Any status"), *ChangeRequestStatus.choices], label="Status"
    )
    endpoint_name = forms.CharField(required=False, max_length=255, label="Endpoint")

    def __init__(self, data=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        if data is not None and data.get("status"):
            data = data.copy()
            data["status"] = data["status"].upper()
        super().__init__(data, *args, **kwargs)


class DecisionForm(forms.Form):
    comment = forms.CharField(
        required=False, max_length=4000, label="Comment", widget=forms.Textarea(attrs={"rows": 3})
    )


# --- secrets -------------------------------------------------------------------------------------


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


# --- AI gateway ----------------------------------------------------------------------------------

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
        data = self.limits.data.copy()
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
