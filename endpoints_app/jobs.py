"""Background jobs enqueued by name, once the current transaction commits.

Services decide that work must follow a change (drive a rollout, send a notification); the Celery
tasks that do it (``endpoints_app.tasks``) are thin wrappers that call back into those services.
Naming the task here instead of importing it keeps the services below the tasks in the import
graph, so neither needs an import inside a function to reach the other. The names are checked
against the tasks Celery registers (tests/test_import_graph.py).

Enqueueing waits for the commit so a worker never looks for a row it cannot see yet, nor acts on
a change that was rolled back; outside a transaction the job is sent at once. Arguments are ids
and other JSON values, never model instances.
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction

JsonValue = str | int | float | bool | None

START_ROLLOUT = "endpoints_app.tasks.start_rollout"
NOTIFY_UPDATE_RESULT = "endpoints_app.tasks.notify_update_result"

TASK_NAMES = (START_ROLLOUT, NOTIFY_UPDATE_RESULT)


def enqueue_on_commit(task_name: str, *args: JsonValue) -> None:
    """Send ``task_name(*args)`` to the broker when the current transaction commits."""
    if task_name not in TASK_NAMES:
        raise ValueError(f"unknown job {task_name!r}")
    transaction.on_commit(lambda: current_app.send_task(task_name, args=args))
