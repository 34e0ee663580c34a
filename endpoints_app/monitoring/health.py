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

from django.db import transaction
from django.db.models import Count, Q
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


def compute_health(endpoint: Endpoint, *, now: datetime) -> Health:
    """The endpoint's health now (three reads at most: entities with replica counts, the newest
    metric point, the metrics poll target)."""
    if endpoint.active_config_id is None:
        return Health(HealthStatus.DOWN, _no_active_config_reason(endpoint))
    entities = list(
        ServedEntity.objects.filter(config_version_id=endpoint.active_config_id)
        .select_related("deployment")
        .annotate(
            ready=Count("deployment__replicas", filter=Q(deployment__replicas__state=ReplicaState.READY)),
            starting=Count("deployment__replicas", filter=Q(deployment__replicas__state=ReplicaState.STARTING)),
        )
        .order_by("position")
    )
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
    degraded += _metric_problems(endpoint, now=now)
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
    problems: list[str] = []
    oldest = int(now.timestamp()) - METRICS_MAX_AGE_SECONDS
    # metric_point_read_idx (endpoint, resolution, ts) serves this.
    point = (
        MetricPoint.objects.filter(endpoint=endpoint, served_entity_name="", resolution=POINT_SECONDS, ts__gte=oldest)
        .order_by("-ts")
        .values_list("request_count", "count_5xx")
        .first()
    )
    if point is not None:
        requests, errors = point
        if requests > 0 and errors / requests * 100 > ERROR_5XX_DEGRADED_PCT:
            problems.append(
                f"5xx rate {pct(errors / requests * 100)}% over the last {POINT_SECONDS} s "
                f"({errors:g} of {requests:g} requests)"
            )
    failing = (
        PollTarget.objects.filter(endpoint=endpoint, kind=PollKind.METRICS, failing_since__isnull=False)
        .values_list("failing_since", "last_error")
        .first()
    )
    if failing is not None:
        since, error = failing
        detail = f": {error[:200]}" if error else ""
        problems.append(f"metrics polling failing since {since:%Y-%m-%d %H:%M:%S} UTC{detail}")
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
