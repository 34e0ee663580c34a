"""Failed sign-ins and bad tokens, throttled per client address and aggregated in the audit log.

One fixed window per address (``AUTH_FAILURE_WINDOW_SECONDS``), counted in Redis so every web
and gateway process shares it: after ``AUTH_FAILURE_LIMIT`` failures an address is refused
outright (429 and ``Retry-After`` for the API and the gateway, an error on the sign-in page)
until the window ends, without its credentials being checked at all, so guessing stops.

The audit log gets at most three rows per address per window, however long a flood goes on (the
log is append-only, so a count cannot be updated in place):

1. ``auth.failed`` at the window's first failed sign-in and at its first bad token (what was
   tried: a username, or a token's first characters), with the window;
2. ``auth.throttled`` when the address reaches the limit, with the count.

Redis being down must not lock everyone out of the product: then nothing is throttled and every
failure is audited as before (a warning is logged once per process).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from endpoints_app import audit
from endpoints_app.redis_client import get_redis

log = logging.getLogger(__name__)
_warned = False


@dataclass(frozen=True)
class Throttle:
    """An address over the limit: refused for ``retry_after`` more seconds."""

    address: str
    retry_after: int

    @property
    def message(self) -> str:
        return (
            f"Too many failed sign-ins or bad tokens from {self.address or 'your address'}: "
            f"try again in {self.retry_after} s."
        )


def _window(now: float) -> tuple[int, int]:
    """(window number, seconds until it ends)."""
    length = settings.AUTH_FAILURE_WINDOW_SECONDS
    number = int(now // length)
    return number, max(1, math.ceil((number + 1) * length - now))


def _key(number: int, address: str) -> str:
    return f"mf:authfail:{number}:{address}"


def _redis_failed(exc: Exception) -> None:
    global _warned
    if not _warned:
        log.warning("auth throttle: Redis unavailable, failed sign-ins are not throttled: %s", exc)
        _warned = True


def check(address: str, *, now: float | None = None) -> Throttle | None:
    """The throttle in force for this address, or None when it may try (one Redis GET)."""
    number, left = _window(time.time() if now is None else now)
    try:
        count = int(get_redis().get(_key(number, address)) or 0)
    except redis.RedisError as exc:
        _redis_failed(exc)
        return None
    return Throttle(address, left) if count >= settings.AUTH_FAILURE_LIMIT else None


def record_failure(address: str, *, kind: str, tried: str, now: float | None = None) -> int:
    """Count one failure (``kind``: "password", "token" or "sso"; ``tried``: a username, a token's
    first characters or what failed in a single sign-on, never a secret) and write the window's
    audit rows. Returns the count."""
    now = time.time() if now is None else now
    number, _ = _window(now)
    key = _key(number, address)
    try:
        with get_redis().pipeline() as pipe:
            for counted in (key, f"{key}:{kind}"):
                pipe.incr(counted)
                pipe.expire(counted, settings.AUTH_FAILURE_WINDOW_SECONDS + 60)
            results = pipe.execute()
        count, of_kind = int(results[0]), int(results[2])
    except redis.RedisError as exc:
        _redis_failed(exc)
        count = of_kind = 1  # audit every failure, as without a throttle
    window: dict[str, Any] = {
        "window_start": int(number * settings.AUTH_FAILURE_WINDOW_SECONDS),
        "window_seconds": settings.AUTH_FAILURE_WINDOW_SECONDS,
    }
    object_type = {"password": "user", "sso": "sso"}.get(kind, "token")
    if of_kind == 1:
        audit.record(
            actor=None,
            action="auth.failed",
            object_type=object_type,
            object_name=tried[:255],
            source=address,
            after={"failures": count, **window},
        )
    elif count == settings.AUTH_FAILURE_LIMIT:
        audit.record(
            actor=None,
            action="auth.throttled",
            object_type=object_type,
            object_name=tried[:255],
            source=address,
            after={"failures": count, **window},
        )
    return count


class ThrottledModelBackend(ModelBackend):
    """Django's own backend, refusing every sign-in (dashboard and admin alike) from an address
    over the limit before any password is checked. ``PermissionDenied`` makes ``authenticate()``
    stop here, and still fire ``user_login_failed`` (which counts it)."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kw: Any
    ) -> User | None:
        if request is not None and check(audit.client_address(request)) is not None:
            raise PermissionDenied("too many failed sign-ins from this address")
        return super().authenticate(request, username=username, password=password, **kw)


def on_failed_login(sender: object, credentials: dict, request: HttpRequest | None = None, **kwargs: object) -> None:
    """A failed sign-in (Django's user_login_failed, connected in apps.py): counted against the
    client's address, and audited once per address and window with the username only, never the
    password."""
    record_failure(
        audit.client_address(request) if request is not None else audit.current_source(),
        kind="password",
        tried=str(credentials.get("username", "")),
    )
