"""Shadow traffic: a mirrored copy of a share of an endpoint's queries sent to a served entity
whose answers are compared with the primary's and never returned (``traffic_config.shadow``).

The caller's path only draws a random number and hands the query over (``ShadowMirror.submit``,
microseconds): the mirrors run in a thread of their own, with its own event loop and its own
connections to the shadow's replicas, so a slow or failing shadow never delays or fails the
caller. What waits to be sent is bounded (``GATEWAY_SHADOW_QUEUE_SIZE`` queries and
``GATEWAY_SHADOW_QUEUE_BYTES`` of bodies); a query that finds the queue full is not mirrored and
is counted (``<shadow>|shadow_dropped``), as is one whose shadow has no ready replica (a
scaled-to-zero shadow is not woken for a mirror). Mirrors are sent at most
``GATEWAY_SHADOW_CONCURRENCY`` at a time per web process.

A mirror is recorded like any query of its served entity (count, 4xx, 5xx, latency histogram:
``GatewayMetrics.observe``), so the shadow has the same charts as any entity; nothing of it counts
against the caller's rate limits or usage, and it is not payload-logged. When both the primary
and the shadow answer 200, their predictions are compared (``agreement``) and the numbers of
compared and agreeing predictions are counted (``|shadow_compared``, ``|shadow_agreed``): the
agreement rate is their ratio.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from endpoints_app.gateway import jsonbody
from endpoints_app.gateway.metrics import GatewayMetrics
from endpoints_app.gateway.upstream import UpstreamError, UpstreamPool, UpstreamTimeout, UpstreamUnreachable
from endpoints_app.runtime.credentials import ReplicaTarget

log = logging.getLogger(__name__)

# Answers larger than this are compared byte for byte instead of parsed (bounds the thread's work).
MAX_COMPARED_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ShadowRoute:
    """One shadow of a route table: its served entity's name, the share mirrored, the tolerance."""

    name: str
    percentage: int
    tolerance: float = 0.0


@dataclass
class MirrorJob:
    endpoint_id: str
    entity: str
    replicas: list[ReplicaTarget]
    body: bytes
    content_type: str
    primary_status: int
    primary_body: bytes
    tolerance: float


def _same(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if a == b:
            return True
        return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tolerance
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tolerance) for k in a)
    return bool(a == b)


def _predictions(answer: Any) -> Any:
    if isinstance(answer, dict) and "predictions" in answer:
        return answer["predictions"]
    return answer


def agreement(primary: bytes, shadow: bytes, tolerance: float = 0.0) -> tuple[int, int]:
    """(predictions compared, predictions that agree) of two answers.

    An answer's predictions are its ``predictions`` (the model server's shape) or the whole JSON
    answer. Two lists of the same length are compared row by row (one prediction per input row);
    anything else counts as one prediction. Numbers agree within ``tolerance`` (absolute), all
    else must be identical. Answers that are not JSON, or too large to parse here, agree when
    they are byte for byte the same.
    """
    if len(primary) > MAX_COMPARED_BYTES or len(shadow) > MAX_COMPARED_BYTES:
        return 1, int(primary == shadow)
    try:
        a, b = _predictions(jsonbody.loads(primary)), _predictions(jsonbody.loads(shadow))
    except ValueError:
        return 1, int(primary == shadow)
    if isinstance(a, list) and isinstance(b, list) and a and len(a) == len(b):
        return len(a), sum(1 for x, y in zip(a, b, strict=True) if _same(x, y, tolerance))
    return 1, int(_same(a, b, tolerance))


class ShadowMirror:
    """The bounded hand-over from the gateway's event loop to the mirror thread."""

    def __init__(
        self, metrics: GatewayMetrics, *, queue_size: int, queue_bytes: int, concurrency: int, timeout: float
    ) -> None:
        self.metrics = metrics
        self.queue_size, self.queue_bytes, self.concurrency, self.timeout = (
            queue_size,
            queue_bytes,
            concurrency,
            timeout,
        )
        self._lock = threading.Lock()
        self._waiting = 0  # jobs handed over and not yet started
        self._waiting_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[MirrorJob] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._in_flight: defaultdict[ReplicaTarget, int] = defaultdict(int)
        self.sent = 0  # mirrors answered or failed (for tests and the benchmark)

    # --- the caller's side (the gateway's event loop) ------------------------------------------

    def submit(self, job: MirrorJob) -> bool:
        """Hand a mirror over, or count it dropped (queue full, or no ready replica): never blocks."""
        size = len(job.body) + len(job.primary_body)
        with self._lock:
            full = self._waiting >= self.queue_size or self._waiting_bytes + size > self.queue_bytes
            if not full and job.replicas:
                self._waiting += 1
                self._waiting_bytes += size
        if full or not job.replicas:
            self.metrics.observe_shadow(job.endpoint_id, job.entity, dropped=1)
            return False
        if self._loop is None:
            self._start()
        assert self._loop is not None and self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, job)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gateway-shadow", daemon=True)
                self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)

    # --- the mirror thread ----------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._queue = asyncio.Queue()
        upstream = UpstreamPool()
        workers = [loop.create_task(self._worker(upstream)) for _ in range(self.concurrency)]
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for worker in workers:
                worker.cancel()
            loop.run_until_complete(asyncio.gather(*workers, return_exceptions=True))
            loop.run_until_complete(upstream.aclose())
            loop.close()

    async def _worker(self, upstream: UpstreamPool) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            with self._lock:
                self._waiting -= 1
                self._waiting_bytes -= len(job.body) + len(job.primary_body)
            try:
                await self._mirror(upstream, job)
            except Exception:  # a mirror must never stop the worker
                log.exception("mirroring a query to %s failed", job.entity)
            finally:
                self.sent += 1

    async def _mirror(self, upstream: UpstreamPool, job: MirrorJob) -> None:
        started = time.perf_counter()
        status, body = 503, b""
        tried: set[ReplicaTarget] = set()
        for _attempt in range(2):
            candidates = [r for r in job.replicas if r not in tried]
            if not candidates:
                break
            replica = min(candidates, key=lambda r: self._in_flight[r])
            tried.add(replica)
            self._in_flight[replica] += 1
            try:
                status, _content_type, body = await upstream.post(
                    replica, "/invocations", job.body, job.content_type, timeout=self.timeout
                )
                break
            except UpstreamUnreachable:
                status = 503
                continue
            except UpstreamTimeout:
                status = 504
                break
            except UpstreamError:
                status = 502
                break
            finally:
                self._in_flight[replica] -= 1
                if not self._in_flight[replica]:
                    del self._in_flight[replica]
        latency_ms = (time.perf_counter() - started) * 1000
        self.metrics.observe(job.endpoint_id, job.entity, status, latency_ms)
        if status == 200 and job.primary_status == 200:
            compared, agreed = agreement(job.primary_body, body, job.tolerance)
            self.metrics.observe_shadow(job.endpoint_id, job.entity, compared=compared, agreed=agreed)
