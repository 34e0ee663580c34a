"""The poll loop shared by status, metrics and log polling.

1. The beat fans out: ``due_targets(kind)`` lists targets whose ``next_poll_at`` has passed and
   one small task is enqueued per target.
2. Each task claims its target with a conditional UPDATE on ``next_poll_at`` (a second task for
   the same target finds nothing to claim and stops), runs the kind's poll function, records a
   ``PollRun`` row, and schedules the next poll: the normal interval after a success, a growing
   backoff after consecutive failures (capped), so a dead endpoint costs little and never delays
   the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from endpoints_app.models import Endpoint, PollKind, PollRun, PollTarget

log = logging.getLogger(__name__)

# The poll function of each kind: ``fn(endpoint) -> None``; raising marks the run failed.
POLLERS: dict[str, str] = {
    PollKind.STATUS: "endpoints_app.monitoring.health:poll_status",
    PollKind.METRICS: "endpoints_app.monitoring.metrics:poll_metrics",
    PollKind.LOGS: "endpoints_app.monitoring.logs:poll_logs",
}


def interval(kind: str) -> float:
    return {
        PollKind.STATUS: settings.POLL_STATUS_SECONDS,
        PollKind.METRICS: settings.POLL_METRICS_SECONDS,
        PollKind.LOGS: settings.POLL_LOGS_SECONDS,
    }[PollKind(kind)]


def poller(kind: str) -> Callable[[Endpoint], None]:
    module, _, name = POLLERS[kind].partition(":")
    return getattr(import_module(module), name)


def ensure_targets() -> int:
    """A poll target of each kind for every endpoint (new endpoints are due at once)."""
    now = timezone.now()
    have = set(PollTarget.objects.values_list("endpoint_id", "kind"))
    missing = [
        PollTarget(endpoint_id=endpoint_id, kind=kind, next_poll_at=now)
        for endpoint_id in Endpoint.objects.values_list("id", flat=True)
        for kind in PollKind.values
        if (endpoint_id, kind) not in have
    ]
    PollTarget.objects.bulk_create(missing, ignore_conflicts=True)
    return len(missing)


def due_targets(kind: str, *, limit: int = 10_000) -> list[int]:
    return list(
        PollTarget.objects.filter(kind=kind, next_poll_at__lte=timezone.now())
        .order_by("next_poll_at")
        .values_list("id", flat=True)[:limit]
    )


def claim(target_id: int) -> PollTarget | None:
    """Take the target for this poll: push ``next_poll_at`` out as a lease; None if not due."""
    now = timezone.now()
    target = PollTarget.objects.filter(id=target_id).only("kind", "next_poll_at").first()
    if target is None:
        return None
    lease = now + timedelta(seconds=max(60.0, interval(target.kind) * 4))
    claimed = PollTarget.objects.filter(
        Q(id=target_id) & Q(next_poll_at__lte=now) & Q(next_poll_at=target.next_poll_at)
    ).update(next_poll_at=lease)
    if claimed != 1:
        return None
    return PollTarget.objects.select_related("endpoint").get(id=target_id)


def backoff_seconds(kind: str, failures: int) -> float:
    if failures <= 0:
        return interval(kind)
    return min(settings.POLL_MAX_BACKOFF_SECONDS, interval(kind) * 2 ** min(failures, 10))


def run_poll(target_id: int) -> bool | None:
    """Claim and poll one target. True/False: the poll's outcome; None: not claimed (not due)."""
    target = claim(target_id)
    if target is None:
        return None
    started = timezone.now()
    t0 = time.perf_counter()
    error = ""
    try:
        poller(target.kind)(target.endpoint)
    except Exception as exc:  # recorded on the run and the target; the next poll tries again
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.warning("%s poll of %s failed: %s", target.kind, target.endpoint.name, error)
    duration_ms = (time.perf_counter() - t0) * 1000
    ok = not error
    now = timezone.now()
    failures = 0 if ok else target.consecutive_failures + 1
    PollRun.objects.create(
        target=target, kind=target.kind, started_at=started, duration_ms=duration_ms, ok=ok, error=error
    )
    updates = {
        "last_polled_at": now,
        "consecutive_failures": failures,
        "next_poll_at": now + timedelta(seconds=backoff_seconds(target.kind, failures)),
    }
    if ok:
        updates.update(last_ok_at=now, last_error="", failing_since=None)
    else:
        updates.update(last_error=error, failing_since=target.failing_since or now)
    PollTarget.objects.filter(id=target.id).update(**updates)
    return ok


def prune_poll_runs() -> int:
    cutoff = timezone.now() - timedelta(days=settings.POLL_RUN_RETENTION_DAYS)
    deleted, _ = PollRun.objects.filter(started_at__lt=cutoff).delete()
    return deleted
