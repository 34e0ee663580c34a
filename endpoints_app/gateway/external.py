"""Queries to external models: one OpenAI-shaped request format in, the provider's wire format out.

The steps of one query (``ExternalModels.query``):

1. check the OpenAI-shaped body for the endpoint's task (reference §4.2) → 400 if it does not fit;
2. the provider module builds its own HTTP request (URL, auth header from the resolved secret, or
   a signature, or an access token its ``sign_in`` got for the key; translated body) → 400 if the
   request cannot be translated, 501 if the provider's translation is not written yet;
3. send it with one shared ``httpx.AsyncClient`` (pooled keep-alive connections, TLS) that
   connects only where the egress policy allows (``endpoints_app.egress``: the address is checked
   and pinned at each connection, no redirects) → 400 naming the rule where it refuses;
4. a provider error becomes a clear error of ours: 401/403 → 502 saying the provider refused the
   configured key, 429 → 429 ``REQUEST_LIMIT_EXCEEDED`` with the provider's ``Retry-After``, other
   4xx → 400 with the provider's message, 503/529 → 503, other 5xx → 502, timeouts → 504;
5. the answer is translated back to OpenAI's shape (or, with ``stream: true``, the provider's
   server-sent events become OpenAI chunks, then ``data: [DONE]``), with its token usage.

Only what is in the provider's own protocol reaches the caller: an answer that is not (an HTML
page, a body that is not JSON, JSON without the provider's shape, a stream that is not
server-sent events) becomes a 502 that quotes none of it, and of an error only the message field
of the provider's error shape is relayed (truncated). A misdirected URL (an internal service that
the policy was told to allow, say) thus cannot be read through a query.

Why not the official ``openai``/``anthropic`` SDKs here: the gateway is a translating proxy. The
SDKs would parse every answer into typed models and serialise it again (dropping or reshaping
fields the caller should get verbatim), retry on their own schedule (we must pass a 429's
``Retry-After`` to the caller instead), and wrap errors so the provider's status and body are one
step removed; Azure, another Databricks workspace and custom providers would still need the direct
path. One small HTTP client with a module per provider keeps every request and answer visible.
Nothing here logs a header, a credential or a request body; provider messages are scrubbed of the
credentials before they are shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings

from endpoints_app import egress
from endpoints_app.gateway.providers import PROVIDERS, Provider
from endpoints_app.gateway.providers.base import (
    NotTranslated,
    RequestRejected,
    SignInFailed,
    StreamDecoder,
    StreamFailed,
    Usage,
    check_openai_request,
    sse,
    usage_of,
)
from endpoints_app.gateway.routing import EntityRoute, ExternalTarget

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 200
MAX_ERROR_TEXT = 500


class ExternalError(Exception):
    """An answer to the caller as ``{"error_code", "message"}`` (the gateway renders it)."""

    def __init__(self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message
        self.headers = headers or {}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    usage: Usage | None = None


@dataclass
class StreamAnswer:
    """A streamed answer: ``chunks`` yields server-sent events; ``decoder.usage`` holds the token
    counts once the stream is over."""

    headers: dict[str, str]
    chunks: AsyncIterator[bytes]
    decoder: StreamDecoder = field(repr=False)


def scrub(text: str, credentials: dict[str, str]) -> str:
    """The text with every credential value replaced by ``***`` (providers may quote the key)."""
    for value in credentials.values():
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class ExternalModels:
    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        # One client per event loop: its pooled connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = egress.client(
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS // 4)
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except RuntimeError:  # its loop is gone already
                pass
            self._client = None

    async def query(self, *, endpoint_name: str, entity: EntityRoute, body: Any) -> Answer | StreamAnswer:
        """Answer one OpenAI-shaped request (``body``, parsed JSON) with the entity's external model."""
        target = entity.external
        assert target is not None
        provider = PROVIDERS[target.provider]
        try:
            checked = check_openai_request(target.task, body)
        except RequestRejected as exc:
            raise ExternalError(400, "INVALID_PARAMETER_VALUE", f"Invalid {target.task} request: {exc}") from None
        if not provider.translated:
            raise ExternalError(
                501,
                "NOT_IMPLEMENTED",
                f"Served model '{entity.name}' of endpoint '{endpoint_name}' uses provider '{provider.name}', "
                "whose queries are not supported by this server yet (its config is stored; supported providers: "
                f"{', '.join(sorted(p.name for p in PROVIDERS.values() if p.translated))})",
            )
        if target.credential_error:
            raise ExternalError(
                500,
                "INTERNAL_ERROR",
                f"The credentials of served model '{entity.name}' cannot be read: {target.credential_error}. "
                "An endpoint manager must restore the secret or update the endpoint's config",
            )
        base_urls = getattr(settings, "PROVIDER_BASE_URLS", None) or {}
        base_url = base_urls.get(provider.name) or provider.default_base_url
        timeout = httpx.Timeout(settings.GATEWAY_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        client = self._http()
        try:
            credentials = await provider.sign_in(
                http=client, config=target.config, credentials=target.credentials, timeout=timeout, base_urls=base_urls
            )
        except SignInFailed as exc:
            raise ExternalError(
                exc.status, exc.error_code, f"Served model '{entity.name}': {exc}", exc.headers
            ) from None
        except httpx.TimeoutException:
            raise self._timeout(provider, entity) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(provider, entity, exc) from None
        except egress.EgressRefused as exc:
            raise self._refused(provider, entity, exc) from None
        try:
            request = provider.build_request(
                task=target.task,
                model=target.model,
                config=target.config,
                credentials=credentials,
                body=checked,
                base_url=base_url,
            )
        except RequestRejected as exc:
            raise ExternalError(
                400, "INVALID_PARAMETER_VALUE", f"Cannot send this request to {provider.name}: {exc}"
            ) from None
        except NotTranslated as exc:
            raise ExternalError(501, "NOT_IMPLEMENTED", f"Served model '{entity.name}': {exc}") from None
        headers = {"served-model-name": entity.name}
        if request.stream:
            return await self._stream(provider, target, entity, client, request, timeout, checked, headers, credentials)
        try:
            response = await client.post(request.url, headers=request.headers, timeout=timeout, **request.body())
        except httpx.TimeoutException:
            raise self._timeout(provider, entity) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(provider, entity, exc) from None
        except egress.EgressRefused as exc:
            raise self._refused(provider, entity, exc) from None
        if response.status_code >= 300:
            raise self._provider_error(
                provider, target, entity, response.status_code, response.content, response.headers, credentials
            )
        try:
            answer = provider.parse_response(task=target.task, model=target.model, data=response.json())
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:  # nested past recursion
            raise self._not_protocol(provider, entity, type(exc).__name__) from None
        return Answer(
            200,
            {"content-type": "application/json", **headers},
            json.dumps(answer, separators=(",", ":")).encode(),
            usage_of(answer),
        )

    async def _stream(
        self,
        provider: Provider,
        target: ExternalTarget,
        entity: EntityRoute,
        client: httpx.AsyncClient,
        request: Any,
        timeout: httpx.Timeout,
        body: dict[str, Any],
        headers: dict[str, str],
        credentials: dict[str, str],
    ) -> StreamAnswer:
        outgoing = client.build_request("POST", request.url, headers=request.headers, timeout=timeout, **request.body())
        try:
            response = await client.send(outgoing, stream=True)
        except httpx.TimeoutException:
            raise self._timeout(provider, entity) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(provider, entity, exc) from None
        except egress.EgressRefused as exc:
            raise self._refused(provider, entity, exc) from None
        if response.status_code >= 300:
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            raise self._provider_error(
                provider, target, entity, response.status_code, content, response.headers, credentials
            )
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if provider.stream_format == "sse" and kind != "text/event-stream":
            await response.aclose()
            raise self._not_protocol(provider, entity, f"a stream of {kind or 'no content type'}")
        decoder = provider.stream_decoder(task=target.task, model=target.model, body=body)
        return StreamAnswer(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache", **headers},
            chunks=self._relay(provider, credentials, response, decoder),
            decoder=decoder,
        )

    async def _relay(
        self, provider: Provider, credentials: dict[str, str], response: httpx.Response, decoder: StreamDecoder
    ) -> AsyncIterator[bytes]:
        """The provider's events as OpenAI chunks; an error after the first byte becomes a last
        ``data: {"error_code", "message"}`` event (the status line is sent already)."""
        try:
            events = (
                sse_events(response.aiter_lines())
                if provider.stream_format == "sse"
                else provider.stream_events(response.aiter_bytes())
            )
            async for event, data in events:
                try:
                    chunks = decoder.feed(event, data)
                except StreamFailed as exc:
                    message = scrub(str(exc), credentials)[:MAX_ERROR_TEXT]
                    yield sse({"error_code": "BAD_GATEWAY", "message": f"Provider '{provider.name}' failed: {message}"})
                    return
                for chunk in chunks:
                    yield sse(chunk)
                if decoder.done:
                    break
            if decoder.done:
                yield sse("[DONE]")
            else:
                yield sse(
                    {
                        "error_code": "BAD_GATEWAY",
                        "message": f"Provider '{provider.name}' ended its stream before the answer was complete",
                    }
                )
        except httpx.TimeoutException:
            yield sse(
                {
                    "error_code": "DEADLINE_EXCEEDED",
                    "message": f"Provider '{provider.name}' stopped sending within {settings.GATEWAY_TIMEOUT_SECONDS:g} s",
                }
            )
        except httpx.HTTPError as exc:
            yield sse(
                {
                    "error_code": "BAD_GATEWAY",
                    "message": f"The stream from '{provider.name}' broke off: {type(exc).__name__}",
                }
            )
        finally:
            await response.aclose()

    # --- errors ---------------------------------------------------------------------------------

    @staticmethod
    def _refused(provider: Provider, entity: EntityRoute, exc: egress.EgressRefused) -> ExternalError:
        """The policy refused the address the provider's URL leads to now (it was allowed when the
        config was saved: the name resolves elsewhere now, or the admin narrowed the policy)."""
        log.warning("egress policy refused a connection of %s for %s: %s", provider.name, entity.name, exc.rule)
        return ExternalError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"Served model '{entity.name}' cannot reach provider '{provider.name}': {exc}",
        )

    @staticmethod
    def _not_protocol(provider: Provider, entity: EntityRoute, what: str) -> ExternalError:
        """An answer outside the provider's protocol: nothing of it is quoted (it may be an internal
        service's page that a misdirected URL reached)."""
        log.warning("provider %s sent %s an answer outside its protocol (%s)", provider.name, entity.name, what)
        return ExternalError(
            502,
            "BAD_GATEWAY",
            f"Provider '{provider.name}' sent served model '{entity.name}' an answer that is not in its API's "
            "format; check the provider URL of the endpoint's config",
        )

    @staticmethod
    def _timeout(provider: Provider, entity: EntityRoute) -> ExternalError:
        return ExternalError(
            504,
            "DEADLINE_EXCEEDED",
            f"Provider '{provider.name}' did not answer served model '{entity.name}' within "
            f"{settings.GATEWAY_TIMEOUT_SECONDS:g} seconds",
        )

    @staticmethod
    def _unreachable(provider: Provider, entity: EntityRoute, exc: Exception) -> ExternalError:
        log.warning("cannot reach provider %s for %s: %s", provider.name, entity.name, type(exc).__name__)
        return ExternalError(
            502,
            "BAD_GATEWAY",
            f"Cannot reach provider '{provider.name}' for served model '{entity.name}': {type(exc).__name__}",
        )

    @staticmethod
    def _provider_error(
        provider: Provider,
        target: ExternalTarget,
        entity: EntityRoute,
        status: int,
        content: bytes,
        response_headers: httpx.Headers,
        credentials: dict[str, str],
    ) -> ExternalError:
        """``credentials`` are the signed-in ones (the configured secrets and any access token)."""
        try:
            data = json.loads(content)
            detail = provider.error_message(data)
            status = provider.error_status(status, data)
        except (ValueError, RecursionError):
            detail = ""  # not the provider's error shape: quote none of it (module docstring)
        detail = scrub(detail, credentials)[:MAX_ERROR_TEXT]
        said = f": {detail}" if detail else ""
        name = provider.name
        log.info("provider %s answered %s for %s", name, status, entity.name)
        if status in (401, 403):
            provider.forget_sign_in(credentials)  # a revoked access token is not reused
            # The provider's own message is left out: it may quote part of the key.
            return ExternalError(
                502,
                "BAD_GATEWAY",
                f"Provider '{name}' refused the credentials configured for served model '{entity.name}' "
                f"(HTTP {status}); an endpoint manager must update the key or its secret",
            )
        retry_after = response_headers.get("retry-after")
        extra = {"retry-after": retry_after} if retry_after else {}
        if status == 429:
            return ExternalError(
                429, "REQUEST_LIMIT_EXCEEDED", f"Provider '{name}' is rate limiting requests{said}", extra
            )
        if status in (408, 504):
            return ExternalError(504, "DEADLINE_EXCEEDED", f"Provider '{name}' timed out (HTTP {status}){said}")
        if status == 404:
            return ExternalError(
                502,
                "BAD_GATEWAY",
                f"Provider '{name}' does not know model '{target.model}' or its API path (HTTP 404){said}",
            )
        if 400 <= status < 500:
            return ExternalError(
                400, "INVALID_PARAMETER_VALUE", f"Provider '{name}' rejected the request (HTTP {status}){said}"
            )
        if status in (503, 529):
            return ExternalError(
                503, "TEMPORARILY_UNAVAILABLE", f"Provider '{name}' is overloaded (HTTP {status}){said}", extra
            )
        return ExternalError(502, "BAD_GATEWAY", f"Provider '{name}' failed (HTTP {status}){said}")


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """``(event name, data)`` of each server-sent event; data lines are joined by newlines."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            continue  # a comment / keep-alive
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)
