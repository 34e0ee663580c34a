"""Celery tasks: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task

from endpoints_app.services import rollouts

RECHECK_SECONDS = 0.5


@shared_task(ignore_result=True)
def start_rollout(endpoint_id: str) -> None:
    if not rollouts.start_rollout(endpoint_id=endpoint_id):
        advance_rollout.apply_async((endpoint_id,), countdown=RECHECK_SECONDS)


@shared_task(ignore_result=True)
def advance_rollout(endpoint_id: str) -> None:
    if not rollouts.advance_rollout(endpoint_id=endpoint_id):
        advance_rollout.apply_async((endpoint_id,), countdown=RECHECK_SECONDS)


@shared_task(ignore_result=True)
def sweep_rollouts() -> None:
    """Beat: restart the chain of any rollout nobody has checked recently (e.g. a worker restart)."""
    for endpoint_id in rollouts.lost_rollouts():
        start_rollout.delay(endpoint_id)
    rollouts.remove_orphaned_deployments()
