"""Endpoint health, computed by the status poll from the runtime's rows and the newest metrics.

One status per endpoint, worst first:

- DOWN: no active config; or a served entity of the active config has no deployment, a failed
  (or aborted, stopped) deployment, or no ready replica while it is not scaled to zero.
- SCALED_TO_ZERO: every served entity has scale-to-zero enabled and no replica running or
  starting (and its deployment has not failed).
- DEGRADED: serving, but a deployment is recovering or has fewer ready replicas than desired;
  or the newest 15 s metric point (at most 2 minutes old) shows more than 5% 5xx responses;
  or metrics polling is failing, so nobody can see how the endpoint is doing.
- HEALTHY: none of the above.

External models have no deployment or replicas; only the metric rules apply to them.

``NOT_POLLED`` is only the value a new endpoint starts with. A status change updates the
endpoint with a conditional UPDATE (on the status it was read with) and writes a ``HealthChange``
row in the same transaction, so history and current status never disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.db import transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.utils import timezone

from endpoints_app.models import (
    ConfigUpdate,
    DeploymentState,
    Endpoint,
    HealthChange,
    HealthStatus,
    MetricPoint,
    PollKind,
    PollTarget,
    ReplicaState,
    ServedEntity,
)
from endpoints_app.monitoring import bulk
from endpoints_app.monitoring.metrics import BASE_RESOLUTION

log = logging.getLogger(__name__)

POINT_SECONDS = BASE_RESOLUTION  # the finest metric resolution
METRICS_MAX_AGE_SECONDS = 120  # an older newest point says nothing about now
ERROR_5XX_DEGRADED_PCT = 5.0
BROKEN_STATES = (DeploymentState.FAILED, DeploymentState.ABORTED, DeploymentState.STOPPED)


@dataclass(frozen=True)
class Health:
    status: HealthStatus
    reason: str


def pct(value: float) -> str:
    """12.0 → "12", 12.34 → "12.3": short enough for a status line."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def poll_status(endpoint: Endpoint, *, now: datetime | None = None) -> None:
    """The status poll: compute the endpoint's health and record it if it changed."""
    now = now or timezone.now()
    record_health(endpoint, compute_health(endpoint, now=now), now=now)


def poll_status_batch(endpoints: list[Endpoint], *, now: datetime | None = None) -> dict[str, str]:
    """The status poll of a batch (the sweep's): each endpoint's health from three queries for the
    whole batch (entities with replica counts, newest metric points, failing metric polls), and
    the changes recorded a group at a time (``record_health_batch``). Returns the endpoints whose
    health could not be computed, with the error."""
    now = now or timezone.now()
    if not endpoints:
        return {}
    entities = _entities_of([e.active_config_id for e in endpoints if e.active_config_id is not None])
    problems = _metric_problems_of([e.id for e in endpoints], now=now)
    healths: list[tuple[Endpoint, Health]] = []
    errors: dict[str, str] = {}
    for endpoint in endpoints:
        try:
            health = _health_of(
                endpoint, entities.get(endpoint.active_config_id or 0, []), problems.get(endpoint.id, [])
            )
        except Exception as exc:  # one endpoint's; the others are recorded
            errors[endpoint.id] = f"{type(exc).__name__}: {exc}"
            continue
        healths.append((endpoint, health))
    record_health_batch(healths, now=now)
    return errors


class _Deployment(NamedTuple):
    state: str
    state_message: str
    desired_replicas: int


class _Entity(NamedTuple):
    """What health reads of a served entity: its deployment and ready/starting replica counts."""

    name: str
    external_model: bool | None  # truthy: served by the gateway
    scale_to_zero_enabled: bool
    deployment: _Deployment | None
    ready: int
    starting: int


def _entities_of(config_ids: list[int]) -> dict[int, list[Any]]:
    """Each config's served entities (``_Entity``) in one query, as rows (no model instances)."""
    by_config: dict[int, list[Any]] = {}
    if not config_ids:
        return by_config
    rows = (
        ServedEntity.objects.filter(**bulk.in_ids("config_version_id", config_ids))
        .annotate(
            external=ExpressionWrapper(Q(external_model__isnull=False), output_field=BooleanField()),
            ready=Count("deployment__replicas", filter=Q(deployment__replicas__state=ReplicaState.READY)),
            starting=Count("deployment__replicas", filter=Q(deployment__replicas__state=ReplicaState.STARTING)),
        )
        .order_by("config_version_id", "position")
        .values_list(
            "id",
            "config_version_id",
            "name",
            "external",
            "scale_to_zero_enabled",
            "deployment_id",
            "deployment__state",
            "deployment__state_message",
            "deployment__desired_replicas",
            "ready",
            "starting",
        )
    )
    for _, config_id, name, external, to_zero, dep_id, state, message, desired, ready, starting in rows:
        deployment = _Deployment(state, message, desired) if dep_id is not None else None
        by_config.setdefault(config_id, []).append(
            _Entity(name, True if external else None, to_zero, deployment, ready, starting)
        )
    return by_config


def compute_health(endpoint: Endpoint, *, now: datetime) -> Health:
    """The endpoint's health now (three reads at most: entities with replica counts, the newest
    metric point, the metrics poll target)."""
    if endpoint.active_config_id is None:
        return Health(HealthStatus.DOWN, _no_active_config_reason(endpoint))
    entities = _entities_of([endpoint.active_config_id]).get(endpoint.active_config_id, [])
    return _health_of(endpoint, entities, None, now=now)


def _health_of(
    endpoint: Endpoint,
    entities: list[Any],
    metric_problems: list[str] | None,
    *,
    now: datetime | None = None,
) -> Health:
    """Health from the entities read; ``metric_problems`` None: read them for this endpoint."""
    if endpoint.active_config_id is None:
        return Health(HealthStatus.DOWN, _no_active_config_reason(endpoint))
    if not entities:
        return Health(HealthStatus.DOWN, "the active config has no served entities")

    down: list[str] = []
    degraded: list[str] = []
    scaled_to_zero = 0
    for entity in entities:
        if entity.external_model is not None:
            continue  # served by the gateway: no replicas to be down (provider errors show in the 5xx rate)
        dep = entity.deployment
        ready: int = entity.ready
        starting: int = entity.starting
        if dep is None:
            down.append(f"served entity {entity.name} has no deployment")
        elif dep.state in BROKEN_STATES:
            state = DeploymentState(dep.state).name.lower()
            detail = f": {dep.state_message}" if dep.state_message else ""
            down.append(f"served entity {entity.name} deployment {state}{detail}")
        elif ready == 0 and entity.scale_to_zero_enabled and starting == 0:
            scaled_to_zero += 1
        elif ready == 0:
            waking = f" ({starting} starting)" if starting else ""
            down.append(f"served entity {entity.name} has no ready replica{waking}")
        elif dep.state == DeploymentState.RECOVERING:
            detail = dep.state_message or f"{ready} of {dep.desired_replicas} replica(s) ready"
            degraded.append(f"served entity {entity.name} is recovering: {detail}")
        elif ready < dep.desired_replicas:
            degraded.append(f"served entity {entity.name} has {ready} of {dep.desired_replicas} replicas ready")

    if down:
        return Health(HealthStatus.DOWN, "; ".join(down))
    if scaled_to_zero == len(entities):
        return Health(HealthStatus.SCALED_TO_ZERO, "every served entity is scaled to zero")
    if metric_problems is None:
        metric_problems = _metric_problems(endpoint, now=now or timezone.now())
    degraded += metric_problems
    if degraded:
        return Health(HealthStatus.DEGRADED, "; ".join(degraded))
    if scaled_to_zero:
        return Health(HealthStatus.HEALTHY, f"{scaled_to_zero} of {len(entities)} served entities scaled to zero")
    return Health(HealthStatus.HEALTHY, "")


def _no_active_config_reason(endpoint: Endpoint) -> str:
    if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
        return "no config is live yet: the first config is still deploying"
    if endpoint.config_update == ConfigUpdate.UPDATE_FAILED:
        detail = f": {endpoint.config_update_message}" if endpoint.config_update_message else ""
        return f"no config is live: the first config failed to deploy{detail}"
    return "no config is live"


def _metric_problems(endpoint: Endpoint, *, now: datetime) -> list[str]:
    return _metric_problems_of([endpoint.id], now=now).get(endpoint.id, [])


def _metric_problems_of(endpoint_ids: list[str], *, now: datetime) -> dict[str, list[str]]:
    """What the metrics say of each endpoint: its newest 15 s point (at most 2 minutes old) with
    more than 5% 5xx, a failing metrics poll. Two queries for any number of endpoints."""
    problems: dict[str, list[str]] = {}
    oldest = int(now.timestamp()) - METRICS_MAX_AGE_SECONDS
    newest: dict[str, tuple[int, float, float]] = {}
    # metric_point_read_idx (endpoint, resolution, ts) serves this.
    for eid, ts, requests, errors in MetricPoint.objects.filter(
        **bulk.in_ids("endpoint_id", endpoint_ids, "varchar"),
        served_entity_name="",
        resolution=POINT_SECONDS,
        ts__gte=oldest,
    ).values_list("endpoint_id", "ts", "request_count", "count_5xx"):
        if eid not in newest or ts > newest[eid][0]:
            newest[eid] = (ts, requests, errors)
    for eid, (_, requests, errors) in newest.items():
        if requests > 0 and errors / requests * 100 > ERROR_5XX_DEGRADED_PCT:
            problems.setdefault(eid, []).append(
                f"5xx rate {pct(errors / requests * 100)}% over the last {POINT_SECONDS} s "
                f"({errors:g} of {requests:g} requests)"
            )
    for eid, since, error in PollTarget.objects.filter(
        **bulk.in_ids("endpoint_id", endpoint_ids, "varchar"), kind=PollKind.METRICS, failing_since__isnull=False
    ).values_list("endpoint_id", "failing_since", "last_error"):
        detail = f": {error[:200]}" if error else ""
        problems.setdefault(eid, []).append(f"metrics polling failing since {since:%Y-%m-%d %H:%M:%S} UTC{detail}")
    return problems


def record_health(endpoint: Endpoint, health: Health, *, now: datetime) -> bool:
    """Store ``health`` if it differs from what the endpoint was read with; True if the status changed.

    The UPDATE is conditional on the status read, so of two overlapping polls only one records a
    change (the other's is dropped; the next poll recomputes). A new reason for the same status
    updates ``health_reason`` only: history is about status changes.
    """
    previous = endpoint.health
    if health.status == previous:
        if health.reason != endpoint.health_reason:
            Endpoint.fleet.filter(id=endpoint.id, health=previous).update(health_reason=health.reason)
            endpoint.health_reason = health.reason
        return False
    with transaction.atomic():
        changed = Endpoint.fleet.filter(id=endpoint.id, health=previous).update(
            health=health.status, health_reason=health.reason, health_changed_at=now
        )
        if changed != 1:
            return False
        HealthChange.objects.create(
            endpoint_id=endpoint.id, at=now, previous=previous, status=health.status, reason=health.reason
        )
    endpoint.health, endpoint.health_reason, endpoint.health_changed_at = health.status, health.reason, now
    log.info("endpoint %s: %s → %s %s", endpoint.name, previous, health.status, health.reason)
    return True


def record_health_batch(healths: list[tuple[Endpoint, Health]], *, now: datetime) -> set[str]:
    """``record_health`` for many endpoints: one conditional UPDATE per group of endpoints with the
    same (status read, new status, reason), the ``HealthChange`` rows of those it changed in bulk,
    in the same transaction. Returns the ids whose status changed."""
    changes: dict[tuple[str, str, str], list[Endpoint]] = {}
    reasons: dict[tuple[str, str], list[Endpoint]] = {}
    for endpoint, health in healths:
        if health.status == endpoint.health:
            if health.reason != endpoint.health_reason:
                reasons.setdefault((endpoint.health, health.reason), []).append(endpoint)
        else:
            changes.setdefault((endpoint.health, health.status, health.reason), []).append(endpoint)
    for (previous, reason), group in reasons.items():
        Endpoint.fleet.filter(id__in=[e.id for e in group], health=previous).update(health_reason=reason)
        for endpoint in group:
            endpoint.health_reason = reason
    changed: set[str] = set()
    for (previous, status, reason), group in changes.items():
        ids = [e.id for e in group]
        with transaction.atomic():
            # Lock the rows still in the status read: only those change (an overlapping poll's
            # change wins for the others; the next poll recomputes). FOR NO KEY UPDATE, as the
            # UPDATE itself locks: a FOR UPDATE would wait on (and deadlock with) the key-share
            # locks of a concurrent metrics or logs poll checking its new rows' foreign keys to
            # these endpoints at commit.
            mine = set(
                Endpoint.fleet.select_for_update(no_key=True)
                .filter(id__in=ids, health=previous)
                .order_by("id")
                .values_list("id", flat=True)
            )
            if not mine:
                continue
            Endpoint.fleet.filter(id__in=mine).update(health=status, health_reason=reason, health_changed_at=now)
            bulk.insert_rows(
                HealthChange._meta.db_table,
                ("endpoint_id", "at", "previous", "status", "reason"),
                [[eid, now, previous, status, reason] for eid in sorted(mine)],
            )
        for endpoint in group:
            if endpoint.id in mine:
                endpoint.health, endpoint.health_reason, endpoint.health_changed_at = status, reason, now
                log.info("endpoint %s: %s → %s %s", endpoint.name, previous, status, reason)
        changed |= mine
    return changed
