"""Driving a config rollout to its end: switch traffic when ready, or fail and keep the old config.

The steps, each safe to repeat (a task chain or the sweeper may run them again):
1. ``start_rollout`` asks the backend to deploy every served entity of the pending version.
2. ``advance_rollout`` reads the entities' deployment states:
   - all ready → in one short transaction the pending version becomes active, then the backend
     removes the deployments no version uses any more (their replicas drain first);
   - one failed, or the deadline passed → UPDATE_FAILED; the active version keeps serving and
     the new deployments are removed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from endpoints_app import audit, jobs
from endpoints_app.backends import get_backend
from endpoints_app.backends.base import EntityStatus
from endpoints_app.models import ConfigUpdate, ConfigVersion, Deployment, DeploymentState, Endpoint

log = logging.getLogger(__name__)

CHECK_INTERVAL = timedelta(seconds=0.5)
EXTERNAL_READY_MESSAGE = "External model: served by the gateway, no replicas needed."
LOST_CHAIN_AFTER = timedelta(seconds=10)


def start_rollout(*, endpoint_id: str) -> bool:
    endpoint = Endpoint.objects.select_related("pending_config").filter(id=endpoint_id).first()
    if endpoint is None or endpoint.config_update != ConfigUpdate.IN_PROGRESS or endpoint.pending_config is None:
        return True
    get_backend().apply(config=endpoint.pending_config)
    return advance_rollout(endpoint_id=endpoint_id, claim=False)


def claim_check(*, endpoint_id: str) -> bool:
    """Claim the next check of a rollout; False when another task chain checked it just now."""
    now = timezone.now()
    claimed = (
        Endpoint.objects.filter(id=endpoint_id, config_update=ConfigUpdate.IN_PROGRESS)
        .filter(Q(rollout_next_check_at__isnull=True) | Q(rollout_next_check_at__lte=now))
        .update(rollout_next_check_at=now + CHECK_INTERVAL)
    )
    return claimed == 1


def advance_rollout(*, endpoint_id: str, claim: bool = True) -> bool:
    """One check of a rollout. Returns True when the rollout is over (or not this chain's to drive)."""
    if claim and not claim_check(endpoint_id=endpoint_id):
        return True
    endpoint = Endpoint.objects.select_related("pending_config").filter(id=endpoint_id).first()
    if endpoint is None or endpoint.config_update != ConfigUpdate.IN_PROGRESS or endpoint.pending_config is None:
        return True
    pending = endpoint.pending_config
    backend = get_backend()
    if pending.served_entities.filter(deployment__isnull=True, external_model__isnull=True).exists():
        backend.apply(config=pending)
    statuses = {**external_statuses(pending), **backend.status(config=pending)}

    failed = {
        name: s for name, s in statuses.items() if s.deployment in (DeploymentState.FAILED, DeploymentState.ABORTED)
    }
    if failed:
        message = "; ".join(f"served entity '{n}' failed: {s.message}" for n, s in failed.items())
        _finish(endpoint_id=endpoint_id, version=pending, ok=False, message=message)
        return True
    if all(s.deployment == DeploymentState.READY for s in statuses.values()):
        _finish(endpoint_id=endpoint_id, version=pending, ok=True, message="")
        return True
    if endpoint.rollout_deadline and timezone.now() > endpoint.rollout_deadline:
        waiting = ", ".join(
            f"{n} ({s.deployment})" for n, s in statuses.items() if s.deployment != DeploymentState.READY
        )
        _finish(
            endpoint_id=endpoint_id,
            version=pending,
            ok=False,
            message=f"timed out waiting for served entities to become ready: {waiting}. "
            "Is the runtime agent running (modelfleet runtime)?",
        )
        return True
    return False


def external_statuses(config: ConfigVersion) -> dict[str, EntityStatus]:
    """External models need no model server: they are ready as soon as their config is stored."""
    return {
        name: EntityStatus(DeploymentState.READY, EXTERNAL_READY_MESSAGE, 0)
        for name in config.served_entities.filter(external_model__isnull=False).values_list("name", flat=True)
    }


def _finish(*, endpoint_id: str, version: ConfigVersion, ok: bool, message: str) -> None:
    with transaction.atomic():
        endpoint = Endpoint.objects.select_for_update().filter(id=endpoint_id).first()
        # Claim: only the check that still sees this version in progress may finish it.
        if (
            endpoint is None
            or endpoint.config_update != ConfigUpdate.IN_PROGRESS
            or endpoint.pending_config_id != version.id
        ):
            return
        if ok:
            endpoint.active_config = version
            endpoint.pending_config = None
            endpoint.config_update = ConfigUpdate.NOT_UPDATING
            endpoint.config_update_message = ""
        else:
            # The failed version stays visible as pending_config, with its entities' errors.
            endpoint.config_update = ConfigUpdate.UPDATE_FAILED
            endpoint.config_update_message = message
        endpoint.rollout_next_check_at = None
        endpoint.save()
        audit.record(
            actor=None,
            action="endpoint.config_applied" if ok else "endpoint.update_failed",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            after={"config_version": version.version, "config_update": endpoint.config_update, "message": message},
        )
    log.info("rollout of %s v%s %s%s", endpoint.name, version.version, "succeeded" if ok else "failed: ", message)
    remove_unused_deployments(endpoint_id=endpoint_id)
    if endpoint.email_notifications:
        jobs.enqueue_on_commit(jobs.NOTIFY_UPDATE_RESULT, endpoint_id, version.version, ok, message)


def remove_unused_deployments(*, endpoint_id: str) -> None:
    """Ask the backend to remove the endpoint's deployments that neither active nor pending config uses."""
    endpoint = Endpoint.objects.filter(id=endpoint_id).first()
    if endpoint is None:
        return
    keep: set[int | None] = {None}
    if endpoint.active_config is not None:
        keep |= set(endpoint.active_config.served_entities.values_list("deployment_id", flat=True))
    if endpoint.config_update == ConfigUpdate.IN_PROGRESS and endpoint.pending_config is not None:
        keep |= set(endpoint.pending_config.served_entities.values_list("deployment_id", flat=True))
    unused = (
        Deployment.objects.filter(endpoint=endpoint, remove_requested_at__isnull=True)
        .exclude(id__in=[k for k in keep if k is not None])
        .values_list("id", flat=True)
    )
    get_backend().remove(deployment_ids=list(unused))


def lost_rollouts() -> list[str]:
    """Rollouts in progress whose task chain has not checked them for a while."""
    stale = timezone.now() - LOST_CHAIN_AFTER
    return list(
        Endpoint.objects.filter(config_update=ConfigUpdate.IN_PROGRESS)
        .filter(Q(rollout_next_check_at__isnull=True) | Q(rollout_next_check_at__lt=stale))
        .values_list("id", flat=True)
    )


def remove_orphaned_deployments() -> int:
    """Deployments whose endpoint was deleted while a rollout was creating them: remove them too."""
    orphans = list(
        Deployment.objects.filter(endpoint__isnull=True, remove_requested_at__isnull=True).values_list("id", flat=True)
    )
    get_backend().remove(deployment_ids=orphans)
    return len(orphans)
