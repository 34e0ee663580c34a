"""The model server: one OS process that loads one MLflow pyfunc model and serves it on loopback.

The runtime agent starts one of these per replica::

    python -m endpoints_app.runtime.model_server --model-path PATH --host 127.0.0.1 --port N \
        [--name SERVED_ENTITY_NAME] [--replica-id K] [--threads T]

and redirects its stdout/stderr to the replica's log file, so everything worth knowing about
the replica (start-up, load time, failures, shutdown) is logged to stderr.

Routes:

* ``POST /invocations`` -- the MLflow / Databricks scoring protocol (``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``, optional ``params``; ``text/csv`` too),
  parsed by MLflow's own scoring-server helpers so answers match ``mlflow models serve``.
  Answers ``{"predictions": ...}``; every error is ``{"error_code": ..., "message": ...}``.
* ``GET /health`` -- 200 ``{"status": "ready", "in_flight": N, "requests": N, "idle_seconds": S,
  "model": ..., "replica": K,
  "pid": P}`` once the model is loaded, 503 with ``"status": "loading"`` before that.
  ``in_flight`` lets the agent drain a replica before stopping it.
* ``GET /metrics`` -- Prometheus text exposition, written by hand (no extra dependency).

Design choices, each for a reason:

* The HTTP layer is a bare ASGI callable on uvicorn: no framework sits between the socket and
  the model, which keeps per-request overhead to parsing, one thread hop and the model itself.
* The port opens before the model is loaded (the load runs in a background thread), so the
  agent can tell "process up, still loading" (503 on /health) from "process dead", and a port
  clash fails in a second rather than after a long load.  A load failure exits with code 3.
* Parsing, prediction and serialisation all run in a worker thread, so a slow or large
  request never stalls /health, /metrics or other connections on the event loop.
* SIGTERM/SIGINT trigger uvicorn's graceful shutdown: stop accepting, let in-flight requests
  finish (up to 30 s), then exit 0.

Exit codes: 0 after a stop signal, 3 when the model fails to load (the log's first error line
says ``model load failed: <Type>: <message>``), 4 when the port cannot be bound.
"""

from __future__ import annotations

import os

# Nothing in this process may phone home; these must be set before mlflow is first imported.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
# Same flag `mlflow models serve` sets: some flavours behave differently when serving.
os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import bisect  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from io import StringIO  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

import mlflow.pyfunc  # noqa: E402
import uvicorn  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.pyfunc import PyFuncModel  # noqa: E402
from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, _parse_json_data, parse_csv_input  # noqa: E402
from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input  # noqa: E402
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj  # noqa: E402

logger = logging.getLogger("endpoints_app.runtime.model_server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
# Error messages quote MLflow and model exceptions, which can embed the whole input; cap them.
MAX_MESSAGE_CHARS = 2000
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
EXIT_LOAD_FAILED = 3
# uvicorn exits with 3 too when it cannot bind; a distinct code tells the agent "pick another
# port" apart from "the model is broken".
EXIT_LISTEN_FAILED = 4
GRACEFUL_SHUTDOWN_SECONDS = 30
# Longer than the gateway's pooled-connection idle expiry, so the server never closes a
# keep-alive connection at the instant the client reuses it.
KEEP_ALIVE_SECONDS = 65

JSON_HEADERS = [(b"content-type", b"application/json")]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
INPUT_KEYS_HELP = (
    "The request body must be a JSON object with exactly one of the keys "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs', and optionally 'params'."
)

# MLflow's schema-enforcement message starts by quoting the whole input DataFrame; the schema
# and the reason that follow it are what the caller needs.
_SCHEMA_DATA_DUMP = re.compile(r"^Failed to enforce schema of data '.*?' with schema '", re.DOTALL)


class RequestError(Exception):
    """A request the server refuses; carried to the response as ``{"error_code", "message"}``."""

    def __init__(
        self, status: int, error_code: str, message: str, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers


def method_not_allowed(method: str, path: str, allowed: str) -> RequestError:
    return RequestError(
        405,
        "METHOD_NOT_ALLOWED",
        f"{method} is not allowed on {path}; use {allowed}.",
        headers=[(b"allow", allowed.encode())],
    )


class _ClientGone(Exception):
    """The client disconnected before its request body arrived; there is no one to answer."""


def client_message(message: str) -> str:
    """Make an MLflow/model exception message fit to return to the caller.

    Drops MLflow's dump of the input data, caps the length, and rewrites the one phrase
    ("Unexpected error") that makes the Databricks SDK retry a failed call for five minutes.
    """
    message = _SCHEMA_DATA_DUMP.sub("Failed to enforce the model's input schema '", message, count=1)
    message = message.replace("Unexpected error", "unexpected error")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message


def error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": message}).encode()


class ServedModel:
    """A loaded pyfunc model plus what can be worked out once instead of on every request."""

    def __init__(self, model: PyFuncModel) -> None:
        self.model = model
        self.metadata = model.metadata
        self.input_schema = model.metadata.get_input_schema()
        self.has_params_schema = model.metadata.get_params_schema() is not None
        self.accepts_params = "params" in inspect.signature(model.predict).parameters
        self._warned_params_ignored = False

    def predict_json(self, body: bytes) -> bytes:
        """Answer one JSON request body; runs in a worker thread.

        Raises:
            RequestError: the body is not JSON (MALFORMED_REQUEST) or does not fit the
                protocol, the schema or the model (INVALID_PARAMETER_VALUE).
        """
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", f"{INPUT_KEYS_HELP} Got a JSON {type(payload).__name__}."
            )
        if not is_unified_llm_input(payload) and sum(key in SUPPORTED_FORMATS for key in payload) != 1:
            # MLflow's own message lists only the recognised keys (so "[]" for {"foo": 1}) and
            # appends a long note about MLflow 1.x; say what was actually sent instead.  Other
            # keys beside one input key stay allowed (and ignored), as in MLflow.
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", client_message(f"{INPUT_KEYS_HELP} Got keys: {list(payload)}.")
            )
        try:
            # Given a dict, MLflow's parser skips its own json.loads: the body is decoded once.
            parsed = _parse_json_data(payload, self.metadata, self.input_schema)
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        except Exception as exc:
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", client_message(f"Could not read the model input: {exc}")
            ) from exc
        params = parsed.params
        if params and not self.has_params_schema:
            # MLflow would ignore them too, but with a warning on every request; warn once.
            if not self._warned_params_ignored:
                self._warned_params_ignored = True
                logger.warning("ignoring request params: the model's signature defines no params schema")
            params = None
        predictions = self._predict(parsed.data, params)
        if parsed.is_unified_llm_input:
            # Chat/completions/embeddings bodies get the model output unwrapped, as MLflow does.
            return self._to_json(predictions, wrap=False)
        return self._to_json(predictions, wrap=True)

    def predict_csv(self, body: bytes) -> bytes:
        """Answer one ``text/csv`` request body (a DataFrame with a header row)."""
        try:
            frame = parse_csv_input(StringIO(body.decode("utf-8")), schema=self.input_schema)
        except UnicodeDecodeError as exc:
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid UTF-8: {exc}") from exc
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        return self._to_json(self._predict(frame, None), wrap=True)

    def _predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        try:
            if self.accepts_params:
                return self.model.predict(data, params=params)
            return self.model.predict(data)
        except MlflowException as exc:
            # Schema enforcement and params validation: the caller's input does not fit.
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        except Exception as exc:
            # The model's own code raised.  Mostly that means input it cannot handle, which is
            # how `mlflow models serve` treats it too (a 400), but keep the traceback in the
            # replica's log for whoever has to debug the model.
            logger.warning("predict raised %s: %s", type(exc).__name__, exc, exc_info=True)
            raise RequestError(
                400,
                "INVALID_PARAMETER_VALUE",
                client_message(f"The model could not make a prediction for this input: {type(exc).__name__}: {exc}"),
            ) from exc

    @staticmethod
    def _to_json(predictions: Any, *, wrap: bool) -> bytes:
        # Same conversion as mlflow's predictions_to_json, but json.dumps rather than
        # json.dump: only the one-shot path uses the C encoder, several times faster.
        jsonable = _get_jsonable_obj(predictions, pandas_orient="records")
        document = {"predictions": jsonable} if wrap else jsonable
        try:
            return json.dumps(document, cls=NumpyEncoder).encode()
        except (TypeError, ValueError) as exc:
            logger.error("model output is not JSON-serialisable: %s", exc)
            raise RequestError(
                500, "INTERNAL_ERROR", client_message(f"The model's output could not be converted to JSON: {exc}")
            ) from exc


@dataclass
class Metrics:
    """Counters for /invocations requests, exposed in Prometheus text format.

    Only touched from the event loop thread, so no locking is needed.
    """

    labels: str
    request_count: int = 0
    request_4xx_count: int = 0
    request_5xx_count: int = 0
    # Per-bucket (not cumulative) counts; the last slot is the +Inf overflow.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    start_time: float = field(default_factory=time.time)

    def observe(self, status: int, latency_ms: float) -> None:
        self.request_count += 1
        if 400 <= status < 500:
            self.request_4xx_count += 1
        elif status >= 500:
            self.request_5xx_count += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms

    def render(self, *, in_flight: int, load_seconds: float | None) -> bytes:
        labels = self.labels
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{labels}}} {value}")

        metric("request_count_total", "counter", "Invocation requests answered.", self.request_count)
        metric("request_4xx_count_total", "counter", "Invocation requests answered with 4xx.", self.request_4xx_count)
        metric("request_5xx_count_total", "counter", "Invocation requests answered with 5xx.", self.request_5xx_count)
        lines.append("# HELP request_latency_ms Invocation latency inside the model server, milliseconds.")
        lines.append("# TYPE request_latency_ms histogram")
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, None), self.latency_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound is None else f"{bound:g}"
            lines.append(f'request_latency_ms_bucket{{{labels},le="{le}"}} {cumulative}')
        lines.append(f"request_latency_ms_sum{{{labels}}} {self.latency_sum_ms:.3f}")
        lines.append(f"request_latency_ms_count{{{labels}}} {self.request_count}")
        metric("in_flight_requests", "gauge", "Invocation requests being handled now.", in_flight)
        for gpu, util, mem_used_pct in _gpu_usage():
            lines.append(f'gpu_usage_percentage{{{labels},gpu="{gpu}"}} {util}')
            lines.append(f'gpu_mem_usage_percentage{{{labels},gpu="{gpu}"}} {mem_used_pct}')
        cpu, mem = _resource_usage()
        if cpu is not None:
            metric(
                "cpu_usage_percentage", "gauge", "CPU used by this replica since the last scrape, % of one core.", cpu
            )
            metric("mem_usage_percentage", "gauge", "Resident memory of this replica, % of the host's memory.", mem)
        if load_seconds is not None:
            metric("model_load_seconds", "gauge", "Seconds it took to load the model.", round(load_seconds, 3))
        metric(
            "process_start_time_seconds", "gauge", "Start time of the process, Unix seconds.", round(self.start_time, 3)
        )
        return ("\n".join(lines) + "\n").encode()


_process: Any = None
_gpu_cache: tuple[float, list[tuple[str, float, float]]] = (0.0, [])


def _gpu_usage() -> list[tuple[str, float, float]]:
    """(gpu index, utilisation %, memory used %) of the GPUs this replica is pinned to.

    Only when the runtime pinned it (CUDA_VISIBLE_DEVICES) and nvidia-smi exists; cached for 5 s
    because nvidia-smi takes tens of milliseconds.
    """
    global _gpu_cache
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible or visible == "-1":
        return []
    now = time.monotonic()
    if now - _gpu_cache[0] < 5.0:
        return _gpu_cache[1]
    import shutil
    import subprocess

    result: list[tuple[str, float, float]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [
                    smi,
                    "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                    "--format=csv,noheader,nounits",
                    "-i",
                    visible,
                ],
                capture_output=True,
                text=True,
                timeout=2,
                check=True,
            ).stdout
            for row in out.strip().splitlines():
                index, util, used, total = (part.strip() for part in row.split(","))
                result.append(
                    (index, float(util), round(100.0 * float(used) / float(total), 2) if float(total) else 0.0)
                )
        except (OSError, subprocess.SubprocessError, ValueError):
            result = []
    _gpu_cache = (now, result)
    return result


def _resource_usage() -> tuple[float | None, float | None]:
    """(CPU %, memory %) of this process via psutil (an MLflow dependency); (None, None) without it."""
    global _process
    try:
        import psutil
    except ImportError:
        return None, None
    if _process is None:
        _process = psutil.Process()
        _process.cpu_percent(interval=None)  # the first call only sets the baseline
    return round(_process.cpu_percent(interval=None), 2), round(_process.memory_percent(), 3)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ModelServerApp:
    """The ASGI application: routes, body limits, error mapping and metrics around one model."""

    def __init__(self, *, name: str, replica_id: int, threads: int) -> None:
        self.name = name
        self.replica_id = replica_id
        self.pid = os.getpid()
        self.model: ServedModel | None = None
        self.load_seconds: float | None = None
        self.load_failed = False
        self.in_flight = 0
        # When the last invocation finished (or the model was loaded): the agent's idle clock
        # for scale-to-zero.
        self.last_request_at = time.monotonic()
        self.metrics = Metrics(labels=f'served_entity="{_label_value(name)}",replica="{replica_id}"')
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")

    def model_loaded(self, model: ServedModel, seconds: float) -> None:
        """Called on the event loop once the background load succeeds; /health turns 200."""
        self.model = model
        self.load_seconds = seconds
        self.last_request_at = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are disabled
            return
        path = scope["path"]
        method = scope["method"]
        if path == "/invocations":
            await self._invocations(scope, receive, send)
        elif path == "/health":
            if method in ("GET", "HEAD"):
                await self._health(send)
            else:
                await _send_error(send, method_not_allowed(method, path, "GET"))
        elif path == "/metrics":
            if method in ("GET", "HEAD"):
                body = self.metrics.render(in_flight=self.in_flight, load_seconds=self.load_seconds)
                await _send(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE)])
            else:
                await _send_error(send, method_not_allowed(method, path, "GET"))
        else:
            await _send_error(send, RequestError(404, "ENDPOINT_NOT_FOUND", f"No route for {path}."))

    async def _health(self, send: Send) -> None:
        if self.model is not None:
            status_code, status = 200, "ready"
        else:
            status_code, status = 503, "failed" if self.load_failed else "loading"
        document = {
            "status": status,
            "in_flight": self.in_flight,
            "requests": self.metrics.request_count,
            "idle_seconds": 0.0 if self.in_flight else round(time.monotonic() - self.last_request_at, 3),
            "model": self.name,
            "replica": self.replica_id,
            "pid": self.pid,
        }
        await _send(send, status_code, json.dumps(document).encode(), JSON_HEADERS)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self.in_flight += 1
        status = 500
        try:
            try:
                body = await self._invoke(scope, receive)
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

    async def _invoke(self, scope: Scope, receive: Receive) -> bytes:
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
        handler = _handler_for(model, content_type)
        body = await _read_body(receive)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, handler, body)


def _handler_for(model: ServedModel, content_type: bytes) -> Callable[[bytes], bytes]:
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
        return model.predict_json
    if mime == "text/csv":
        return model.predict_csv
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


class _Server(uvicorn.Server):
    """uvicorn's server, logging the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: ModelServerApp) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info(
                "shutting down (%s): finishing %d in-flight request(s)", signal.Signals(sig).name, self.app.in_flight
            )
        super().handle_exit(sig, frame)


def http_protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, it parses faster; else h11) with
    Nagle's algorithm switched off on every accepted connection.

    Why set TCP_NODELAY here: uvicorn 0.54 itself never sets it.  Today the event loop does
    (asyncio's ``_SelectorSocketTransport.__init__`` calls ``base_events._set_nodelay``, and
    uvloop 0.23's accepted sockets have it on too), but that is the loop's choice, not a
    promise.  Responses go out as separate writes (headers, then body), so with Nagle on each
    would wait for the client's delayed ACK: ~40 ms per request (measured: p50 44 ms instead
    of under 1 ms for /health).  One setsockopt per connection is cheap insurance.
    """
    base: type[asyncio.Protocol]
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class NoDelayProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    NoDelayProtocol.__name__ = f"NoDelay{base.__name__}"
    return NoDelayProtocol


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it; it is faster), else asyncio's default."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


def _load_in_background(app: ModelServerApp, server: uvicorn.Server, model_path: Path) -> threading.Thread:
    """Load the model in a daemon thread and report back to the event loop.

    A daemon thread, so that a stop signal during a long load does not wait for it.
    """
    loop = asyncio.get_running_loop()

    def fail() -> None:
        app.load_failed = True
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
            model = ServedModel(mlflow.pyfunc.load_model(str(model_path)))
        except BaseException as exc:
            # The summary comes first so that a one-line view of the log says why.
            logger.error("model load failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            report(fail)
            return
        seconds = time.perf_counter() - started
        logger.info("model loaded in %.2f s; ready", seconds)
        report(app.model_loaded, model, seconds)

    thread = threading.Thread(target=load, name="model-loader", daemon=True)
    thread.start()
    return thread


async def serve(*, model_path: Path, host: str, port: int, name: str, replica_id: int, threads: int) -> int:
    """Serve until a stop signal (exit code 0), a failed model load (3) or a failed bind (4)."""
    app = ModelServerApp(name=name, replica_id=replica_id, threads=threads)
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
    )
    server = _Server(config, app)
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
    try:
        await server.serve()
    except SystemExit:
        # uvicorn has logged why (typically "address already in use") and calls sys.exit().
        logger.error("could not listen on %s:%d", host, port)
        return EXIT_LISTEN_FAILED
    app.executor.shutdown(wait=False, cancel_futures=True)
    if app.load_failed:
        return EXIT_LOAD_FAILED
    logger.info("stopped")
    return 0


def _configure_logging(name: str, replica_id: int) -> None:
    """One format for our lines, uvicorn's and mlflow's, all to stderr (the replica's log)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{name} replica {replica_id}] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # mlflow installs its own stderr handler at import and stops propagation; undo that.
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.handlers.clear()
    mlflow_logger.propagate = True
    logging.captureWarnings(True)


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    """After a graceful stop uvicorn re-raises the signal it caught, to "trigger the expected
    behaviour"; with the default SIGTERM action that would kill us with -15 instead of exit 0.
    This no-op handler is what uvicorn restores and re-raises into."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m endpoints_app.runtime.model_server",
        description="Load one MLflow pyfunc model and serve /invocations, /health and /metrics.",
    )
    parser.add_argument("--model-path", required=True, type=Path, help="local MLflow model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--name", default=None, help="served entity name (default: the model directory's name)")
    parser.add_argument("--replica-id", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4, help="worker threads that run predict (default 4)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.name is None:
        args.name = args.model_path.name or "model"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging(args.name, args.replica_id)
    signal.signal(signal.SIGTERM, _ignore_signal)
    signal.signal(signal.SIGINT, _ignore_signal)
    # Our own runner, not uvicorn's Server.run(), because the model loader needs the loop; so
    # uvicorn's `loop` setting does not apply and the loop is chosen here.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            serve(
                model_path=args.model_path.resolve(),
                host=args.host,
                port=args.port,
                name=args.name,
                replica_id=args.replica_id,
                threads=args.threads,
            )
        )


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the loader thread may still be inside mlflow (a stop signal
    # during a long load) or a predict may have outlived the grace period, and joining either
    # would hold the process past the signal.
    os._exit(code)
