"""``/healthz``, ``/readyz`` and ``/metrics``: for load balancers, orchestrators and Prometheus.

They are answered at the ASGI level, in front of Django (``mount``): a probe or a scraper names
the host by its address (a pod IP, a container name), which Django's ALLOWED_HOSTS check would
refuse with 400, and none of them has a session, a form or a page to protect.

- ``GET /healthz``: the process is up and its event loop answers. No I/O, so a slow database never
  makes an orchestrator restart a healthy web process.
- ``GET /readyz``: the database, Redis and the model registry each answer within
  READINESS_TIMEOUT_SECONDS; 200 with each check's result, else 503 with
  ``{"error_code": "TEMPORARILY_UNAVAILABLE", "message": ..., "failed": [...], "checks": {...}}``.
- ``GET /metrics``: the fleet's Prometheus exposition (``monitoring.prometheus``), OpenMetrics when
  ``Accept`` asks for it; for a caller with ``Authorization: Bearer <MODELFLEET_METRICS_TOKEN>`` or
  an address in MODELFLEET_METRICS_ALLOW, else 401 (a token is configured) or 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

from endpoints_app.monitoring import prometheus
from endpoints_app.observability.requestid import ASGIApp, Receive, Scope, Send
from endpoints_app.redis_client import get_redis

PATHS = ("/healthz", "/readyz", "/metrics")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# The registry and Redis checks run here, so a hung one is abandoned at the deadline (its thread
# finishes on its own); the database check runs on the calling thread (Django's connections are
# per thread), bounded by the backend's own timeouts.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readiness")


def check_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        if not connection.in_atomic_block:  # a worker thread's connection: keep none past its age
            close_old_connections()


def check_redis() -> None:
    if not get_redis().ping():
        raise RuntimeError("no PONG")


@lru_cache(maxsize=2)
def _registry_engine(uri: str) -> Any:
    import sqlalchemy  # installed with MLflow; imported here so the web process loads it only if probed

    timeout = max(1, int(settings.READINESS_TIMEOUT_SECONDS))
    scheme = urlsplit(uri).scheme
    connect_args: dict[str, Any] = {}
    if scheme.startswith("postgresql"):
        connect_args = {"connect_timeout": timeout}
    elif scheme.startswith("mysql"):
        connect_args = {"connect_timeout": timeout}
    elif scheme == "sqlite":
        connect_args = {"timeout": timeout}
    return sqlalchemy.create_engine(uri, pool_pre_ping=True, pool_size=1, max_overflow=1, connect_args=connect_args)


def check_registry() -> None:
    """The MLflow registry answers: its tracking server's /health, or its database with its tables."""
    uri = settings.MLFLOW_TRACKING_URI
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        response = httpx.get(uri.rstrip("/") + "/health", timeout=settings.READINESS_TIMEOUT_SECONDS)
        if response.status_code != 200:
            raise RuntimeError(f"tracking server answered {response.status_code}")
        return
    if scheme == "file":
        if not Path(urlsplit(uri).path).is_dir():
            raise RuntimeError("the registry folder does not exist")
        return
    if scheme == "sqlite":  # a missing file would be created empty by connecting: say so instead
        database = uri[len("sqlite:///") :]
        if database and not Path(database).is_file():
            raise RuntimeError("the registry database file does not exist yet")
    import sqlalchemy

    with _registry_engine(uri).connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1 FROM registered_models LIMIT 1"))


CHECKS: dict[str, Callable[[], None]] = {"database": check_database, "redis": check_redis, "registry": check_registry}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def readiness() -> tuple[bool, dict[str, str]]:
    """Each check's result ("ok" or why not) and whether all passed. Runs on a worker thread."""
    deadline = settings.READINESS_TIMEOUT_SECONDS
    results: dict[str, str] = {}
    pending = {name: _checks.submit(check) for name, check in CHECKS.items() if name != "database"}
    try:
        check_database()
        results["database"] = "ok"
    except Exception as exc:
        results["database"] = _describe(exc)
    started = time.monotonic()
    for name, future in pending.items():
        try:
            future.result(timeout=max(0.0, deadline - (time.monotonic() - started)))
            results[name] = "ok"
        except FutureTimeout:
            results[name] = f"no answer within {deadline:g} s"
        except Exception as exc:
            results[name] = _describe(exc)
    return all(value == "ok" for value in results.values()), results


def metrics_refusal(client_host: str | None, authorization: str | None) -> tuple[int, str, str] | None:
    """None when the caller may scrape /metrics, else (status, error_code, message)."""
    token = settings.METRICS_TOKEN
    if token and authorization:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return 401, "UNAUTHENTICATED", "the metrics token is not valid"
    try:
        address = ipaddress.ip_address((client_host or "").strip("[]"))
    except ValueError:
        address = None
    if address is not None and any(address in network for network in settings.METRICS_ALLOW):
        return None
    if token:
        return 401, "UNAUTHENTICATED", "send Authorization: Bearer <MODELFLEET_METRICS_TOKEN>"
    return 403, "PERMISSION_DENIED", "this address may not scrape /metrics (see MODELFLEET_METRICS_ALLOW)"


Headers = list[tuple[bytes, bytes]]


async def _answer(send: Send, status: int, body: bytes, content_type: str, extra: Headers | None = None) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, data: dict[str, Any], extra: Headers | None = None) -> None:
    await _answer(send, status, json.dumps(data).encode(), "application/json", extra)


async def handle(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if scope["method"] not in ("GET", "HEAD"):
        await _json(
            send,
            405,
            {"error_code": "METHOD_NOT_ALLOWED", "message": f"{path} answers GET only"},
            [(b"allow", b"GET, HEAD")],
        )
        return
    if path == "/healthz":
        await _json(send, 200, {"status": "ok"})
    elif path == "/readyz":
        ready, checks = await sync_to_async(readiness, thread_sensitive=False)()
        if ready:
            await _json(send, 200, {"status": "ready", "checks": checks})
        else:
            failed = [name for name, result in checks.items() if result != "ok"]
            message = "not ready: " + "; ".join(f"{name}: {checks[name]}" for name in failed)
            await _json(
                send,
                503,
                {"error_code": "TEMPORARILY_UNAVAILABLE", "message": message, "failed": failed, "checks": checks},
            )
    else:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers") or ()
        }
        client = scope.get("client")
        refusal = metrics_refusal(client[0] if client else None, headers.get("authorization"))
        if refusal is not None:
            status, error_code, message = refusal
            extra = [(b"www-authenticate", b'Bearer realm="metrics"')] if status == 401 else []
            await _json(send, status, {"error_code": error_code, "message": message}, extra)
            return
        openmetrics = "application/openmetrics-text" in headers.get("accept", "")
        body = await sync_to_async(_render, thread_sensitive=False)(openmetrics)
        await _answer(send, 200, body, OPENMETRICS_CONTENT_TYPE if openmetrics else PROMETHEUS_CONTENT_TYPE)


def _render(openmetrics: bool) -> bytes:
    try:
        return prometheus.render(openmetrics=openmetrics)
    finally:
        close_old_connections()  # this thread is not Django's request thread: release its connection


def mount(app: ASGIApp) -> ASGIApp:
    """``app`` with the three operations paths answered in front of it."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in PATHS:
            await handle(scope, receive, send)
        else:
            await app(scope, receive, send)

    return application
