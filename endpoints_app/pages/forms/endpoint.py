"""The endpoint editor: the create and edit form, from the endpoint's name to its traffic split.

The form reads what the user typed and turns it into the config JSON the API takes; every rule
about a valid config stays in endpoints_app.validation and the services. When a service refuses
the body, ``EndpointEditor.add_domain_error`` puts its message next to the field the message names
(``config.served_entities[1].workload_size …`` → the workload size of the second served entity;
``….external_model.openai_config.openai_api_key …`` → that credential's picker), or at the top of
the form when it names none.

A served entity is a registered model version or an external model; the external model's config
fields are built in ``external_model``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, cast

from django import forms
from django.http import QueryDict

from endpoints_app import capacity, validation
from endpoints_app.errors import DomainError, PreconditionFailed, ResourceAlreadyExists, ResourceConflict
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import CHAT, TASKS
from endpoints_app.pages.forms.common import STALE_FORM_MESSAGE
from endpoints_app.pages.forms.external_model import (
    DEFAULT_PROVIDER,
    config_form_field,
    config_inputs,
    field_label,
    plaintext_form_field,
    provider_choices,
    value_at,
)
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
# What a served-entity row serves.
MODEL, EXTERNAL = "model", "external"
KIND_CHOICES = [(MODEL, "A registered model version"), (EXTERNAL, "An external model (OpenAI, Anthropic, …)")]
TASK_CHOICES = [(t, t) for t in TASKS]


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
    # Shadow traffic (traffic_config.shadow): the share of queries mirrored to this entity, whose
    # answers are compared with the primary's and never returned. Blank or 0: not a shadow.
    shadow = forms.IntegerField(
        label="Shadow %",
        required=False,
        widget=forms.NumberInput(attrs={"min": 0, "max": 100, "step": 1, "inputmode": "numeric"}),
    )

    def __init__(self, *args: Any, entity_choices: list, secret_choices: list | None = None, **kwargs: Any) -> None:
        """``secret_choices``: the ``{{secrets/scope/key}}`` references the user may pick, grouped by
        scope (optgroups), plus those the endpoint uses now."""
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["entity"]).choices = entity_choices  # declared a ChoiceField above
        self.env_errors: list[str] = []
        for provider in PROVIDERS.values():
            for config_input in config_inputs(provider):
                self.fields[config_input.field_name] = config_form_field(config_input, secret_choices or [])
                if config_input.spec.secret:
                    self.fields[config_input.plaintext_name] = plaintext_form_field()

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
                    "groups": [
                        {"name": name, "label": field_label(name), "inputs": rows} for name, rows in groups.items()
                    ],
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
        data = QueryDict(mutable=True)
        data.update(self.entities.data)  # request.POST, or {} when unbound: every value of every key
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
        self,
        *,
        extras: dict[str, dict[str, Any]] | None = None,
        stored_env: dict[str, dict[str, str]] | None = None,
        tolerances: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """The config as the API takes it (``PUT …/config``, or ``config`` of a create).

        ``extras`` are the fields this form does not show, by served entity name, carried over
        from the current config so that saving the form does not drop them. ``stored_env``: the
        current environment variables by served entity name; a variable of the same entity posted
        back as ``[REDACTED]`` (the form never shows plain values) keeps its stored value.
        ``tolerances``: the current shadows' agreement tolerances (not shown), kept.
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
                entity: dict[str, Any] = {**((extras or {}).get(route_name) or {}), "external_model": external}
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
            entity = {
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
        kept_tolerances = tolerances or {}
        shadow = [
            {
                "served_entity_name": route["served_model_name"],
                "percentage": form.cleaned_data["shadow"],
                **(
                    {"agreement_tolerance": kept_tolerances[route["served_model_name"]]}
                    if route["served_model_name"] in kept_tolerances
                    else {}
                ),
            }
            for form, route in zip(self._kept, routes, strict=True)
            if form.cleaned_data.get("shadow")
        ]
        if shadow:
            body.setdefault("traffic_config", {})["shadow"] = shadow
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


def entity_initial(entity: Any, traffic: int | None, shadow: int | None = None) -> dict[str, Any]:
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
        if provider is not None and isinstance(block, dict):
            for config_input in config_inputs(provider):
                # Stored configs hold references only (plaintext is stored as a secret on the way in).
                value = value_at(block, config_input.path)
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
        "shadow": shadow,
        # Plain values are never sent back to the browser; saving the form keeps them (config_body).
        "environment_vars": validation.redact_environment_vars(entity.environment_vars),
    }
