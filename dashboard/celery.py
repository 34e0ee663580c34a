"""The Celery app: wiring and the one periodic schedule, both defined here only."""

from __future__ import annotations

import os

from celery import Celery

from endpoints_app.observability import processes

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

app = Celery("modelfleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["endpoints_app"])
processes.connect_celery_signals()  # the worker's and beat's heartbeats for /metrics


@app.on_after_configure.connect
def _schedule(sender: Celery, **kwargs: object) -> None:
    """The whole periodic schedule (intervals from the settings)."""
    from django.conf import settings

    sender.conf.beat_schedule = {
        # Restarts a rollout whose task chain was lost (e.g. a worker restart).
        "sweep-rollouts": {"task": "endpoints_app.tasks.sweep_rollouts", "schedule": 5.0},
        "poll-status": {
            "task": "endpoints_app.tasks.poll_due",
            "schedule": settings.POLL_STATUS_SECONDS,
            "args": ("status",),
        },
        "poll-metrics": {
            "task": "endpoints_app.tasks.poll_due",
            "schedule": settings.POLL_METRICS_SECONDS,
            "args": ("metrics",),
        },
        "poll-logs": {
            "task": "endpoints_app.tasks.poll_due",
            "schedule": settings.POLL_LOGS_SECONDS,
            "args": ("logs",),
        },
        # Remote workspaces (issue 16): a sweep task per workspace whose next_poll_at has passed.
        "sweep-workspaces": {"task": "endpoints_app.tasks.sweep_workspaces", "schedule": 5.0},
        "rollup-metrics": {"task": "endpoints_app.tasks.rollup_metrics", "schedule": 60.0},
        "evaluate-alerts": {
            "task": "endpoints_app.tasks.evaluate_alerts",
            "schedule": settings.ALERT_EVALUATION_SECONDS,
        },
        "prune-monitoring": {"task": "endpoints_app.tasks.prune_monitoring", "schedule": 3600.0},
        # Rollout plans: bake, judge the gates, advance or roll back.
        "evaluate-rollout-plans": {
            "task": "endpoints_app.tasks.evaluate_rollout_plans",
            "schedule": settings.ROLLOUT_PLAN_EVALUATION_SECONDS,
        },
    }
