"""Logged payloads (inference tables): reading them a page at a time, and their retention.

The gateway writes the rows (``endpoints_app.gateway.payloads``). Reads walk one endpoint's rows
newest first along the (endpoint, ts) index with keyset pagination: the page token is the
(ts, id) of the last row returned, so a page costs the same however deep it is and rows written
meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import Endpoint, PayloadLog

PRUNE_BATCH_SIZE = 5000
MAX_PAGE_SIZE = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Timestamps are exact integers (no float rounding), so a page token lands on its row.
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class PayloadPage:
    rows: list[PayloadLog]
    next_page_token: str | None


def payload_logs(
    endpoint: Endpoint,
    *,
    served_entity: str | None = None,
    status: int | str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    client_request_id: str | None = None,
    limit: int = 100,
    after: tuple[datetime, int] | None = None,
    include_bodies: bool = True,
) -> PayloadPage:
    """One page of an endpoint's logged payloads, newest first.

    ``status`` is an exact code or a class ("4xx", "5xx"); ``since_ms`` is inclusive and
    ``until_ms`` exclusive (epoch milliseconds); ``after`` is the (ts, id) a page token stands for
    (``decode_page_token``). Raises InvalidParameterValue naming the bad parameter.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidParameterValue(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    rows: QuerySet[PayloadLog] = PayloadLog.objects.filter(endpoint=endpoint)
    if served_entity:
        rows = rows.filter(served_entity_name=served_entity)
    if status is not None:
        low, high = status_range(status)
        rows = rows.filter(status_code__gte=low, status_code__lt=high)
    if since_ms is not None:
        rows = rows.filter(ts__gte=from_ms(since_ms))
    if until_ms is not None:
        rows = rows.filter(ts__lt=from_ms(until_ms))
    if client_request_id:
        rows = rows.filter(client_request_id=client_request_id)
    if after is not None:
        after_ts, after_id = after
        rows = rows.filter(Q(ts__lt=after_ts) | Q(ts=after_ts, id__lt=after_id))
    if not include_bodies:
        rows = rows.defer("request", "response")
    page = list(rows.order_by("-ts", "-id")[: limit + 1])
    if len(page) <= limit:
        return PayloadPage(page, None)
    page = page[:limit]
    return PayloadPage(page, encode_page_token(page[-1]))


def status_range(status: int | str) -> tuple[int, int]:
    """[low, high) status codes for an exact code (404) or a class ("4xx")."""
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return status, status + 1
    if isinstance(status, str):
        text = status.strip().lower()
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            low = int(text[0]) * 100
            return low, low + 100
        if text.isdigit() and 100 <= int(text) <= 599:
            return int(text), int(text) + 1
    raise InvalidParameterValue(f"status must be an HTTP status code (e.g. 404) or a class (e.g. 5xx), got '{status}'")


def from_ms(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value)


def to_ms(value: datetime) -> int:
    return (value - EPOCH) // timedelta(milliseconds=1)


def encode_page_token(row: PayloadLog) -> str:
    micros = (row.ts - EPOCH) // _MICROSECOND
    return base64.urlsafe_b64encode(f"{micros}:{row.id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        micros, row_id = (int(part) for part in raw.split(":"))
        return EPOCH + micros * _MICROSECOND, row_id
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise InvalidParameterValue("page_token is not a token returned by this API") from None


def prune_payloads(*, now: datetime | None = None) -> int:
    """Delete rows older than PAYLOAD_RETENTION_DAYS, a batch at a time (short transactions,
    along the ts index); returns how many were deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.PAYLOAD_RETENTION_DAYS)
    total = 0
    while True:
        ids = list(
            PayloadLog.objects.filter(ts__lt=cutoff).order_by("ts").values_list("id", flat=True)[:PRUNE_BATCH_SIZE]
        )
        if not ids:
            return total
        total += PayloadLog.objects.filter(id__in=ids).delete()[0]
