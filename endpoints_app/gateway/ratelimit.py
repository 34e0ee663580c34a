"""AI-gateway rate limits: calls and tokens per minute, per endpoint, user or group.

Counted in Redis so every web process (and every machine running one) shares the same budget.
Each limit that applies to a request is one counter per one-minute window
(``mf:rl:<endpoint id>:<scope>:<calls|tokens>:<window>``):

1. Before the request, one Lua script checks every applicable call counter against its limit
   and every token counter against its limit and, only if all pass, increments the call
   counters: checking and counting are one atomic step, so two processes can never both take the
   last call.
2. Token counts are known only after the provider answers; they are added then, so a token limit
   blocks the requests that come after the budget is spent (Databricks behaves the same way).

A refused request gets 429 ``REQUEST_LIMIT_EXCEEDED`` with ``Retry-After`` = the seconds left in
the window. Who a limit applies to (reference §2.9, ``AiGatewayRateLimit.key``):

- ``endpoint``: everyone together;
- ``user``: with ``principal``, that user alone; without, each user separately;
- ``user_group``: with ``principal``, the members of that group together; without, each group the
  caller belongs to (a user in several groups must fit in each).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

WINDOW_SECONDS = 60
KEYS = ("endpoint", "user", "user_group")

# KEYS: the call counters (ARGV[1] of them), then the token counters.
# ARGV: number of call counters, window ms, then one limit per key.
_SCRIPT = """
local calls = tonumber(ARGV[1])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + i])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if (i <= calls and used + 1 > limit) or (i > calls and used >= limit) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then ttl = tonumber(ARGV[2]) end
    return {i, ttl}
  end
end
for i = 1, calls do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return {0, 0}
"""


@dataclass(frozen=True)
class Limit:
    key: str  # endpoint | user | user_group
    principal: str | None
    calls: int | None
    tokens: int | None

    def describe(self) -> str:
        who = {"endpoint": "the endpoint", "user": "user", "user_group": "group"}[self.key]
        if self.key != "endpoint":
            who = f"{who} '{self.principal}'" if self.principal else f"each {who}"
        return who


@dataclass(frozen=True)
class Counter:
    scope: str  # what the counter counts for: "endpoint", "user:<name>", "group:<name>"
    limit: Limit


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse(rate_limits: list[dict[str, Any]] | None) -> tuple[Limit, ...]:
    """Stored (validated) ``ai_gateway.rate_limits`` → Limits."""
    return tuple(
        Limit(
            key=item.get("key") or "endpoint",
            principal=item.get("principal") or None,
            calls=item.get("calls"),
            tokens=item.get("tokens"),
        )
        for item in rate_limits or ()
    )


def counters_for(limits: tuple[Limit, ...], *, user_name: str, groups: frozenset[str]) -> list[Counter]:
    """The counters a caller's request counts against."""
    out = []
    for limit in limits:
        if limit.key == "endpoint":
            out.append(Counter("endpoint", limit))
        elif limit.key == "user":
            if limit.principal is None or limit.principal == user_name:
                out.append(Counter(f"user:{user_name}", limit))
        elif limit.key == "user_group":
            if limit.principal is not None:
                if limit.principal in groups:
                    out.append(Counter(f"group:{limit.principal}", limit))
            else:
                out.extend(Counter(f"group:{g}", limit) for g in sorted(groups))
    return out


def _key(endpoint_id: str, counter: Counter, kind: str, window: int) -> str:
    return f"mf:rl:{endpoint_id}:{counter.scope}:{kind}:{window}"


class RateLimiter:
    """One per gateway process; holds an asyncio Redis client per event loop."""

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._clients: dict[int, tuple[aioredis.Redis, Any]] = {}

    def _client(self) -> tuple[aioredis.Redis, Any]:
        loop = id(asyncio.get_running_loop())
        entry = self._clients.get(loop)
        if entry is None:
            client = aioredis.Redis.from_url(self._url, socket_timeout=2.0, socket_connect_timeout=2.0)
            entry = (client, client.register_script(_SCRIPT))
            self._clients[loop] = entry
        return entry

    async def acquire(self, endpoint_id: str, counters: list[Counter], *, now: float | None = None) -> None:
        """Count one call against every counter, or raise RateLimited (and count nothing)."""
        if not counters:
            return
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        call_counters = [c for c in counters if c.limit.calls is not None]
        token_counters = [c for c in counters if c.limit.tokens is not None]
        keys = [_key(endpoint_id, c, "calls", window) for c in call_counters]
        keys += [_key(endpoint_id, c, "tokens", window) for c in token_counters]
        limits = [c.limit.calls for c in call_counters] + [c.limit.tokens for c in token_counters]
        _, script = self._client()
        index, ttl_ms = await script(keys=keys, args=[len(call_counters), WINDOW_SECONDS * 1000, *limits])
        if index:
            counter = (call_counters + token_counters)[index - 1]
            kind = "calls" if index <= len(call_counters) else "tokens"
            amount = counter.limit.calls if kind == "calls" else counter.limit.tokens
            retry_after = max(1, math.ceil(int(ttl_ms) / 1000))
            raise RateLimited(
                f"Rate limit exceeded: {amount} {kind} per minute for {counter.limit.describe()}. "
                f"Retry in {retry_after} s.",
                retry_after,
            )

    async def add_tokens(self, endpoint_id: str, counters: list[Counter], tokens: int, *, now: float | None = None):
        """After the answer: add the tokens it used to the token counters."""
        token_counters = [c for c in counters if c.limit.tokens is not None]
        if not token_counters or tokens <= 0:
            return
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        client, _ = self._client()
        async with client.pipeline(transaction=False) as pipe:
            for counter in token_counters:
                key = _key(endpoint_id, counter, "tokens", window)
                pipe.incrby(key, tokens)
                pipe.expire(key, WINDOW_SECONDS * 2)
            await pipe.execute()


def validate(rate_limits: Any, field_name: str = "ai_gateway.rate_limits") -> list[dict[str, Any]]:
    """The rate limits as stored, or a ValueError naming the bad field."""
    if rate_limits is None:
        return []
    if not isinstance(rate_limits, list):
        raise ValueError(f"{field_name} must be a list")
    out = []
    for index, item in enumerate(rate_limits):
        where = f"{field_name}[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        unknown = set(item) - {"calls", "tokens", "key", "principal", "renewal_period"}
        if unknown:
            raise ValueError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        if item.get("renewal_period") != "minute":
            raise ValueError(f"{where}.renewal_period is required and must be 'minute'")
        key = item.get("key") or "endpoint"
        if key == "service_principal":
            raise ValueError(f"{where}.key: Modelfleet has no service principals; use user or user_group")
        if key not in KEYS:
            raise ValueError(f"{where}.key must be one of {', '.join(KEYS)}")
        stored: dict[str, Any] = {"renewal_period": "minute", "key": key}
        for amount in ("calls", "tokens"):
            value = item.get(amount)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}.{amount} must be a whole number of at least 0")
            stored[amount] = value
        if "calls" not in stored and "tokens" not in stored:
            raise ValueError(f"{where} needs calls or tokens")
        principal = item.get("principal")
        if principal is not None:
            if key == "endpoint":
                raise ValueError(f"{where}.principal does not apply to key 'endpoint'")
            if not isinstance(principal, str) or not principal:
                raise ValueError(f"{where}.principal must be a user or group name")
            stored["principal"] = principal
        out.append(stored)
    return out
