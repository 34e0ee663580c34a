"""Endpoint reads: the list, one endpoint (plain or detailed), readiness, and the entity whose logs are asked for."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from endpoints_app.errors import ResourceDoesNotExist
from endpoints_app.models import (
    ConfigUpdate,
    DeploymentState,
    Endpoint,
    EndpointTag,
    Replica,
    ReplicaState,
    ServedEntity,
)

_ENTITIES = Prefetch(
    "served_entities",
    queryset=ServedEntity.objects.select_related("deployment", "creator").order_by("position"),
)
# The detailed view also shows each entity's ready replicas.
_ENTITIES_WITH_REPLICAS = (
    ServedEntity.objects.select_related("deployment", "creator")
    .prefetch_related(
        Prefetch(
            "deployment__replicas",
            queryset=Replica.objects.filter(state=ReplicaState.READY).only("id", "deployment_id", "isolation"),
            to_attr="ready_replica_list",
        )
    )
    .order_by("position")
)


def endpoint_list() -> QuerySet[Endpoint]:
    return (
        Endpoint.objects.select_related("creator", "active_config", "pending_config")
        .prefetch_related(
            Prefetch("tags", queryset=EndpointTag.objects.order_by("key")),
            Prefetch("active_config__served_entities", queryset=_ENTITIES.queryset),
            Prefetch("pending_config__served_entities", queryset=_ENTITIES.queryset),
        )
        .order_by("name")
    )


def endpoint_detail(name: str) -> Endpoint:
    """One endpoint with everything the detailed wire shape shows (replica counts included)."""
    endpoint = (
        Endpoint.objects.select_related("creator", "active_config", "pending_config")
        .prefetch_related(
            Prefetch("tags", queryset=EndpointTag.objects.order_by("key")),
            Prefetch("active_config__served_entities", queryset=_ENTITIES_WITH_REPLICAS),
            Prefetch("pending_config__served_entities", queryset=_ENTITIES_WITH_REPLICAS),
        )
        .filter(name=name)
        .first()
    )
    if endpoint is None:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    return endpoint


def endpoint_by_name(name: str) -> Endpoint:
    endpoint = endpoint_list().filter(name=name).first()
    if endpoint is None:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    return endpoint


def endpoint_is_ready(endpoint: Endpoint) -> bool:
    """READY iff every served entity of the active config is ready (reference §2.6)."""
    if endpoint.active_config is None:
        return False
    entities = list(endpoint.active_config.served_entities.all())
    return bool(entities) and all(
        e.external_model is not None or (e.deployment is not None and e.deployment.state == DeploymentState.READY)
        for e in entities
    )


def served_entity_for_logs(endpoint: Endpoint, served_name: str) -> ServedEntity:
    """The served entity of that name in the pending config (the newest), else in the active one."""
    configs = []
    if endpoint.pending_config is not None and endpoint.config_update in (
        ConfigUpdate.IN_PROGRESS,
        ConfigUpdate.UPDATE_FAILED,
    ):
        configs.append(endpoint.pending_config)
    if endpoint.active_config is not None:
        configs.append(endpoint.active_config)
    for config in configs:
        for entity in config.served_entities.all():
            if entity.name == served_name:
                return entity
    raise ResourceDoesNotExist(f"Served model '{served_name}' does not exist in endpoint '{endpoint.name}'")
