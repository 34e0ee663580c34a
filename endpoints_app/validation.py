"""Parsing and validation of request bodies into plain, normalised values.

Every rule about what a valid endpoint config is lives here, so the API, the CLI (through the
API) and later the dashboard forms reject the same input with the same message. Unknown fields
are ignored (the Databricks SDK may send fields newer than this server knows); wrong types are
rejected with INVALID_PARAMETER_VALUE naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from endpoints_app import egress
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway import guardrails, ratelimit
from endpoints_app.gateway.providers import PROVIDERS, TASKS
from endpoints_app.gateway.providers.base import CHAT, Field, iter_secret_fields
from endpoints_app.secret_references import parse_reference

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_NAME_LENGTH = 63
MAX_SERVED_ENTITIES = 10
MAX_PROVISIONED_CONCURRENCY = 2**31 - 1  # the column's range (a PositiveIntegerField on every database)
WORKLOAD_SIZES = ("Small", "Medium", "Large")
WORKLOAD_TYPES = (
    "CPU",
    "CPU_MEDIUM",
    "CPU_LARGE",
    "GPU_SMALL",
    "GPU_MEDIUM",
    "GPU_LARGE",
    "GPU_XLARGE",
    "GPU_XLARGE_8",
    "MULTIGPU_MEDIUM",
)
# Input fields we keep and echo back verbatim but do not act on (yet).
_PASSTHROUGH_ENTITY_FIELDS = (
    "instance_profile_arn",
    "burst_scaling_enabled",
    "min_provisioned_throughput",
    "max_provisioned_throughput",
    "provisioned_model_units",
)


class Plaintext:
    """A raw credential from a ``*_plaintext`` field, held only until the service stores it as a
    secret. Its repr hides the value and JSON cannot encode it, so it cannot reach a log line, an
    audit row or a stored config by accident."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Plaintext(***)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plaintext) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


# Fields of a served entity that mean a model served here; an external model cannot have them.
_CUSTOM_MODEL_FIELDS = (
    "entity_name",
    "entity_version",
    "workload_size",
    "workload_type",
    "scale_to_zero_enabled",
    "min_provisioned_concurrency",
    "max_provisioned_concurrency",
    "environment_vars",
)


@dataclass(frozen=True)
class ServedEntitySpec:
    name: str
    entity_name: str
    entity_version: str
    workload_size: str
    workload_type: str
    scale_to_zero_enabled: bool
    min_provisioned_concurrency: int | None
    max_provisioned_concurrency: int | None
    environment_vars: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    # {"provider", "name", "task", "<provider>_config": {...}} for an external model (reference
    # §2.8). Credentials are secret references, or ``Plaintext`` until the service stores them.
    external_model: dict[str, Any] | None = None


@dataclass(frozen=True)
class CoreConfig:
    served_entities: list[ServedEntitySpec]
    routes: list[dict[str, Any]]  # [{"served_model_name", "served_entity_name", "traffic_percentage"}]
    auto_capture_config: dict[str, Any] | None
    legacy_served_models: bool
    # Modelfleet's shadow traffic (``traffic_config.shadow``): served entities that get a mirrored
    # copy of a share of the queries; [{"served_entity_name", "percentage", "agreement_tolerance"}].
    shadow: list[dict[str, Any]] = field(default_factory=list)

    @property
    def traffic_config(self) -> dict[str, Any]:
        """``traffic_config`` as stored: the routes, and the shadows only when there are some (so a
        config without them reads back exactly as Databricks writes it)."""
        if self.shadow:
            return {"routes": self.routes, "shadow": self.shadow}
        return {"routes": self.routes}

    @property
    def is_external(self) -> bool:
        """The config serves external models (validation refuses mixing them with custom ones)."""
        return any(e.external_model is not None for e in self.served_entities)


@dataclass(frozen=True)
class CreateRequest:
    name: str
    config: CoreConfig
    tags: list[tuple[str, str]]
    description: str
    route_optimized: bool
    budget_policy_id: str
    ai_gateway: dict[str, Any] | None
    email_notifications: dict[str, Any] | None
    telemetry_config: dict[str, Any] | None


# --- small typed readers ----------------------------------------------------------------------


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParameterValue(f"{where} must be a JSON object, got {_type_name(value)}")
    return value


def string_field(data: dict[str, Any], key: str) -> str:
    """``data[key]`` when it is a string, "" when it is missing or null; any other JSON (a number,
    an object) is refused rather than turned into its text."""
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameterValue(f"{key} must be a string, got {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _str(data: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidParameterValue(f"{where}.{key} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidParameterValue(f"{where}.{key} must be a string, got {_type_name(value)}")
    text = str(value).strip()
    if required and not text:
        raise InvalidParameterValue(f"{where}.{key} must not be empty")
    return text


def _int(data: dict[str, Any], key: str, where: str) -> int | None:
    """An integer; numeric strings are accepted (Databricks' own examples send "90")."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidParameterValue(f"{where}.{key} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value.strip())
    raise InvalidParameterValue(f"{where}.{key} must be an integer, got {value!r}")


def _bool(data: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise InvalidParameterValue(f"{where}.{key} must be true or false, got {value!r}")


def _optional_object(data: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    return require_object(value, f"{where}.{key}")


def validate_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidParameterValue(f"{what} is required and must be a string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidParameterValue(f"{what} '{name[:80]}' is longer than {MAX_NAME_LENGTH} characters")
    if not NAME_RE.fullmatch(name):  # not match: its $ would let a trailing newline through
        raise InvalidParameterValue(
            f"{what} '{name}' is invalid: use only alphanumeric characters, dashes and underscores"
        )
    return name


def default_served_entity_name(entity_name: str, entity_version: str) -> str:
    """``<last dot-segment of entity_name>-<version>`` (reference §3), made name-safe."""
    base = entity_name.rsplit(".", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9_-]", "-", base)
    return f"{base}-{entity_version}"


# --- config ------------------------------------------------------------------------------------


def parse_core_config(data: Any, *, where: str = "config") -> CoreConfig:
    data = require_object(data, where)
    entities_raw = data.get("served_entities")
    models_raw = data.get("served_models")
    if entities_raw is not None and models_raw is not None:
        raise InvalidParameterValue(f"{where}: give served_entities or served_models, not both")
    legacy = entities_raw is None and models_raw is not None
    items = models_raw if legacy else entities_raw
    key = "served_models" if legacy else "served_entities"
    if items is None:
        raise InvalidParameterValue(f"{where}.served_entities is required")
    if not isinstance(items, list):
        raise InvalidParameterValue(f"{where}.{key} must be an array, got {_type_name(items)}")
    if not items:
        raise InvalidParameterValue(f"{where}.{key} must name at least one served entity")
    if len(items) > MAX_SERVED_ENTITIES:
        raise InvalidParameterValue(
            f"{where}.{key} has {len(items)} entries; an endpoint serves at most {MAX_SERVED_ENTITIES}"
        )

    entities = [_parse_entity(item, f"{where}.{key}[{i}]", legacy=legacy) for i, item in enumerate(items)]
    seen: set[str] = set()
    for entity in entities:
        if entity.name in seen:
            raise InvalidParameterValue(
                f"{where}.{key}: served entity name '{entity.name}' is used twice; names must be unique within an endpoint"
            )
        seen.add(entity.name)
    _check_mixing(entities, f"{where}.{key}")

    shadow = _parse_shadow(data.get("traffic_config"), entities, where)
    shadow_names = {s["served_entity_name"] for s in shadow}
    routes = _parse_traffic(data.get("traffic_config"), entities, where, shadow_names=shadow_names)
    for route in routes:
        if route["served_entity_name"] in shadow_names and route["traffic_percentage"] > 0:
            raise InvalidParameterValue(
                f"{where}.traffic_config: served entity '{route['served_entity_name']}' is a shadow and takes "
                f"{route['traffic_percentage']} % of the traffic; a shadow gets only mirrored queries "
                "(give it traffic_percentage 0, or remove it from traffic_config.shadow)"
            )
    auto_capture = _optional_object(data, "auto_capture_config", where)
    return CoreConfig(
        served_entities=entities,
        routes=routes,
        auto_capture_config=auto_capture,
        legacy_served_models=legacy,
        shadow=shadow,
    )


def _check_mixing(entities: list[ServedEntitySpec], where: str) -> None:
    """One endpoint serves either external models, all for one task, or custom models (§3)."""
    external = [e.name for e in entities if e.external_model is not None]
    custom = [e.name for e in entities if e.external_model is None]
    if external and custom:
        raise InvalidParameterValue(
            f"{where}: an endpoint serves either external models or custom models, not both "
            f"(external: {', '.join(external)}; custom: {', '.join(custom)})"
        )
    tasks = sorted({e.external_model["task"] for e in entities if e.external_model is not None})
    if len(tasks) > 1:
        raise InvalidParameterValue(
            f"{where}: all external models of an endpoint must share one task (got {', '.join(tasks)})"
        )


def _parse_entity(raw: Any, where: str, *, legacy: bool) -> ServedEntitySpec:
    data = require_object(raw, where)
    if data.get("external_model") is not None:
        return _parse_external_entity(data, where, legacy=legacy)
    name_key, version_key = ("model_name", "model_version") if legacy else ("entity_name", "entity_version")
    entity_name = _str(data, name_key, where, required=True)
    entity_version = _str(data, version_key, where, required=True)
    assert entity_name is not None and entity_version is not None

    workload_size = _str(data, "workload_size", where)
    min_pc = _int(data, "min_provisioned_concurrency", where)
    max_pc = _int(data, "max_provisioned_concurrency", where)
    if workload_size is not None:
        if min_pc is not None or max_pc is not None:
            raise InvalidParameterValue(f"{where}: give workload_size or min/max_provisioned_concurrency, not both")
        matches = [s for s in WORKLOAD_SIZES if s.lower() == workload_size.lower()]
        if not matches:
            raise InvalidParameterValue(
                f"{where}.workload_size '{workload_size}' is invalid; choose one of {', '.join(WORKLOAD_SIZES)}"
            )
        workload_size = matches[0]
    elif min_pc is None and max_pc is None:
        workload_size = "Small"
    else:
        if min_pc is None or max_pc is None:
            raise InvalidParameterValue(
                f"{where}: min_provisioned_concurrency and max_provisioned_concurrency go together"
            )
        if min_pc < 0 or max_pc < 1 or min_pc > max_pc or max_pc > MAX_PROVISIONED_CONCURRENCY:
            raise InvalidParameterValue(
                f"{where}: provisioned concurrency must satisfy 0 <= min <= max, max >= 1 and max <= "
                f"{MAX_PROVISIONED_CONCURRENCY} (got {min_pc}..{max_pc})"
            )

    workload_type = _str(data, "workload_type", where) or "CPU"
    if workload_type not in WORKLOAD_TYPES:
        raise InvalidParameterValue(
            f"{where}.workload_type '{workload_type}' is invalid; choose one of {', '.join(WORKLOAD_TYPES)}"
        )

    env = parse_environment_vars(data.get("environment_vars"), f"{where}.environment_vars")

    name = data.get("name")
    if name is None or name == "":
        name = default_served_entity_name(entity_name, entity_version)
    validate_name(name, f"{where}.name")

    extra = {k: data[k] for k in _PASSTHROUGH_ENTITY_FIELDS if data.get(k) is not None}
    return ServedEntitySpec(
        name=name,
        entity_name=entity_name,
        entity_version=entity_version,
        workload_size=workload_size or "",
        workload_type=workload_type,
        scale_to_zero_enabled=_bool(data, "scale_to_zero_enabled", where),
        min_provisioned_concurrency=min_pc,
        max_provisioned_concurrency=max_pc,
        environment_vars=env,
        extra=extra,
    )


# --- environment_vars ------------------------------------------------------------------------
# What the API and the dashboard show instead of a plain value (a secret reference is shown as is).
REDACTED = "[REDACTED]"
MAX_ENVIRONMENT_VARS = 100
MAX_ENVIRONMENT_VALUE_CHARS = 16 * 1024
# Variables that change what code the model server loads, where it sends traffic or whom it trusts,
# or that belong to the control plane: model code is hostile, but its environment must not let a
# config hijack the interpreter, the loader or the replica's network (compared in upper case).
_FORBIDDEN_ENV_PREFIXES = {
    "LD_": "dynamic loader variables (LD_*) change what code the model server loads",
    "DYLD_": "dynamic loader variables (DYLD_*) change what code the model server loads",
    "PYTHON": "interpreter variables (PYTHON*) change what code the model server runs",
    "BASH_FUNC_": "exported shell functions run code in the model server's shell",
    "GUNICORN_": "server variables (GUNICORN_*) change how and where the model server listens",
    "MODELFLEET_": "MODELFLEET_* variables belong to the control plane",
    "DJANGO_": "DJANGO_* variables belong to the control plane",
}
_FORBIDDEN_ENV_NAMES = {
    **dict.fromkeys(
        ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY"),
        "proxy variables redirect the model server's outbound traffic",
    ),
    **dict.fromkeys(
        ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
        "trust-store variables change which TLS certificates the model server accepts",
    ),
    **dict.fromkeys(
        ("GLIBC_TUNABLES", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "LOCALDOMAIN"),
        "C library variables change what code or name resolution the model server uses",
    ),
    **dict.fromkeys(
        ("BASH_ENV", "ENV", "IFS", "SHELLOPTS", "PS4", "PATH", "HOME", "TMPDIR", "TMP", "TEMP", "USER", "SHELL"),
        "the runtime sets this variable for the sandboxed replica",
    ),
    **dict.fromkeys(
        ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY"),
        "this variable belongs to the control plane",
    ),
    # The replica must not reach the control plane's registry nor turn telemetry back on.
    **dict.fromkeys(
        ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"),
        "the runtime sets this variable (registry access and telemetry are the control plane's)",
    ),
}


_SECRET_REFERENCE_START = re.compile(r"\{\{\s*secrets\s*/", re.IGNORECASE)


def forbidden_environment_var(name: str) -> str | None:
    """Why a variable may not be set on a served entity, or None if it may."""
    upper = name.upper()
    reason = _FORBIDDEN_ENV_NAMES.get(upper)
    if reason is None:
        reason = next((why for prefix, why in _FORBIDDEN_ENV_PREFIXES.items() if upper.startswith(prefix)), None)
    return reason


def parse_environment_vars(raw: Any, where: str) -> dict[str, str]:
    """A served entity's ``environment_vars``: names that cannot hijack the model server, string
    values (a whole value ``{{secrets/scope/key}}`` is a secret reference: the service checks the
    actor's READ on it, and the runtime resolves it when the replica starts)."""
    if raw is None:
        return {}
    data = require_object(raw, where)
    if len(data) > MAX_ENVIRONMENT_VARS:
        raise InvalidParameterValue(f"{where}: at most {MAX_ENVIRONMENT_VARS} variables (got {len(data)})")
    env: dict[str, str] = {}
    for key, value in data.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
            raise InvalidParameterValue(f"{where}: '{key[:130]}' is not a valid variable name")
        reason = forbidden_environment_var(key)
        if reason is not None:
            raise InvalidParameterValue(f"{where}: '{key}' may not be set: {reason}")
        if not isinstance(value, str):
            raise InvalidParameterValue(f"{where}.{key} must be a string")
        if len(value) > MAX_ENVIRONMENT_VALUE_CHARS:
            raise InvalidParameterValue(f"{where}.{key} is longer than {MAX_ENVIRONMENT_VALUE_CHARS} characters")
        if value == REDACTED:
            raise InvalidParameterValue(
                f"{where}.{key} is '{REDACTED}', what responses show instead of a value: send the value itself "
                "(or a {{secrets/<scope>/<key>}} reference)"
            )
        if _SECRET_REFERENCE_START.search(value) and environment_secret_reference(value) is None:
            # Whatever resolves references at replica start, one that this check did not see as
            # a reference (and so did not check READ on) must never reach it.
            raise InvalidParameterValue(
                f"{where}.{key}: a secret reference must be the whole value, like {{{{secrets/<scope>/<key>}}}}"
            )
        env[key] = value
    return env


def environment_secret_reference(value: str) -> tuple[str, str] | None:
    """``(scope, key)`` when an environment variable's whole value is a secret reference."""
    return parse_reference(value.strip())


def redact_environment_vars(env: dict[str, str] | None) -> dict[str, str]:
    """The variables as shown to anyone (API responses, pages, diffs, audit rows): names, secret
    references as written, and ``[REDACTED]`` for every plain value."""
    return {
        k: v if isinstance(v, str) and environment_secret_reference(v) else REDACTED for k, v in (env or {}).items()
    }


def _parse_external_entity(data: dict[str, Any], where: str, *, legacy: bool) -> ServedEntitySpec:
    if legacy:
        raise InvalidParameterValue(f"{where}.external_model: external models go in served_entities, not served_models")
    # A false or empty value says nothing contrary (some clients send every field).
    conflicting = [k for k in _CUSTOM_MODEL_FIELDS if data.get(k) not in (None, False, {}, "")]
    if conflicting:
        raise InvalidParameterValue(
            f"{where}: external_model cannot be combined with {', '.join(conflicting)} "
            "(those describe a model served by Modelfleet itself)"
        )
    external = parse_external_model(data["external_model"], f"{where}.external_model")
    name = data.get("name")
    if name is None or name == "":
        # Reference §3: the external model's name with "." and ":" replaced by "-".
        name = re.sub(r"[.:]", "-", external["name"])
    validate_name(name, f"{where}.name")
    extra = {k: data[k] for k in _PASSTHROUGH_ENTITY_FIELDS if data.get(k) is not None}
    return ServedEntitySpec(
        name=name,
        entity_name="",
        entity_version="",
        workload_size="",
        workload_type="",
        scale_to_zero_enabled=False,
        min_provisioned_concurrency=None,
        max_provisioned_concurrency=None,
        environment_vars={},
        extra=extra,
        external_model=external,
    )


def parse_external_model(raw: Any, where: str) -> dict[str, Any]:
    """``{"provider", "name", "task", "<config block>": {...}}`` with exactly the provider's block.

    ``task`` defaults to ``llm/v1/chat`` (the Databricks docs' own example leaves it out).
    Messages never repeat a credential's value.
    """
    data = require_object(raw, where)
    provider_name = _str(data, "provider", where, required=True)
    provider = PROVIDERS.get(provider_name or "")
    if provider is None:
        raise InvalidParameterValue(
            f"{where}.provider '{provider_name}' is not a supported provider; choose one of {', '.join(sorted(PROVIDERS))}"
        )
    model = _str(data, "name", where, required=True)
    task = _str(data, "task", where) or CHAT
    if task not in TASKS:
        raise InvalidParameterValue(f"{where}.task '{task}' is invalid; choose one of {', '.join(TASKS)}")
    if task not in provider.tasks:
        raise InvalidParameterValue(
            f"{where}.task '{task}' is not offered by provider '{provider.name}' (it offers {', '.join(provider.tasks)})"
        )
    others = sorted(
        p.config_key for p in PROVIDERS.values() if p is not provider and data.get(p.config_key) is not None
    )
    if others:
        raise InvalidParameterValue(
            f"{where}.{others[0]} does not go with provider '{provider.name}'; give only {provider.config_key}"
        )
    if data.get(provider.config_key) is None:
        raise InvalidParameterValue(f"{where}.{provider.config_key} is required for provider '{provider.name}'")
    block_where = f"{where}.{provider.config_key}"
    config = _parse_config_block(provider.fields, data[provider.config_key], block_where)
    provider.check_config(config, block_where)
    for name, url in provider.destinations(config):  # the egress policy, at config time (endpoints_app.egress)
        try:
            egress.check_url(url)
        except egress.EgressRefused as exc:
            raise InvalidParameterValue(f"{block_where}.{name} '{url}': {exc}") from None
    return {"provider": provider.name, "name": model, "task": task, provider.config_key: config}


def plaintext_credentials(config: CoreConfig) -> list[str]:
    """Where the config gives a credential as ``*_plaintext`` (``<served entity>.<field>``)."""
    found = []
    for entity in config.served_entities:
        if entity.external_model is None:
            continue
        provider = PROVIDERS[entity.external_model["provider"]]
        block = entity.external_model[provider.config_key]
        for path, holder, name in iter_secret_fields(provider.fields, block):
            if isinstance(holder.get(f"{name}_plaintext"), Plaintext):
                found.append(f"{entity.name}.{path}_plaintext")
    return found


def _parse_config_block(fields: tuple[Field, ...], raw: Any, where: str) -> dict[str, Any]:
    data = require_object(raw, where)
    out: dict[str, Any] = {}
    for spec in fields:
        if spec.fields is not None:  # a nested object, e.g. custom_provider_config.api_key_auth
            if data.get(spec.name) is not None:
                out[spec.name] = _parse_config_block(spec.fields, data[spec.name], f"{where}.{spec.name}")
            elif spec.required:
                raise InvalidParameterValue(f"{where}.{spec.name} is required")
            continue
        if spec.secret:
            plain_name = f"{spec.name}_plaintext"
            reference, plain = data.get(spec.name), data.get(plain_name)
            if reference is not None and plain is not None:
                raise InvalidParameterValue(f"{where}: give {spec.name} or {plain_name}, not both")
            if reference is not None:
                if not isinstance(reference, str) or parse_reference(reference.strip()) is None:
                    raise InvalidParameterValue(
                        f"{where}.{spec.name} must be a secret reference like {{{{secrets/<scope>/<key>}}}}; "
                        f"to give the raw value, use {plain_name} instead"
                    )
                out[spec.name] = reference.strip()
            elif plain is not None:
                if not isinstance(plain, str) or not plain.strip():
                    raise InvalidParameterValue(f"{where}.{plain_name} must be a non-empty string")
                out[plain_name] = Plaintext(plain.strip())
            elif spec.required:
                raise InvalidParameterValue(f"{where}.{spec.name} (or {plain_name}) is required")
            continue
        value = _str(data, spec.name, where, required=spec.required)
        if not value:
            continue
        if spec.choices:
            matches = [c for c in spec.choices if c == value or (spec.case_insensitive and c.lower() == value.lower())]
            if not matches:
                raise InvalidParameterValue(
                    f"{where}.{spec.name} '{value}' is invalid; choose one of {', '.join(spec.choices)}"
                )
            value = matches[0]
        if spec.url and not re.match(r"^https?://[^\s/]+", value):
            raise InvalidParameterValue(f"{where}.{spec.name} '{value}' must be an http:// or https:// URL")
        out[spec.name] = value
    return out


def _parse_traffic(
    raw: Any, entities: list[ServedEntitySpec], where: str, *, shadow_names: set[str] | None = None
) -> list[dict[str, Any]]:
    names = [e.name for e in entities]
    if raw is None or (isinstance(raw, dict) and not raw.get("routes")):
        primaries = [n for n in names if n not in (shadow_names or set())]
        if len(primaries) == 1:  # one entity (beside its shadows) takes all the traffic
            return [{"served_model_name": primaries[0], "served_entity_name": primaries[0], "traffic_percentage": 100}]
        raise InvalidParameterValue(
            f"{where}.traffic_config is required when an endpoint serves more than one entity "
            f"(give routes for {', '.join(names)} summing to 100)"
        )
    traffic = require_object(raw, f"{where}.traffic_config")
    routes_raw = traffic.get("routes")
    if not isinstance(routes_raw, list):
        raise InvalidParameterValue(f"{where}.traffic_config.routes must be an array")
    routes: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(routes_raw):
        rw = f"{where}.traffic_config.routes[{i}]"
        route = require_object(item, rw)
        target = _str(route, "served_model_name", rw) or _str(route, "served_entity_name", rw)
        if not target:
            raise InvalidParameterValue(f"{rw} must name served_model_name (or served_entity_name)")
        if target not in names:
            raise InvalidParameterValue(
                f"{rw} names served model '{target}', which is not in this config (served: {', '.join(names)})"
            )
        if target in seen:
            raise InvalidParameterValue(f"{rw}: served model '{target}' has more than one route")
        seen.add(target)
        pct = _int(route, "traffic_percentage", rw)
        if pct is None:
            raise InvalidParameterValue(f"{rw}.traffic_percentage is required")
        if not 0 <= pct <= 100:
            raise InvalidParameterValue(f"{rw}.traffic_percentage must be between 0 and 100, got {pct}")
        routes.append({"served_model_name": target, "served_entity_name": target, "traffic_percentage": pct})
    total = sum(r["traffic_percentage"] for r in routes)
    if total != 100:
        raise InvalidParameterValue(f"{where}.traffic_config.routes must sum to 100, got {total}")
    return routes


MAX_AGREEMENT_TOLERANCE = 1e12


def stored_shadows(traffic_config: Any) -> dict[str, dict[str, Any]]:
    """A stored config's shadows by served entity name: {"percentage", "agreement_tolerance"}."""
    if not isinstance(traffic_config, dict):
        return {}
    return {
        str(s["served_entity_name"]): {
            "percentage": int(s.get("percentage") or 0),
            "agreement_tolerance": float(s.get("agreement_tolerance") or 0.0),
        }
        for s in traffic_config.get("shadow") or []
        if isinstance(s, dict) and s.get("served_entity_name")
    }


def _parse_shadow(raw: Any, entities: list[ServedEntitySpec], where: str) -> list[dict[str, Any]]:
    """``traffic_config.shadow`` (a Modelfleet extension beside the routes, which Databricks'
    clients ignore): [{"served_entity_name", "percentage" 0-100, "agreement_tolerance" >= 0}].

    A shadow is a custom-model entity of this config that gets a mirrored copy of ``percentage`` %
    of the queries the routes send (its answers are compared, never returned); an external model
    cannot be one, since mirroring would send callers' queries to a provider nobody asked.
    """
    if not isinstance(raw, dict) or raw.get("shadow") is None:
        return []
    sw = f"{where}.traffic_config.shadow"
    items = raw["shadow"]
    if not isinstance(items, list):
        raise InvalidParameterValue(f"{sw} must be an array, got {_type_name(items)}")
    by_name = {e.name: e for e in entities}
    shadow: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        iw = f"{sw}[{i}]"
        data = require_object(item, iw)
        target = _str(data, "served_entity_name", iw) or _str(data, "served_model_name", iw)
        if not target:
            raise InvalidParameterValue(f"{iw} must name served_entity_name")
        entity = by_name.get(target)
        if entity is None:
            raise InvalidParameterValue(
                f"{iw} names served entity '{target}', which is not in this config (served: {', '.join(by_name)})"
            )
        if entity.external_model is not None:
            raise InvalidParameterValue(
                f"{iw}: served entity '{target}' is an external model; only custom-model entities can be "
                "shadows (mirrored queries go to the endpoint's own replicas only)"
            )
        if target in seen:
            raise InvalidParameterValue(f"{iw}: served entity '{target}' is named twice")
        seen.add(target)
        pct = _int(data, "percentage", iw)
        if pct is None:
            raise InvalidParameterValue(f"{iw}.percentage is required (the share of queries mirrored, 0-100)")
        if not 0 <= pct <= 100:
            raise InvalidParameterValue(f"{iw}.percentage must be between 0 and 100, got {pct}")
        tolerance = data.get("agreement_tolerance", 0)
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not 0 <= tolerance <= MAX_AGREEMENT_TOLERANCE  # also refuses NaN
        ):
            raise InvalidParameterValue(
                f"{iw}.agreement_tolerance must be a number from 0 to {MAX_AGREEMENT_TOLERANCE:g}, got {tolerance!r}"
            )
        shadow.append({"served_entity_name": target, "percentage": pct, "agreement_tolerance": float(tolerance)})
    if len(seen) == len(entities):
        raise InvalidParameterValue(f"{sw}: every served entity is a shadow; at least one must answer the queries")
    return shadow


# --- ai_gateway (reference §2.9) ----------------------------------------------------------------
# Guardrails, rate limits, usage tracking, fallbacks and inference tables: checked here for create,
# ``PUT …/ai-gateway`` and change requests alike; services.ai_gateway stores them.
AI_GATEWAY_FIELDS = ("guardrails", "inference_table_config", "rate_limits", "usage_tracking_config", "fallback_config")
_UC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")


def _flag_block(raw: Any, where: str, *, required: bool) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{where} must be an object")
    unknown = set(raw) - {"enabled"}
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    enabled = raw.get("enabled")
    if enabled is None and required:
        raise InvalidParameterValue(f"{where}.enabled is required")
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidParameterValue(f"{where}.enabled must be true or false")
    return {"enabled": bool(enabled)}


def _inference_table(raw: Any, where: str, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{where} must be an object")
    unknown = set(raw) - {"catalog_name", "schema_name", "table_name_prefix", "enabled"}
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"enabled": bool(raw.get("enabled", False))}
    for name in ("catalog_name", "schema_name", "table_name_prefix"):
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _UC_NAME.match(value):
            raise InvalidParameterValue(f"{where}.{name} must be a name of letters, digits, _ and -")
        out[name] = value
    if out["enabled"] and not (out.get("catalog_name") and out.get("schema_name")):
        raise InvalidParameterValue(f"{where}: catalog_name and schema_name are required when enabling")
    if current and current.get("enabled") and out["enabled"]:
        for name in ("catalog_name", "schema_name", "table_name_prefix"):
            if name in out and current.get(name) not in (None, out[name]):
                raise InvalidParameterValue(f"{where}: disable the inference table before changing {name}")
    return out


def parse_ai_gateway(
    raw: Any, where: str = "ai_gateway", *, current: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The AI-gateway block as stored, or InvalidParameterValue naming the bad field. ``None`` (or
    an object with no fields) unsets it, as Databricks does."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{where} must be an object")
    unknown = set(raw) - set(AI_GATEWAY_FIELDS)
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    try:
        if raw.get("guardrails") is not None:
            out["guardrails"] = guardrails.validate(raw["guardrails"], f"{where}.guardrails")
        if raw.get("rate_limits") is not None:
            out["rate_limits"] = ratelimit.validate(raw["rate_limits"], f"{where}.rate_limits")
    except ValueError as exc:
        raise InvalidParameterValue(str(exc)) from None
    if (
        usage := _flag_block(raw.get("usage_tracking_config"), f"{where}.usage_tracking_config", required=False)
    ) is not None:
        out["usage_tracking_config"] = usage
    if (fallback := _flag_block(raw.get("fallback_config"), f"{where}.fallback_config", required=True)) is not None:
        out["fallback_config"] = fallback
    table = _inference_table(
        raw.get("inference_table_config"),
        f"{where}.inference_table_config",
        (current or {}).get("inference_table_config"),
    )
    if table is not None:
        out["inference_table_config"] = table
    return out or None


# --- whole requests ----------------------------------------------------------------------------


def parse_tags(raw: Any, where: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidParameterValue(f"{where} must be an array of {{key, value}} objects")
    tags: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        tw = f"{where}[{i}]"
        tag = require_object(item, tw)
        key = _str(tag, "key", tw, required=True)
        value = _str(tag, "value", tw) or ""
        assert key is not None
        if len(key) > 255 or len(value) > 1024:
            raise InvalidParameterValue(f"{tw}: key is limited to 255 characters and value to 1024")
        tags.append((key, value))
    return tags


def parse_create_request(raw: Any) -> CreateRequest:
    data = require_object(raw, "request body")
    name = validate_name(data.get("name"), "name")
    if name.startswith("databricks-"):
        raise InvalidParameterValue(f"name '{name}' is invalid: the prefix 'databricks-' is reserved")
    config_raw = data.get("config")
    if config_raw is None:
        raise InvalidParameterValue("config is required: give config.served_entities")
    config_obj = require_object(config_raw, "config")
    inner_name = config_obj.get("name")
    if inner_name is not None and inner_name != name:
        raise InvalidParameterValue(f"config.name '{inner_name}' does not match name '{name}'")
    return CreateRequest(
        name=name,
        config=parse_core_config(config_obj),
        tags=parse_tags(data.get("tags"), "tags"),
        description=_str(data, "description", "request body") or "",
        route_optimized=_bool(data, "route_optimized", "request body"),
        budget_policy_id=_budget_policy_id(data),
        ai_gateway=_ai_gateway_with_legacy_rate_limits(data.get("ai_gateway"), data.get("rate_limits")),
        email_notifications=parse_email_notifications(data.get("email_notifications")),
        telemetry_config=parse_telemetry_config(data.get("telemetry_config")),
    )


def _ai_gateway_with_legacy_rate_limits(ai_gateway: Any, rate_limits: Any) -> dict[str, Any] | None:
    """A create's ``ai_gateway``, with its legacy top-level ``rate_limits`` (what mlflow's
    ``create_endpoint`` sends) folded in as AI-gateway rate limits: they are one setting, enforced
    by the gateway, so giving both is refused rather than one silently winning."""
    if rate_limits is None:
        return parse_ai_gateway(ai_gateway)
    limits = parse_legacy_rate_limits(rate_limits, "rate_limits")
    if isinstance(ai_gateway, dict) and ai_gateway.get("rate_limits") is not None:
        raise InvalidParameterValue(
            "give rate limits once: rate_limits is the legacy form of ai_gateway.rate_limits; use one of them"
        )
    if ai_gateway is not None and not isinstance(ai_gateway, dict):
        raise InvalidParameterValue("ai_gateway must be an object")
    return parse_ai_gateway({**(ai_gateway or {}), "rate_limits": limits})


def parse_legacy_rate_limits(raw: Any, where: str = "rate_limits") -> list[dict[str, Any]]:
    """Legacy ``RateLimit`` items (create's ``rate_limits``, ``PUT …/rate-limits``; reference §2.9)
    as AI-gateway rate limits: ``calls`` (required) per ``renewal_period`` ``minute``, ``key``
    ``user`` or ``endpoint`` (default ``endpoint``). The gateway enforces them as it does any
    AI-gateway limit; ``legacy_rate_limits`` reads them back."""
    if not isinstance(raw, list):
        raise InvalidParameterValue(f"{where} must be an array of {{calls, key, renewal_period}} objects")
    out: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        iw = f"{where}[{index}]"
        limit = require_object(item, iw)
        unknown = set(limit) - {"calls", "key", "renewal_period"}
        if unknown:
            raise InvalidParameterValue(f"{iw} has unknown fields: {', '.join(sorted(unknown))}")
        calls = _int(limit, "calls", iw)
        if calls is None or calls < 0:
            raise InvalidParameterValue(f"{iw}.calls is required: a whole number of calls of at least 0")
        key = limit.get("key") or "endpoint"
        if key not in ("user", "endpoint"):
            raise InvalidParameterValue(f"{iw}.key must be 'user' or 'endpoint', got {key!r}")
        if limit.get("renewal_period") != "minute":
            raise InvalidParameterValue(f"{iw}.renewal_period is required and must be 'minute'")
        out.append({"calls": calls, "key": key, "renewal_period": "minute"})
    try:
        return ratelimit.validate(out, where)
    except ValueError as exc:
        raise InvalidParameterValue(str(exc)) from None


def legacy_rate_limits(ai_gateway: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The AI-gateway rate limits a legacy client can read (``{calls, key, renewal_period}``):
    call limits keyed by ``user`` or ``endpoint`` for no one in particular."""
    limits = (ai_gateway or {}).get("rate_limits") or []
    return [
        {"calls": limit["calls"], "key": limit["key"], "renewal_period": limit["renewal_period"]}
        for limit in limits
        if "calls" in limit and limit.get("key") in ("user", "endpoint") and "principal" not in limit
    ]


# --- email notifications and telemetry (reference §2.10) ----------------------------------------
MAX_NOTIFICATION_EMAILS = 50
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
TELEMETRY_FEATURES = (
    "TELEMETRY_FEATURE_INFERENCE_TABLE",
    "TELEMETRY_FEATURE_LOGS",
    "TELEMETRY_FEATURE_METRICS",
    "TELEMETRY_FEATURE_TRACES",
)
_UC_TABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}\.[A-Za-z0-9_-]{1,255}\.[A-Za-z0-9_-]{1,255}$")


def parse_email_notifications(raw: Any, where: str = "email_notifications") -> dict[str, list[str]] | None:
    """``{on_update_failure, on_update_success}``: lists of email addresses (None or ``{}``: no
    notifications). The rollout emails them when an update succeeds or fails."""
    if raw is None:
        return None
    data = require_object(raw, where)
    unknown = set(data) - {"on_update_failure", "on_update_success"}
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, list[str]] = {}
    for key in ("on_update_failure", "on_update_success"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) > MAX_NOTIFICATION_EMAILS:
            raise InvalidParameterValue(
                f"{where}.{key} must be an array of at most {MAX_NOTIFICATION_EMAILS} email addresses"
            )
        emails: list[str] = []
        for i, email in enumerate(value):
            if not isinstance(email, str) or not _EMAIL_RE.fullmatch(email.strip()):
                raise InvalidParameterValue(f"{where}.{key}[{i}] must be an email address")
            if email.strip() not in emails:
                emails.append(email.strip())
        out[key] = emails
    return out or None


def parse_telemetry_config(raw: Any, where: str = "telemetry_config") -> dict[str, Any] | None:
    """A ``TelemetryConfig`` as stored (None: removed). Only ``inference_table_config.sampling_fraction``
    acts here (the share of payloads logged when inference tables are on); the rest is kept and
    echoed, as Databricks' table names mean nothing to this server."""
    if raw is None:
        return None
    data = require_object(raw, where)
    unknown = set(data) - {
        "enabled_telemetry_features",
        "inference_table_config",
        "table_names",
        "telemetry_profile_id",
    }
    if unknown:
        raise InvalidParameterValue(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    features = data.get("enabled_telemetry_features")
    if features is not None:
        if not isinstance(features, list) or any(f not in TELEMETRY_FEATURES for f in features):
            raise InvalidParameterValue(
                f"{where}.enabled_telemetry_features must be an array of {', '.join(TELEMETRY_FEATURES)}"
            )
        out["enabled_telemetry_features"] = list(dict.fromkeys(features))
    table = data.get("inference_table_config")
    if table is not None:
        tw = f"{where}.inference_table_config"
        table = require_object(table, tw)
        unknown = set(table) - {"name", "sampling_fraction"}
        if unknown:
            raise InvalidParameterValue(f"{tw} has unknown fields: {', '.join(sorted(unknown))}")
        stored: dict[str, Any] = {}
        if table.get("name") is not None:
            stored["name"] = _uc_table(table["name"], f"{tw}.name")
        fraction = table.get("sampling_fraction")
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
                raise InvalidParameterValue(f"{tw}.sampling_fraction must be a number from 0.0 to 1.0")
            stored["sampling_fraction"] = float(fraction)
        out["inference_table_config"] = stored
    names = data.get("table_names")
    if names is not None:
        nw = f"{where}.table_names"
        names = require_object(names, nw)
        allowed = ("logs_table", "metrics_table", "traces_table", "annotations_table")
        unknown = set(names) - set(allowed)
        if unknown:
            raise InvalidParameterValue(f"{nw} has unknown fields: {', '.join(sorted(unknown))}")
        out["table_names"] = {k: _uc_table(names[k], f"{nw}.{k}") for k in allowed if names.get(k) is not None}
    profile = _str(data, "telemetry_profile_id", where)
    if profile:
        if len(profile) > 255:
            raise InvalidParameterValue(f"{where}.telemetry_profile_id is limited to 255 characters")
        out["telemetry_profile_id"] = profile
    return out


def _uc_table(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _UC_TABLE_RE.fullmatch(value):
        raise InvalidParameterValue(f"{where} must be a three-level table name, catalog.schema.table")
    return value


def _budget_policy_id(data: dict[str, Any]) -> str:
    value = _str(data, "budget_policy_id", "request body") or ""
    if len(value) > 255:  # the column's length (PostgreSQL refuses longer)
        raise InvalidParameterValue("budget_policy_id is limited to 255 characters")
    return value


def parse_tags_patch(raw: Any) -> tuple[list[tuple[str, str]], list[str]]:
    data = require_object(raw, "request body")
    add = parse_tags(data.get("add_tags"), "add_tags")
    delete_raw = data.get("delete_tags")
    delete: list[str] = []
    if delete_raw is not None:
        if not isinstance(delete_raw, list) or not all(isinstance(k, str) for k in delete_raw):
            raise InvalidParameterValue("delete_tags must be an array of tag keys")
        delete = list(delete_raw)
    return add, delete
