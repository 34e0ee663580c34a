"""Request metrics counted in the gateway, where every query passes.

The hot path only bumps in-memory counters under a lock (a few microseconds); a background
thread adds them to Redis once a second (HINCRBYFLOAT in one pipeline), so several web processes
share cumulative counters that the poller and the Prometheus export read. One Redis hash per
endpoint id (``mf:gw:<endpoint id>``), fields ``<served entity>|<counter>``; the served entity
is ``-`` for requests that failed before one was chosen (e.g. the endpoint was not ready).
External models add ``<served entity>|prompt_tokens`` and ``|completion_tokens`` from the usage
of their answers (streamed ones included), for usage tracking and token rate limits. A shadow
(``gateway.shadow``) adds ``|shadow_dropped``, ``|shadow_compared`` and ``|shadow_agreed``.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import defaultdict
from typing import cast

from endpoints_app.redis_client import get_redis

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
UNATTRIBUTED = "-"
FLUSH_SECONDS = 1.0


def redis_key(endpoint_id: str) -> str:
    return f"mf:gw:{endpoint_id}"


def bucket_label(upper: float) -> str:
    return "+Inf" if upper == float("inf") else f"{upper:g}"


BUCKET_LABELS: tuple[str, ...] = tuple(bucket_label(b) for b in LATENCY_BUCKETS_MS) + ("+Inf",)


class GatewayMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def observe(self, endpoint_id: str, served_entity: str | None, status: int, latency_ms: float) -> None:
        entity = served_entity or UNATTRIBUTED
        # Non-cumulative bucket here; made cumulative ("le") when rendered/read.
        index = bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)
        with self._lock:
            counts = self._pending[endpoint_id]
            counts[f"{entity}|count"] += 1
            if 400 <= status < 500:
                counts[f"{entity}|4xx"] += 1
            elif status >= 500:
                counts[f"{entity}|5xx"] += 1
            counts[f"{entity}|sum"] += latency_ms
            counts[f"{entity}|b{BUCKET_LABELS[index]}"] += 1
        if self._thread is None:
            self._start()

    def observe_tokens(self, endpoint_id: str, served_entity: str | None, prompt: int, completion: int) -> None:
        entity = served_entity or UNATTRIBUTED
        with self._lock:
            counts = self._pending[endpoint_id]
            counts[f"{entity}|prompt_tokens"] += prompt
            counts[f"{entity}|completion_tokens"] += completion
        if self._thread is None:
            self._start()

    def observe_shadow(
        self, endpoint_id: str, served_entity: str, *, dropped: int = 0, compared: int = 0, agreed: int = 0
    ) -> None:
        """A shadow's mirrors dropped (queue full, no replica) and predictions compared / agreeing."""
        with self._lock:
            counts = self._pending[endpoint_id]
            if dropped:
                counts[f"{served_entity}|shadow_dropped"] += dropped
            if compared:
                counts[f"{served_entity}|shadow_compared"] += compared
                counts[f"{served_entity}|shadow_agreed"] += agreed
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="gateway-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        if not pending:
            return
        try:
            pipe = get_redis().pipeline(transaction=False)
            for endpoint_id, counts in pending.items():
                for field, value in counts.items():
                    pipe.hincrbyfloat(redis_key(endpoint_id), field, value)
            pipe.execute()
        except Exception as exc:  # Redis away: keep the counts for the next flush
            log.warning("could not flush gateway metrics to Redis: %s", exc)
            with self._lock:
                for endpoint_id, counts in pending.items():
                    for field, value in counts.items():
                        self._pending[endpoint_id][field] += value

    def stop(self) -> None:
        self._stop.set()
        self.flush()


def read_counters(endpoint_id: str) -> dict[str, dict[str, float]]:
    """Cumulative counters of an endpoint by served entity: {entity: {"count", "4xx", "5xx", "sum", "b<le>"...}}."""
    raw = cast(dict[str, str], get_redis().hgetall(redis_key(endpoint_id)))  # the client decodes (decode_responses)
    result: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in raw.items():
        entity, _, name = field.rpartition("|")
        result[entity][name] = float(value)
    return dict(result)


def read_token_counters(endpoint_id: str) -> dict[str, dict[str, int]]:
    """Cumulative tokens of an endpoint by served entity: {entity: {"prompt_tokens", "completion_tokens"}}."""
    return {
        entity: {name: int(counters.get(name, 0.0)) for name in ("prompt_tokens", "completion_tokens")}
        for entity, counters in read_counters(endpoint_id).items()
        if "prompt_tokens" in counters or "completion_tokens" in counters
    }


def cumulative_buckets(counters: dict[str, float]) -> list[tuple[str, float]]:
    """[(le, cumulative count)] from the per-bucket counts, in bucket order, ending with +Inf."""
    total = 0.0
    out = []
    for label in BUCKET_LABELS:
        total += counters.get(f"b{label}", 0.0)
        out.append((label, total))
    return out


def forget(endpoint_id: str) -> None:
    get_redis().delete(redis_key(endpoint_id))
