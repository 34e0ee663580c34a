"""The gateway's ASGI app.

The flow of one query: token → user (cached) → route table (cached for a second) → served entity
by the route weights → the ready replica with the fewest in-flight requests → forward → answer
with the replica's body and the ``served-model-name`` header. A replica that refuses the
connection is retried once on another ready replica.

An endpoint's ``ai_gateway`` settings apply around that (``RouteTable.policy``): rate limits are
taken from shared Redis counters before anything else (429 ``REQUEST_LIMIT_EXCEEDED`` with
``Retry-After``); input guardrails check (or mask) the request and output guardrails the answer;
with fallbacks on, an external model's 429 or 5xx moves the query to the endpoint's other served
entities in their listed order; usage tracking records requests and tokens per caller.

An external model's entity is answered by its provider instead (``gateway.external``): the
OpenAI-shaped request is translated to the provider's wire format and back, streamed as
server-sent events with ``stream: true`` (a client that hangs up mid-stream closes the provider's
stream too), and its token usage is counted. The OpenAI client's
routes (``/serving-endpoints/chat/completions``, ``/completions``, ``/embeddings``,
``/responses``) pick the endpoint by the body's ``model``; an external chat model answers the
Responses API through a translation (``gateway.responses_api``).

A custom model takes the OpenAI client's routes too (``gateway.custom_models``: MLflow's chat
models and agents), and a body with ``"stream": true`` gets the replica's server-sent events
relayed as they come (the model's ``predict_stream``; ``UpstreamPool.stream``), the replica
counted busy until the stream ends and its connection closed when the client hangs up.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import close_old_connections

from endpoints_app import access, access_generation, auth_throttle
from endpoints_app.auth_header import token_from_header
from endpoints_app.backends import get_backend
from endpoints_app.errors import DomainError
from endpoints_app.gateway import custom_models, guardrails, jsonbody, ratelimit, responses_api, session
from endpoints_app.gateway.custom_models import RESPONSES
from endpoints_app.gateway.external import Answer, ExternalError, ExternalModels, StreamAnswer
from endpoints_app.gateway.lru import LRU
from endpoints_app.gateway.metrics import GatewayMetrics
from endpoints_app.gateway.payloads import MAX_PAYLOAD_BYTES, PayloadLogger
from endpoints_app.gateway.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, StreamDecoder, Usage, sse
from endpoints_app.gateway.routing import EntityRoute, GatewayPolicy, RouteTable, load_route_table
from endpoints_app.gateway.shadow import MirrorJob, ShadowMirror
from endpoints_app.gateway.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamStream,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from endpoints_app.gateway.usage import recorder as usage_recorder
from endpoints_app.models import Endpoint, PermissionLevel
from endpoints_app.runtime.credentials import ReplicaTarget
from endpoints_app.services.tokens import authenticate_credential
from endpoints_app.validation import MAX_NAME_LENGTH, NAME_RE

log = logging.getLogger(__name__)

PREFIX = "/serving-endpoints/"
# The OpenAI client's paths below base_url=<host>/serving-endpoints, by the task they ask for.
OPENAI_ROUTES = {
    "chat/completions": CHAT,
    "completions": COMPLETIONS,
    "embeddings": EMBEDDINGS,
    "responses": RESPONSES,
}
# Every cache keyed by what a caller sends is bounded (gateway.lru): a flood of made-up names or
# tokens churns the least recently used entries instead of growing the process.
ROUTE_TABLE_CACHE_SIZE = 2048
TOKEN_CACHE_SIZE = 10_000
LEVEL_CACHE_SIZE = 50_000
IDENTITY_CACHE_SIZE = 10_000
# Access tokens are 43 characters (models.tokens); a longer one is refused before the token cache.
MAX_TOKEN_LENGTH = 256
# A backstop only: a change of rights empties these caches at once (access_generation); this
# bounds how long one lives if the change could not be announced (Redis down at commit). A token
# that expires sooner is cached only until it expires.
TOKEN_TTL_SECONDS = 5.0
NOT_READY_RECHECK_SECONDS = 0.1
# How long past its TTL a route table may still answer while its reload runs. Below the agent's
# drain grace past the TTL (1 s): a replica being stopped is out of every table before it stops.
STALE_GRACE_SECONDS = 0.5
WAKE_POLL_SECONDS = 0.05

Send = Any
Receive = Any


class GatewayError(Exception):
    def __init__(self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message
        self.headers = headers or {}


def _load_table(name: str) -> RouteTable:
    close_old_connections()
    try:
        return load_route_table(name)
    finally:
        close_old_connections()


def _query_level(user_id: int, endpoint_id: str) -> str | None:
    close_old_connections()
    try:
        user = get_user_model().objects.filter(pk=user_id).first()
        endpoint = Endpoint.objects.filter(id=endpoint_id).first()
        if user is None or endpoint is None:
            return None
        return access.endpoint_level(user, endpoint)
    finally:
        close_old_connections()


def _identity(user_id: int) -> tuple[str, frozenset[str]]:
    """The user name and group names that rate limits and usage records are keyed by."""
    close_old_connections()
    try:
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None:
            return "", frozenset()
        return user.get_username(), frozenset(user.groups.values_list("name", flat=True))
    finally:
        close_old_connections()


def _auth(raw: str) -> tuple[tuple[int, str | None] | None, int | None]:
    """The token's user and the one endpoint it may query if it is a data-plane token (None: not a
    live token), and when the token expires (Unix seconds; None: never)."""
    close_old_connections()
    try:
        credential = authenticate_credential(raw)
        if credential is None:
            return None, None
        return (credential.user.pk, credential.endpoint_id), credential.expires_at
    finally:
        close_old_connections()


@dataclass
class _Call:
    """What one query resolved to, for metrics and payload logging after it is answered."""

    table: RouteTable | None = None
    entity: str | None = None
    body: bytes = b""
    # The body as JSON, for external models (parsed once).
    json: Any = None
    # Tokens of an external model's answer.
    usage: Usage | None = None
    # Who asked, and the rate-limit counters the query counts against (AI-gateway settings).
    user_name: str = ""
    counters: list[ratelimit.Counter] = field(default_factory=list)


class Gateway:
    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.payloads = PayloadLogger()
        self.shadow = ShadowMirror(
            self.metrics,
            queue_size=settings.GATEWAY_SHADOW_QUEUE_SIZE,
            queue_bytes=settings.GATEWAY_SHADOW_QUEUE_BYTES,
            concurrency=settings.GATEWAY_SHADOW_CONCURRENCY,
            timeout=settings.GATEWAY_TIMEOUT_SECONDS,
        )
        self._tables: LRU[str, tuple[float, RouteTable]] = LRU(ROUTE_TABLE_CACHE_SIZE)
        self._tokens: LRU[str, tuple[float, tuple[int, str | None] | None]] = LRU(TOKEN_CACHE_SIZE)
        self._levels: LRU[tuple[int, str], tuple[float, str | None]] = LRU(LEVEL_CACHE_SIZE)
        self._identities: LRU[int, tuple[float, str, frozenset[str]]] = LRU(IDENTITY_CACHE_SIZE)
        # Queries this process is answering now, and those held for a wake-up (both capped).
        self._active = 0
        self._wake_waiters = 0
        # A grant, revoke or deactivation anywhere empties the caches above (and the route tables,
        # which hold resolved credentials) in every process within a second: access_generation.
        self.access = access_generation.Watcher(settings.REDIS_URL)
        self.access.on_change(self._drop_access_caches)
        self.limiter = ratelimit.RateLimiter(settings.REDIS_URL)
        self._background: set[asyncio.Future[None]] = set()
        self._in_flight: defaultdict[ReplicaTarget, int] = defaultdict(int)
        self.upstream = UpstreamPool()
        self.external = ExternalModels()
        self._rng = random.Random()
        self._waking: dict[int, asyncio.Future[EntityRoute]] = {}
        self._ttl = settings.GATEWAY_ROUTE_TTL_SECONDS
        self._loading: dict[str, asyncio.Future[RouteTable]] = {}
        self.route_table_loads = 0  # how many times a route table was read from the database

    def _drop_access_caches(self) -> None:
        self._tokens.clear()
        self._identities.clear()
        self._levels.clear()
        self._tables.clear()

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PREFIX)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.shadow.stop)  # the worker sends and records what it holds
        self.metrics.stop()
        self.payloads.stop()
        await self.upstream.aclose()
        await self.external.aclose()
        guardrails.shutdown_workers()

    # --- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        """Answer one query, unless this process already answers ``GATEWAY_MAX_INFLIGHT`` (429):
        each query holds its body, and its wait for a replica or a provider, until it is answered."""
        if self._active >= settings.GATEWAY_MAX_INFLIGHT:
            error = GatewayError(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                f"The gateway is answering {settings.GATEWAY_MAX_INFLIGHT} queries already; retry shortly",
                {"retry-after": "1"},
            )
            await _send_error(send, error)
            return
        self._active += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self._active -= 1

    async def _serve(self, scope: dict, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        call = _Call()
        try:
            result = await self._handle(scope, receive, call)
        except GatewayError as err:
            result = (
                err.status,
                {"content-type": "application/json", **err.headers},
                json.dumps({"error_code": err.error_code, "message": err.message}).encode(),
            )
        if isinstance(result, StreamAnswer):
            await self._send_stream(result, receive, send, call, started)
            return
        status, headers, body = result
        self._record(call, status, started, body)
        headers["content-length"] = str(len(body))  # not chunked: one write, and simpler for clients
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, call: _Call, status: int, started: float, response_body: bytes) -> None:
        """Metrics (and tokens) of an answered query, and its payload when inference tables are on."""
        if call.table is None or not call.table.endpoint_id:
            return
        latency_ms = (time.perf_counter() - started) * 1000
        self.metrics.observe(call.table.endpoint_id, call.entity, status, latency_ms)
        if call.usage is not None:
            self.metrics.observe_tokens(
                call.table.endpoint_id, call.entity, call.usage.prompt_tokens, call.usage.completion_tokens
            )
        policy = call.table.policy
        if policy is not None and call.entity is not None:
            prompt = call.usage.prompt_tokens if call.usage else 0
            completion = call.usage.completion_tokens if call.usage else 0
            if policy.usage_tracking:
                usage_recorder.observe(
                    endpoint_id=call.table.endpoint_id,
                    user_name=call.user_name,
                    served_entity=call.entity,
                    input_tokens=prompt,
                    output_tokens=completion,
                )
            if call.counters and prompt + completion:
                self._in_background(self.limiter.add_tokens(call.table.endpoint_id, call.counters, prompt + completion))
        if call.table.payload_sample_rate is not None:
            self.payloads.maybe_log(
                table=call.table,
                served_entity_name=call.entity or "",
                status=status,
                latency_ms=latency_ms,
                request_body=call.body,
                response_body=response_body,
                client_request_id="",
            )

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    async def _send_stream(
        self, answer: StreamAnswer, receive: Receive, send: Send, call: _Call, started: float
    ) -> None:
        """Relay server-sent events as they come (chunked); count and log once the stream is over.

        A client that goes away mid-stream must not keep the provider generating (and billing) to
        the end: the relay runs as a task beside one that waits for ``http.disconnect`` (uvicorn's
        ``send`` just drops what a closed connection cannot take, so only ``receive`` tells), and
        whichever ends first ends the other. Cancelling the relay closes the provider's response,
        and with it the connection the provider streams into; what was sent is still counted.
        """
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items()],
            }
        )
        sent = bytearray()
        relay = asyncio.ensure_future(_relay_stream(answer.chunks, send, sent))
        gone = asyncio.ensure_future(_client_gone(receive))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            relay.cancel()
            gone.cancel()
            await asyncio.gather(relay, gone, return_exceptions=True)
            await answer.chunks.aclose()  # type: ignore[attr-defined]  # closes the provider's stream
            # Counted before the stream ends, so a client that read it all sees its tokens counted.
            call.usage = answer.decoder.usage
            self._record(call, 200, started, bytes(sent))
        if relay.cancelled() or not relay.result():  # result(): the relay's own error, re-raised
            log.info("%s: the client went away mid-stream; closed the provider's stream", call.entity)
            return
        await send({"type": "http.response.body", "body": b""})

    async def _handle(
        self, scope: dict, receive: Receive, call: _Call
    ) -> tuple[int, dict[str, str], bytes] | StreamAnswer:
        endpoint_name, served_name, openai_task = self._parse_path(scope["path"])
        if scope["method"] != "POST":
            raise GatewayError(405, "METHOD_NOT_ALLOWED", "Query an endpoint with POST")
        headers = _query_headers(scope["headers"])
        if self.access.due():  # rights changed elsewhere: drop what is cached (access_generation)
            await self.access.refresh()
        token_endpoint: str | None = None  # a data-plane token's one endpoint
        if "authorization" not in headers and session.has_session_cookie(headers):
            user_id = await self._authenticate_session(scope)  # the dashboard's query playground
        else:
            user_id, token_endpoint = await self._authenticate(
                headers.get("authorization"), (scope.get("client") or ("",))[0]
            )
        table = None
        if openai_task is None:
            # The name is in the path: CAN_QUERY is checked before the body is read, so a caller
            # without it cannot make the gateway hold large bodies.
            table = await self._table(endpoint_name)
            if table.exists:
                await self._authorize(user_id, table, token_endpoint)
        call.body = await self._read_body(receive)
        if table is None:  # the OpenAI client's routes name the endpoint in the body
            call.json = self._json(call.body)
            endpoint_name = self._model_of(call.json)
            table = await self._table(endpoint_name)
            if table.exists:
                await self._authorize(user_id, table, token_endpoint)
        if table.exists:
            call.table = table
        if openai_task is not None and table.exists:
            self._check_task(table, openai_task)
        responses_request = None  # the Responses API on an external chat model (gateway.responses_api)
        if openai_task == RESPONSES and table.task == CHAT:
            responses_request = call.json
            try:
                call.json = responses_api.to_chat(call.json)
            except responses_api.NotTranslatable as exc:
                raise GatewayError(400, "INVALID_PARAMETER_VALUE", f"Invalid Responses API request: {exc}") from None
        policy = table.policy if table.exists else None
        if policy is not None:
            await self._before_query(policy, table, user_id, call)
        entity = self._choose_entity(table, served_name)
        call.entity = entity.name
        if entity.external is not None:
            fallback = policy is not None and policy.fallback and served_name is None
            result = await self._query_external(table, entity, call, fallback=fallback)
        else:
            content_type = headers.get("content-type") or "application/json"
            if openai_task is not None:  # a custom model through the OpenAI client's routes
                call.body, content_type = custom_models.body_for_model(openai_task, call.json), "application/json"
            stream = await custom_models.asks_for_stream(call.body, call.json if openai_task is not None else None)
            result = await self._forward(table, entity, call.body, content_type, stream=stream)
            if table.shadows and served_name is None and not isinstance(result, StreamAnswer):
                self._mirror(table, call.body, content_type, result)
        if policy is not None and policy.output_guardrail is not None:
            result = await self._guard_output(policy.output_guardrail, result)
        if responses_request is not None:
            result = _as_response(result, responses_request)
        return result

    def _mirror(
        self, table: RouteTable, body: bytes, content_type: str, primary: tuple[int, dict[str, str], bytes]
    ) -> None:
        """Hand a copy of the query to each shadow whose share it falls in (gateway.shadow): the
        caller's answer waits for none of them, and none counts against its limits or usage."""
        for shadow in table.shadows:
            if shadow.percentage < 100 and self._rng.random() * 100 >= shadow.percentage:
                continue
            entity = table.entity(shadow.name)
            if entity is None:
                continue
            self.shadow.submit(
                MirrorJob(
                    endpoint_id=table.endpoint_id,
                    entity=shadow.name,
                    replicas=entity.replicas,
                    body=body,
                    content_type=content_type,
                    primary_status=primary[0],
                    primary_body=primary[2],
                    tolerance=shadow.tolerance,
                )
            )

    async def _before_query(self, policy: GatewayPolicy, table: RouteTable, user_id: int, call: _Call) -> None:
        """Rate limits first (a refused query costs nothing more), then the input guardrails."""
        call.user_name, groups = await self._identity(user_id)
        if policy.limits:
            call.counters = ratelimit.counters_for(policy.limits, user_name=call.user_name, groups=groups)
            try:
                await self.limiter.acquire(table.endpoint_id, call.counters)
            except ratelimit.RateLimited as exc:
                call.counters = []  # refused: nothing of it is counted
                raise GatewayError(
                    429, "REQUEST_LIMIT_EXCEEDED", str(exc), {"retry-after": str(exc.retry_after)}
                ) from None
            except Exception:  # Redis is down: serve rather than refuse everyone
                log.warning("rate limits of %s not checked: Redis unavailable", table.endpoint_name, exc_info=True)
        if policy.input_guardrail is not None:
            if call.json is None:
                try:
                    call.json = jsonbody.loads(call.body)
                except jsonbody.TooDeep as exc:
                    raise GatewayError(400, "MALFORMED_REQUEST", str(exc)) from None
                except ValueError:
                    return  # not JSON: nothing a guardrail reads (the model refuses it)
            if not isinstance(call.json, dict):
                return
            try:
                # Off the event loop for long texts: the web process keeps serving meanwhile.
                call.json, masked = await guardrails.apply_off_loop(
                    policy.input_guardrail, call.json, direction="request"
                )
            except guardrails.Blocked as exc:
                raise GatewayError(400, "INVALID_PARAMETER_VALUE", str(exc)) from None
            if masked:  # forward what the guardrail left
                call.body = json.dumps(call.json, separators=(",", ":")).encode()

    async def _identity(self, user_id: int) -> tuple[str, frozenset[str]]:
        now = time.monotonic()
        cached = self._identities.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        epoch = self.access.epoch
        name, groups = await sync_to_async(_identity, thread_sensitive=False)(user_id)
        if epoch == self.access.epoch:  # else rights changed while it loaded: it may be stale
            self._identities[user_id] = (now + TOKEN_TTL_SECONDS, name, groups)
        return name, groups

    @staticmethod
    async def _guard_output(
        rail: guardrails.Guardrail, result: tuple[int, dict[str, str], bytes] | StreamAnswer
    ) -> tuple[int, dict[str, str], bytes] | StreamAnswer:
        """Check (or mask) the answer's text; a blocked answer becomes a 400 the caller can read."""
        if isinstance(result, StreamAnswer):
            result.chunks = _guarded_stream(rail, result.chunks)
            return result
        status, headers, body = result
        if status >= 300 or "json" not in headers.get("content-type", ""):
            return result
        try:
            answer = jsonbody.loads(body)
        except jsonbody.TooDeep:  # not let through unchecked: nesting must not hide text from the guardrail
            error = {"error_code": "BAD_GATEWAY", "message": "The model's answer nests too deep to be checked"}
            return 502, {"content-type": "application/json"}, json.dumps(error).encode()
        except ValueError:
            return result
        if not isinstance(answer, dict):
            return result
        try:
            answer, _masked = await guardrails.apply_off_loop(rail, answer, direction="response")
        except guardrails.Blocked as exc:
            error = {"error_code": "INVALID_PARAMETER_VALUE", "message": str(exc)}
            return 400, {"content-type": "application/json"}, json.dumps(error).encode()
        return status, headers, json.dumps(answer, separators=(",", ":")).encode()

    @staticmethod
    def _parse_path(path: str) -> tuple[str, str | None, str | None]:
        """(endpoint name, served model name, task of an OpenAI client route)."""
        rest = path[len(PREFIX) :]
        if rest in OPENAI_ROUTES:
            return "", None, OPENAI_ROUTES[rest]
        parts = rest.split("/")
        if len(parts) == 2 and parts[1] == "invocations" and parts[0]:
            return _checked_name(parts[0], "The endpoint name"), None, None
        if len(parts) == 4 and parts[1] == "served-models" and parts[3] == "invocations" and parts[0] and parts[2]:
            return _checked_name(parts[0], "The endpoint name"), _checked_name(parts[2], "The served model name"), None
        raise GatewayError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{path}'")

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return jsonbody.loads(body)
        except jsonbody.TooDeep as exc:
            raise GatewayError(400, "MALFORMED_REQUEST", str(exc)) from None
        except ValueError:
            raise GatewayError(400, "MALFORMED_REQUEST", "The request body is not valid JSON") from None

    @staticmethod
    def _model_of(body: Any) -> str:
        """The OpenAI client names the endpoint in ``model``."""
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise GatewayError(
                400, "INVALID_PARAMETER_VALUE", "'model' is required: the name of the serving endpoint to query"
            )
        return _checked_name(model, "'model'")

    @staticmethod
    def _check_task(table: RouteTable, task: str) -> None:
        """Custom models take every route (the model answers what it cannot read with a 400);
        external models the route of their task."""
        if not table.task or (task == RESPONSES and table.task == CHAT):
            return
        if table.task != task:
            route = next(path for path, t in OPENAI_ROUTES.items() if t == table.task)
            raise GatewayError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"Endpoint '{table.endpoint_name}' serves {table.task}, not {task}; send its requests to "
                f"/serving-endpoints/{route}",
            )

    async def _query_external(
        self, table: RouteTable, entity: EntityRoute, call: _Call, *, fallback: bool = False
    ) -> tuple[int, dict[str, str], bytes] | StreamAnswer:
        """Ask the entity's provider; with fallbacks on, a 429 or 5xx moves the query to the other
        served entities in their listed order, and the last error is answered if all fail."""
        body = call.json if call.json is not None else self._json(call.body)
        candidates = [entity]
        if fallback:
            candidates += [e for e in table.entities if e is not entity and e.external is not None]
        for index, candidate in enumerate(candidates):
            call.entity = candidate.name
            try:
                answer = await self.external.query(endpoint_name=table.endpoint_name, entity=candidate, body=body)
                break
            except ExternalError as err:
                retryable = err.status == 429 or err.status >= 500
                if not retryable or index == len(candidates) - 1:
                    raise GatewayError(err.status, err.error_code, err.message, err.headers) from None
                log.info(
                    "%s: %s answered %s, falling back to %s",
                    table.endpoint_name,
                    candidate.name,
                    err.status,
                    candidates[index + 1].name,
                )
        if isinstance(answer, Answer):
            call.usage = answer.usage
            return answer.status, answer.headers, answer.body
        return answer

    @staticmethod
    async def _authenticate_session(scope: dict) -> int:
        """A same-origin call from a dashboard page: session cookie plus Django's CSRF check (gateway.session)."""
        try:
            return await sync_to_async(session.session_user, thread_sensitive=False)(scope)
        except DomainError as err:
            raise GatewayError(err.status, err.error_code, err.message) from None

    async def _authenticate(self, header: str | None, address: str = "") -> tuple[int, str | None]:
        """The token's user (and a data-plane token's endpoint). A token known good skips the throttle; any other is looked up only
        while the caller's address is under the failure limit (auth_throttle: 429 past it)."""
        raw = token_from_header(header)
        if raw is None:
            raise GatewayError(
                401,
                "UNAUTHENTICATED",
                "Missing or malformed Authorization header: use 'Bearer <token>'",
                {"www-authenticate": 'Bearer realm="modelfleet"'},
            )
        if len(raw) > MAX_TOKEN_LENGTH:  # no token is this long: refused uncached, so huge ones hold no memory
            raise GatewayError(
                401, "UNAUTHENTICATED", "Invalid access token", {"www-authenticate": 'Bearer realm="modelfleet"'}
            )
        now = time.monotonic()
        cached = self._tokens.get(raw)
        if cached is None or cached[0] <= now or cached[1] is None:
            throttle = await sync_to_async(auth_throttle.check, thread_sensitive=False)(address)
            if throttle is not None:
                raise GatewayError(
                    429, "REQUEST_LIMIT_EXCEEDED", throttle.message, {"retry-after": str(throttle.retry_after)}
                )
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            epoch = self.access.epoch
            found, expires_at = await sync_to_async(_auth, thread_sensitive=False)(raw)
            deadline = now + TOKEN_TTL_SECONDS
            if expires_at is not None:  # an expiring token is cached no longer than it lives
                deadline = min(deadline, now + (expires_at - time.time()))
            if epoch == self.access.epoch:  # else rights changed while it loaded: it may be stale
                self._tokens[raw] = (deadline, found)
        if found is None:
            await sync_to_async(auth_throttle.record_failure, thread_sensitive=False)(
                address, kind="token", tried=raw[:6] + "…"
            )
            raise GatewayError(
                401, "UNAUTHENTICATED", "Invalid access token", {"www-authenticate": 'Bearer realm="modelfleet"'}
            )
        return found

    async def _authorize(self, user_id: int, table: RouteTable, token_endpoint: str | None = None) -> None:
        """Querying needs CAN_QUERY (access.py decides; cached briefly like tokens); a data-plane
        token (``token_endpoint``) queries only the endpoint it was issued for."""
        key = (user_id, table.endpoint_id)
        now = time.monotonic()
        cached = self._levels.get(key)
        if cached is not None and cached[0] > now:
            level = cached[1]
        else:
            epoch = self.access.epoch
            level = await sync_to_async(_query_level, thread_sensitive=False)(user_id, table.endpoint_id)
            if epoch == self.access.epoch:  # else rights changed while it loaded: it may be stale
                self._levels[key] = (now + TOKEN_TTL_SECONDS, level)
        if level is None:
            raise GatewayError(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint '{table.endpoint_name}' does not exist")
        if access.RANK[level] < access.RANK[PermissionLevel.CAN_QUERY]:
            raise GatewayError(
                403,
                "PERMISSION_DENIED",
                f"Querying endpoint '{table.endpoint_name}' needs CAN_QUERY; you have {level}",
            )
        if token_endpoint is not None and token_endpoint != table.endpoint_id:
            raise GatewayError(
                403,
                "PERMISSION_DENIED",
                f"This data-plane token queries another endpoint, not '{table.endpoint_name}'",
            )

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(400, "BAD_REQUEST", "The client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > settings.MAX_QUERY_BYTES:  # http_limits refuses it first; this holds without it
                raise GatewayError(
                    413,
                    "RESOURCE_LIMIT_EXCEEDED",
                    f"The request body is larger than {settings.MAX_QUERY_BYTES} bytes, the limit for a query",
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _table(self, name: str) -> RouteTable:
        """The endpoint's route table: cached for ``GATEWAY_ROUTE_TTL_SECONDS``; a usable table a
        little older (``STALE_GRACE_SECONDS``) is still answered with while one reload runs in the
        background, so under steady traffic no query waits for the database."""
        now = time.monotonic()
        cached = self._tables.get(name)
        if cached is not None:
            loaded_at, table = cached
            age = now - loaded_at
            if any(e.replicas or e.external for e in table.entities):
                if age < self._ttl:
                    return table
                if age < self._ttl + STALE_GRACE_SECONDS:
                    self._reload(name)
                    return table
            elif age < min(self._ttl, NOT_READY_RECHECK_SECONDS):
                return table
        return await asyncio.shield(self._reload(name))

    def _reload(self, name: str) -> asyncio.Future[RouteTable]:
        """The one load of ``name``'s route table in flight, started if none is: queries that find
        the table expired together share it rather than each querying the database."""
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
            loading.add_done_callback(functools.partial(self._loaded, name))
        return loading

    async def _load(self, name: str) -> RouteTable:
        self.route_table_loads += 1
        epoch = self.access.epoch
        table = await sync_to_async(_load_table, thread_sensitive=False)(name)
        if epoch == self.access.epoch:  # else a secret changed while it loaded: its credentials may be stale
            self._tables[name] = (time.monotonic(), table)
        return table

    def _loaded(self, name: str, loading: asyncio.Future[RouteTable]) -> None:
        self._loading.pop(name, None)
        if not loading.cancelled() and loading.exception() is not None:  # retrieved: awaiters see it too
            log.warning("loading the route table of %s failed: %s", name, loading.exception())

    def _choose_entity(self, table: RouteTable, served_name: str | None) -> EntityRoute:
        if not table.exists:
            raise GatewayError(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint '{table.endpoint_name}' does not exist")
        if table.not_ready_reason:
            raise GatewayError(
                503,
                "TEMPORARILY_UNAVAILABLE",
                f"Endpoint '{table.endpoint_name}' is not ready: {table.not_ready_reason}",
                {"retry-after": "1"},
            )
        if served_name is not None:
            entity = table.entity(served_name)
            if entity is None:
                raise GatewayError(
                    404,
                    "RESOURCE_DOES_NOT_EXIST",
                    f"Served model '{served_name}' does not exist in endpoint '{table.endpoint_name}'",
                )
            return entity
        entity = table.pick_entity(self._rng)
        if entity is None:
            raise GatewayError(
                503,
                "TEMPORARILY_UNAVAILABLE",
                f"Endpoint '{table.endpoint_name}' routes no traffic: every route has traffic_percentage 0",
            )
        return entity

    async def _wake(self, table: RouteTable, entity: EntityRoute) -> EntityRoute:
        """Wake a scaled-to-zero entity (or wait for one starting) and hold the query until a
        replica is ready (bounded).

        Every query waiting for the same deployment shares one wake-up: one request to the
        backend and one route-table poll loop, however many queries arrive meanwhile. At most
        ``GATEWAY_MAX_WAKE_WAITERS`` queries are held in this process (each holds its body and a
        connection for up to ``SCALE_FROM_ZERO_WAIT_SECONDS``); past that a query gets 503 with
        Retry-After, and the wake-up it asked for still goes ahead.
        """
        key = entity.deployment_id
        assert key is not None
        waiting = self._waking.get(key)
        if waiting is None:
            waiting = asyncio.ensure_future(self._wake_and_wait(table.endpoint_name, entity, key))
            self._waking[key] = waiting
            waiting.add_done_callback(lambda f: (self._waking.pop(key, None), f.cancelled() or f.exception()))
        if self._wake_waiters >= settings.GATEWAY_MAX_WAKE_WAITERS:
            raise GatewayError(
                503,
                "TEMPORARILY_UNAVAILABLE",
                f"Served model '{entity.name}' of endpoint '{table.endpoint_name}' is starting from zero and "
                f"{settings.GATEWAY_MAX_WAKE_WAITERS} queries are waiting for wake-ups already; retry shortly",
                {"retry-after": "5"},
            )
        self._wake_waiters += 1
        try:
            return await asyncio.shield(waiting)
        finally:
            self._wake_waiters -= 1

    async def _wake_and_wait(self, endpoint_name: str, entity: EntityRoute, deployment_id: int) -> EntityRoute:
        started = time.monotonic()
        deadline = started + settings.SCALE_FROM_ZERO_WAIT_SECONDS
        await sync_to_async(_wake_deployment, thread_sensitive=False)(deployment_id)
        log.info("waking %s/%s from zero", endpoint_name, entity.name)
        while time.monotonic() < deadline:
            await asyncio.sleep(WAKE_POLL_SECONDS)
            table = await sync_to_async(_load_table, thread_sensitive=False)(endpoint_name)
            self._tables[endpoint_name] = (time.monotonic(), table)
            fresh = table.entity(entity.name)
            if fresh is not None and fresh.replicas:
                log.info("%s/%s woke up in %.2f s", endpoint_name, entity.name, time.monotonic() - started)
                return fresh
        raise GatewayError(
            503,
            "TEMPORARILY_UNAVAILABLE",
            f"Served model '{entity.name}' of endpoint '{endpoint_name}' is starting from zero and was not ready "
            f"within {settings.SCALE_FROM_ZERO_WAIT_SECONDS:g} seconds; retry shortly",
            {"retry-after": "5"},
        )

    def _pick_replica(self, entity: EntityRoute, exclude: set[ReplicaTarget]) -> ReplicaTarget | None:
        if len(entity.replicas) == 1 and not exclude:  # the common case, nothing to compare
            return entity.replicas[0]
        candidates = [r for r in entity.replicas if r not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (self._in_flight[r], self._rng.random()))

    async def _forward(
        self, table: RouteTable, entity: EntityRoute, body: bytes, content_type: str, *, stream: bool = False
    ) -> tuple[int, dict[str, str], bytes] | StreamAnswer:
        """The replica's answer; with ``stream``, a model's server-sent events are relayed as they
        come (a replica's answer that is not a stream, an error say, is answered as it is)."""
        if not entity.replicas and entity.coming_up and entity.deployment_id is not None:
            entity = await self._wake(table, entity)
        tried: set[ReplicaTarget] = set()
        for _attempt in range(2):
            replica = self._pick_replica(entity, tried)
            if replica is None:
                break
            tried.add(replica)
            self._in_flight[replica] += 1
            streaming = False
            try:
                if stream:
                    answer = await self.upstream.stream(
                        replica, "/invocations", body, content_type, timeout=settings.GATEWAY_TIMEOUT_SECONDS
                    )
                    if isinstance(answer, UpstreamStream):
                        streaming = True  # the replica stays counted busy until the stream ends
                        return StreamAnswer(
                            headers={
                                "content-type": "text/event-stream",
                                "cache-control": "no-cache",
                                "served-model-name": entity.name,
                            },
                            chunks=self._replica_events(replica, entity, answer),
                            decoder=StreamDecoder(),
                        )
                else:
                    answer = await self.upstream.post(
                        replica, "/invocations", body, content_type, timeout=settings.GATEWAY_TIMEOUT_SECONDS
                    )
                status, content_type, response_body = answer
            except UpstreamUnreachable as exc:
                # Nothing reached the model (refused, or reset before any response byte): retry once.
                log.warning("replica %s of %s failed before answering: %s", replica, entity.name, exc)
                self._tables.pop(table.endpoint_name, None)
                continue
            except UpstreamTimeout:
                raise GatewayError(
                    504,
                    "DEADLINE_EXCEEDED",
                    f"Served model '{entity.name}' did not answer within {settings.GATEWAY_TIMEOUT_SECONDS:g} seconds",
                ) from None
            except UpstreamError as exc:
                raise GatewayError(
                    502, "BAD_GATEWAY", f"Served model '{entity.name}' broke off its answer: {exc}"
                ) from None
            finally:
                if not streaming:
                    self._done_with(replica)
            headers = {"content-type": content_type, "served-model-name": entity.name}
            return status, headers, response_body
        raise GatewayError(
            503,
            "TEMPORARILY_UNAVAILABLE",
            f"Served model '{entity.name}' of endpoint '{table.endpoint_name}' has no ready replica right now",
            {"retry-after": "1"},
        )

    def _done_with(self, replica: ReplicaTarget) -> None:
        self._in_flight[replica] -= 1
        if not self._in_flight[replica]:
            del self._in_flight[replica]  # replicas come and go: keep only the busy ones

    async def _replica_events(self, replica: ReplicaTarget, entity: EntityRoute, stream: UpstreamStream) -> Any:
        """A replica's server-sent events; a stream that stalls or breaks off ends with an error
        event (the status line is sent already), as a provider's stream does (gateway.external)."""
        try:
            async for event in stream.events():
                yield event
        except UpstreamTimeout:
            yield sse(
                {
                    "error_code": "DEADLINE_EXCEEDED",
                    "message": f"Served model '{entity.name}' sent nothing more within "
                    f"{settings.GATEWAY_TIMEOUT_SECONDS:g} seconds",
                }
            )
        except UpstreamError as exc:
            yield sse(
                {"error_code": "BAD_GATEWAY", "message": f"Served model '{entity.name}' broke off its stream: {exc}"}
            )
        finally:
            await stream.aclose()
            self._done_with(replica)


# The request headers the gateway reads; the others are not decoded.
_QUERY_HEADERS = frozenset((b"authorization", b"content-type", b"cookie"))


def _query_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers a query is answered by, lower-cased names (the last one of a repeated name)."""
    headers = {}
    for name, value in raw:
        if name in _QUERY_HEADERS or name.lower() in _QUERY_HEADERS:
            headers[name.lower().decode("latin-1")] = value.decode("latin-1")
    return headers


def _checked_name(name: str, what: str) -> str:
    """A name from the path or the body, refused before any lookup if no endpoint could have it:
    so a 16 MiB ``model`` or a made-up path costs no query and no cache entry of that size."""
    if len(name) > MAX_NAME_LENGTH:
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not NAME_RE.fullmatch(name):
        raise GatewayError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"{what} '{name}' is invalid: use only alphanumeric characters, dashes and underscores",
        )
    return name


async def _send_error(send: Send, err: GatewayError) -> None:
    body = json.dumps({"error_code": err.error_code, "message": err.message}).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), **err.headers}
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _relay_stream(chunks: Any, send: Send, sent: bytearray) -> bool:
    """Send each chunk on as it comes, keeping the first ``MAX_PAYLOAD_BYTES`` in ``sent``; whether
    the stream was sent to its end (False: the server said the connection is closed)."""
    async for chunk in chunks:
        try:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:  # ASGI servers other than uvicorn may raise on a closed connection
            return False
        if len(sent) <= MAX_PAYLOAD_BYTES:
            sent += chunk
    return True


def _as_response(
    result: tuple[int, dict[str, str], bytes] | StreamAnswer, request: dict[str, Any]
) -> tuple[int, dict[str, str], bytes] | StreamAnswer:
    """A chat model's answer to a Responses API request, as a Response (or its events); errors
    are answered as they are."""
    if isinstance(result, StreamAnswer):
        result.chunks = responses_api.ResponsesStream(result.chunks, request, result.decoder).events()
        return result
    status, headers, body = result
    if status != 200:
        return result
    try:
        answer = jsonbody.loads(body)
    except ValueError:
        return result
    if not isinstance(answer, dict):
        return result
    return status, headers, json.dumps(responses_api.from_chat(answer, request), separators=(",", ":")).encode()


async def _client_gone(receive: Receive) -> None:
    """Return once the client has disconnected (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _guarded_stream(rail: guardrails.Guardrail, chunks: Any) -> Any:
    """Output guardrails over server-sent events, chunk by chunk: masked text is replaced in each
    chunk; a blocked one ends the stream with an error event. (Text split across two chunks is
    checked piece by piece: the limit of checking a stream without holding it back.)"""
    try:
        async for event in chunks:
            if not event.startswith(b"data: {"):
                yield event
                continue
            try:
                chunk = jsonbody.loads(event[len(b"data: ") :])
            except jsonbody.TooDeep:  # not let through unchecked: nesting must not hide text from the guardrail
                yield sse({"error_code": "BAD_GATEWAY", "message": "The model's answer nests too deep to be checked"})
                return
            except ValueError:
                yield event
                continue
            try:
                guardrails.apply(rail, chunk, direction="response")
            except guardrails.Blocked as exc:
                yield sse({"error_code": "INVALID_PARAMETER_VALUE", "message": str(exc)})
                return
            yield sse(chunk)
    finally:
        await chunks.aclose()


def _wake_deployment(deployment_id: int) -> None:
    close_old_connections()
    try:
        get_backend().wake(deployment_id=deployment_id)
    finally:
        close_old_connections()


async def _lifespan(receive: Receive, send: Send, gateway: Gateway) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


def mount(django_app: Any) -> Any:
    """The ASGI app: the gateway for /serving-endpoints/…, Django for everything else."""
    gateway = Gateway()

    async def application(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, gateway)
        elif scope["type"] == "http" and gateway.handles(scope["path"]):
            await gateway(scope, receive, send)
        else:
            await django_app(scope, receive, send)

    application.gateway = gateway  # type: ignore[attr-defined]  # for tests and the benchmark; a function has no such field
    return application
