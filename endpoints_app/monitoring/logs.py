"""Served models' server and build logs, polled from the runtime into ``LogLine`` rows.

Polling (every few seconds per endpoint, through ``polling.run_poll``):

1. Pick the endpoint's deployments that may still write: running ones, and ones stopped a short
   while ago (the last lines of a failed or removed deployment are often the useful ones).
2. For each deployment and log kind, read the bytes after the ``LogCursor`` offset through the
   backend (whole lines only, so a line still being written waits for the next poll).
3. Parse every line into (ts, level, replica, message). Lines without a timestamp (tracebacks,
   raw prints) continue the line before them and take its ts, level and replica.
4. Insert the lines and move the cursor in one transaction, with the cursor moved only from the
   offset that was read: a crash or an overlapping poll can neither lose nor duplicate lines.

Reading: ``log_lines`` pages through one endpoint's lines, newest or oldest first, by (ts, id).
"""

from __future__ import annotations

import base64
import binascii
import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from endpoints_app.backends import ServingBackend, get_backend
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import Deployment, Endpoint, LogCursor, LogKind, LogLine, ServedEntity
from endpoints_app.monitoring import bulk

MAX_READ_BYTES = 1_000_000  # per file per poll; a longer backlog is read over the next polls
MAX_LINE_CHARS = 16 * 1024
PRUNE_BATCH = 5_000
CURSOR_KEEP_AFTER_STOP = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}

# "2026-11-27 04:44:39,231 INFO [demo_classifier-1 replica 0] model loaded" (model server),
# "2026-11-27 04:44:34 ERROR could not copy ..." (build), "2026-11-27 04:44:39 runtime: ..." (agent).
_HEAD = re.compile(
    r"(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,6})?(?:Z|[+-]\d{2}:?\d{2})?)(?:\s+|$)"
    r"(?:(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b:?\s*)?"
    r"(?:\[[^\]]*? replica (?P<replica>\d+)\]\s?)?"
)
_RUNTIME_NOTE = re.compile(r"runtime: replica (?P<replica>\d+)\b")


# --- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedLine:
    ts: datetime
    level: str
    replica: int | None
    message: str


def parse_timestamp(text: str) -> datetime | None:
    """A log timestamp as an aware UTC datetime; naive ones are UTC (the hosts run in UTC)."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def clean_message(text: str) -> str:
    """One line as the database can hold it: no NUL (PostgreSQL refuses it), at most 16 KB."""
    text = text.rstrip("\r").replace("\x00", "\ufffd")
    if len(text) > MAX_LINE_CHARS:
        dropped = len(text) - MAX_LINE_CHARS
        text = f"{text[:MAX_LINE_CHARS]} …[truncated {dropped} characters]"
    return text


def parse_line(text: str, *, previous: ParsedLine | None, now: datetime) -> ParsedLine:
    """One line; a line without a leading timestamp continues ``previous`` (a traceback, say)."""
    head = _HEAD.match(text)
    ts = parse_timestamp(head["ts"]) if head else None
    if head is None or ts is None:
        if previous is None:
            return ParsedLine(ts=now, level="", replica=None, message=clean_message(text))
        return ParsedLine(ts=previous.ts, level=previous.level, replica=previous.replica, message=clean_message(text))
    message = text[head.end() :]
    level = _LEVEL_ALIASES.get(head["level"] or "", head["level"] or "")
    replica = head["replica"]
    note = _RUNTIME_NOTE.match(message)
    if note is not None:
        # The agent notes only what went wrong with a replica (killed, not ready in time).
        level = level or "WARNING"
        replica = replica or note["replica"]
    # Timestamped lines without a level token are progress (build steps): INFO.
    return ParsedLine(
        ts=ts,
        level=level or "INFO",
        replica=int(replica) if replica is not None else None,
        message=clean_message(message),
    )


def parse_chunk(data: bytes, *, previous: ParsedLine | None, now: datetime) -> list[ParsedLine]:
    """Every line of a chunk of whole lines (the trailing newline ends the last one)."""
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    parsed: list[ParsedLine] = []
    for raw in text.split("\n"):
        line = parse_line(raw, previous=previous, now=now)
        parsed.append(line)
        previous = line
    return parsed


def starts_with_timestamp(data: bytes) -> bool:
    head = _HEAD.match(data[:64].decode("utf-8", errors="replace"))
    return head is not None and parse_timestamp(head["ts"]) is not None


# --- polling ----------------------------------------------------------------------------------


def stopped_grace() -> timedelta:
    """How long a stopped deployment is still read: two minutes, plus the longest poll backoff."""
    return timedelta(seconds=120 + settings.POLL_MAX_BACKOFF_SECONDS)


def deployments_to_read(endpoint: Endpoint, *, now: datetime) -> list[Deployment]:
    return list(
        Deployment.objects.filter(endpoint=endpoint)
        .filter(Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - stopped_grace()))
        .only("id", "served_entity_name")
        .order_by("id")
    )


_LOG_KINDS: tuple[str, ...] = tuple(LogKind.values)  # LogKind.values builds a new list each time
_CURSOR_COLUMNS = (
    ("deployment_id", "bigint"),
    ("kind", "varchar"),
    ("offset", "bigint"),
    ("updated_at", "timestamptz"),
)


def cursors_for(deployments: list[Deployment]) -> dict[tuple[int, str], LogCursor]:
    """The cursor of each (deployment, kind), created at offset 0 where missing."""
    ids = [d.id for d in deployments]
    have = set(LogCursor.objects.filter(**bulk.in_ids("deployment_id", ids)).values_list("deployment_id", "kind"))
    now = timezone.now()
    missing = [
        [deployment_id, kind, 0, now]
        for deployment_id in ids
        for kind in _LOG_KINDS
        if (deployment_id, kind) not in have
    ]
    # One INSERT ... ON CONFLICT DO NOTHING, without a model instance per cursor (a fleet's first
    # logs sweep creates two per deployment).
    bulk.upsert_rows(LogCursor._meta.db_table, _CURSOR_COLUMNS, missing, conflict=("deployment_id", "kind"), update=())
    return {(c.deployment_id, c.kind): c for c in LogCursor.objects.filter(**bulk.in_ids("deployment_id", ids))}


def poll_logs(endpoint: Endpoint) -> None:
    """Store the new lines of every log of ``endpoint`` that may still grow.

    One unreadable log does not hold back the others: each is read, then the first error is
    raised so the poll run is recorded as failed.
    """
    now = timezone.now()
    deployments = deployments_to_read(endpoint, now=now)
    if not deployments:
        return
    cursors = cursors_for(deployments)
    backend = get_backend()
    errors: list[Exception] = []
    for deployment in deployments:
        for kind in _LOG_KINDS:
            try:
                read_new_lines(backend, endpoint, deployment, cursors[(deployment.id, kind)], now=now)
            except OSError as exc:
                errors.append(exc)
    if errors:
        raise errors[0]


def poll_logs_batch(endpoints: list[Endpoint]) -> dict[str, str]:
    """``poll_logs`` for a batch (the sweep's): the deployments and cursors of every endpoint in
    two queries, each log read from its cursor, and what is new stored in one transaction (one
    UPDATE of the moved cursors, multi-row INSERTs of the lines). Returns the error of each
    endpoint with a log that could not be read (its other logs are stored)."""
    if not endpoints:
        return {}
    now = timezone.now()
    by_id = {e.id: e for e in endpoints}
    deployments = list(
        Deployment.objects.filter(**bulk.in_ids("endpoint_id", by_id, "varchar"))
        .filter(Q(stopped_at__isnull=True) | Q(stopped_at__gte=now - stopped_grace()))
        .only("id", "endpoint_id", "served_entity_name")
        .order_by("id")
    )
    if not deployments:
        return {}
    cursors = cursors_for(deployments)
    backend = get_backend()
    errors: dict[str, str] = {}
    reads: list[tuple[Deployment, LogCursor, int, list[ParsedLine]]] = []
    for deployment in deployments:
        endpoint = by_id[str(deployment.endpoint_id)]
        for kind in _LOG_KINDS:
            cursor = cursors[(deployment.id, kind)]
            try:
                data, next_offset = backend.read_log(
                    deployment_id=deployment.id,
                    kind=cursor.kind,  # type: ignore[arg-type]  # LogKind's values
                    offset=cursor.offset,
                    max_bytes=MAX_READ_BYTES,
                )
            except OSError as exc:
                errors.setdefault(endpoint.id, f"{type(exc).__name__}: {exc}")
                continue
            if not data and next_offset == cursor.offset:
                continue
            previous = None
            if data and not starts_with_timestamp(data) and next_offset > len(data):
                previous = last_stored_line(endpoint, deployment, cursor.kind)
            parsed = parse_chunk(data, previous=previous, now=now) if data else []
            reads.append((deployment, cursor, next_offset, parsed))
    if reads:
        try:
            store_batch(reads, now=now)
        except (IntegrityError, OperationalError):
            # An endpoint deleted meanwhile (its lines' foreign key), or a deadlock with that
            # delete: once more without the endpoints that are gone.
            alive = set(Endpoint.fleet.filter(id__in=list(by_id)).values_list("id", flat=True))
            store_batch([r for r in reads if r[0].endpoint_id in alive], now=now)
    return errors


_LINE_COLUMNS = ("endpoint_id", "deployment_id", "served_entity_name", "kind", "replica", "ts", "level", "message")


def store_batch(reads: list[tuple[Deployment, LogCursor, int, list[ParsedLine]]], *, now: datetime) -> int:
    """Store many logs' new lines and move their cursors in one transaction. A cursor moves only
    from the offset its lines were read at (the rows are locked first): a log another poll stored
    first is skipped, so lines are neither lost nor duplicated. Returns the lines stored."""
    with transaction.atomic():
        at = {
            cid: offset
            for cid, offset in LogCursor.objects.select_for_update()
            .filter(**bulk.in_ids("id", [c.id for _, c, _, _ in reads]))
            .order_by("id")
            .values_list("id", "offset")
        }
        mine = [r for r in reads if at.get(r[1].id) == r[1].offset]
        if not mine:
            return 0
        bulk.update_rows(
            LogCursor._meta.db_table,
            [("id", "bigint"), ("next_offset", "bigint")],
            [[cursor.id, offset] for _, cursor, offset, _ in mine],
            '"offset" = v.next_offset, updated_at = %s',
            [now],
        )
        rows = [
            [
                deployment.endpoint_id,
                deployment.id,
                deployment.served_entity_name,
                cursor.kind,
                line.replica,
                line.ts,
                line.level,
                line.message,
            ]
            for deployment, cursor, _, parsed in mine
            for line in parsed
        ]
        bulk.insert_rows(LogLine._meta.db_table, _LINE_COLUMNS, rows)
        stored = len(rows)
    for _, cursor, offset, _ in mine:
        cursor.offset = offset
    return stored


def read_new_lines(
    backend: ServingBackend, endpoint: Endpoint, deployment: Deployment, cursor: LogCursor, *, now: datetime
) -> int:
    """Read one log from its cursor and store what is new; returns the number of lines stored."""
    data, next_offset = backend.read_log(
        deployment_id=deployment.id,
        kind=cursor.kind,  # type: ignore[arg-type]  # a CharField whose choices are LogKind's values
        offset=cursor.offset,
        max_bytes=MAX_READ_BYTES,
    )
    if not data and next_offset == cursor.offset:
        return 0
    previous = None
    if data and not starts_with_timestamp(data) and next_offset > len(data):
        previous = last_stored_line(endpoint, deployment, cursor.kind)
    parsed = parse_chunk(data, previous=previous, now=now) if data else []
    rows = [
        LogLine(
            endpoint=endpoint,
            deployment=deployment,
            served_entity_name=deployment.served_entity_name,
            kind=cursor.kind,
            replica=line.replica,
            ts=line.ts,
            level=line.level,
            message=line.message,
        )
        for line in parsed
    ]
    return len(rows) if store(cursor, next_offset, rows, now=now) else 0


def last_stored_line(endpoint: Endpoint, deployment: Deployment, kind: str) -> ParsedLine | None:
    """The line a chunk's leading continuation lines belong to (it came in the previous read)."""
    row = (
        LogLine.objects.filter(
            endpoint=endpoint, served_entity_name=deployment.served_entity_name, kind=kind, deployment=deployment
        )
        .order_by("-ts", "-id")
        .only("ts", "level", "replica")
        .first()
    )
    if row is None:
        return None
    return ParsedLine(ts=row.ts, level=row.level, replica=row.replica, message="")


def store(cursor: LogCursor, next_offset: int, rows: list[LogLine], *, now: datetime) -> bool:
    """Insert ``rows`` and move the cursor past them, together or not at all.

    The cursor moves only from the offset these rows were read at: when another poll got there
    first, nothing is written (False).
    """
    with transaction.atomic():
        moved = LogCursor.objects.filter(id=cursor.id, offset=cursor.offset).update(offset=next_offset, updated_at=now)
        if moved != 1:
            return False
        LogLine.objects.bulk_create(rows, batch_size=1000)
    cursor.offset = next_offset
    return True


# --- retention --------------------------------------------------------------------------------


def prune_logs() -> int:
    """Delete lines past retention (in batches, so no delete holds locks for long) and the
    cursors of deployments stopped long ago. Returns the number of lines deleted."""
    cutoff = timezone.now() - timedelta(days=settings.LOG_RETENTION_DAYS)
    deleted = 0
    while True:
        ids = list(LogLine.objects.filter(ts__lt=cutoff).order_by().values_list("id", flat=True)[:PRUNE_BATCH])
        if not ids:
            break
        count, _ = LogLine.objects.filter(id__in=ids).delete()
        deleted += count
        if len(ids) < PRUNE_BATCH:
            break
    LogCursor.objects.filter(deployment__stopped_at__lt=timezone.now() - CURSOR_KEEP_AFTER_STOP).delete()
    return deleted


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogQuery:
    """What ``log_lines`` returns: filters, then one page in (ts, id) order after ``after``."""

    kind: str = LogKind.SERVER
    served_model: str | None = None
    q: str = ""
    min_level: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int = 200
    descending: bool = True
    after: tuple[datetime, int] | None = None  # the last (ts, id) of the previous page


@dataclass(frozen=True)
class LogPage:
    lines: list[LogLine]
    next_page_token: str | None


def encode_page_token(row: LogLine, *, descending: bool) -> str:
    micros = (row.ts - _EPOCH) // timedelta(microseconds=1)
    raw = f"{'d' if descending else 'a'}:{micros}:{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, *, descending: bool) -> tuple[datetime, int]:
    """The (ts, id) a page token continues after; it must come from a query in the same order."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        direction, micros, row_id = raw.split(":")
        after = (_EPOCH + timedelta(microseconds=int(micros)), int(row_id))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, OSError):
        raise InvalidParameterValue("page_token is not a token this API returned") from None
    if direction != ("d" if descending else "a"):
        raise InvalidParameterValue("page_token belongs to a listing in the other order")
    return after


def log_lines(*, endpoint: Endpoint, query: LogQuery) -> LogPage:
    """One page of an endpoint's log lines.

    Each served model's lines are read with their own query on the (endpoint, served entity,
    kind, ts) index, limited to one page, and the sorted results are merged: a tail costs a page
    per served model however long the logs are.
    """
    names = [query.served_model] if query.served_model else served_model_names(endpoint)
    streams = [list(_page_query(endpoint, name, query)) for name in names]
    merged = list(heapq.merge(*streams, key=_sort_key, reverse=query.descending))[: query.limit + 1]
    if len(merged) <= query.limit:
        return LogPage(lines=merged, next_page_token=None)
    page = merged[: query.limit]
    return LogPage(lines=page, next_page_token=encode_page_token(page[-1], descending=query.descending))


def served_model_names(endpoint: Endpoint) -> list[str]:
    """Every served model the endpoint ever ran (lines outlive the config that made them). A remote
    endpoint (issue 16) has no deployments here: its config versions' served entities."""
    names: Iterable[str] = (
        Deployment.objects.filter(endpoint=endpoint).order_by().values_list("served_entity_name", flat=True).distinct()
        if endpoint.workspace_id is None
        else ServedEntity.objects.filter(config_version__endpoint=endpoint)
        .order_by()
        .values_list("name", flat=True)
        .distinct()
    )
    return sorted(set(names))


def _sort_key(row: LogLine) -> tuple[datetime, int]:
    return (row.ts, row.id)


def _page_query(endpoint: Endpoint, served_model: str, query: LogQuery) -> QuerySet[LogLine]:
    rows = LogLine.objects.filter(endpoint=endpoint, served_entity_name=served_model, kind=query.kind)
    if query.since is not None:
        rows = rows.filter(ts__gte=query.since)
    if query.until is not None:
        rows = rows.filter(ts__lt=query.until)
    if query.min_level is not None:
        rows = rows.filter(level__in=LEVELS[LEVELS.index(query.min_level) :])
    if query.q:
        rows = rows.filter(message__icontains=query.q)
    if query.after is not None:
        ts, row_id = query.after
        # The plain bound on ts lets the index range start at the token; the OR breaks ties.
        if query.descending:
            rows = rows.filter(ts__lte=ts).filter(Q(ts__lt=ts) | Q(id__lt=row_id))
        else:
            rows = rows.filter(ts__gte=ts).filter(Q(ts__gt=ts) | Q(id__gt=row_id))
    order = ("-ts", "-id") if query.descending else ("ts", "id")
    return rows.order_by(*order)[: query.limit + 1]
