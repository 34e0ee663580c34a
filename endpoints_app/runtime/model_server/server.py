"""Hosting the app on uvicorn: the HTTP protocol, the event loop, the model load in the background
and a graceful stop.

* The port opens before the model is loaded (the load runs in a background thread), so the
  agent can tell "process up, still loading" (503 on /health) from "process dead", and a port
  clash fails in a second rather than after a long load.  A load failure exits with code 3.
* Each connection has Nagle's algorithm off and sends a response's writes as one system call
  (http_protocol_class).
* SIGTERM/SIGINT trigger uvicorn's graceful shutdown: stop accepting, let in-flight requests
  finish (up to 30 s), then exit 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import mlflow.pyfunc
import mlflow.tracing
import uvicorn

from endpoints_app.runtime.model_server.app import ModelServerApp
from endpoints_app.runtime.model_server.batching import DEFAULT_MAX_BATCH_ROWS
from endpoints_app.runtime.model_server.served_model import ServedModel
from endpoints_app.runtime.model_server.workers import WorkerGroup, WorkerSlot

logger = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3
# uvicorn exits with 3 too when it cannot bind; a distinct code tells the agent "pick another
# port" apart from "the model is broken".
EXIT_LISTEN_FAILED = 4
# One of a replica's worker processes (workers.py) died for another reason than a failed load.
EXIT_WORKER_FAILED = 6
GRACEFUL_SHUTDOWN_SECONDS = 30
# How often a replica's worker processes publish their CPU and memory use, and its parent looks
# for workers that have died.
WATCH_SECONDS = 0.5
# Longer than the gateway's pooled-connection idle expiry, so the server never closes a
# keep-alive connection at the instant the client reuses it.
KEEP_ALIVE_SECONDS = 65


class _Server(uvicorn.Server):
    """uvicorn's server, logging the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: ModelServerApp, group: WorkerGroup | None = None) -> None:
        super().__init__(config)
        self.app = app
        self.group = group

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stop(signal.Signals(sig).name)
        super().handle_exit(sig, frame)

    def stop(self, reason: str) -> None:
        """Stop accepting and finish the requests in flight; a replica's parent process tells its
        workers to do the same, and every process lets go of the shared listening socket."""
        if not self.should_exit:
            logger.info("shutting down (%s): finishing %d in-flight request(s)", reason, self.app.in_flight)
        self.should_exit = True
        if self.group is not None:
            self.group.stop_workers()
            # The server's own copy closes as it stops; this one must too, or the port stays open.
            self.group.sock.close()


class _CoalescingTransport:
    """A connection's transport that sends what one loop iteration writes as one write.

    uvicorn writes a response as two writes (status line and headers, then the body), each a
    send() system call.  Held until the next loop iteration (or close), they go out together:
    one system call per response instead of two, ~8% more requests per second at
    concurrency 8 on two cores.  Everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, it parses faster; else h11) with
    Nagle's algorithm switched off on every accepted connection, and each response's writes
    sent together (see _CoalescingTransport).

    Why set TCP_NODELAY here: uvicorn 0.54 itself never sets it.  Today the event loop does
    (asyncio's ``_SelectorSocketTransport.__init__`` calls ``base_events._set_nodelay``, and
    uvloop 0.23's accepted sockets have it on too), but that is the loop's choice, not a
    promise.  uvicorn writes headers and body separately, and with Nagle on the second write
    waited for the client's delayed ACK: ~40 ms per request (measured: p50 44 ms instead of
    under 1 ms for /health).  The coalescing transport now merges them, but a write can still
    follow an unacknowledged one (a 100-continue, pipelined requests); one setsockopt per
    connection is cheap insurance.
    """
    base: type[asyncio.Protocol]
    # Imported here, after find_spec: uvicorn's httptools module fails to import without httptools.
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class NoDelayProtocol(base):  # type: ignore[valid-type,misc]  # a base chosen at run time (httptools or h11)
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(_CoalescingTransport(transport))  # type: ignore[arg-type]  # a wrapper, not a subclass

    NoDelayProtocol.__name__ = f"NoDelay{base.__name__}"
    return NoDelayProtocol


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it; it is faster), else asyncio's default."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop  # optional (uvicorn[standard]), so only once find_spec has found it

    return uvloop.new_event_loop


def _load_in_background(app: ModelServerApp, server: uvicorn.Server, model_path: Path) -> threading.Thread:
    """Load the model in a daemon thread and report back to the event loop.

    A daemon thread, so that a stop signal during a long load does not wait for it.
    """
    loop = asyncio.get_running_loop()

    def fail() -> None:
        app.load_failed_now()
        server.should_exit = True

    def report(callback: Callable[..., None], *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: a stop signal arrived while the model was loading

    def load() -> None:
        started = time.perf_counter()
        try:
            if not model_path.is_dir():
                # Only local directories: a models:/ or runs:/ URI would reach out to a tracking server.
                raise FileNotFoundError(f"model directory {str(model_path)!r} does not exist")
            # A replica has no tracking server to send traces to (and its sandbox allows no
            # outbound connection): left on, MLflow's tracing of agents' predict (ResponsesAgent,
            # ChatAgent) would try to create a SQLite store in a read-only folder on every query,
            # retrying with backoff for seconds before answering.
            mlflow.tracing.disable()
            model = ServedModel(mlflow.pyfunc.load_model(str(model_path)))
        except BaseException as exc:
            # The summary comes first so that a one-line view of the log says why.
            logger.error("model load failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            report(fail)
            return
        seconds = time.perf_counter() - started
        if model.fast is not None:
            logger.info("fast path: %s", model.fast_note)
        else:
            logger.info("no fast path: %s", model.fast_note)
        logger.info("model loaded in %.2f s; ready", seconds)
        report(app.model_loaded, model, seconds)

    thread = threading.Thread(target=load, name="model-loader", daemon=True)
    thread.start()
    return thread


async def serve(
    *,
    model_path: Path,
    host: str,
    port: int,
    name: str,
    replica_id: int,
    threads: int,
    credential: str,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    isolation: str = "none",
    group: WorkerGroup | None = None,
) -> int:
    """Serve until a stop signal (exit code 0), a failed model load (3), a failed bind (4) or,
    for a replica of several processes (``group``, workers.py), a worker that died (its code, or
    6)."""
    app = ModelServerApp(
        name=name,
        replica_id=replica_id,
        threads=threads,
        credential=credential,
        max_batch_rows=max_batch_rows,
        isolation=isolation,
        slot=WorkerSlot(group.board, group.index) if group is not None else None,
        replica_pid=group.parent_pid if group is not None else None,
    )
    protocol = http_protocol_class()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        # uvicorn's own logging config would add handlers with another format; ours is on root.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # The replica reads no client address or scheme: no X-Forwarded-* middleware per request.
        proxy_headers=False,
    )
    server = _Server(config, app, group)
    logger.info(
        "starting: model %s on http://%s:%d (pid %d, http=%s, %d predict threads)",
        model_path,
        host,
        port,
        os.getpid(),
        protocol.__name__,
        threads,
    )
    _load_in_background(app, server, model_path)
    worker_exit: list[int] = []
    if group is not None:
        _watch_group(server, group, worker_exit)
    try:
        await server.serve(sockets=[group.sock] if group is not None else None)
    except SystemExit:
        # uvicorn has logged why (typically "address already in use") and calls sys.exit().
        logger.error("could not listen on %s:%d", host, port)
        return EXIT_LISTEN_FAILED
    app.executor.shutdown(wait=False, cancel_futures=True)
    if app.batcher is not None:
        app.batcher.close()
    if group is not None and group.is_parent:
        server.stop("stopping")
        group.wait_for_workers(GRACEFUL_SHUTDOWN_SECONDS + 5)
    if app.load_failed:
        return EXIT_LOAD_FAILED
    if worker_exit:
        # A worker's own code (3: its load failed, 5: its sandbox), else it was killed.
        return worker_exit[0] if worker_exit[0] > 0 else EXIT_WORKER_FAILED
    logger.info("stopped")
    return 0


def _watch_group(server: _Server, group: WorkerGroup, worker_exit: list[int]) -> None:
    """On the event loop: this worker's usage published every second; a worker stops when its
    parent closes the pipe (or dies); the parent stops the replica when a worker has died,
    noting the worker's exit code in ``worker_exit``."""
    loop = asyncio.get_running_loop()
    slot = server.app.slot
    assert slot is not None

    def tick() -> None:
        slot.refresh_usage()
        if group.is_parent and not server.should_exit:
            ended = group.reap()
            if ended is not None:
                pid, code = ended
                logger.error("worker process %d exited with code %d; stopping the replica", pid, code)
                worker_exit.append(code)
                server.stop(f"worker {pid} exited")
        loop.call_later(WATCH_SECONDS, tick)

    tick()
    if group.stop_reader is not None:
        reader = group.stop_reader

        def parent_gone() -> None:
            loop.remove_reader(reader)
            server.stop("the replica is stopping")

        loop.add_reader(reader, parent_gone)
