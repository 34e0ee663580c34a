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

from endpoints_app.errors import InvalidParameterValue

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_NAME_LENGTH = 63
MAX_SERVED_ENTITIES = 10
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


@dataclass(frozen=True)
class CoreConfig:
    served_entities: list[ServedEntitySpec]
    routes: list[dict[str, Any]]  # [{"served_model_name", "served_entity_name", "traffic_percentage"}]
    auto_capture_config: dict[str, Any] | None
    legacy_served_models: bool


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
    rate_limits: list[Any] | None


# --- small typed readers ----------------------------------------------------------------------


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParameterValue(f"{where} must be a JSON object, got {_type_name(value)}")
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
    if not NAME_RE.match(name):
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

    routes = _parse_traffic(data.get("traffic_config"), entities, where)
    auto_capture = _optional_object(data, "auto_capture_config", where)
    return CoreConfig(
        served_entities=entities, routes=routes, auto_capture_config=auto_capture, legacy_served_models=legacy
    )


def _parse_entity(raw: Any, where: str, *, legacy: bool) -> ServedEntitySpec:
    data = require_object(raw, where)
    if data.get("external_model") is not None:
        raise InvalidParameterValue(f"{where}.external_model: external models are not supported by this server yet")
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
        if min_pc < 0 or max_pc < 1 or min_pc > max_pc:
            raise InvalidParameterValue(
                f"{where}: provisioned concurrency must satisfy 0 <= min <= max and max >= 1 (got {min_pc}..{max_pc})"
            )

    workload_type = _str(data, "workload_type", where) or "CPU"
    if workload_type not in WORKLOAD_TYPES:
        raise InvalidParameterValue(
            f"{where}.workload_type '{workload_type}' is invalid; choose one of {', '.join(WORKLOAD_TYPES)}"
        )

    env_raw = data.get("environment_vars")
    env: dict[str, str] = {}
    if env_raw is not None:
        for key, value in require_object(env_raw, f"{where}.environment_vars").items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise InvalidParameterValue(f"{where}.environment_vars: '{key}' is not a valid variable name")
            if not isinstance(value, str):
                raise InvalidParameterValue(f"{where}.environment_vars.{key} must be a string")
            env[key] = value

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


def _parse_traffic(raw: Any, entities: list[ServedEntitySpec], where: str) -> list[dict[str, Any]]:
    names = [e.name for e in entities]
    if raw is None or (isinstance(raw, dict) and not raw.get("routes")):
        if len(entities) == 1:
            return [{"served_model_name": names[0], "served_entity_name": names[0], "traffic_percentage": 100}]
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
    rate_limits = data.get("rate_limits")
    if rate_limits is not None and not isinstance(rate_limits, list):
        raise InvalidParameterValue("rate_limits must be an array")
    return CreateRequest(
        name=name,
        config=parse_core_config(config_obj),
        tags=parse_tags(data.get("tags"), "tags"),
        description=_str(data, "description", "request body") or "",
        route_optimized=_bool(data, "route_optimized", "request body"),
        budget_policy_id=_str(data, "budget_policy_id", "request body") or "",
        ai_gateway=_optional_object(data, "ai_gateway", "request body"),
        email_notifications=_optional_object(data, "email_notifications", "request body"),
        telemetry_config=_optional_object(data, "telemetry_config", "request body"),
        rate_limits=rate_limits,
    )


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
