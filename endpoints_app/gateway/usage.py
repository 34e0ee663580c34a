"""Usage tracking (``ai_gateway.usage_tracking_config.enabled``): requests and tokens per caller.

The hot path adds to in-memory sums under a lock; a background thread writes them to the
database once a second, one upsert per (endpoint, caller, served entity, minute) that adds to what
other gateway processes wrote (``ON CONFLICT … DO UPDATE SET n = n + excluded.n``, which both
PostgreSQL and SQLite speak). A write that fails keeps its sums for the next attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from django.conf import settings
from django.db import connection, transaction

from endpoints_app.models import UsageRecord

log = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0

Key = tuple[str, str, str, int]  # endpoint id, user name, served entity, minute


class UsageRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: defaultdict[Key, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._thread: threading.Thread | None = None

    def observe(
        self,
        *,
        endpoint_id: str,
        user_name: str,
        served_entity: str,
        input_tokens: int,
        output_tokens: int,
        now: float | None = None,
    ) -> None:
        minute = int((time.time() if now is None else now) // 60) * 60
        with self._lock:
            sums = self._pending[(endpoint_id, user_name, served_entity, minute)]
            sums[0] += 1
            sums[1] += max(0, int(input_tokens or 0))
            sums[2] += max(0, int(output_tokens or 0))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="usage-flush", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # the database is down: keep the sums, try again next second
                log.warning("could not write usage records; retrying", exc_info=True)
            finally:
                connection.close()

    def flush(self) -> int:
        """Write what has been observed; returns the number of rows upserted."""
        with self._lock:
            batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
        if not batch:
            return 0
        table = connection.ops.quote_name(UsageRecord._meta.db_table)
        sql = (
            f"INSERT INTO {table} (endpoint_id, user_name, served_entity, minute, requests, input_tokens, output_tokens) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (endpoint_id, user_name, served_entity, minute) DO UPDATE SET "
            f"requests = {table}.requests + excluded.requests, "
            f"input_tokens = {table}.input_tokens + excluded.input_tokens, "
            f"output_tokens = {table}.output_tokens + excluded.output_tokens"
        )
        rows: list[tuple[str | int, ...]] = [(*key, *sums) for key, sums in batch.items()]
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)
        except Exception:
            with self._lock:  # put them back, added to anything observed meanwhile
                for key, sums in batch.items():
                    pending = self._pending[key]
                    for index, value in enumerate(sums):
                        pending[index] += value
            raise
        return len(rows)


recorder = UsageRecorder()


def prune(*, now: float | None = None) -> int:
    """Delete usage older than USAGE_RETENTION_DAYS (beat, hourly)."""
    cutoff = (time.time() if now is None else now) - settings.USAGE_RETENTION_DAYS * 86400
    return UsageRecord.objects.filter(minute__lt=cutoff).delete()[0]
