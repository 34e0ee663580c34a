"""Payload logging (inference tables): sampled request/response pairs → ``PayloadLog`` rows.

The gateway calls ``maybe_log`` on the event loop after answering each query of an endpoint with
inference tables on, so the hot path only samples and appends a tuple of references to a bounded
buffer under a lock (about a microsecond; no copying, decoding or parsing). A daemon thread
writes the buffer once a second with one ``bulk_create``; decoding the bodies and reading the
``client_request_id`` happen there. A full buffer (by records or by bytes) drops the record and
counts it: payload logging must never slow down or break serving.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from django.db import close_old_connections, connection

from endpoints_app.gateway.routing import RouteTable
from endpoints_app.models import Endpoint, PayloadLog

log = logging.getLogger(__name__)

# A request or response larger than this is not stored (the row says ``too_large``), as in
# Databricks' inference tables.
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_QUEUED_RECORDS = 10_000
# Bodies held while waiting for the next flush: bounds memory when the database is slow.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
FLUSH_SECONDS = 1.0
BULK_BATCH_SIZE = 500
WARN_EVERY_SECONDS = 60.0
CLIENT_REQUEST_ID_MAX_LENGTH = 255  # PayloadLog.client_request_id
_CLIENT_REQUEST_ID_KEY = b'"client_request_id"'


class _Record(NamedTuple):
    """One sampled query, as cheap to build as possible: raw bytes, epoch seconds."""

    endpoint_id: str
    served_entity_name: str
    answered_at: float
    status: int
    latency_ms: float
    client_request_id: str
    user_id_hint: str
    request: bytes | None  # None when too large
    response: bytes | None
    too_large: bool


class PayloadLogger:
    """Called by the gateway after every answered query; never blocks on I/O and never raises.

    ``rng`` makes sampling reproducible in tests; ``background=False`` leaves writing to explicit
    ``flush()`` calls (tests whose database rows live in the test thread's transaction).
    """

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        max_records: int = MAX_QUEUED_RECORDS,
        max_bytes: int = MAX_QUEUED_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
        background: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._random = (rng or random.Random()).random
        self._clock = clock
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._flush_seconds = flush_seconds
        self._background = background
        self._lock = threading.Lock()
        self._pending: list[_Record] = []
        self._pending_bytes = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Counters, read by tests and worth exporting as metrics.
        self.dropped = 0  # sampled but not kept: the buffer was full
        self.failed = 0  # kept but lost: the database write failed
        self.written = 0
        self._reported_dropped = 0
        self._reported_failed = 0
        self._last_warning = float("-inf")
        self._last_error = ""

    # --- hot path (event loop) ----------------------------------------------------------------

    def maybe_log(
        self,
        *,
        table: RouteTable,
        served_entity_name: str,
        status: int,
        latency_ms: float,
        request_body: bytes,
        response_body: bytes,
        client_request_id: str = "",
        user_id_hint: str = "",
    ) -> None:
        try:
            rate = table.payload_sample_rate
            if rate is None or not self._random() < rate:
                return
            request: bytes | None = request_body
            response: bytes | None = response_body
            too_large = False
            if len(request_body) > MAX_PAYLOAD_BYTES:
                request, too_large = None, True
            if len(response_body) > MAX_PAYLOAD_BYTES:
                response, too_large = None, True
            size = (len(request) if request is not None else 0) + (len(response) if response is not None else 0)
            record = _Record(
                table.endpoint_id,
                served_entity_name,
                self._clock(),
                status,
                latency_ms,
                client_request_id,
                user_id_hint,
                request,
                response,
                too_large,
            )
            with self._lock:
                if len(self._pending) >= self._max_records or self._pending_bytes + size > self._max_bytes:
                    self.dropped += 1
                    return
                self._pending.append(record)
                self._pending_bytes += size
            if self._thread is None and self._background:
                self._start()
        except Exception:  # never let logging break a query
            self.dropped += 1

    @property
    def pending(self) -> int:
        """Records waiting for the next flush."""
        return len(self._pending)

    # --- background writer --------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="gateway-payloads", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            self._flush_safely()
        self._flush_safely()  # what arrived before stop()

    def _flush_safely(self) -> None:
        try:
            self.flush()
        except Exception:  # the thread must outlive any one bad flush
            log.exception("payload log flush failed")

    def flush(self) -> int:
        """Write the buffered records; returns how many rows were written. Call from a thread
        without a running event loop (the ORM is synchronous)."""
        with self._lock:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
        written = 0
        if batch:
            _close_stale_connections()
            try:
                written = _write(batch)
            except Exception as exc:
                # Dropped, not retried: a database that is down must not grow the buffer.
                self.failed += len(batch)
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.debug("payload log write failed: %s", self._last_error)
            finally:
                _close_stale_connections()
            self.written += written
        self._warn_about_losses()
        return written

    def _warn_about_losses(self) -> None:
        """At most one warning a minute, from the writer thread (never from the hot path)."""
        dropped, failed = self.dropped - self._reported_dropped, self.failed - self._reported_failed
        if not (dropped or failed):
            return
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY_SECONDS:
            return
        self._last_warning = now
        self._reported_dropped += dropped
        self._reported_failed += failed
        log.warning(
            "payload logging lost %d sampled queries (%d: buffer full, %d: database write failed%s)",
            dropped + failed,
            dropped,
            failed,
            f"; last error: {self._last_error}" if failed else "",
        )

    def stop(self) -> None:
        """Stop the writer after a last flush. Safe to call from the event loop at shutdown:
        the final write happens in the writer thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        elif not self._background:
            self._flush_safely()


def _close_stale_connections() -> None:
    # The writer thread holds its own connection for its lifetime: drop it when stale or broken,
    # as Django does around a request. Never while the caller holds a transaction on this thread
    # (flush() called from a test).
    if not connection.in_atomic_block:
        close_old_connections()


def _write(batch: list[_Record]) -> int:
    # An endpoint deleted since its query was answered would fail the whole insert (foreign key).
    live = set(Endpoint.objects.filter(id__in={r.endpoint_id for r in batch}).values_list("id", flat=True))
    rows = [_row(r) for r in batch if r.endpoint_id in live]
    PayloadLog.objects.bulk_create(rows, batch_size=BULK_BATCH_SIZE)
    return len(rows)


def _row(record: _Record) -> PayloadLog:
    return PayloadLog(
        endpoint_id=record.endpoint_id,
        served_entity_name=record.served_entity_name[:255],
        ts=datetime.fromtimestamp(record.answered_at, tz=UTC),
        status_code=record.status,
        latency_ms=record.latency_ms,
        client_request_id=(record.client_request_id or client_request_id(record.request))[
            :CLIENT_REQUEST_ID_MAX_LENGTH
        ],
        request=_text(record.request),
        response=_text(record.response),
        too_large=record.too_large,
        user_id_hint=record.user_id_hint[:64],
    )


def _text(body: bytes | None) -> str | None:
    # PostgreSQL text cannot hold NUL characters.
    return None if body is None else body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def client_request_id(body: bytes | None) -> str:
    """The top-level ``client_request_id`` string of a JSON object body, else "".

    The substring test (a fast byte search) skips parsing for the bodies that cannot have one.
    """
    if not body or _CLIENT_REQUEST_ID_KEY not in body:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    value = data.get("client_request_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""
