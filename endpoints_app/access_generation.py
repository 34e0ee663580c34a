"""The access generation: one number in Redis that every change of rights increments, so that
every process drops what it cached about who may do what within a fraction of a second.

Why: the gateway answers a query without touching the database in the steady state, because it
caches token → user, user → name and groups, (user, endpoint) → permission level and the route
table (which holds resolved provider credentials). Without a signal, a revoke would keep working
in each process for a cache lifetime; with one, every process learns of it at once and still
spends no database query per request.

1. Writers (the services that grant, revoke, change roles or groups, revoke tokens, deactivate
   users, change secret ACLs or delete secrets) call ``bump()`` inside their transaction. The
   ``INCR`` runs on commit, so no process can see the new number and then reload the old rows.
2. Readers hold one ``Watcher`` per process. ``await watcher.refresh()`` before a cache lookup
   reads the number at most every ``CHECK_INTERVAL_SECONDS`` (one Redis ``GET`` shared by every
   request of that interval); when it changed, the watcher bumps its ``epoch`` and calls the
   registered drop callbacks. A cache fill that started in an older epoch is not stored, so a
   database read racing a change cannot put the old answer back.
3. Fail safe: when Redis cannot be read, the number is unknown, so the caches are dropped every
   interval: while Redis is down, a cached right lives at most one check interval, never longer,
   and no request waits on Redis (the check goes on in the background). When the
   ``INCR`` itself fails, the readers' own cache TTL (the gateway's ``TOKEN_TTL_SECONDS``) bounds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from django.db import transaction
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from endpoints_app.redis_client import get_redis

log = logging.getLogger(__name__)

KEY = "mf:access-generation"
# A change reaches every process within this (plus one Redis round trip).
CHECK_INTERVAL_SECONDS = 0.2
# One check never holds requests longer than this, even with Redis unreachable.
READ_TIMEOUT_SECONDS = 0.25

_UNKNOWN = object()


def bump() -> None:
    """Tell every process that rights changed, once the current transaction commits (at once outside one)."""
    transaction.on_commit(_increment)


def _increment() -> None:
    try:
        get_redis().incr(KEY)
    except redis.RedisError:
        log.warning(
            "access generation not bumped (Redis unavailable): other processes keep cached rights "
            "until their cache TTL ends",
            exc_info=True,
        )


def current() -> int:
    """The generation as Redis holds it now (0 before the first change)."""
    return int(get_redis().get(KEY) or 0)


class Watcher:
    """One per process: drops the registered caches when the access generation changes."""

    def __init__(self, redis_url: str, *, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self._url = redis_url
        self._interval = interval
        self._seen: object = _UNKNOWN
        self._checked_at = float("-inf")
        self._down = False
        # Per event loop (tests run several): the Redis client and the check in progress.
        self._clients: dict[int, aioredis.Redis] = {}
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._callbacks: list[Callable[[], None]] = []
        # Incremented at each drop; compare before storing what a slow load returned.
        self.epoch = 0

    def on_change(self, callback: Callable[[], None]) -> None:
        """``callback`` empties a cache; called on every change (and every failed check)."""
        self._callbacks.append(callback)

    def due(self) -> bool:
        """Whether ``refresh`` has anything to do now (a check is one interval old)."""
        return time.monotonic() - self._checked_at >= self._interval

    async def refresh(self) -> None:
        """Make sure the caches hold nothing older than a change committed one interval ago.

        Requests that arrive while a check is in progress wait for that one check: one Redis
        ``GET`` per interval, however many requests there are. While Redis does not answer, no
        request waits for it: the caches are dropped each interval instead, and the check runs on
        in the background until Redis answers again.
        """
        if time.monotonic() - self._checked_at < self._interval:
            return
        loop = asyncio.get_running_loop()
        task = self._pending.get(id(loop))
        if task is None:
            task = loop.create_task(self._check())
            self._pending[id(loop)] = task
            task.add_done_callback(lambda _: self._pending.pop(id(loop), None))
        if self._down:
            self._checked_at = time.monotonic()
            self.drop()
            return
        await asyncio.shield(task)  # a request that goes away does not cancel the others' check

    def drop(self) -> None:
        """Empty every registered cache now, and refuse fills that started before."""
        self.epoch += 1
        for callback in self._callbacks:
            callback()

    def _client(self) -> aioredis.Redis:
        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None:
            client = aioredis.Redis.from_url(
                self._url,
                socket_timeout=READ_TIMEOUT_SECONDS,
                socket_connect_timeout=READ_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),  # the next check is the retry
            )
            self._clients[loop] = client
        return client

    async def _check(self) -> None:
        started = time.monotonic()
        try:
            value: object = await asyncio.wait_for(self._client().get(KEY), READ_TIMEOUT_SECONDS)
        except (TimeoutError, redis.RedisError, OSError):
            if not self._down:
                log.warning(
                    "access generation unreadable (Redis unavailable): cached rights are dropped every %.1f s "
                    "until it answers",
                    self._interval,
                )
            self._down = True
            self._seen = _UNKNOWN
            self.drop()
            self._checked_at = time.monotonic()
            return
        if self._down:
            log.info("access generation readable again")
        self._down = False
        if value != self._seen:
            self._seen = value
            self.drop()
        self._checked_at = started
