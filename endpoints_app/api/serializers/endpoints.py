"""The Databricks wire shapes of endpoints (reference §2.5), built from prefetched rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from endpoints_app.api.serializers.common import ms, user_label
from endpoints_app.models import ConfigUpdate, ConfigVersion, DeploymentState, Endpoint, EndpointTag, ServedEntity
from endpoints_app.selectors import endpoint_is_ready
from endpoints_app.services.oauth import authorization_details
from endpoints_app.services.rollouts import EXTERNAL_READY_MESSAGE
from endpoints_app.validation import redact_environment_vars


def serialize_entity_state(entity: ServedEntity, *, failed_config: bool = False) -> dict[str, str]:
    if entity.external_model is not None:
        return {"deployment": DeploymentState.READY, "deployment_state_message": EXTERNAL_READY_MESSAGE}
    dep = entity.deployment
    if dep is None:
        return {
            "deployment": DeploymentState.CREATING,
            "deployment_state_message": "Waiting for the runtime to start the deployment.",
        }
    state = dep.state
    if state == DeploymentState.STOPPED:
        state = DeploymentState.ABORTED if failed_config else DeploymentState.READY
    return {"deployment": state, "deployment_state_message": dep.state_message}


def serialize_served_entity(entity: ServedEntity, *, failed_config: bool = False) -> dict[str, Any]:
    if entity.external_model is not None:
        # Credentials are stored as {{secrets/...}} references only: nothing here to blank.
        return {
            "name": entity.name,
            "external_model": entity.external_model,
            "creation_timestamp": ms(entity.created_at),
            "creator": user_label(entity.creator),
            "state": serialize_entity_state(entity),
            **entity.extra,
        }
    out: dict[str, Any] = {
        "name": entity.name,
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "workload_type": entity.workload_type,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
        "creation_timestamp": ms(entity.created_at),
        "creator": user_label(entity.creator),
        "state": serialize_entity_state(entity, failed_config=failed_config),
    }
    if entity.workload_size:
        out["workload_size"] = entity.workload_size
    dep = entity.deployment
    if dep is not None:
        # Not in Databricks' schema (clients ignore unknown fields): what the autoscaler is doing.
        ready = getattr(dep, "ready_replica_list", None)
        out["current_replicas"] = len(ready) if ready is not None else dep.replicas.filter(state="READY").count()
        out["target_replicas"] = 0 if dep.stopped_at else dep.desired_replicas
        out["min_replicas"], out["max_replicas"] = dep.min_replicas, dep.max_replicas
        if dep.scaled_to_zero_at is not None:
            out["scaled_to_zero"] = True
    if entity.min_provisioned_concurrency is not None:
        out["min_provisioned_concurrency"] = entity.min_provisioned_concurrency
        out["max_provisioned_concurrency"] = entity.max_provisioned_concurrency
    if entity.environment_vars:
        # Names and secret references as written; a plain value is no one's to read back (CAN_VIEW
        # sees this, and a value may be a credential someone pasted).
        out["environment_vars"] = redact_environment_vars(entity.environment_vars)
    out.update(entity.extra)
    return out


def serialize_tags(tags: Iterable[EndpointTag]) -> list[dict[str, str]]:
    return [{"key": t.key, "value": t.value} for t in tags]


def endpoint_task(endpoint: Endpoint) -> str:
    """The task of an endpoint serving external models (reference §2.5), "" for custom models."""
    config = endpoint.active_config or endpoint.pending_config
    if config is None:
        return ""
    return next((e.external_model.get("task", "") for e in config.served_entities.all() if e.external_model), "")


def _entity_spec(entity: ServedEntity) -> dict[str, Any]:
    """A served entity in the list view (``ServedEntitySpec``)."""
    if entity.external_model is not None:
        return {"name": entity.name, "external_model": entity.external_model}
    return {"name": entity.name, "entity_name": entity.entity_name, "entity_version": entity.entity_version}


def _legacy_model(entity_out: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entity_out.items() if k not in ("entity_name", "entity_version")}
    out["model_name"] = entity_out["entity_name"]
    out["model_version"] = entity_out["entity_version"]
    return out


def serialize_config(config: ConfigVersion, *, failed: bool = False) -> dict[str, Any]:
    entities = [serialize_served_entity(e, failed_config=failed) for e in config.served_entities.all()]
    out: dict[str, Any] = {
        "config_version": config.version,
        "served_entities": entities,
        "traffic_config": config.traffic_config,
    }
    if config.legacy_served_models:
        out["served_models"] = [_legacy_model(e) for e in entities]
    if config.auto_capture_config:
        out["auto_capture_config"] = config.auto_capture_config
    return out


def serialize_state(endpoint: Endpoint) -> dict[str, str]:
    state = {
        "ready": "READY" if endpoint_is_ready(endpoint) else "NOT_READY",
        "config_update": endpoint.config_update,
    }
    if endpoint.config_update_message:
        state["config_update_message"] = endpoint.config_update_message
    return state


def serialize_endpoint_detailed(
    endpoint: Endpoint, *, permission_level: str = "CAN_MANAGE", base_url: str = ""
) -> dict[str, Any]:
    """``base_url``: this server as the caller reached it; a route-optimized endpoint then gets its
    ``endpoint_url`` and ``data_plane_info`` (the query URL and the right to ask a data-plane token
    for, at ``/oidc/v1/token``: ``services.oauth``)."""
    out: dict[str, Any] = {
        "id": endpoint.id,
        "name": endpoint.name,
        "creator": user_label(endpoint.creator),
        "creation_timestamp": ms(endpoint.created_at),
        "last_updated_timestamp": ms(endpoint.updated_at),
        "state": serialize_state(endpoint),
        "tags": serialize_tags(endpoint.tags.all()),
        "permission_level": permission_level,
        "route_optimized": endpoint.route_optimized,
        "description": endpoint.description,
    }
    if endpoint.active_config is not None:
        out["config"] = serialize_config(endpoint.active_config)
    pending = endpoint.pending_config
    if pending is not None and endpoint.config_update in (ConfigUpdate.IN_PROGRESS, ConfigUpdate.UPDATE_FAILED):
        pending_out = serialize_config(pending, failed=endpoint.config_update == ConfigUpdate.UPDATE_FAILED)
        pending_out["start_time"] = ms(endpoint.rollout_started_at or pending.created_at)
        out["pending_config"] = pending_out
    for field in ("ai_gateway", "email_notifications", "telemetry_config"):
        value = getattr(endpoint, field)
        if value:
            out[field] = value
    if endpoint.budget_policy_id:
        out["budget_policy_id"] = endpoint.budget_policy_id
    task = endpoint_task(endpoint)
    if task:
        out["task"] = task
    if endpoint.route_optimized and base_url:
        # The gateway itself: a data-plane token is accepted there, for this endpoint only.
        url = f"{base_url}/serving-endpoints/{endpoint.name}/invocations"
        out["endpoint_url"] = url
        out["data_plane_info"] = {
            "query_info": {"endpoint_url": url, "authorization_details": authorization_details(endpoint)}
        }
    return out


def serialize_endpoint_summary(endpoint: Endpoint) -> dict[str, Any]:
    config = endpoint.active_config or endpoint.pending_config
    entities = list(config.served_entities.all()) if config else []
    out: dict[str, Any] = {
        "id": endpoint.id,
        "name": endpoint.name,
        "creator": user_label(endpoint.creator),
        "creation_timestamp": ms(endpoint.created_at),
        "last_updated_timestamp": ms(endpoint.updated_at),
        "state": serialize_state(endpoint),
        "config": {"served_entities": [_entity_spec(e) for e in entities]},
        "tags": serialize_tags(endpoint.tags.all()),
        "description": endpoint.description,
    }
    if endpoint.ai_gateway:
        out["ai_gateway"] = endpoint.ai_gateway
    task = endpoint_task(endpoint)
    if task:
        out["task"] = task
    return out
