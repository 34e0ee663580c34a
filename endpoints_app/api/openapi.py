"""OpenAPI documents: one per endpoint (reference §4.7, built from the models' signatures), and one
for the whole management API (``management_openapi``), which the fuzz tests run against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from endpoints_app import registry
from endpoints_app.api.serializers.scim import SCIM_ROOT
from endpoints_app.errors import DomainError, InvalidParameterValue
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.models import AlertMetric, Endpoint, Role, ServedEntity, WorkspaceRole
from endpoints_app.scim_filter import MAX_FILTER_LENGTH
from endpoints_app.scim_schemas import ERROR as SCIM_ERROR_URN
from endpoints_app.scim_schemas import MAX_PAGE_SIZE as SCIM_MAX_PAGE_SIZE
from endpoints_app.scim_schemas import PATCH_OP
from endpoints_app.services.scim import MAX_MEMBERS, MAX_OPERATIONS
from endpoints_app.services.service_principals import MAX_DISPLAY_NAME
from endpoints_app.services.tokens import MAX_LIFETIME_SECONDS
from endpoints_app.services.workspace_grants import MAX_PRINCIPAL_LENGTH
from endpoints_app.services.workspaces import MAX_HOST_LENGTH, MAX_TOKEN_LENGTH
from endpoints_app.validation import (
    MAX_NAME_LENGTH,
    MAX_NOTIFICATION_EMAILS,
    MAX_PROVISIONED_CONCURRENCY,
    MAX_SERVED_ENTITIES,
    NAME_RE,
    TELEMETRY_FEATURES,
    WORKLOAD_SIZES,
    WORKLOAD_TYPES,
)

_JSON_TYPES = {
    "double": "number",
    "float": "number",
    "long": "integer",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
    "binary": "string",
    "datetime": "string",
}


def _input_columns(entity: ServedEntity) -> list[dict[str, Any]] | None:
    """Signature inputs of the entity's model version as [{name, type}], or None if it has none."""
    from mlflow.models import Model

    source = registry.get_model_version(entity.entity_name, entity.entity_version).source
    mlmodel = Path(source.removeprefix("file://")) / "MLmodel"
    if not mlmodel.is_file():
        return None
    signature = Model.load(str(mlmodel)).signature
    if signature is None or signature.inputs is None:
        return None
    return [c for c in signature.inputs.to_dict() if isinstance(c, dict)]


def _request_schema(columns: list[dict[str, Any]]) -> dict[str, Any]:
    names = [c.get("name") for c in columns if c.get("name")]
    row_items = {
        "type": "object",
        "properties": {
            c["name"]: {"type": _JSON_TYPES.get(str(c.get("type")), "string")} for c in columns if c.get("name")
        },
    }
    params = {"params": {"type": "object", "additionalProperties": True}}
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["dataframe_split"],
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string", "enum": names}},
                            "data": {"type": "array", "items": {"type": "array"}},
                            "index": {"type": "array"},
                        },
                        "required": ["data"],
                    },
                    **params,
                },
            },
            {
                "type": "object",
                "required": ["dataframe_records"],
                "properties": {"dataframe_records": {"type": "array", "items": row_items}, **params},
            },
            {
                "type": "object",
                "required": ["instances"],
                "properties": {"instances": {"type": "array", "items": row_items}, **params},
            },
            {"type": "object", "required": ["inputs"], "properties": {"inputs": {}, **params}},
        ]
    }


# The field an OpenAI-shaped request of each task needs (reference §4.2).
_TASK_INPUTS = {"llm/v1/chat": "messages", "llm/v1/completions": "prompt", "llm/v1/embeddings": "input"}


def _external_path(entity: ServedEntity) -> dict[str, Any]:
    model = entity.external_model or {}
    task = model.get("task", "")
    required = _TASK_INPUTS.get(task)
    return {
        "post": {
            "summary": f"Query {entity.name} ({model.get('provider')} model {model.get('name')}, {task})",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "required": [required] if required else [], "properties": {}}
                    }
                },
            },
            "responses": {"200": {"description": "An OpenAI-shaped answer (server-sent events with stream: true)"}},
        }
    }


def endpoint_openapi(endpoint: Endpoint, *, host: str) -> dict[str, Any]:
    config = endpoint.active_config
    if config is None:
        raise InvalidParameterValue(f"Endpoint '{endpoint.name}' has no active config yet; wait until it is READY")
    paths: dict[str, Any] = {}
    for entity in config.served_entities.all():
        if entity.external_model is not None:
            paths[f"/served-models/{entity.name}/invocations"] = _external_path(entity)
            continue
        try:
            columns = _input_columns(entity)
        except DomainError:
            columns = None
        request_schema = _request_schema(columns) if columns else {"type": "object"}
        paths[f"/served-models/{entity.name}/invocations"] = {
            "post": {
                "summary": f"Query {entity.name} ({entity.entity_name} version {entity.entity_version})",
                "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}},
                "responses": {
                    "200": {
                        "description": "Predictions",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"predictions": {}},
                                    "required": ["predictions"],
                                }
                            }
                        },
                    },
                    "400": {"description": "The input does not fit the model's signature"},
                },
            }
        }
    paths["/invocations"] = {
        "post": {
            "summary": "Query the endpoint; traffic is split by the routes of the active config",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "Predictions"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": endpoint.name, "version": str(config.version)},
        "servers": [{"url": f"{host}/serving-endpoints/{endpoint.name}"}],
        "paths": paths,
    }


# --- the management API -----------------------------------------------------------------------------
#
# Written by hand, next to the routes it describes: tests/test_fuzz_api.py walks the URL conf and
# fails when a route or method is missing here, and fuzzes every operation with schemathesis. The
# schemas say what the handlers accept (types, required fields, enums, lengths), so a fuzzer's
# "valid" request reaches the deep code, and its invalid ones must all end in a clean 4xx.

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_OBJECT: dict[str, Any] = {"type": "object"}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": NAME_RE.pattern}
_EPOCH_MS = {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_999}
_TAG = {
    "type": "object",
    "required": ["key"],
    "properties": {
        "key": {"type": "string", "minLength": 1, "maxLength": 255},
        "value": {"type": "string", "maxLength": 1024},
    },
}
_SERVED_ENTITY = {
    "type": "object",
    "description": "A model served here (entity_name + entity_version) or an external_model.",
    "properties": {
        "name": _NAME,
        "entity_name": {"type": "string", "minLength": 1, "maxLength": 512},
        "entity_version": {"type": "string", "minLength": 1, "maxLength": 64},
        "workload_size": {"type": "string", "enum": list(WORKLOAD_SIZES)},
        "workload_type": {"type": "string", "enum": list(WORKLOAD_TYPES)},
        "scale_to_zero_enabled": {"type": "boolean"},
        "min_provisioned_concurrency": {"type": "integer", "minimum": 0, "maximum": MAX_PROVISIONED_CONCURRENCY},
        "max_provisioned_concurrency": {"type": "integer", "minimum": 1, "maximum": MAX_PROVISIONED_CONCURRENCY},
        "environment_vars": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1024}},
        "external_model": {
            "type": "object",
            "required": ["provider", "name"],
            "properties": {
                "provider": {"type": "string", "enum": sorted(PROVIDERS)},
                "name": {"type": "string", "minLength": 1, "maxLength": 255},
                "task": {"type": "string", "enum": ["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings"]},
            },
        },
    },
}
_CONFIG = {
    "type": "object",
    "required": ["served_entities"],
    "properties": {
        "served_entities": {"type": "array", "minItems": 1, "maxItems": MAX_SERVED_ENTITIES, "items": _SERVED_ENTITY},
        "served_models": {"type": "array", "minItems": 1, "maxItems": MAX_SERVED_ENTITIES, "items": _JSON_OBJECT},
        "traffic_config": {
            "type": "object",
            "properties": {
                "routes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["served_model_name", "traffic_percentage"],
                        "properties": {
                            "served_model_name": _NAME,
                            "traffic_percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                        },
                    },
                },
                # Modelfleet extension (Databricks' clients ignore it): shadow traffic, gateway.shadow.
                "shadow": {
                    "type": "array",
                    "description": "Modelfleet extension: served entities (custom models only, with traffic_percentage 0 "
                    "or no route) that get a mirrored copy of `percentage` % of the queries. The caller always gets "
                    "the primary's answer; the shadow's latency and errors are recorded under its own name, and the "
                    "share of its predictions that agree with the primary's (numbers within agreement_tolerance) is "
                    "the agreement_rate series. Mirrors never delay the caller (a bounded queue; dropped and counted "
                    "when full: shadow_dropped_rate) and never count against rate limits or usage.",
                    "items": {
                        "type": "object",
                        "required": ["served_entity_name", "percentage"],
                        "properties": {
                            "served_entity_name": _NAME,
                            "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                            "agreement_tolerance": {"type": "number", "minimum": 0, "default": 0},
                        },
                    },
                },
            },
        },
        "auto_capture_config": _JSON_OBJECT,
    },
}
_AI_GATEWAY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "guardrails": _JSON_OBJECT,
        "rate_limits": {"type": "array", "items": _JSON_OBJECT},
        "usage_tracking_config": {"type": "object", "properties": {"enabled": {"type": "boolean"}}},
        "fallback_config": {"type": "object", "required": ["enabled"], "properties": {"enabled": {"type": "boolean"}}},
        "inference_table_config": _JSON_OBJECT,
    },
}
_LEGACY_RATE_LIMITS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["calls", "renewal_period"],
        "properties": {
            "calls": {"type": "integer", "minimum": 0},
            "key": {"type": "string", "enum": ["user", "endpoint"]},
            "renewal_period": {"type": "string", "enum": ["minute"]},
        },
    },
}
_EMAILS = {"type": "array", "maxItems": MAX_NOTIFICATION_EMAILS, "items": {"type": "string", "format": "email"}}
_EMAIL_NOTIFICATIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"on_update_failure": _EMAILS, "on_update_success": _EMAILS},
}
_UC_TABLE = {"type": "string", "pattern": "^[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$", "maxLength": 767}
_TELEMETRY_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled_telemetry_features": {"type": "array", "items": {"type": "string", "enum": list(TELEMETRY_FEATURES)}},
        "inference_table_config": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": _UC_TABLE, "sampling_fraction": {"type": "number", "minimum": 0, "maximum": 1}},
        },
        "table_names": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: _UC_TABLE for k in ("logs_table", "metrics_table", "traces_table", "annotations_table")},
        },
        "telemetry_profile_id": {"type": "string", "maxLength": 255},
    },
}
_CREATE_ENDPOINT = {
    "type": "object",
    "required": ["name", "config"],
    "properties": {
        "name": _NAME,
        "config": _CONFIG,
        "tags": {"type": "array", "items": _TAG},
        "description": {"type": "string", "maxLength": 1024},
        "route_optimized": {"type": "boolean"},
        "budget_policy_id": {"type": "string", "maxLength": 255},
        "ai_gateway": _AI_GATEWAY,
        "email_notifications": _EMAIL_NOTIFICATIONS,
        "telemetry_config": _TELEMETRY_CONFIG,
        "rate_limits": _LEGACY_RATE_LIMITS,
    },
}
_ACL = {
    "type": "object",
    "properties": {
        "access_control_list": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["permission_level"],
                "properties": {
                    "user_name": {"type": "string", "minLength": 1, "maxLength": 150},
                    "group_name": {"type": "string", "minLength": 1, "maxLength": 150},
                    "service_principal_name": {"type": "string", "format": "uuid"},
                    "permission_level": {"type": "string", "enum": ["CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"]},
                },
            },
        }
    },
}
_ALERT_RULE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "metric": {"type": "string", "enum": list(AlertMetric.values)},
        "comparison": {"type": "string", "enum": ["gt", "lt"]},
        "threshold": {"type": "number"},
        "for_seconds": {"type": "integer", "minimum": 0, "maximum": 86400},
        "enabled": {"type": "boolean"},
        "notify_emails": {"type": "array", "maxItems": 10, "items": {"type": "string", "format": "email"}},
    },
}
# A rollout plan (services.rollout_plans): one new served entity or a whole new config, steps, bake, gates.
_ROLLOUT_PLAN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "served_entity": _SERVED_ENTITY,
        "config": _CONFIG,
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "items": {"type": "integer", "minimum": 1, "maximum": 100},
            "description": "the new version's traffic shares, strictly increasing, ending at 100",
        },
        "bake_seconds": {"type": "integer", "minimum": 0, "maximum": 7 * 24 * 3600},
        "gates": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_4xx_rate_increase": {"type": "number", "minimum": 0, "maximum": 1},
                "max_5xx_rate_increase": {"type": "number", "minimum": 0, "maximum": 1},
                "max_p99_latency_ratio": {"type": "number", "minimum": 1, "maximum": 1000},
                "min_requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                "p99_latency_floor_ms": {"type": "number", "minimum": 0, "maximum": 600_000},
            },
        },
    },
}
_SCOPE = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.@-]+$"}
_KEY = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.-]+$"}
_PRINCIPAL = {"type": "string", "minLength": 1, "maxLength": 255}
_USERNAME = {"type": "string", "minLength": 1, "maxLength": 150, "pattern": "^[A-Za-z0-9._@-]+$"}
_ROLE = {"type": "string", "enum": list(Role.values)}
_LIFETIME = {"type": "integer", "minimum": -1, "maximum": MAX_LIFETIME_SECONDS, "description": "seconds; -1: no expiry"}


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _object(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _param(name: str, where: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def _query(**schemas: dict[str, Any]) -> list[dict[str, Any]]:
    return [_param(name, "query", schema) for name, schema in schemas.items()]


def _op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    ok: str = "OK",
    public: bool = False,
) -> dict[str, Any]:
    """One operation: its parameters, body, and the answers every handler can give."""
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": ok}}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if public:
        op["security"] = []
        return op
    for code, text in (
        ("400", "A malformed body or an invalid parameter"),
        ("401", "No valid credential"),
        ("403", "The caller's role or permission does not allow it"),
        ("404", "No such object, or the caller may not see it"),
        ("409", "It conflicts with the current state (exists already, stale If-Match)"),
        ("412", "If-Match does not match the current ETag"),
        ("429", "Too many requests"),
    ):
        op["responses"][code] = {"description": text, "content": {"application/json": {"schema": _ERROR}}}
    return op


# --- SCIM (RFC 7643/7644) --------------------------------------------------------------------------
#
# SCIM routes read application/scim+json or JSON alike, answer application/scim+json, and give SCIM's
# own errors ({"schemas", "status", "detail", "scimType"?}) for everything but a 401, which
# authentication answers as it does for every API route.

_SCIM_ERROR = {"$ref": "#/components/schemas/ScimError"}
_SCIM_STRING = {"type": "string", "description": "no NUL characters"}
_SCIM_ACTIVE = {"type": "boolean", "description": 'also "True"/"False" as strings, as Microsoft Entra sends them'}
_SCIM_SCHEMAS = {
    "type": "array",
    "items": {"type": "string"},
    "description": "the resource's schema URNs (not checked)",
}
_SCIM_USER = _object(
    ["userName"],
    schemas=_SCIM_SCHEMAS,
    userName={"type": "string", "minLength": 1, "maxLength": 150, "pattern": "^[A-Za-z0-9._@+-]+$"},
    name=_object(
        givenName={**_SCIM_STRING, "maxLength": 150},
        familyName={**_SCIM_STRING, "maxLength": 150},
    ),
    displayName={**_SCIM_STRING, "maxLength": 255},
    emails={
        "type": "array",
        "maxItems": 100,
        "description": "the primary one (else the first) is kept",
        "items": _object(value={**_SCIM_STRING, "maxLength": 254}, primary={"type": "boolean"}, type=_SCIM_STRING),
    },
    externalId={**_SCIM_STRING, "maxLength": 255},
    active=_SCIM_ACTIVE,
)
_SCIM_GROUP = _object(
    ["displayName"],
    schemas=_SCIM_SCHEMAS,
    displayName={**_SCIM_STRING, "minLength": 1, "maxLength": 150},
    externalId={**_SCIM_STRING, "maxLength": 255},
    members={
        "type": "array",
        "maxItems": MAX_MEMBERS,
        "description": "users and service principals: groups do not nest",
        "items": _object(
            ["value"],
            value={"type": "string", "pattern": "^[0-9]{1,18}$", "description": "a user's or service principal's id"},
            type={"type": "string", "enum": ["User", "ServicePrincipal"], "description": "if given, what the id is"},
            display=_SCIM_STRING,
        ),
    },
)
_SCIM_SERVICE_PRINCIPAL = _object(
    ["displayName"],
    schemas=_SCIM_SCHEMAS,
    applicationId={"type": "string", "format": "uuid", "description": "the identity provider's; a new one if absent"},
    displayName={**_SCIM_STRING, "minLength": 1, "maxLength": MAX_DISPLAY_NAME},
    externalId={**_SCIM_STRING, "maxLength": 255},
    active=_SCIM_ACTIVE,
)
_SCIM_PATCH = _object(
    ["Operations"],
    schemas={"type": "array", "items": {"type": "string", "enum": [PATCH_OP]}, "minItems": 1, "maxItems": 1},
    Operations={
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_OPERATIONS,
        "items": _object(
            ["op"],
            op={"type": "string", "enum": ["add", "replace", "remove", "Add", "Replace", "Remove"]},
            path={
                "type": "string",
                "maxLength": 500,
                "description": 'attr, attr.sub, attr[sub eq "v"] or attr[sub eq "v"].sub; needed by remove',
            },
            value={"description": "needed by add and replace; without a path, an object of attributes"},
        ),
    },
)
_SCIM_SELECT: dict[str, dict[str, Any]] = {
    "attributes": {"type": "string", "maxLength": 2000, "description": "comma-separated attributes to return"},
    "excludedAttributes": {
        "type": "string",
        "maxLength": 2000,
        "description": "comma-separated attributes to leave out",
    },
}
_SCIM_LIST_QUERY: dict[str, dict[str, Any]] = {
    "filter": {"type": "string", "maxLength": MAX_FILTER_LENGTH, "description": 'e.g. userName eq "a@example.com"'},
    "sortBy": {"type": "string", "maxLength": 500},
    "sortOrder": {"type": "string", "enum": ["ascending", "descending"]},
    "startIndex": {"type": "integer", "minimum": 1, "maximum": 999_999_999, "description": "from 1"},
    "count": {"type": "integer", "minimum": 0, "maximum": SCIM_MAX_PAGE_SIZE},
    **_SCIM_SELECT,
}


# Workspaces (services.workspaces): a host is an https:// base URL (an address literal, or plain
# http:// to a host MODELFLEET_EGRESS_ALLOW names, is accepted too; described here as a name, so no
# generated example is an address that could be dialled); a token has no white space.
_HOST = {
    "type": "string",
    "maxLength": MAX_HOST_LENGTH,
    "pattern": "^https://[a-z][a-z0-9-]{0,30}([.][a-z][a-z0-9-]{0,30}){0,3}(:[1-9][0-9]{0,3})?/?$",
    "description": "the workspace's base URL, https://name[:port], no path, query or credentials",
}
_REMOTE_TOKEN = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TOKEN_LENGTH,
    "pattern": "^[^\\s\\x00-\\x1f\\x7f]+$",
    "description": "the remote's personal access token; never shown again",
}
_VALIDATE = {
    "type": "boolean",
    "description": "false: store it even if the check fails, with the failure as its status",
}
_CLOSED = {"additionalProperties": False}
# Roles in a workspace (services.workspace_grants): a user or a group, by name; admin is global only.
_WORKSPACE_ROLE = {"type": "string", "enum": list(WorkspaceRole.values)}
_GRANTEE = {"type": "string", "minLength": 1, "maxLength": MAX_PRINCIPAL_LENGTH}
_GRANT = {
    "oneOf": [
        {**_object(["user_name", "role"], user_name=_GRANTEE, role=_WORKSPACE_ROLE), **_CLOSED},
        {**_object(["group_name", "role"], group_name=_GRANTEE, role=_WORKSPACE_ROLE), **_CLOSED},
    ]
}
_MAPPING_WORKSPACE = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "nullable": True,
    "description": "a workspace's name: the group's role there (viewer, editor, approver); null or absent: global",
}


def _scim_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {t: {"schema": schema} for t in ("application/scim+json", "application/json")}}


def _scim_op(
    summary: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    ok: tuple[str, str] | None = ("200", "OK"),
    also: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One SCIM operation: its answer on success (None: it has none), SCIM errors for every 4xx
    but a 401."""
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if ok is not None:
        op["responses"][ok[0]] = {"description": ok[1]}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = _scim_body(body)
    op["responses"]["401"] = {
        "description": "No valid credential",
        "content": {"application/json": {"schema": _ERROR}},
    }
    for status, what in {
        "400": "An invalid body, filter or parameter (scimType says which: invalidValue, invalidFilter, …)",
        "403": "Not an admin (only /Me answers every signed-in user)",
        "404": "No such resource",
        "405": "The resource does not take this method",
        "409": "A resource with this name exists (scimType uniqueness)",
        "429": "Too many requests",
        **(also or {}),
    }.items():
        op["responses"][status] = {
            "description": what,
            "content": {"application/scim+json": {"schema": _SCIM_ERROR}},
        }
    return op


def _scim_paths(root: str) -> dict[str, Any]:
    """Users, Groups, ServicePrincipals (admins), Me (anyone signed in), the discovery endpoints, and
    the catch-all that answers a SCIM 404 for any other path under the root."""
    paths: dict[str, Any] = {}
    for kind, key, schema, who in (
        ("Users", "user_id", _SCIM_USER, "user"),
        ("Groups", "group_id", _SCIM_GROUP, "group"),
        ("ServicePrincipals", "user_id", _SCIM_SERVICE_PRINCIPAL, "service principal"),
    ):
        resource_id = _param(key, "path", {"type": "string", "minLength": 1, "description": "the id SCIM shows"})
        selected = [resource_id, *_query(**_SCIM_SELECT)]
        paths[f"{root}/{kind}"] = {
            "get": _scim_op(f"{kind}: filtered, sorted, paged (admins)", params=_query(**_SCIM_LIST_QUERY)),
            "post": _scim_op(
                f"Create a {who} (admins)", params=_query(**_SCIM_SELECT), body=schema, ok=("201", "Created")
            ),
        }
        paths[f"{root}/{kind}/{{{key}}}"] = {
            "get": _scim_op(f"One {who} (admins)", params=selected),
            "put": _scim_op(f"Replace a {who}'s attributes (admins)", params=selected, body=schema),
            "patch": _scim_op(
                f"Add, replace or remove a {who}'s attributes (admins)", params=selected, body=_SCIM_PATCH
            ),
            "delete": _scim_op(f"Delete a {who} (admins)", params=[resource_id], ok=("204", "Deleted")),
        }
    paths[f"{root}/Me"] = {
        "get": _scim_op("The caller, as a SCIM User (anyone signed in)", params=_query(**_SCIM_SELECT))
    }
    paths[f"{root}/ServiceProviderConfig"] = {"get": _scim_op("What this SCIM server supports (admins)")}
    for kind, key in (("Schemas", "schema_id"), ("ResourceTypes", "type_id")):
        paths[f"{root}/{kind}"] = {"get": _scim_op(f"Every one of the {kind} (admins)")}
        paths[f"{root}/{kind}/{{{key}}}"] = {
            "get": _scim_op(
                f"One of the {kind} (admins)", params=[_param(key, "path", {"type": "string", "minLength": 1})]
            )
        }
    rest = _param("rest", "path", {"type": "string", "minLength": 1, "description": "any other path under the root"})
    paths[f"{root}/{{rest}}"] = {
        method: _scim_op("No resource here: a SCIM 404 (admins; others 403)", params=[rest], ok=None)
        for method in ("get", "put", "patch", "delete")
    }
    paths[f"{root}/{{rest}}"]["post"] = _scim_op(
        "No resource here: a SCIM 404; POST /.search (several resource types at once) is not supported: 501",
        params=[rest],
        ok=None,
        also={"501": "POST /.search: not supported"},
    )
    return paths


def management_openapi() -> dict[str, Any]:
    """The OpenAPI 3.0 document of the management API: every ``/api/`` route and method of the URL conf.

    Reading it needs a signed-in user (any role): it shows no data, only the shape of the API, but
    like every API route it answers no anonymous caller.
    """
    name = _param("name", "path", {"type": "string", "minLength": 1})
    endpoint_id = _param("endpoint_id", "path", {"type": "string", "minLength": 1})
    served = _param("served_model_name", "path", {"type": "string", "minLength": 1})
    rule_id = _param("rule_id", "path", {"type": "string", "minLength": 1})
    request_id = _param("request_id", "path", {"type": "integer", "minimum": 0})
    plan_id = _param("plan_id", "path", {"type": "integer", "minimum": 0})
    application_id = _param("application_id", "path", {"type": "string", "format": "uuid"})
    if_match = _param("If-Match", "header", {"type": "string"})
    group_path = _param("group", "path", {"type": "string", "minLength": 1, "maxLength": 150})
    limit = {"type": "integer", "minimum": 1, "maximum": 1000}
    ep = "/api/2.0/serving-endpoints"
    mf = "/api/2.0/modelfleet"
    fleet_ep = [
        _param("workspace", "path", {"type": "string", "minLength": 1, "maxLength": 63}),
        _param("name", "path", {"type": "string", "minLength": 1, "maxLength": 255}),
    ]
    mep = f"{mf}/serving-endpoints/{{name}}"
    sec = "/api/2.0/secrets"
    scope_q = _param("scope", "query", _SCOPE, required=True)
    comment = _body(_object(comment={"type": "string", "maxLength": 4096}), required=False)
    paths: dict[str, Any] = {
        "/.well-known/databricks-config": {"get": _op("Host metadata the Databricks SDK probes", public=True)},
        f"{mf}/openapi.json": {"get": _op("This document")},
        **{
            path: {
                "get": _op("List the endpoints the caller may see"),
                "post": _op("Create an endpoint (editor role or above)", body=_body(_CREATE_ENDPOINT)),
            }
            for path in (ep, f"{ep}/")  # with a trailing slash too, as mlflow's deployment client sends
        },
        f"{ep}/{{name}}": {
            "get": _op("Get an endpoint (CAN_VIEW)", params=[name]),
            "delete": _op("Delete an endpoint (CAN_MANAGE)", params=[name, if_match]),
            "post": _op(
                "Only as …/pt: create a provisioned-throughput endpoint, which is not supported (400); 405 otherwise",
                params=[name],
                body=_body(_JSON_OBJECT, required=False),
            ),
        },
        f"{ep}/pt/{{name}}/config": {
            "put": _op(
                "Update a provisioned-throughput endpoint: not supported (400)",
                params=[name],
                body=_body(_JSON_OBJECT, required=False),
            )
        },
        "/api/2.0/external-function": {
            "post": _op(
                "A request through a Unity Catalog connection: not supported (400), there are none",
                body=_body(_JSON_OBJECT, required=False),
            )
        },
        f"{ep}/{{name}}/rate-limits": {
            "put": _op(
                "Set the legacy rate limits, stored as AI-gateway rate limits (CAN_MANAGE)",
                params=[name, if_match],
                body=_body(_object(rate_limits=_LEGACY_RATE_LIMITS)),
            )
        },
        f"{ep}/{{name}}/notifications": {
            "patch": _op(
                "Set the email notifications of updates (CAN_MANAGE)",
                params=[name, if_match],
                body=_body(_object(email_notifications=_EMAIL_NOTIFICATIONS)),
            )
        },
        f"{ep}/{{name}}/telemetry-config": {
            "patch": _op(
                "Set, or with no telemetry_config remove, the telemetry config (CAN_MANAGE)",
                params=[name, if_match],
                body=_body(_object(telemetry_config=_TELEMETRY_CONFIG)),
            )
        },
        f"{ep}/{{name}}/config": {
            "put": _op(
                "Update the served entities and traffic (CAN_MANAGE)", params=[name, if_match], body=_body(_CONFIG)
            )
        },
        f"{ep}/{{name}}/tags": {
            "patch": _op(
                "Add and delete tags (CAN_MANAGE)",
                params=[name, if_match],
                body=_body(
                    _object(
                        add_tags={"type": "array", "items": _TAG},
                        delete_tags={"type": "array", "items": {"type": "string", "maxLength": 255}},
                    )
                ),
            )
        },
        f"{ep}/{{name}}/ai-gateway": {
            "put": _op("Set the AI-gateway settings (CAN_MANAGE)", params=[name, if_match], body=_body(_AI_GATEWAY))
        },
        f"{ep}/{{name}}/openapi": {"get": _op("The endpoint's query API as OpenAPI (CAN_VIEW)", params=[name])},
        f"{ep}/{{name}}/metrics": {"get": _op("Metrics in Prometheus text (CAN_VIEW)", params=[name])},
        f"{ep}/{{name}}/served-models/{{served_model_name}}/logs": {
            "get": _op("A served model's server log (CAN_VIEW)", params=[name, served])
        },
        f"{ep}/{{name}}/served-models/{{served_model_name}}/build-logs": {
            "get": _op("A served model's build log (CAN_VIEW)", params=[name, served])
        },
        f"{mf}/registered-models": {
            "get": _op("Registered models", params=_query(name={"type": "string", "maxLength": 255}))
        },
        f"{mf}/registered-models/upload": {
            "post": _op(
                "Register an MLflow model directory sent as a gzipped tar (editor role or above)",
                params=[
                    _param("name", "query", {"type": "string", "minLength": 1, "maxLength": 255}, required=True),
                    _param("description", "query", {"type": "string", "maxLength": 1024}),
                ],
                body={
                    "required": True,
                    "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
                },
            )
        },
        f"{mf}/change-requests": {
            "get": _op(
                "Change requests (approvers see all, others their own)",
                params=_query(
                    status={"type": "string", "enum": ["PENDING", "APPLIED", "REJECTED", "STALE", "FAILED"]},
                    endpoint_name={"type": "string", "maxLength": 255},
                ),
            ),
            "post": _op(
                "Propose a change for approval (CAN_MANAGE on the endpoint)",
                body=_body(
                    _object(
                        ["endpoint_name", "action"],
                        endpoint_name=_NAME,
                        action={"type": "string", "enum": ["create", "update_config", "ai_gateway", "tags", "delete"]},
                        body=_JSON_OBJECT,
                    )
                ),
            ),
        },
        f"{mf}/change-requests/{{request_id}}": {"get": _op("One change request", params=[request_id])},
        f"{mf}/change-requests/{{request_id}}/approve": {
            "post": _op("Approve and apply (approver role or above)", params=[request_id], body=comment)
        },
        f"{mf}/change-requests/{{request_id}}/reject": {
            "post": _op("Reject (approver role or above)", params=[request_id], body=comment)
        },
        f"{mf}/approval-policies": {
            "get": _op("Approval policies"),
            "post": _op(
                "Require approval for an endpoint or a tag (admins)",
                body=_body(
                    _object(
                        endpoint_name=_NAME,
                        tag_key={"type": "string", "maxLength": 255},
                        tag_value={"type": "string", "maxLength": 1024},
                    )
                ),
            ),
        },
        f"{mf}/approval-policies/{{policy_id}}": {
            "delete": _op(
                "Delete a policy (admins)",
                params=[_param("policy_id", "path", {"type": "integer", "minimum": 0})],
            )
        },
        f"{mf}/groups": {
            "get": _op("Groups and their members (admins)"),
            "post": _op(
                "Create a group (admins)",
                body=_body(_object(["name"], name={"type": "string", "minLength": 1, "maxLength": 150})),
            ),
        },
        f"{mf}/groups/{{group}}/members/{{username}}": {
            method: _op(
                f"{verb} a member (admins)",
                params=[
                    _param("group", "path", {"type": "string", "minLength": 1}),
                    _param("username", "path", {"type": "string", "minLength": 1}),
                ],
            )
            for method, verb in (("put", "Add"), ("delete", "Remove"))
        },
        f"{mf}/users": {
            "get": _op("Users and their roles (admins)"),
            "post": _op(
                "Create a user (admins)",
                body=_body(
                    _object(
                        ["username"],
                        username=_USERNAME,
                        email={"type": "string", "maxLength": 254},
                        role=_ROLE,
                        password={"type": "string", "maxLength": 128},
                    )
                ),
            ),
        },
        f"{mf}/users/{{username}}": {
            "patch": _op(
                "Change a user's role or their tokens' longest lifetime, or deactivate them (admins)",
                params=[_param("username", "path", {"type": "string", "minLength": 1})],
                body=_body(
                    _object(
                        role=_ROLE,
                        active={"type": "boolean", "enum": [False]},
                        max_token_lifetime_seconds={**_LIFETIME, "nullable": True},
                    )
                ),
            )
        },
        f"{mf}/tokens": {
            "get": _op("Access tokens (admins: all, or one user's; others their own)", params=_query(user=_USERNAME)),
            "post": _op(
                "Create a token (for another user: admins); the only answer that shows it",
                body=_body(
                    _object(user=_USERNAME, comment={"type": "string", "maxLength": 255}, lifetime_seconds=_LIFETIME),
                    required=False,
                ),
            ),
        },
        "/api/2.0/token/create": {
            "post": _op(
                "Create a token for the caller (Databricks' token API); the only answer that shows it",
                body=_body(
                    _object(comment={"type": "string", "maxLength": 255}, lifetime_seconds=_LIFETIME), required=False
                ),
            )
        },
        "/api/2.0/token/list": {"get": _op("The caller's live tokens (Databricks' token API)")},
        "/api/2.0/token/delete": {
            "post": _op(
                "Revoke one of the caller's tokens (Databricks' token API)",
                body=_body(_object(["token_id"], token_id={"type": "string", "pattern": "^[0-9]{1,18}$"})),
            )
        },
        f"{mf}/service-principals": {
            "get": _op("Service principals, their roles and secrets' hints (admins)"),
            "post": _op(
                "Create a service principal (admins); the only answer that shows its first secret",
                body=_body(
                    _object(
                        ["display_name"], display_name={"type": "string", "minLength": 1, "maxLength": 255}, role=_ROLE
                    )
                ),
            ),
        },
        f"{mf}/service-principals/{{application_id}}": {
            "get": _op("A service principal (admins)", params=[application_id]),
            "delete": _op("Delete a service principal: its tokens stop at once (admins)", params=[application_id]),
        },
        f"{mf}/service-principals/{{application_id}}/secrets": {
            "post": _op("Another secret, to rotate (admins); the only answer that shows it", params=[application_id]),
        },
        f"{mf}/service-principals/{{application_id}}/secrets/{{secret_id}}": {
            "delete": _op(
                "Delete a secret: its tokens stop at once (admins)",
                params=[application_id, _param("secret_id", "path", {"type": "integer", "minimum": 0})],
            )
        },
        f"{mf}/tokens/{{token_id}}": {
            "delete": _op(
                "Revoke a token (your own, or any: admins)",
                params=[_param("token_id", "path", {"type": "integer", "minimum": 0})],
            )
        },
        f"{mf}/audit-events": {
            "get": _op(
                "The audit log, newest first, or every matching event as JSON lines (admins)",
                params=_query(
                    actor={"type": "string", "maxLength": 255},
                    action={"type": "string", "maxLength": 64},
                    object_type={"type": "string", "maxLength": 32},
                    object_id={"type": "string", "maxLength": 64},
                    object_name={"type": "string", "maxLength": 255},
                    since={"type": "string", "description": "epoch ms or ISO 8601"},
                    until={"type": "string", "description": "epoch ms or ISO 8601"},
                    limit=limit,
                    page_token={"type": "string"},
                    format={"type": "string", "enum": ["json", "jsonl"]},
                ),
            )
        },
        f"{mep}/health": {"get": _op("Health and its history (CAN_VIEW)", params=[name, *_query(limit=limit)])},
        f"{mep}/rollouts": {
            "get": _op("Rollout plans, newest first (CAN_VIEW)", params=[name]),
            "post": _op(
                "Start a rollout plan, or propose it for approval where a policy covers the endpoint (CAN_MANAGE)",
                params=[name],
                body=_body(_ROLLOUT_PLAN),
            ),
        },
        f"{mep}/rollouts/{{plan_id}}": {"get": _op("One rollout plan (CAN_VIEW)", params=[name, plan_id])},
        **{
            f"{mep}/rollouts/{{plan_id}}/{verb}": {"post": _op(f"{text} (CAN_MANAGE)", params=[name, plan_id])}
            for verb, text in (
                ("pause", "Pause a running rollout plan"),
                ("resume", "Resume a paused rollout plan (its current step applied again)"),
                ("abort", "Abort a rollout plan: all traffic back on the previous version"),
                ("promote", "Promote now: the new version takes all traffic"),
                ("close", "Close a rolled-back, aborted or failed plan: the new version leaves the endpoint"),
            )
        },
        f"{mep}/alert-rules": {
            "get": _op("Alert rules (CAN_VIEW)", params=[name]),
            "post": _op(
                "Create an alert rule (CAN_MANAGE)",
                params=[name],
                body=_body({**_ALERT_RULE, "required": ["name", "metric", "threshold"]}),
            ),
        },
        f"{mep}/alert-rules/{{rule_id}}": {
            "get": _op("One alert rule (CAN_VIEW)", params=[name, rule_id]),
            "patch": _op("Change an alert rule (CAN_MANAGE)", params=[name, rule_id], body=_body(_ALERT_RULE)),
            "delete": _op("Delete an alert rule (CAN_MANAGE)", params=[name, rule_id]),
        },
        f"{mep}/alert-events": {
            "get": _op(
                "Alert events, newest first (CAN_VIEW)",
                params=[name, *_query(state={"type": "string", "enum": ["FIRING", "RESOLVED"]}, limit=limit)],
            )
        },
        f"{mep}/log-lines": {
            "get": _op(
                "Stored log lines: search, filter, page (CAN_VIEW)",
                params=[
                    name,
                    *_query(
                        kind={"type": "string", "enum": ["server", "build"]},
                        served_model={"type": "string", "maxLength": 255},
                        q={"type": "string", "maxLength": 1000},
                        level={"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
                        since=_EPOCH_MS,
                        until=_EPOCH_MS,
                        limit={"type": "integer", "minimum": 1, "maximum": 2000},
                        order={"type": "string", "enum": ["desc", "asc"]},
                        page_token={"type": "string"},
                    ),
                ],
            )
        },
        f"{mep}/metric-series": {
            "get": _op(
                "Chart series (CAN_VIEW)",
                params=[
                    name,
                    *_query(
                        metrics={
                            "type": "string",
                            "description": "comma-separated series names (a shadow's also agreement_rate and "
                            "shadow_dropped_rate)",
                        },
                        start=_EPOCH_MS,
                        end=_EPOCH_MS,
                        served_model={"type": "string", "maxLength": 255},
                    ),
                ],
            )
        },
        f"{mep}/scaling-decisions": {
            "get": _op("The autoscaler's decisions (CAN_VIEW)", params=[name, *_query(limit=limit)])
        },
        f"{mep}/payloads": {
            "get": _op(
                "Logged request and response payloads (CAN_MANAGE)",
                params=[
                    name,
                    *_query(
                        served_model={"type": "string", "maxLength": 255},
                        status={"type": "string", "pattern": "^([1-5][0-9][0-9]|[1-5]xx)$"},
                        since=_EPOCH_MS,
                        until=_EPOCH_MS,
                        client_request_id={"type": "string", "maxLength": 255},
                        limit=limit,
                        page_token={"type": "string"},
                        include_bodies={"type": "boolean"},
                    ),
                ],
            )
        },
        f"{mep}/usage": {
            "get": _op(
                "AI-gateway usage (CAN_VIEW: your own; CAN_MANAGE: everyone's)",
                params=[
                    name,
                    *_query(
                        start=_EPOCH_MS,
                        end=_EPOCH_MS,
                        group_by={"type": "string", "enum": ["user", "served_entity", "minute"]},
                    ),
                ],
            )
        },
        "/api/2.0/permissions/serving-endpoints/{endpoint_id}": {
            "get": _op("An endpoint's permissions (CAN_VIEW)", params=[endpoint_id]),
            "put": _op("Replace the direct grants (CAN_MANAGE)", params=[endpoint_id], body=_body(_ACL)),
            "patch": _op("Add or change grants (CAN_MANAGE)", params=[endpoint_id], body=_body(_ACL)),
        },
        "/api/2.0/permissions/serving-endpoints/{endpoint_id}/permissionLevels": {
            "get": _op("The permission levels (CAN_VIEW)", params=[endpoint_id])
        },
        f"{sec}/scopes/create": {
            "post": _op(
                "Create a secret scope (editor role or above)",
                body=_body(
                    _object(
                        ["scope"],
                        scope=_SCOPE,
                        initial_manage_principal={"type": "string", "enum": ["users"]},
                        scope_backend_type={"type": "string", "enum": ["DATABRICKS"]},
                    )
                ),
            )
        },
        f"{sec}/scopes/delete": {"post": _op("Delete a scope (MANAGE)", body=_body(_object(["scope"], scope=_SCOPE)))},
        f"{sec}/scopes/list": {"get": _op("The scopes the caller may see")},
        f"{sec}/put": {
            "post": _op(
                "Store a secret (WRITE); give string_value or bytes_value",
                body=_body(
                    _object(
                        ["scope", "key"],
                        scope=_SCOPE,
                        key=_KEY,
                        string_value={"type": "string", "maxLength": 4096},
                        bytes_value={"type": "string", "format": "byte", "maxLength": 4096},
                    )
                ),
            )
        },
        f"{sec}/delete": {
            "post": _op("Delete a secret (WRITE)", body=_body(_object(["scope", "key"], scope=_SCOPE, key=_KEY)))
        },
        f"{sec}/list": {"get": _op("A scope's keys, never values (READ)", params=[scope_q])},
        f"{sec}/get": {
            "get": _op(
                "Always 403 after the checks: values are never returned",
                params=[scope_q, _param("key", "query", _KEY, required=True)],
            )
        },
        f"{sec}/acls/put": {
            "post": _op(
                "Grant a principal READ, WRITE or MANAGE on a scope (MANAGE)",
                body=_body(
                    _object(
                        ["scope", "principal", "permission"],
                        scope=_SCOPE,
                        principal=_PRINCIPAL,
                        permission={"type": "string", "enum": ["READ", "WRITE", "MANAGE"]},
                    )
                ),
            )
        },
        f"{sec}/acls/delete": {
            "post": _op(
                "Remove a principal's grant (MANAGE)",
                body=_body(_object(["scope", "principal"], scope=_SCOPE, principal=_PRINCIPAL)),
            )
        },
        f"{sec}/acls/get": {
            "get": _op(
                "One principal's grant (MANAGE)",
                params=[scope_q, _param("principal", "query", _PRINCIPAL, required=True)],
            )
        },
        f"{sec}/acls/list": {"get": _op("A scope's grants (MANAGE)", params=[scope_q])},
        f"{mf}/group-role-mappings": {
            "get": _op("The single sign-on group → role mappings in force, from the API and the settings (admins)")
        },
        f"{mf}/group-role-mappings/{{group}}": {
            "put": _op(
                "Map a provider group to a global role, or to a role in one workspace, from its members' next "
                "sign-in (admins)",
                params=[group_path],
                body=_body(
                    {
                        **_object(
                            ["role"],
                            role={"type": "string", "enum": [r for r in Role.values if r]},
                            workspace=_MAPPING_WORKSPACE,
                        ),
                        **_CLOSED,
                    }
                ),
            ),
            "delete": _op(
                "Remove a group's global mapping, or with workspace its mapping there and the grants it gave (admins)",
                params=[group_path, *_query(workspace={**_MAPPING_WORKSPACE, "nullable": False})],
            ),
        },
        f"{mf}/workspaces": {
            "get": _op("The workspaces: local first, then the remotes (any global role)"),
            "post": _op(
                "Register a remote workspace, checked first unless validate=false (admins); no answer holds the token",
                params=_query(validate=_VALIDATE),
                body=_body(
                    {**_object(["name", "host", "token"], name=_NAME, host=_HOST, token=_REMOTE_TOKEN), **_CLOSED}
                ),
            ),
        },
        f"{mf}/workspaces/{{name}}": {
            "get": _op("One workspace (any global role)", params=[name]),
            "patch": _op(
                "Change a remote's host (with its token) or token, checked first unless validate=false (admins)",
                params=[name, *_query(validate=_VALIDATE)],
                body=_body(
                    {
                        **_object(
                            name={**_NAME, "description": "only the workspace's own: workspaces are not renamed"},
                            host=_HOST,
                            token=_REMOTE_TOKEN,
                        ),
                        **_CLOSED,
                    }
                ),
            ),
            "delete": _op("Remove a remote workspace and its stored token (admins; not local)", params=[name]),
        },
        f"{mf}/workspaces/{{name}}/grants": {
            "get": _op(
                "The roles granted in a workspace, by admins and through single sign-on (admins)", params=[name]
            ),
            "put": _op(
                "Give a user or a group viewer, editor or approver in a workspace, local included (admins)",
                params=[name],
                body=_body(_GRANT),
            ),
            "delete": _op(
                "Remove the role an admin granted a user or a group in a workspace (admins)",
                params=[name, *_query(user_name=_GRANTEE, group_name=_GRANTEE)],
            ),
        },
        # The fleet (issue 16): every workspace's endpoints; remote ones are read-only here.
        f"{mf}/fleet/endpoints": {
            "get": _op(
                "Every workspace's endpoints the caller may see, filtered, sorted and paged as the fleet page",
                params=_query(
                    q={"type": "string", "maxLength": 200},
                    workspace={"type": "string", "maxLength": 63, "description": "a workspace's name; local: this one"},
                    state={"type": "string", "enum": ["ready", "updating", "update_failed", "scaled_to_zero", "down"]},
                    health={"type": "string", "enum": ["NOT_POLLED", "HEALTHY", "DEGRADED", "DOWN", "SCALED_TO_ZERO"]},
                    tag={"type": "string", "maxLength": 300, "description": "key or key=value"},
                    owner={"type": "string", "maxLength": 150},
                    sort={"type": "string", "maxLength": 20, "description": "a column, - first for descending"},
                    page={"type": "integer", "minimum": 1},
                    per_page={"type": "integer", "enum": [25, 50, 100, 200]},
                ),
            )
        },
        f"{mf}/fleet/endpoints/{{workspace}}/{{name}}": {
            "get": _op("One endpoint of a workspace (local: CAN_VIEW; remote: a role there)", params=fleet_ep)
        },
        f"{mf}/fleet/endpoints/{{workspace}}/{{name}}/metric-series": {
            "get": _op(
                "One endpoint's chart series, whichever workspace it is in",
                params=[
                    *fleet_ep,
                    *_query(
                        metrics={"type": "string", "description": "comma-separated series names"},
                        start=_EPOCH_MS,
                        end=_EPOCH_MS,
                        served_model={"type": "string", "maxLength": 255},
                    ),
                ],
            )
        },
        f"{mf}/fleet/endpoints/{{workspace}}/{{name}}/alert-rules": {
            "get": _op("One endpoint's alert rules, whichever workspace it is in", params=fleet_ep),
            "post": _op(
                "Add an alert rule (local: CAN_MANAGE; remote: editor or higher in its workspace)",
                params=fleet_ep,
                body=_body({**_ALERT_RULE, "required": ["name", "metric", "threshold"]}),
            ),
        },
        f"{mf}/fleet/endpoints/{{workspace}}/{{name}}/log-lines": {
            "get": _op(
                "One endpoint's stored log lines, whichever workspace it is in",
                params=[
                    *fleet_ep,
                    *_query(
                        kind={"type": "string", "enum": ["server", "build"]},
                        served_model={"type": "string", "maxLength": 255},
                        q={"type": "string", "maxLength": 1000},
                        level={"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
                        since=_EPOCH_MS,
                        until=_EPOCH_MS,
                        limit={"type": "integer", "minimum": 1, "maximum": 2000},
                        order={"type": "string", "enum": ["desc", "asc"]},
                        page_token={"type": "string"},
                    ),
                ],
            )
        },
        # Changes to a remote workspace's endpoints (issue 16 part 4), through the approval gate;
        # answered with the remote's own answer, 403 naming how to propose, or 502 when it failed.
        f"{mf}/workspaces/{{workspace}}/serving-endpoints": {
            "post": _op(
                "Create an endpoint in a remote workspace (editor or higher there)",
                params=fleet_ep[:1],
                body=_body(_CREATE_ENDPOINT),
            )
        },
        f"{mf}/workspaces/{{workspace}}/serving-endpoints/{{name}}": {
            "delete": _op("Delete a remote workspace's endpoint (editor or higher there)", params=fleet_ep)
        },
        f"{mf}/workspaces/{{workspace}}/serving-endpoints/{{name}}/config": {
            "put": _op(
                "Update a remote endpoint's served entities and traffic (editor or higher there)",
                params=fleet_ep,
                body=_body(_CONFIG),
            )
        },
        f"{mf}/workspaces/{{workspace}}/serving-endpoints/{{name}}/tags": {
            "patch": _op(
                "Add and delete a remote endpoint's tags (editor or higher there)",
                params=fleet_ep,
                body=_body(
                    _object(
                        add_tags={"type": "array", "items": _TAG},
                        delete_tags={"type": "array", "items": {"type": "string", "maxLength": 255}},
                    )
                ),
            )
        },
        f"{mf}/workspaces/{{workspace}}/serving-endpoints/{{name}}/ai-gateway": {
            "put": _op(
                "Set a remote endpoint's AI-gateway settings (editor or higher there)",
                params=fleet_ep,
                body=_body(_AI_GATEWAY),
            )
        },
        **_scim_paths(SCIM_ROOT),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Modelfleet management API",
            "version": "2.0",
            "description": "Databricks-compatible serving-endpoint, permissions, secrets, token and SCIM APIs, and "
            'Modelfleet\'s own fleet API. Errors are {"error_code", "message"}; SCIM routes answer SCIM\'s own '
            "(ScimError). Reading this document needs a signed-in user.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error_code", "message"],
                    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
                },
                "ScimError": {
                    "type": "object",
                    "description": "SCIM's error (RFC 7644 §3.12), on SCIM routes",
                    "required": ["schemas", "status", "detail"],
                    "properties": {
                        "schemas": {"type": "array", "items": {"type": "string", "enum": [SCIM_ERROR_URN]}},
                        "status": {"type": "string", "description": "the HTTP status, as a string"},
                        "detail": {"type": "string"},
                        "scimType": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
