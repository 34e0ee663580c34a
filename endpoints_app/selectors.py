"""Reads: querysets shaped for the pages and the API, with the prefetching they need."""

from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, QuerySet

from endpoints_app import access
from endpoints_app.errors import ResourceDoesNotExist
from endpoints_app.models import (
    AuditEvent,
    ChangeRequest,
    ConfigUpdate,
    DeploymentState,
    Endpoint,
    EndpointTag,
    Replica,
    ReplicaState,
    ServedEntity,
)
from endpoints_app.services.changes import APPROVER_ROLES

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


# --- change requests ---------------------------------------------------------------------------


def change_requests_for(
    user: AbstractBaseUser, *, status: str | None = None, endpoint_name: str | None = None
) -> QuerySet[ChangeRequest]:
    """The change requests ``user`` may see, newest first: approvers and admins see every one, anyone
    else only their own. ``status`` (any case) and ``endpoint_name`` narrow it; an unknown status
    matches nothing. The page, the API and the CLI (through the API) all list through here."""
    requests = ChangeRequest.objects.select_related("author", "decided_by").order_by("-id")
    if access.role_of(user) not in APPROVER_ROLES:
        requests = requests.filter(author_id=user.pk)
    if status:
        requests = requests.filter(status=status.upper())
    if endpoint_name:
        requests = requests.filter(endpoint_name=endpoint_name)
    return requests


def change_request_for(user: AbstractBaseUser, request_id: int) -> ChangeRequest:
    """One change request ``user`` may see; one they may not is as missing as one that never was."""
    change = change_requests_for(user).filter(pk=request_id).first()
    if change is None:
        raise ResourceDoesNotExist(f"Change request {request_id} does not exist")
    return change


# --- the audit log -----------------------------------------------------------------------------


def audit_event_page(
    events: QuerySet[AuditEvent], *, before_id: int | None, limit: int
) -> tuple[list[AuditEvent], int | None]:
    """One page of ``events``, newest first, below ``before_id`` (keyset paging: no COUNT, no OFFSET
    over a table that only grows), and the ``before_id`` of the next page (None on the last)."""
    if before_id is not None:
        events = events.filter(id__lt=before_id)
    rows = list(events.order_by("-id")[: limit + 1])
    return rows[:limit], rows[limit - 1].id if len(rows) > limit else None


def audit_event_export(events: QuerySet[AuditEvent]) -> Iterator[AuditEvent]:
    """Every one of ``events``, oldest first, read in chunks (an export may be the whole log)."""
    return events.order_by("at", "id").iterator(chunk_size=500)
