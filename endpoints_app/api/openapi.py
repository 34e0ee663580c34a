"""The per-endpoint OpenAPI 3.1 document (reference §4.7), built from the models' signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from endpoints_app import registry
from endpoints_app.errors import DomainError, InvalidParameterValue
from endpoints_app.models import Endpoint, ServedEntity

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
