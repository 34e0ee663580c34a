"""Request-body size limits, enforced at the ASGI layer before Django or the gateway reads a byte.

Django's ASGI handler reads the whole body into a spooled file before any view (or
authentication) runs, so a limit checked in a view comes after the cost it should prevent. This
wrapper sits in front of the whole web process (``dashboard.asgi``) and, per path:

- ``/serving-endpoints/…`` (queries): ``MODELFLEET_MAX_QUERY_BYTES``, 16 MiB by default, as
  Databricks model serving;
- the model upload (``…/registered-models/upload``): ``MODELFLEET_MAX_UPLOAD_BYTES``, 2 GiB;
- everything else (the management API, pages, the admin): ``MODELFLEET_MAX_API_BODY_BYTES``, 1 MiB.

A ``Content-Length`` over the limit is answered 413 at once, with nothing read. A body without one
(chunked, or a lying client) is counted as it arrives: past the limit the 413 is sent, the
application sees the client go away (``http.disconnect``), and anything it still tries to send is
dropped. The error is Databricks' ``RESOURCE_LIMIT_EXCEEDED``; the connection is closed after it,
so the rest of the body is never read.

The model upload is the one body large enough to matter before authentication (up to
``MODELFLEET_MAX_UPLOAD_BYTES``), so its caller is authenticated here first: a bearer (or Basic)
token of a user allowed to register models, else 401/403 with nothing read. The view checks again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from endpoints_app import access, auth_throttle
from endpoints_app.auth_header import token_from_header
from endpoints_app.errors import PermissionDenied
from endpoints_app.services.tokens import authenticate_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

QUERY_PREFIX = "/serving-endpoints/"
UPLOAD_PATHS = frozenset({"/api/2.0/modelfleet/registered-models/upload"})


def body_limit(path: str, method: str = "POST") -> tuple[int, str]:
    """(the most bytes a body to ``path`` may have, what the limit is called in the error).

    Only a POST is an upload: another method on that path gets the API's limit (Django would spool
    the whole body before answering 405)."""
    if path.startswith(QUERY_PREFIX):
        return settings.MAX_QUERY_BYTES, "a query"
    if path in UPLOAD_PATHS and method == "POST":
        return settings.MAX_UPLOAD_BYTES, "a model upload"
    return settings.MAX_API_BODY_BYTES, "this API"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


async def send_error(send: Send, status: int, error_code: str, message: str) -> None:
    """A JSON error in the API's shape; the connection closes after it."""
    body = json.dumps({"error_code": error_code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None | str:
    """The declared body size; None when not declared; a message when it is malformed."""
    values = {v for k, v in scope.get("headers") or () if k.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        return "The request has conflicting Content-Length headers"
    (value,) = values
    if not value.isdigit():
        return "The request's Content-Length is not a number"
    return int(value[:20])  # more digits than that are over any limit anyway (and int() of thousands is slow)


def _upload_refusal(scope: Scope) -> tuple[int, str, str] | None:
    """Why the caller of a model upload may not send its body: (status, error_code, message), or None."""
    headers = [v for k, v in scope.get("headers") or () if k.lower() == b"authorization"]
    raw = token_from_header(headers[0].decode("latin-1")) if len(headers) == 1 else None
    if raw is None or len(raw) > 256:
        return 401, "UNAUTHENTICATED", "A model upload needs an API token (Authorization: Bearer <token>)"
    address = (scope.get("client") or ("",))[0] or ""
    close_old_connections()
    try:
        throttle = auth_throttle.check(address)
        if throttle is not None:  # the same per-address limit as every other token check
            return 429, "REQUEST_LIMIT_EXCEEDED", throttle.message
        user = authenticate_token(raw)
        if user is None:
            auth_throttle.record_failure(address, kind="token", tried=raw[:6] + "…")
            return 401, "UNAUTHENTICATED", "Invalid access token"
        try:
            access.require_create(user)
        except PermissionDenied as exc:
            return 403, "PERMISSION_DENIED", str(exc)
        return None
    finally:
        close_old_connections()


def _too_large(limit: int, what: str) -> str:
    return f"The request body is larger than {_size(limit)}, the limit for {what}"


def limit_bodies(app: ASGIApp) -> ASGIApp:
    """``app`` behind the body size limits (the module docstring says which)."""

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        limit, what = body_limit(scope["path"], scope.get("method", ""))
        declared = _content_length(scope)
        if isinstance(declared, str):
            await send_error(send, 400, "BAD_REQUEST", declared)
            return
        if declared is not None and declared > limit:
            await send_error(send, 413, "RESOURCE_LIMIT_EXCEEDED", _too_large(limit, what))
            return
        if scope["path"] in UPLOAD_PATHS and scope.get("method") == "POST":
            refusal = await sync_to_async(_upload_refusal, thread_sensitive=True)(scope)
            if refusal is not None:
                await send_error(send, *refusal)
                return

        received = 0
        refused = answering = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not answering:  # an answer already under way cannot become a 413: it is cut off
                        await send_error(send, 413, "RESOURCE_LIMIT_EXCEEDED", _too_large(limit, what))
                    return {"type": "http.disconnect"}  # the application stops as if the client left
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answering
            if refused:  # after the 413, whatever the application answers is not sent
                return
            answering = True
            await send(message)

        await app(scope, counted_receive, guarded_send)

    if hasattr(app, "gateway"):  # tests and the benchmark reach the gateway through the app
        limited.gateway = app.gateway  # type: ignore[attr-defined]  # passed on (see gateway.app.mount); a function has no such field
    return limited
