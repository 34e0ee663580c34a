"""The replica's HTTP application: a bare ASGI callable with three routes around one model.

* ``POST /invocations`` -- the MLflow / Databricks scoring protocol (served_model.py; the fast
  path for scikit-learn models, and batching for every model that predicts row by row).
  Answers ``{"predictions": ...}``; every error is ``{"error_code": ..., "message": ...}``.
* ``GET /health`` -- 200 ``{"status": "ready", "in_flight": N, "requests": N, "idle_seconds": S,
  "model": ..., "replica": K, "pid": P, "isolation": ...}`` once the model is loaded, 503 with
  ``"status": "loading"`` (or ``"failed"``) before that.  ``in_flight`` lets the agent drain a
  replica before stopping it, ``idle_seconds`` is its clock for scale-to-zero.
* ``GET /metrics`` -- Prometheus text exposition (metrics.py).

No framework sits between the socket and the model, which keeps per-request overhead to
parsing, one thread hop and the model itself.  Parsing, prediction and serialisation run in a
worker thread, so a slow or large request never stalls /health, /metrics or other connections
on the event loop; only small fast-path bodies are decoded on the loop.

When the model may batch (batchable.py), a full-path request is parsed in a worker thread, which
predicts it right there if the model is idle (so a lone request costs what it does unbatched);
otherwise it is schema-enforced there and queued, and joins the next batch (batching.py).

Every route answers only requests that carry the replica's credential (``Authorization: Bearer
<credential>``), compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from endpoints_app.runtime.model_server.batching import DEFAULT_MAX_BATCH_ROWS, Batcher
from endpoints_app.runtime.model_server.fastpath import FastInput
from endpoints_app.runtime.model_server.metrics import METRICS_CONTENT_TYPE, Metrics
from endpoints_app.runtime.model_server.responses import JSON_HEADERS, RequestError, error_body, method_not_allowed
from endpoints_app.runtime.model_server.served_model import NOT_JSON, ParsedRequest, ServedModel
from endpoints_app.runtime.model_server.streaming import Stream
from endpoints_app.runtime.model_server.streaming import may_ask as may_ask_for_stream
from endpoints_app.runtime.model_server.streaming import start as start_stream
from endpoints_app.runtime.model_server.workers import (
    BATCHED_REQUESTS,
    BATCHES,
    FAILED,
    IN_FLIGHT,
    LOAD_SECONDS,
    READY,
    REQUESTS,
    STATE,
    WorkerSlot,
)

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Parses one request for the full path, from its body or its decoded JSON payload.
Parse = Callable[[Any], ParsedRequest]

MAX_BODY_BYTES = 16 * 1024 * 1024
# Fast-path bodies up to this size are decoded on the event loop (a 100-row iris body is 3.5 KB,
# ~50 µs); bigger ones in a worker thread, so that one huge body cannot stall the loop.
INLINE_PARSE_MAX_BYTES = 64 * 1024
UNAUTHORIZED_HEADERS = [(b"www-authenticate", b'Bearer realm="modelfleet-replica"')]


class _ClientGone(Exception):
    """The client disconnected before its request body arrived; there is no one to answer."""


class ModelServerApp:
    """The ASGI application: routes, body limits, error mapping and metrics around one model."""

    def __init__(
        self,
        *,
        name: str,
        replica_id: int,
        threads: int,
        credential: str,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        isolation: str = "none",
        slot: WorkerSlot | None = None,
        replica_pid: int | None = None,
    ) -> None:
        if not credential:
            raise ValueError("a replica needs a credential")
        self.name = name
        self._expected_authorization = f"Bearer {credential}".encode()
        self.isolation = isolation
        self.replica_id = replica_id
        # The replica's process (a worker's parent, see workers.py), as the agent knows it.
        self.pid = replica_pid or os.getpid()
        # This worker's slot of the replica's shared counters; None when one process serves.
        self.slot = slot
        self.model: ServedModel | None = None
        self.load_seconds: float | None = None
        self.load_failed = False
        self.in_flight = 0
        # When the last invocation finished (or the model was loaded): the agent's idle clock
        # for scale-to-zero.
        self.last_request_at = time.monotonic()
        self.metrics = Metrics.for_replica(name=name, replica_id=replica_id)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        self.max_batch_rows = max_batch_rows
        # The fast path's batches, and the full path's (only for a model that may batch).
        self.batcher: Batcher[FastInput, bytes | RequestError | None] | None = None
        self.full_batcher: Batcher[ParsedRequest, bytes | RequestError] | None = None

    def model_loaded(self, model: ServedModel, seconds: float) -> None:
        """Called on the event loop once the background load succeeds; /health turns 200."""
        rows = self.max_batch_rows if model.batching.enabled else 1
        if model.fast is not None:
            self.batcher = Batcher(model.fast.predict_batch, max_rows=rows, inline=model.fast.may_run_inline)
        if model.batching.enabled:
            # Its batches run on the predict threads, which server.py shuts down.
            self.full_batcher = Batcher(model.predict_batch, max_rows=rows, executor=self.executor)
        self.model = model
        self.load_seconds = seconds
        self.last_request_at = time.monotonic()
        if self.slot is not None:
            self.slot.cells[LOAD_SECONDS] = seconds
            self.slot.cells[STATE] = READY

    def load_failed_now(self) -> None:
        """Called on the event loop when the background load fails; /health says "failed"."""
        self.load_failed = True
        if self.slot is not None:
            self.slot.cells[STATE] = FAILED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are disabled
            return
        path = scope["path"]
        method = scope["method"]
        if not self._authorized(scope):
            await _send_error(
                send,
                RequestError(
                    401,
                    "UNAUTHENTICATED",
                    "This model server answers only its gateway: send the replica's credential.",
                    headers=UNAUTHORIZED_HEADERS,
                ),
            )
            return
        if path == "/invocations":
            await self._invocations(scope, receive, send)
        elif path == "/health":
            if method in ("GET", "HEAD"):
                await self._health(send)
            else:
                await _send_error(send, method_not_allowed(method, path, "GET"))
        elif path == "/metrics":
            if method in ("GET", "HEAD"):
                await _send(send, 200, self._metrics(), [(b"content-type", METRICS_CONTENT_TYPE)])
            else:
                await _send_error(send, method_not_allowed(method, path, "GET"))
        else:
            await _send_error(send, RequestError(404, "ENDPOINT_NOT_FOUND", f"No route for {path}."))

    def _authorized(self, scope: Scope) -> bool:
        """Whether the request carries this replica's credential (compared in constant time)."""
        for header, value in scope["headers"]:
            if header == b"authorization":
                return hmac.compare_digest(value, self._expected_authorization)
        return False

    def _metrics(self) -> bytes:
        batchers = [batcher for batcher in (self.batcher, self.full_batcher) if batcher is not None]
        batches = sum(batcher.batches for batcher in batchers)
        batched_requests = sum(batcher.batched_requests for batcher in batchers)
        if self.slot is None:
            return self.metrics.render(
                in_flight=self.in_flight,
                load_seconds=self.load_seconds,
                batches=batches,
                batched_requests=batched_requests,
            )
        board = self.slot.board
        self.slot.publish_batches(batches, batched_requests)
        return board.summed_metrics(self.metrics).render(
            in_flight=int(board.total(IN_FLIGHT)),
            load_seconds=board.load_seconds(),
            batches=int(board.total(BATCHES)),
            batched_requests=int(board.total(BATCHED_REQUESTS)),
            resource_usage=self.slot.usage,
        )

    async def _health(self, send: Send) -> None:
        if self.slot is not None:
            # The replica, not this worker: ready once every worker has loaded the model.
            board = self.slot.board
            status = board.state()
            in_flight = int(board.total(IN_FLIGHT))
            requests = int(board.total(REQUESTS))
            last_request_at = board.last_request_at()
        else:
            status = "ready" if self.model is not None else "failed" if self.load_failed else "loading"
            in_flight, requests, last_request_at = self.in_flight, self.metrics.request_count, self.last_request_at
        status_code = 200 if status == "ready" else 503
        document = {
            "status": status,
            "in_flight": in_flight,
            "requests": requests,
            "idle_seconds": 0.0 if in_flight else round(time.monotonic() - last_request_at, 3),
            "model": self.name,
            "replica": self.replica_id,
            "pid": self.pid,
            "isolation": self.isolation,
        }
        await _send(send, status_code, json.dumps(document).encode(), JSON_HEADERS)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self.in_flight += 1
        if self.slot is not None:
            self.slot.cells[IN_FLIGHT] = self.in_flight
        status = 500
        try:
            try:
                body = await self._invoke(scope, receive)
                if isinstance(body, Stream):  # "stream": true (streaming.py)
                    status = await body.send(send, receive)
                else:
                    status = 200
                    await _send(send, 200, body, JSON_HEADERS)
            except RequestError as exc:
                status = exc.status
                await _send_error(send, exc)
            except _ClientGone:
                status = 499  # nginx's "client closed request"; nothing to send
            except Exception:
                logger.exception("request handling failed")
                status = 500
                await _send_error(
                    send,
                    RequestError(500, "INTERNAL_ERROR", "The model server failed to handle the request; see its log."),
                )
        finally:
            self.in_flight -= 1
            self.last_request_at = time.monotonic()
            self.metrics.observe(status, (time.perf_counter() - started) * 1000.0)
            if self.slot is not None:
                self.slot.publish_request(self.metrics, self.in_flight, self.last_request_at)
                if self.batcher is not None or self.full_batcher is not None:
                    batchers = [batcher for batcher in (self.batcher, self.full_batcher) if batcher is not None]
                    self.slot.publish_batches(
                        sum(batcher.batches for batcher in batchers),
                        sum(batcher.batched_requests for batcher in batchers),
                    )

    async def _invoke(self, scope: Scope, receive: Receive) -> bytes | Stream:
        """Check the request, then parse, predict and serialise it in a worker thread."""
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], "/invocations", "POST")
        model = self.model
        if model is None:
            raise RequestError(503, "TEMPORARILY_UNAVAILABLE", "The model is still loading.")
        content_type = b""
        content_length = -1
        for header, value in scope["headers"]:
            if header == b"content-type":
                content_type = value
            elif header == b"content-length":
                content_length = int(value) if value.isdigit() else -1
        if content_length > MAX_BODY_BYTES:
            raise _too_large()
        parse = _parser_for(model, content_type)
        body = await _read_body(receive)
        if parse == model.parse_json and may_ask_for_stream(body):
            stream = await start_stream(model, body, self.executor)
            if stream is not None:
                return stream
        if self.batcher is not None and parse == model.parse_json:
            return await self._invoke_fast(model, self.batcher, body)
        return await self._invoke_full(model, parse, body)

    async def _invoke_fast(
        self, model: ServedModel, batcher: Batcher[FastInput, bytes | RequestError | None], body: bytes
    ) -> bytes:
        """A JSON request to a model with a fast path: decode and check it (on the loop when
        small), predict it in a batch; whatever the fast path does not take, or cannot answer,
        goes to the full path in a worker thread, which gives MLflow's own answer or error."""
        loop = asyncio.get_running_loop()
        if len(body) <= INLINE_PARSE_MAX_BYTES:
            payload, item = model.read_fast(body)
        else:
            payload, item = await loop.run_in_executor(self.executor, model.read_fast, body)
        if item is not None:
            answer = await batcher.predict(item)
            if isinstance(answer, RequestError):
                raise answer  # the full path's own error for it (the custom pyfunc fast path)
            if answer is not None:
                return answer
        if payload is NOT_JSON:
            return await self._invoke_full(model, model.parse_json, body)
        return await self._invoke_full(model, model.parse_payload, payload)

    async def _invoke_full(self, model: ServedModel, parse: Parse, source: Any) -> bytes:
        """The full MLflow path: parse, predict and serialise in a worker thread, where a model
        that may batch predicts the request at once when idle, or else queues it for the next
        batch (see the module docstring)."""
        loop = asyncio.get_running_loop()
        batcher = self.full_batcher
        if batcher is None:
            return await loop.run_in_executor(self.executor, _predict_alone, model, parse, source)
        outcome = await loop.run_in_executor(self.executor, _predict_or_prepare, model, batcher, parse, source)
        if isinstance(outcome, bytes):
            return outcome
        answer = await batcher.predict(outcome)
        if answer is None:  # the batch failed in an unexpected way: answer it alone
            return await loop.run_in_executor(self.executor, model.predict_one, outcome)
        if isinstance(answer, RequestError):
            raise answer
        return answer


def _predict_alone(model: ServedModel, parse: Parse, source: Any) -> bytes:
    return model.predict_one(parse(source))


def _predict_or_prepare(
    model: ServedModel, batcher: Batcher[ParsedRequest, bytes | RequestError], parse: Parse, source: Any
) -> bytes | ParsedRequest:
    """In a worker thread: parse the request, then predict it here if it cannot share a call or
    the model is idle; else enforce its schema and hand it back for the next batch."""
    request = parse(source)
    if not model.may_batch(request):
        return model.predict_one(request)
    answers = batcher.run_if_idle(request)
    if answers is not None:
        answer = answers[0]
        if isinstance(answer, RequestError):
            raise answer
        return answer if answer is not None else model.predict_one(request)
    if not model.prepare_batch(request):
        return model.predict_one(request)
    return request


def _parser_for(model: ServedModel, content_type: bytes) -> Parse:
    """Pick the parser for a Content-Type; a missing one means JSON, as clients often omit it."""
    mime, _, parameters = content_type.decode("latin-1").partition(";")
    mime = mime.strip().lower()
    charset = ""
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset not in ("", "utf-8", "utf8"):
        raise RequestError(415, "BAD_REQUEST", f"Only UTF-8 request bodies are supported, not charset={charset}.")
    if mime in ("", "application/json"):
        return model.parse_json
    if mime == "text/csv":
        return model.parse_csv
    raise RequestError(415, "BAD_REQUEST", f"Unsupported Content-Type {mime!r}; send application/json (or text/csv).")


def _too_large() -> RequestError:
    return RequestError(
        413,
        "RESOURCE_LIMIT_EXCEEDED",
        f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.",
        # The connection stays open: uvicorn discards the unread rest of the body once the
        # response is sent.  Closing instead would leave unread bytes in the socket, so the
        # kernel would answer with a reset and the client might never see this 413.
    )


async def _read_body(receive: Receive) -> bytes:
    """Read the whole request body, refusing it as soon as it passes the size limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: RequestError) -> None:
    await _send(send, error.status, error_body(error.error_code, error.message), [*JSON_HEADERS, *error.headers])
