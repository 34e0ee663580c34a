"""A request id on every answer and in every log line written while the request is handled.

The id is the caller's ``X-Request-Id`` when it is sane (1-128 characters of letters, digits and
``-_.:@+=/``: a UUID, a load balancer's trace id), else a new random one, so a hostile value can
neither forge log lines nor bloat them. ``RequestIdMiddleware`` wraps the whole ASGI app (Django
and the inference gateway): it sets the id in a context variable, which Django's thread hops and
the gateway's tasks inherit, and adds the header to the answer. ``RequestIdFilter`` puts it on
every log record (``-`` outside a request).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9\-_.:@+=/]{1,128}$")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelfleet_request_id", default=None)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def current() -> str | None:
    """The id of the request this code runs for, None outside one."""
    return _current.get()


def new_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID per request


def accept(value: str | None) -> str:
    """The caller's id when it is sane, else a new one."""
    if value and _SANE.match(value):
        return value
    return new_id()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = accept(given)
        encoded = request_id.encode()
        if given != request_id:  # downstream code (and the gateway's upstream call) sees the id used
            headers = scope.get("headers") or []
            if given is not None:
                headers = [(n, v) for n, v in headers if n != b"x-request-id"]
            scope = {**scope, "headers": [*headers, (b"x-request-id", encoded)]}
        token = _current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if any(n.lower() == b"x-request-id" for n, _ in headers):
                    headers = [(n, v) for n, v in headers if n.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", encoded)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current.get() or "-"
        return True
