"""Shadow traffic: a mirrored copy of a share of an endpoint's queries sent to a served entity
whose answers are compared with the primary's and never returned (``traffic_config.shadow``).

The caller's path only draws a random number and hands the query over (``ShadowMirror.submit``:
one frame written to a pipe without blocking, microseconds). The mirrors are sent by a worker
process of the web process's own (``gateway.shadow_worker``, started on the first mirror, with
its own event loop and connections to the shadow's replicas): its work holds no lock the gateway
needs (not even the interpreter's), so a slow, failing or busy shadow never delays or fails the
caller. What waits is bounded: the worker queues at most ``GATEWAY_SHADOW_QUEUE_SIZE`` mirrors
(and ``GATEWAY_SHADOW_QUEUE_BYTES`` of bodies), and the gateway holds at most
``GATEWAY_SHADOW_QUEUE_BYTES`` of frames the pipe cannot take yet; past either bound a mirror is
dropped and counted (``<shadow>|shadow_dropped``), as is one whose shadow has no ready replica (a
scaled-to-zero shadow is not woken for a mirror) or that finds the worker gone (it is restarted).
The worker sends at most ``GATEWAY_SHADOW_CONCURRENCY`` mirrors at a time.

A mirror is recorded like any query of its served entity (count, 4xx, 5xx, latency histogram:
``GatewayMetrics.observe``), so the shadow has the same charts as any entity; nothing of it counts
against the caller's rate limits or usage, and it is not payload-logged. When both the primary
and the shadow answer 200, their predictions are compared (``agreement``) and the numbers of
compared and agreeing predictions are counted (``|shadow_compared``, ``|shadow_agreed``): the
agreement rate is their ratio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import struct
import subprocess
import sys
import time
from collections import defaultdict, deque
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


# --- the frames between the gateway and its worker ---------------------------------------------
_HEADER = struct.Struct(">I")


def encode(job: MirrorJob) -> bytes:
    """One job as a frame: the header's length, the header (JSON), the query, the primary's answer."""
    header = json.dumps(
        {
            "e": job.endpoint_id,
            "n": job.entity,
            "r": [[r.url, r.credential] for r in job.replicas],
            "c": job.content_type,
            "s": job.primary_status,
            "t": job.tolerance,
            "b": len(job.body),
            "p": len(job.primary_body),
        },
        separators=(",", ":"),
    ).encode()
    return b"".join((_HEADER.pack(len(header)), header, job.body, job.primary_body))


async def decode(reader: asyncio.StreamReader) -> MirrorJob | None:
    """The next frame's job; None at the end of the stream."""
    try:
        (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        header = json.loads(await reader.readexactly(length))
        body = await reader.readexactly(header["b"])
        primary = await reader.readexactly(header["p"])
    except asyncio.IncompleteReadError:
        return None
    return MirrorJob(
        endpoint_id=header["e"],
        entity=header["n"],
        replicas=[ReplicaTarget(url, credential) for url, credential in header["r"]],
        body=body,
        content_type=header["c"],
        primary_status=header["s"],
        primary_body=primary,
        tolerance=header["t"],
    )


# --- the gateway's side ---------------------------------------------------------------------------
RESTART_SECONDS = 1.0


class ShadowMirror:
    """The gateway's bounded, non-blocking hand-over of mirrors to its worker process."""

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
        self._process: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._started_at = 0.0
        # Frames the pipe could not take yet (the worker is behind), written when it can.
        self._backlog: deque[memoryview] = deque()
        self._backlog_bytes = 0
        self._writer_loop: asyncio.AbstractEventLoop | None = None

    def submit(self, job: MirrorJob) -> bool:
        """Hand a mirror over, or count it dropped (no ready replica, backlog full, no worker):
        never blocks."""
        if not job.replicas or not self._ensure_worker():
            self.metrics.observe_shadow(job.endpoint_id, job.entity, dropped=1)
            return False
        frame = encode(job)
        if self._backlog:
            if self._backlog_bytes + len(frame) > self.queue_bytes:
                self.metrics.observe_shadow(job.endpoint_id, job.entity, dropped=1)
                return False
            self._backlog.append(memoryview(frame))
            self._backlog_bytes += len(frame)
            return True
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:  # the worker is gone: restarted on a later mirror
            self._worker_gone()
            self.metrics.observe_shadow(job.endpoint_id, job.entity, dropped=1)
            return False
        if written < len(frame):
            # Part of the frame may be in the pipe: the rest must follow, whatever its size.
            self._backlog.append(memoryview(frame)[written:])
            self._backlog_bytes += len(frame) - written
            self._drain_later()
        return True

    def _ensure_worker(self) -> bool:
        if self._process is not None and self._process.poll() is None:
            return True
        if self._process is not None:
            self._worker_gone()
        now = time.monotonic()
        if now - self._started_at < RESTART_SECONDS:
            return False
        self._started_at = now
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "endpoints_app.gateway.shadow_worker",
                    "--queue-size",
                    str(self.queue_size),
                    "--queue-bytes",
                    str(self.queue_bytes),
                    "--concurrency",
                    str(self.concurrency),
                    "--timeout",
                    str(self.timeout),
                ],
                stdin=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as exc:
            log.warning("could not start the shadow-traffic worker: %s", exc)
            self._process = None
            return False
        assert self._process.stdin is not None
        self._fd = self._process.stdin.fileno()
        os.set_blocking(self._fd, False)
        log.info("started the shadow-traffic worker (pid %s)", self._process.pid)
        return True

    def _worker_gone(self) -> None:
        if self._writer_loop is not None:
            self._writer_loop.remove_writer(self._fd)
            self._writer_loop = None
        if self._process is not None:
            if self._process.stdin is not None:
                try:
                    self._process.stdin.close()
                except OSError:
                    pass
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            log.warning("the shadow-traffic worker ended (%s)", self._process.returncode)
        self._process = None
        self._fd = -1
        self._backlog.clear()
        self._backlog_bytes = 0

    def _drain_later(self) -> None:
        """Write the backlog when the pipe can take it (the event loop says when)."""
        if self._writer_loop is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a test): written on the next submit or drain()
            return
        loop.add_writer(self._fd, self.drain)
        self._writer_loop = loop

    def drain(self) -> None:
        while self._backlog:
            chunk = self._backlog[0]
            try:
                written = os.write(self._fd, chunk)
            except BlockingIOError:
                return
            except OSError:
                self._worker_gone()
                return
            self._backlog_bytes -= written
            if written < len(chunk):
                self._backlog[0] = chunk[written:]
                return
            self._backlog.popleft()
        if self._writer_loop is not None:
            self._writer_loop.remove_writer(self._fd)
            self._writer_loop = None

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe: the worker sends what it holds, records it, and exits."""
        process = self._process
        if process is None:
            return
        if self._writer_loop is not None:
            self._writer_loop.remove_writer(self._fd)
            self._writer_loop = None
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None


# --- the worker's side (gateway.shadow_worker) ------------------------------------------------------


class MirrorWorker:
    """Reads jobs from the gateway, keeps at most ``queue_size`` waiting, sends ``concurrency`` at a time."""

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
        self._in_flight: defaultdict[ReplicaTarget, int] = defaultdict(int)
        self._waiting_bytes = 0

    async def run(self, reader: asyncio.StreamReader) -> None:
        queue: asyncio.Queue[MirrorJob | None] = asyncio.Queue()
        upstream = UpstreamPool()
        workers = [asyncio.ensure_future(self._work(queue, upstream)) for _ in range(self.concurrency)]
        while (job := await decode(reader)) is not None:
            size = len(job.body) + len(job.primary_body)
            if queue.qsize() >= self.queue_size or self._waiting_bytes + size > self.queue_bytes:
                self.metrics.observe_shadow(job.endpoint_id, job.entity, dropped=1)
                continue
            self._waiting_bytes += size
            queue.put_nowait(job)
        for _ in workers:
            queue.put_nowait(None)  # the gateway closed the pipe: finish what is queued, then stop
        await asyncio.gather(*workers)
        await upstream.aclose()

    async def _work(self, queue: asyncio.Queue[MirrorJob | None], upstream: UpstreamPool) -> None:
        while (job := await queue.get()) is not None:
            self._waiting_bytes -= len(job.body) + len(job.primary_body)
            try:
                await self.mirror(upstream, job)
            except Exception:  # a mirror must never stop the worker
                log.exception("mirroring a query to %s failed", job.entity)

    async def mirror(self, upstream: UpstreamPool, job: MirrorJob) -> None:
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
