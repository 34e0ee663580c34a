"""Audit-log reads: one keyset page for the page and the API, the whole log for an export."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import QuerySet

from endpoints_app.models import AuditEvent


def audit_event_page(
    events: QuerySet[AuditEvent], *, before_id: int | None, limit: int
) -> tuple[list[AuditEvent], int | None]:
    """One page of ``events``, newest first, below ``before_id`` (keyset paging: no COUNT, no OFFSET
    over a table that only grows), and the ``before_id`` of the next page (None on the last)."""
    if before_id is not None:
        events = events.filter(id__lt=before_id)
    rows = list(events.order_by("-id")[: limit + 1])
    return rows[:limit], rows[limit - 1].id if len(rows) > limit else None


def audit_event_export(events: QuerySet[AuditEvent]) -> Iterator[AuditEvent]:
    """Every one of ``events``, oldest first, read in chunks (an export may be the whole log)."""
    return events.order_by("at", "id").iterator(chunk_size=500)
