"""Celery tasks: thin wrappers that take ids and call one service.

Services enqueue these by name (``endpoints_app.jobs``), so this module sits above everything it
calls and nothing but Celery imports it.
"""

from __future__ import annotations

from celery import shared_task

from endpoints_app.gateway import usage
from endpoints_app.monitoring import alerts, logs, metrics, notifications, payloads, polling
from endpoints_app.monitoring import remote as remote_polling
from endpoints_app.services import rollout_plans, rollouts

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


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def evaluate_rollout_plans() -> int:
    """Beat: judge every running rollout plan once (advance, or roll back on a breach)."""
    return rollout_plans.evaluate_all()


# --- monitoring -------------------------------------------------------------------------------


@shared_task(ignore_result=True)
def poll_due(kind: str) -> int:
    """Beat: one poll task per batch of due targets of this kind (``polling.POLL_BATCH_SIZE``)."""
    polling.ensure_targets()
    due = polling.due_targets(kind)
    for i in range(0, len(due), polling.POLL_BATCH_SIZE):
        poll_batch.delay(due[i : i + polling.POLL_BATCH_SIZE])
    return len(due)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=75)
def poll_batch(target_ids: list[int]) -> None:
    polling.run_batch(target_ids)


@shared_task(ignore_result=True, soft_time_limit=30, time_limit=40)
def poll_target(target_id: int) -> None:
    polling.run_poll(target_id)


# --- remote workspaces (issue 16): one sweep task per workspace -------------------------------


@shared_task(ignore_result=True)
def sweep_workspaces() -> int:
    """Beat: one sweep task per remote workspace that is due."""
    due = remote_polling.due_workspaces()
    for workspace_id in due:
        sweep_workspace.delay(workspace_id)
    return len(due)


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=150)
def sweep_workspace(workspace_id: int) -> None:
    remote_polling.run_sweep(workspace_id)


@shared_task(ignore_result=True)
def rollup_metrics() -> None:
    metrics.rollup()


@shared_task(ignore_result=True)
def evaluate_alerts() -> None:
    alerts.evaluate_alerts()


@shared_task(ignore_result=True)
def prune_monitoring() -> None:
    """Beat: retention of metric points, log lines, payloads, usage records and poll runs."""
    metrics.prune()
    logs.prune_logs()
    payloads.prune_payloads()
    usage.prune()
    polling.prune_poll_runs()


@shared_task(ignore_result=True)
def notify_update_result(endpoint_id: str, version: int, ok: bool, message: str) -> None:
    notifications.notify_update_result(endpoint_id=endpoint_id, version=version, ok=ok, message=message)
