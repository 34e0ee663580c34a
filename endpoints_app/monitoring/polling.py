"""The poll loop shared by status, metrics and log polling.

1. The beat fans out: ``due_targets(kind)`` lists targets whose ``next_poll_at`` has passed and
   one task is enqueued per batch of ``POLL_BATCH_SIZE`` targets (a fleet of 10,000 endpoints is
   40 tasks, not 10,000: the per-task and per-query overhead was most of a sweep's cost).
2. Each task claims its targets with one conditional UPDATE on ``next_poll_at`` that sets a lease
   unique to this claim, then reads back the rows holding that lease (a second task for the same
   targets finds nothing to claim); it runs the kind's batch poll (``poll_status_batch``,
   ``poll_metrics_batch``, ``poll_logs_batch``: the whole batch in a fixed number of queries, one
   endpoint's failure its own), records the ``PollRun`` rows with multi-row INSERTs, and schedules
   the next polls with one UPDATE from a VALUES list: the normal interval after a success, a
   growing backoff after consecutive failures (capped), so a dead endpoint costs little and never
   delays the others. ``run_poll`` is the same for one target.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from endpoints_app.models import Endpoint, PollKind, PollRun, PollTarget
from endpoints_app.monitoring import bulk

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
    # Only the endpoints short of a target are read (the fleet is counted in SQL).
    lacking = list(
        Endpoint.objects.annotate(targets=Count("poll_targets"))
        .filter(targets__lt=len(PollKind.values))
        .values_list("id", flat=True)
    )
    if not lacking:
        return 0
    have = set(PollTarget.objects.filter(endpoint_id__in=lacking).values_list("endpoint_id", "kind"))
    missing = [
        PollTarget(endpoint_id=endpoint_id, kind=kind, next_poll_at=now)
        for endpoint_id in lacking
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
    try:
        with transaction.atomic():
            PollRun.objects.create(
                target=target, kind=target.kind, started_at=started, duration_ms=duration_ms, ok=ok, error=error
            )
    except IntegrityError:  # the endpoint was deleted while it was polled
        return ok
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


POLL_BATCH_SIZE = 250
# Kinds with a batched poll: ``fn(endpoints) -> {endpoint_id: error}`` for those that failed.
BATCH_POLLERS: dict[str, str] = {
    PollKind.STATUS: "endpoints_app.monitoring.health:poll_status_batch",
    PollKind.METRICS: "endpoints_app.monitoring.metrics:poll_metrics_batch",
    PollKind.LOGS: "endpoints_app.monitoring.logs:poll_logs_batch",
}


# What the batch pollers read of a target, its endpoint and the active config: fewer columns to
# fetch and convert (a deferred field read later costs a query, so every field they use is here).
_CLAIMED_FIELDS = (
    "kind",
    "consecutive_failures",
    "failing_since",
    "endpoint__name",
    "endpoint__health",
    "endpoint__health_reason",
    "endpoint__config_update",
    "endpoint__config_update_message",
    "endpoint__active_config_id",
)


def claim_batch(target_ids: list[int]) -> list[PollTarget]:
    """Take the due targets among ``target_ids`` with one UPDATE; the lease (to the microsecond,
    plus a random offset) tells this claim's rows from a concurrent one's."""
    now = timezone.now()
    if not target_ids:
        return []
    seconds = max([60.0, *(interval(kind) * 4 for kind in PollKind.values)])
    lease = now + timedelta(seconds=seconds, microseconds=random.randrange(1_000_000))
    PollTarget.objects.filter(**bulk.in_ids("id", target_ids), next_poll_at__lte=now).update(next_poll_at=lease)
    return list(
        PollTarget.objects.filter(**bulk.in_ids("id", target_ids), next_poll_at=lease)
        .select_related("endpoint")
        .only(*_CLAIMED_FIELDS)
        .order_by("id")
    )


def run_batch(target_ids: list[int]) -> int:
    """Claim and poll a batch of targets (one kind); returns how many were polled."""
    targets = claim_batch(target_ids)
    if not targets:
        return 0
    started = timezone.now()
    t0 = time.perf_counter()
    errors: dict[int, str] = {}
    by_kind: dict[str, list[PollTarget]] = {}
    for target in targets:
        by_kind.setdefault(target.kind, []).append(target)
    for kind, kind_targets in by_kind.items():
        if kind in BATCH_POLLERS:
            module, _, name = BATCH_POLLERS[kind].partition(":")
            try:
                failed = getattr(import_module(module), name)([t.endpoint for t in kind_targets])
            except Exception as exc:  # the whole batch failed: each target records it
                failed = {t.endpoint_id: f"{type(exc).__name__}: {exc}" for t in kind_targets}
                log.warning("%s poll of a batch of %d failed: %s", kind, len(kind_targets), exc)
            for target in kind_targets:
                if target.endpoint_id in failed:
                    errors[target.id] = failed[target.endpoint_id][:2000]
            continue
        fn = poller(kind)
        for target in kind_targets:
            try:
                fn(target.endpoint)
            except Exception as exc:  # recorded on the run and the target; the next poll tries again
                errors[target.id] = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("%s poll of %s failed: %s", kind, target.endpoint.name, errors[target.id])
    # A batch's runs share its duration, spread evenly: what one endpoint cost.
    duration_ms = (time.perf_counter() - t0) * 1000 / len(targets)
    now = timezone.now()
    record_runs(targets, errors, started=started, duration_ms=duration_ms)
    schedule_next(targets, errors, now=now)
    return len(targets)


def record_runs(targets: list[PollTarget], errors: dict[int, str], *, started: datetime, duration_ms: float) -> None:
    """The batch's ``PollRun`` rows in bulk (``bulk.insert_rows``: no model instance per run). A
    target whose endpoint was deleted while the batch polled it has its run dropped with it."""
    columns = ("target_id", "kind", "started_at", "duration_ms", "ok", "error")
    rows = [[t.id, t.kind, started, duration_ms, t.id not in errors, errors.get(t.id, "")] for t in targets]
    try:
        with transaction.atomic():
            bulk.insert_rows(PollRun._meta.db_table, columns, rows)
    except IntegrityError:  # an endpoint was deleted while the batch polled it: its runs go with it
        alive = set(PollTarget.objects.filter(id__in=[t.id for t in targets]).values_list("id", flat=True))
        bulk.insert_rows(PollRun._meta.db_table, columns, [row for row in rows if row[0] in alive])


def schedule_next(targets: list[PollTarget], errors: dict[int, str], *, now: datetime) -> None:
    """One UPDATE of every target of the batch (``bulk.update_rows``): the normal interval after a
    success, the backoff of its consecutive failures after a failure (``backoff_seconds``)."""
    rows: list[list[Any]] = []
    for t in targets:
        error = errors.get(t.id)
        failures = 0 if error is None else t.consecutive_failures + 1
        since = None if error is None else (t.failing_since or now)
        next_at = now + timedelta(seconds=backoff_seconds(t.kind, failures))
        rows.append([t.id, failures, next_at, error is None, error or "", since])
    bulk.update_rows(
        PollTarget._meta.db_table,
        [
            ("id", "integer"),
            ("failures", "integer"),
            ("next_at", "timestamptz"),
            ("ok", "boolean"),
            ("error", "text"),
            ("since", "timestamptz"),
        ],
        rows,
        "last_polled_at = %s, consecutive_failures = v.failures, next_poll_at = v.next_at, "
        "last_ok_at = CASE WHEN v.ok THEN %s ELSE T.last_ok_at END, last_error = v.error, failing_since = v.since",
        [now, now],
    )


def prune_poll_runs() -> int:
    cutoff = timezone.now() - timedelta(days=settings.POLL_RUN_RETENTION_DAYS)
    deleted, _ = PollRun.objects.filter(started_at__lt=cutoff).delete()
    return deleted
