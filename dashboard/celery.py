"""The Celery app: wiring and the one periodic schedule, both defined here only."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

app = Celery("modelfleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["endpoints_app"])

# The whole periodic schedule. The sweeper restarts any rollout whose task chain was lost
# (a worker restarted mid-rollout); rollouts are otherwise driven by their own tasks.
app.conf.beat_schedule = {
    "sweep-rollouts": {"task": "endpoints_app.tasks.sweep_rollouts", "schedule": 5.0},
}
