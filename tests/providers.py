"""Small HTTP servers on 127.0.0.1 that speak each LLM provider's wire protocol, for tests.

Each checks what the provider documents (path, auth header, required headers, body shape) and
answers in the provider's own shapes: success, error and server-sent-event streams. They record
every request so tests can assert what the gateway sent. Nothing here leaves loopback.

- ``OpenAIServer``: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` with
  ``Authorization: Bearer``; Azure's ``/openai/deployments/<d>/...?api-version=`` with ``api-key``
  (or Bearer for Entra ID: a fixed token, or one ``EntraTokenServer`` issued); a custom
  OpenAI-compatible service with any auth header.
- ``EntraTokenServer``: Microsoft Entra ID's ``/<tenant>/oauth2/v2.0/token`` for one app
  registration's client-credentials grant; answers with AADSTS errors as Entra does.
- ``TricklingOpenAIServer``: an OpenAI stream that sends a chunk every few tenths of a second and
  records when its client closed the connection.
- ``AnthropicServer``: ``/v1/messages`` with ``x-api-key`` and ``anthropic-version``.
- ``DatabricksServer``: ``/serving-endpoints/<name>/invocations`` with Bearer.
- ``CohereServer``: ``/v2/chat`` and ``/v2/embed`` with Bearer.
- ``AI21Server``: ``/studio/v1/chat/completions`` with Bearer.
- ``BedrockServer``: Bedrock Runtime's ``/model/<id>/converse``, ``/converse-stream`` (binary event
  stream) and ``/invoke``; it verifies each request's AWS Signature V4 with the secret key.
- ``GoogleTokenServer``: an OAuth2 token endpoint that verifies a service account's RS256 JWT with
  its public key; ``VertexServer`` takes the tokens it issued (``generateContent``, ``predict``).
- ``GenerativeLanguageServer``: ``/v1beta/models/<m>:generateContent`` with ``x-goog-api-key``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import select
import socket
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlparse

from endpoints_app.egress import parse_allow_list

# --- the egress policy and DNS, for tests that talk to these servers -------------------------------


def allow_egress(settings: Any, *servers: FakeProvider) -> None:
    """Let the egress policy (which refuses loopback) reach exactly these servers' 127.0.0.1:port,
    through the pytest-django ``settings`` fixture (undone after the test)."""
    extra = parse_allow_list(",".join(f"127.0.0.1:{server.port}" for server in servers))
    settings.EGRESS_ALLOW = (*settings.EGRESS_ALLOW, *extra)


class Fakes(list):  # type: ignore[type-arg]
    """The fake providers a test started: each one appended is allowed by the egress policy
    (``allow_egress``); ``stop`` stops them all."""

    def __init__(self, settings: Any) -> None:
        super().__init__()
        self._settings = settings

    def append(self, fake: FakeProvider) -> None:
        super().append(fake)
        allow_egress(self._settings, fake)

    def extend(self, fakes: Iterable[FakeProvider]) -> None:
        for fake in fakes:
            self.append(fake)

    def __iadd__(self, fakes: Iterable[FakeProvider]) -> Fakes:  # type: ignore[override,misc]
        self.extend(fakes)
        return self

    def stop(self) -> None:
        for fake in self:
            fake.stop()


class Resolver:
    """The tests' stand-in for the system's DNS (``endpoints_app.egress.resolve_name``), so that no
    DNS query leaves loopback: ``localhost`` and the names a test adds to ``names`` answer, every
    other name is unknown. ``calls`` records each name asked, in order."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {"localhost": ["127.0.0.1", "::1"]}
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        try:
            return list(self.names[host])
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any
    raw: bytes = b""  # the body as it came
    target: str = ""  # the request line's path and query, as they came (percent-encoded)


@dataclass
class Failure:
    """The next answer is this error (in the provider's shape) instead of a success."""

    status: int
    message: str = "failure"
    headers: dict[str, str] = field(default_factory=dict)


class FakeProvider:
    """Base: a threading HTTP server; subclasses implement ``handle``."""

    def __init__(self, key: str, *, auth: str = "bearer", auth_header: str = "") -> None:
        self.key = key
        self.auth = auth  # "bearer", "api-key", "x-api-key" or "header"
        self.auth_header = auth_header.lower()
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.delay = 0.0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                parsed = urlparse(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                request = Recorded(
                    "POST",
                    parsed.path,
                    parse_qs(parsed.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    raw,
                    self.path,
                )
                provider.requests.append(request)
                if provider.delay:
                    time.sleep(provider.delay)
                provider.handle(self, request)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, status: int, message: str = "failure", headers: dict[str, str] | None = None) -> None:
        self.failures.append(Failure(status, message, headers or {}))

    # --- helpers for subclasses -----------------------------------------------------------------

    def authorized(self, request: Recorded) -> bool:
        headers = request.headers
        if self.auth == "bearer":
            return headers.get("authorization") == f"Bearer {self.key}"
        if self.auth == "api-key":
            return headers.get("api-key") == self.key
        if self.auth == "x-api-key":
            return headers.get("x-api-key") == self.key
        return headers.get(self.auth_header) == self.key

    @staticmethod
    def send_json(
        handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def send_events(handler: BaseHTTPRequestHandler, events: list[tuple[str | None, str]]) -> None:
        """A ``text/event-stream`` answer, event by event, chunked (as the providers send it)."""
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        for name, data in events:
            text = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
            payload = text.encode()
            handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            handler.wfile.flush()
            time.sleep(0.005)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        raise NotImplementedError


# --- OpenAI (also Azure OpenAI and OpenAI-compatible custom services) ---------------------------


class OpenAIServer(FakeProvider):
    """OpenAI's REST API. ``azure_deployment`` switches to Azure's paths (``api-version`` required)."""

    def __init__(
        self,
        key: str,
        *,
        auth: str = "bearer",
        auth_header: str = "",
        azure_deployment: str = "",
        tokens: EntraTokenServer | None = None,
    ) -> None:
        super().__init__(key, auth=auth, auth_header=auth_header)
        self.azure_deployment = azure_deployment
        self.tokens = tokens  # when set, only Bearer tokens it issued are accepted
        self.reply = "Hello from OpenAI"  # what chat completions answer

    def authorized(self, request: Recorded) -> bool:
        if self.tokens is None:
            return super().authorized(request)
        given = request.headers.get("authorization") or ""
        return given.startswith("Bearer ") and given.removeprefix("Bearer ") in self.tokens.issued

    def _error(self, handler: BaseHTTPRequestHandler, status: int, message: str, kind: str, headers=None) -> None:  # type: ignore[no-untyped-def]
        self.send_json(
            handler, status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, headers
        )

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        prefix = f"/openai/deployments/{self.azure_deployment}/" if self.azure_deployment else "/v1/"
        task = request.path[len(prefix) :] if request.path.startswith(prefix) else ""
        if task not in ("chat/completions", "completions", "embeddings"):
            return self._error(handler, 404, f"Unknown request URL: POST {request.path}", "invalid_request_error")
        if self.azure_deployment and not request.query.get("api-version"):
            return self._error(handler, 404, "Resource not found", "invalid_request_error")
        if not self.authorized(request):
            # Like OpenAI, the message quotes (part of) the key it was given.
            given = request.headers.get("authorization", request.headers.get("api-key", ""))
            return self._error(handler, 401, f"Incorrect API key provided: {given}.", "invalid_request_error")
        if self.failures:
            failure = self.failures.pop(0)
            kind = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(failure.status, "server_error")
            return self._error(handler, failure.status, failure.message, kind, failure.headers)
        body = request.body if isinstance(request.body, dict) else {}
        if not self.azure_deployment and not isinstance(body.get("model"), str):
            return self._error(handler, 400, "you must provide a model parameter", "invalid_request_error")
        model = body.get("model") or self.azure_deployment
        if task == "embeddings":
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(inputs, list):
                return self._error(handler, 400, "'input' is a required property", "invalid_request_error")
            return self.send_json(
                handler,
                200,
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))
                    ],
                    "model": model,
                    "usage": {"prompt_tokens": 4, "total_tokens": 4},
                },
            )
        if task == "chat/completions":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return self._error(handler, 400, "'messages' is a required property", "invalid_request_error")
            text = self.reply
        else:
            text = " and more text"
        if body.get("stream"):
            return self._stream(handler, task, model, text, body)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
            if task == "chat/completions"
            else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        )
        self.send_json(
            handler,
            200,
            {
                "id": "chatcmpl-fake1",
                "object": "chat.completion" if task == "chat/completions" else "text_completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [choice],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            },
        )

    def _stream(self, handler: BaseHTTPRequestHandler, task: str, model: str, text: str, body: dict) -> None:
        events: list[tuple[str | None, str]] = []
        for i, piece in enumerate(text.split(" ")):
            delta = {"content": ("" if i == 0 else " ") + piece}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {
                "id": "chatcmpl-fake2",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            events.append((None, json.dumps(chunk)))
        final = {
            "id": "chatcmpl-fake2",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        events.append((None, json.dumps(final)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": "chatcmpl-fake2",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            }
            events.append((None, json.dumps(usage_chunk)))
        events.append((None, "[DONE]"))
        self.send_events(handler, events)


class EntraTokenServer(FakeProvider):
    """Microsoft Entra ID's v2.0 token endpoint (``POST /<tenant>/oauth2/v2.0/token``) for one app
    registration in one tenant: a form-encoded client-credentials grant for the Cognitive Services
    scope, with the registration's client id and secret (``key``). It answers as Entra does: 400
    ``invalid_request`` (unknown tenant), ``unsupported_grant_type``, ``invalid_scope`` or
    ``unauthorized_client`` (unknown client id), 401 ``invalid_client`` (wrong secret), each with an
    ``AADSTS`` description; tokens are opaque here, valid for ``expires_in`` seconds."""

    SCOPE = "https://cognitiveservices.azure.com/.default"

    def __init__(self, tenant: str, client_id: str, client_secret: str, *, expires_in: int = 3599) -> None:
        super().__init__(client_secret, auth="form")
        self.tenant = tenant
        self.client_id = client_id
        self.expires_in = expires_in
        self.issued: list[str] = []

    def _refuse(  # type: ignore[no-untyped-def]
        self, handler: BaseHTTPRequestHandler, status: int, error: str, code: int, text: str, headers=None
    ) -> None:
        trace = (
            "\r\nTrace ID: 0a1b2c3d-0000-4000-8000-000000000000\r\nCorrelation ID: 9f8e7d6c-0000-4000-8000-000000000000"
        )
        self.send_json(
            handler,
            status,
            {
                "error": error,
                "error_description": f"AADSTS{code}: {text}{trace}\r\nTimestamp: 2025-01-01 00:00:00Z",
                "error_codes": [code],
                "timestamp": "2025-01-01 00:00:00Z",
                "trace_id": "0a1b2c3d-0000-4000-8000-000000000000",
                "correlation_id": "9f8e7d6c-0000-4000-8000-000000000000",
                "error_uri": f"https://login.microsoftonline.com/error?code={code}",
            },
            headers,
        )

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        if request.path != f"/{self.tenant}/oauth2/v2.0/token":
            tenant = request.path.strip("/").split("/")[0]
            return self._refuse(handler, 400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._refuse(handler, 400, "invalid_request", 900144, "The request body must contain grant_type.")
        form = {k: v[0] for k, v in parse_qs(request.raw.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return self._refuse(
                handler, 400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if form.get("scope") != self.SCOPE:
            return self._refuse(
                handler,
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope')} is not valid.",
            )
        if form.get("client_id") != self.client_id:
            return self._refuse(
                handler,
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the directory.",
            )
        if form.get("client_secret") != self.key:
            return self._refuse(
                handler,
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.",
            )
        if self.failures:
            failure = self.failures.pop(0)
            return self._refuse(
                handler, failure.status, "temporarily_unavailable", 50001, failure.message, failure.headers
            )
        token = f"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-fake-{len(self.issued) + 1}-{int(time.time())}"
        self.issued.append(token)
        self.send_json(
            handler,
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "ext_expires_in": self.expires_in,
                "access_token": token,
            },
        )


class TricklingOpenAIServer(OpenAIServer):
    """OpenAI's chat stream, slowly: ``chunks`` chunks, one every ``interval`` seconds. ``closed_at``
    (``time.monotonic()``) is when it saw its client close the connection, ``sent`` how many chunks
    it had written by then."""

    def __init__(self, key: str, *, chunks: int = 50, interval: float = 0.2) -> None:
        super().__init__(key)
        self.chunks, self.interval = chunks, interval
        self.sent = 0
        self.closed_at: float | None = None
        self.finished = False

    def _stream(self, handler: BaseHTTPRequestHandler, task: str, model: str, text: str, body: dict) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        connection: socket.socket = handler.connection
        for i in range(self.chunks):
            delta = {"role": "assistant", "content": "Tick"} if i == 0 else {"content": f" {i}"}
            chunk = {
                "id": "chatcmpl-trickle",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            payload = f"data: {json.dumps(chunk)}\n\n".encode()
            try:
                handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                handler.wfile.flush()
            except OSError:
                self.closed_at = time.monotonic()
                return
            self.sent += 1
            # Wait for the next tick, watching the connection: the client sends nothing more, so it
            # turns readable only when the client closes it (recv gives b"").
            readable, _, _ = select.select([connection], [], [], self.interval)
            if readable:
                try:
                    closed = connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    closed = True
                if closed:
                    self.closed_at = time.monotonic()
                    return
        final = {
            "id": "chatcmpl-trickle",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        for data in (json.dumps(final), "[DONE]"):
            payload = f"data: {data}\n\n".encode()
            handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        self.finished = True


# --- Anthropic ----------------------------------------------------------------------------------


class AnthropicServer(FakeProvider):
    """The Messages API: checks what Anthropic requires (x-api-key, anthropic-version, max_tokens,
    only user/assistant roles in ``messages``, ``system`` as a top-level field)."""

    def __init__(self, key: str) -> None:
        super().__init__(key, auth="x-api-key")

    def _error(self, handler: BaseHTTPRequestHandler, status: int, kind: str, message: str, headers=None) -> None:  # type: ignore[no-untyped-def]
        self.send_json(handler, status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        if request.path != "/v1/messages":
            return self._error(handler, 404, "not_found_error", f"Not found: {request.path}")
        if not self.authorized(request):
            return self._error(handler, 401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(handler, 400, "invalid_request_error", "anthropic-version: header is required")
        if self.failures:
            failure = self.failures.pop(0)
            kind = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error"}.get(
                failure.status, "api_error"
            )
            return self._error(handler, failure.status, kind, failure.message, failure.headers)
        body = request.body if isinstance(request.body, dict) else {}
        if not isinstance(body.get("max_tokens"), int):
            return self._error(handler, 400, "invalid_request_error", "max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(handler, 400, "invalid_request_error", "messages: Field required")
        for i, message in enumerate(messages):
            if message.get("role") not in ("user", "assistant"):
                return self._error(
                    handler,
                    400,
                    "invalid_request_error",
                    f'messages.{i}.role: Input should be "user" or "assistant"',
                )
        if "system" in body and not isinstance(body["system"], (str, list)):
            return self._error(handler, 400, "invalid_request_error", "system: Input should be a valid string")
        model = body.get("model")
        if body.get("stream"):
            return self._stream(handler, model)
        self.send_json(
            handler,
            200,
            {
                "id": "msg_fake1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": "Hello from "}, {"type": "text", "text": "Claude"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 21, "output_tokens": 7},
            },
        )

    def _stream(self, handler: BaseHTTPRequestHandler, model: str) -> None:
        def event(name: str, data: dict) -> tuple[str, str]:
            return name, json.dumps({"type": name, **data})

        self.send_events(
            handler,
            [
                event(
                    "message_start",
                    {
                        "message": {
                            "id": "msg_fake2",
                            "type": "message",
                            "role": "assistant",
                            "model": model,
                            "content": [],
                            "stop_reason": None,
                            "usage": {"input_tokens": 15, "output_tokens": 1},
                        }
                    },
                ),
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                event("ping", {}),
                event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " there"}}),
                event("content_block_stop", {"index": 0}),
                event(
                    "message_delta",
                    {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 6}},
                ),
                event("message_stop", {}),
            ],
        )


# --- another Databricks-compatible workspace -----------------------------------------------------


class DatabricksServer(FakeProvider):
    """``/serving-endpoints/<name>/invocations`` of a workspace whose endpoint serves a chat model."""

    def __init__(self, key: str, endpoint: str) -> None:
        super().__init__(key, auth="bearer")
        self.endpoint = endpoint

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        if request.path != f"/serving-endpoints/{self.endpoint}/invocations":
            return self.send_json(
                handler,
                404,
                {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint {request.path} does not exist"},
            )
        if not self.authorized(request):
            return self.send_json(handler, 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token"})
        if self.failures:
            failure = self.failures.pop(0)
            return self.send_json(
                handler, failure.status, {"error_code": "BAD_REQUEST", "message": failure.message}, failure.headers
            )
        body = request.body if isinstance(request.body, dict) else {}
        if not isinstance(body.get("messages"), list):
            return self.send_json(handler, 400, {"error_code": "BAD_REQUEST", "message": "messages is required"})
        self.send_json(
            handler,
            200,
            {
                "id": "chatcmpl-dbx",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "remote-llama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello from Databricks"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
            },
        )


# --- Cohere -------------------------------------------------------------------------------------


class CohereServer(FakeProvider):
    """Cohere's v2 API: ``/v2/chat`` (an answer, or server-sent events) and ``/v2/embed``. Errors are
    ``{"id", "message"}``; an unknown key gets 401 "invalid api token"."""

    ROLES = ("system", "user", "assistant", "tool")

    def __init__(self, key: str) -> None:
        super().__init__(key, auth="bearer")

    def _error(self, handler: BaseHTTPRequestHandler, status: int, message: str, headers=None) -> None:  # type: ignore[no-untyped-def]
        self.send_json(handler, status, {"id": "3f1c2b7a-error", "message": message}, headers)

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        if request.path not in ("/v2/chat", "/v2/embed"):
            return self._error(handler, 404, "404 page not found")
        if not self.authorized(request):
            return self._error(handler, 401, "invalid api token")
        if self.failures:
            failure = self.failures.pop(0)
            return self._error(handler, failure.status, failure.message, failure.headers)
        body = request.body if isinstance(request.body, dict) else {}
        if not isinstance(body.get("model"), str):
            return self._error(handler, 400, "invalid request: model must be specified")
        if request.path == "/v2/embed":
            texts = body.get("texts")
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                return self._error(handler, 400, "invalid request: texts must be a list of strings")
            if not isinstance(body.get("input_type"), str):
                return self._error(handler, 400, "invalid request: valid input_type must be provided with the model")
            if body.get("embedding_types") != ["float"]:
                return self._error(handler, 400, "invalid request: embedding_types must be one of float, int8, ...")
            return self.send_json(
                handler,
                200,
                {
                    "id": "emb-1",
                    "embeddings": {"float": [[0.1, 0.2, 0.3] for _ in texts]},
                    "texts": texts,
                    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2 * len(texts)}},
                    "response_type": "embeddings_by_type",
                },
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(handler, 400, "invalid request: messages must be a non-empty list")
        for i, message in enumerate(messages):
            if message.get("role") not in self.ROLES:
                return self._error(handler, 400, f"invalid request: messages[{i}].role must be one of {self.ROLES}")
        usage = {
            "billed_units": {"input_tokens": 5, "output_tokens": 4},
            "tokens": {"input_tokens": 71, "output_tokens": 4},
        }
        if body.get("stream"):

            def event(name: str, data: dict) -> tuple[str, str]:
                return name, json.dumps({"type": name, **data})

            text = {"type": "text", "text": ""}
            return self.send_events(
                handler,
                [
                    event("message-start", {"id": "c0-stream", "delta": {"message": {"role": "assistant"}}}),
                    event("content-start", {"index": 0, "delta": {"message": {"content": text}}}),
                    event("content-delta", {"index": 0, "delta": {"message": {"content": {"text": "Hello"}}}}),
                    event("content-delta", {"index": 0, "delta": {"message": {"content": {"text": " there"}}}}),
                    event("content-end", {"index": 0}),
                    event("message-end", {"delta": {"finish_reason": "COMPLETE", "usage": usage}}),
                ],
            )
        self.send_json(
            handler,
            200,
            {
                "id": "c0-answer",
                "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello from Cohere"}]},
                "usage": usage,
            },
        )


# --- AI21 Labs ----------------------------------------------------------------------------------


class AI21Server(FakeProvider):
    """AI21 Studio's ``/studio/v1/chat/completions`` (Jamba): OpenAI-like, but answers carry no
    ``object``/``created``; errors are FastAPI's ``{"detail": ...}``."""

    def __init__(self, key: str) -> None:
        super().__init__(key, auth="bearer")

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        if request.path != "/studio/v1/chat/completions":
            return self.send_json(handler, 404, {"detail": "Not Found"})
        if not self.authorized(request):
            return self.send_json(handler, 401, {"detail": "Forbidden: Bad or missing API token."})
        if self.failures:
            failure = self.failures.pop(0)
            return self.send_json(handler, failure.status, {"detail": failure.message}, failure.headers)
        body = request.body if isinstance(request.body, dict) else {}
        problems = []
        if not isinstance(body.get("model"), str):
            problems.append({"loc": ["body", "model"], "msg": "field required", "type": "value_error.missing"})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append({"loc": ["body", "messages"], "msg": "field required", "type": "value_error.missing"})
        else:
            for i, message in enumerate(messages):
                if message.get("role") not in ("system", "user", "assistant", "tool"):
                    problems.append({"loc": ["body", "messages", i, "role"], "msg": "invalid role", "type": "enum"})
                if not isinstance(message.get("content"), str):
                    problems.append(
                        {"loc": ["body", "messages", i, "content"], "msg": "str type expected", "type": "t"}
                    )
        if problems:
            return self.send_json(handler, 422, {"detail": problems})
        usage = {"prompt_tokens": 18, "completion_tokens": 4, "total_tokens": 22}
        if body.get("stream"):

            def chunk(delta: dict, finish: str | None = None, final: bool = False) -> tuple[None, str]:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return None, json.dumps({"id": "chat-ai21-s", "choices": [choice], "usage": usage if final else None})

            return self.send_events(
                handler,
                [
                    chunk({"role": "assistant"}),
                    chunk({"content": "Hello"}),
                    chunk({"content": " from Jamba"}),
                    chunk({"content": ""}, "stop", final=True),
                    (None, "[DONE]"),
                ],
            )
        n = body.get("n") or 1
        self.send_json(
            handler,
            200,
            {
                "id": "chat-ai21-1",
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": "Hello from Jamba", "tool_calls": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                    for i in range(n)
                ],
                "usage": usage,
                "meta": {"requestDurationMillis": 120},
            },
        )


# --- Amazon Bedrock -----------------------------------------------------------------------------


def _event_stream_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of AWS's binary event stream (``application/vnd.amazon.eventstream``)."""
    raw = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + len(v.encode()).to_bytes(2, "big") + v.encode()
        for k, v in headers.items()
    )
    prelude = (12 + len(raw) + len(payload) + 4).to_bytes(4, "big") + len(raw).to_bytes(4, "big")
    head = prelude + zlib.crc32(prelude).to_bytes(4, "big") + raw + payload
    return head + zlib.crc32(head).to_bytes(4, "big")


class BedrockServer(FakeProvider):
    """Bedrock Runtime: ``/model/<modelId>/converse``, ``/converse-stream`` and ``/invoke`` (Titan
    Text Embeddings). Every request's AWS Signature Version 4 is recomputed with the secret key and
    compared, as AWS does; errors are ``{"message"}`` with ``x-amzn-ErrorType``.

    ``stream_exception``: the next stream breaks off after its first text with this exception."""

    SERVICE = "bedrock"
    AUTH = re.compile(
        r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
        r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
    )

    def __init__(self, access_key_id: str, secret_access_key: str, region: str) -> None:
        super().__init__(secret_access_key, auth="sigv4")
        self.access_key_id = access_key_id
        self.region = region
        self.verified = 0  # requests whose signature matched
        self.stream_exception = ""

    def _error(self, handler: BaseHTTPRequestHandler, status: int, kind: str, message: str, headers=None) -> None:  # type: ignore[no-untyped-def]
        self.send_json(handler, status, {"message": message}, {"x-amzn-errortype": kind, **(headers or {})})

    def signature_problem(self, request: Recorded) -> tuple[str, str] | None:
        """What AWS would say about the request's signature, or None when it is right."""
        header = request.headers.get("authorization")
        if not header:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        match = self.AUTH.match(header)
        if not match:
            return "IncompleteSignatureException", "Authorization header requires 'Credential', 'Signature' parameters."
        if match["key"] != self.access_key_id:
            return "UnrecognizedClientException", "The security token included in the request is invalid."
        if match["service"] != self.SERVICE or match["region"] != self.region:
            return "InvalidSignatureException", f"Credential should be scoped to correct service: '{self.SERVICE}'."
        signed = match["signed"].split(";")
        amz_date = request.headers.get("x-amz-date", "")
        if "host" not in signed or "x-amz-date" not in signed or amz_date[:8] != match["date"]:
            return "IncompleteSignatureException", "The host and x-amz-date headers must be signed."
        moment = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if abs((datetime.now(UTC) - moment).total_seconds()) > 300:
            return "InvalidSignatureException", "Signature expired"
        path, _, query = request.target.partition("?")
        canonical = "\n".join(
            [
                "POST",
                quote(path, safe="/~"),  # the path as sent, URI-encoded once more (all services but S3)
                "&".join(sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in parse_qsl(query))),
                "".join(f"{name}:{' '.join(request.headers.get(name, '').split())}\n" for name in signed),
                match["signed"],
                hashlib.sha256(request.raw).hexdigest(),
            ]
        )
        scope = f"{match['date']}/{self.region}/{self.SERVICE}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = f"AWS4{self.key}".encode()
        for part in (match["date"], self.region, self.SERVICE, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), match["signature"]):
            return (
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS "
                "Secret Access Key and signing method. Consult the service documentation for details.",
            )
        return None

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        match = re.fullmatch(r"/model/([^/]+)/(converse|converse-stream|invoke)", request.path)
        if not match:
            return self._error(handler, 404, "UnknownOperationException", "")
        problem = self.signature_problem(request)
        if problem:
            return self._error(handler, 403, *problem)
        self.verified += 1
        if self.failures:
            failure = self.failures.pop(0)
            kind = {429: "ThrottlingException", 503: "ServiceUnavailableException", 424: "ModelErrorException"}
            return self._error(
                handler,
                failure.status,
                kind.get(failure.status, "InternalServerException"),
                failure.message,
                failure.headers,
            )
        model_id, action = unquote(match[1]), match[2]
        body = request.body if isinstance(request.body, dict) else {}
        if action == "invoke":
            if not model_id.startswith("amazon.titan-embed"):
                return self._error(handler, 400, "ValidationException", "This fake serves Titan embeddings only")
            extra = set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
            if extra or not isinstance(body.get("inputText"), str):
                return self._error(
                    handler,
                    400,
                    "ValidationException",
                    f"Malformed input request: extraneous key [{sorted(extra)[0] if extra else 'inputText'}] is not "
                    "permitted, please reformat your input and try again.",
                )
            return self.send_json(handler, 200, {"embedding": [0.1, 0.2, 0.3], "inputTextTokenCount": 3})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(handler, 400, "ValidationException", "1 validation error detected: messages")
        for message in messages:
            content = message.get("content")
            if message.get("role") not in ("user", "assistant") or not isinstance(content, list):
                return self._error(handler, 400, "ValidationException", "messages.role or content is invalid")
            if not all(isinstance(block, dict) and isinstance(block.get("text"), str) for block in content):
                return self._error(handler, 400, "ValidationException", "content blocks must be {text}")
        if messages[0]["role"] != "user":
            return self._error(handler, 400, "ValidationException", "A conversation must start with a user message.")
        if "system" in body and not all(isinstance(b, dict) and "text" in b for b in body["system"]):
            return self._error(handler, 400, "ValidationException", "system must be a list of {text}")
        if set(body.get("inferenceConfig") or {}) - {"maxTokens", "temperature", "topP", "stopSequences"}:
            return self._error(handler, 400, "ValidationException", "inferenceConfig has unknown members")
        usage = {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}
        if action == "converse-stream":
            return self._stream(handler, usage)
        self.send_json(
            handler,
            200,
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "Hello from Bedrock"}]}},
                "stopReason": "end_turn",
                "usage": usage,
                "metrics": {"latencyMs": 321},
            },
        )

    def _stream(self, handler: BaseHTTPRequestHandler, usage: dict) -> None:
        def event(name: str, payload: dict) -> bytes:
            headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
            return _event_stream_message(headers, json.dumps(payload).encode())

        messages = [
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        ]
        if self.stream_exception:
            headers = {":exception-type": self.stream_exception, ":message-type": "exception"}
            messages.append(_event_stream_message(headers, b'{"message":"Too many requests, please wait."}'))
            self.stream_exception = ""
        else:
            messages += [
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}}),
                event("contentBlockStop", {"contentBlockIndex": 0}),
                event("messageStop", {"stopReason": "end_turn"}),
                event("metadata", {"usage": usage, "metrics": {"latencyMs": 200}}),
            ]
        handler.send_response(200)
        handler.send_header("content-type", "application/vnd.amazon.eventstream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        data = b"".join(messages)
        # Pieces that do not line up with the messages, as the network may deliver them.
        for start in range(0, len(data), 37):
            piece = data[start : start + 37]
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()


# --- Google: the OAuth2 token endpoint, Vertex AI and the Generative Language API ---------------


def _google_error(code: int, message: str, reason: str = "") -> dict:
    status = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        503: "UNAVAILABLE",
    }.get(code, "INTERNAL")
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}
        ]
    return {"error": error}


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GoogleTokenServer(FakeProvider):
    """An OAuth2 token endpoint (``POST /token``) for one service account: the JWT-bearer grant's
    assertion must be an RS256 JWT signed by the account's key (checked with its public key), issued
    by its email, for this endpoint's URL, with a scope, and not expired."""

    GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

    def __init__(self, public_key: Any, client_email: str) -> None:
        super().__init__("", auth="jwt")
        self.public_key = public_key
        self.client_email = client_email
        self.issued: list[str] = []

    def _refuse(self, handler: BaseHTTPRequestHandler, error: str, description: str) -> None:
        self.send_json(handler, 400, {"error": error, "error_description": description})

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if request.path != "/token":
            return self.send_json(handler, 404, {"error": "not_found"})
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._refuse(handler, "invalid_request", "Bad Request")
        form = {k: v[0] for k, v in parse_qs(request.raw.decode()).items()}
        if form.get("grant_type") != self.GRANT:
            return self._refuse(handler, "unsupported_grant_type", "Invalid grant_type: ")
        if self.failures:
            failure = self.failures.pop(0)
            return self.send_json(handler, failure.status, {"error": "internal_failure"}, failure.headers)
        try:
            header_b64, claims_b64, signature_b64 = form.get("assertion", "").split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:
            return self._refuse(handler, "invalid_grant", "Invalid JWT: Token must be a short-lived token")
        if header.get("alg") != "RS256":
            return self._refuse(handler, "invalid_grant", "Invalid JWT: unsupported algorithm")
        try:
            self.public_key.verify(
                signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return self._refuse(handler, "invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        if claims.get("iss") != self.client_email:
            return self._refuse(handler, "invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != f"{self.url}/token":
            return self._refuse(handler, "invalid_grant", "Invalid JWT: Failed audience check.")
        if not claims.get("scope"):
            return self._refuse(handler, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        if not (claims.get("iat", 0) - 300 <= now < claims.get("exp", 0) <= claims.get("iat", 0) + 3600):
            return self._refuse(handler, "invalid_grant", "Invalid JWT: Token must be a short-lived token")
        token = f"ya29.fake-{len(self.issued) + 1}-{int(now)}"
        self.issued.append(token)
        self.send_json(handler, 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})


class _GenerateContent:
    """The ``generateContent`` shape both Google APIs share; unknown fields are refused, as Google's
    proto-JSON parsing does."""

    TOP_LEVEL = {"contents", "systemInstruction", "generationConfig", "safetySettings", "tools", "toolConfig"}
    GENERATION = {
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "stopSequences",
        "candidateCount",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseMimeType",
    }

    def generate(self, provider: FakeProvider, handler: BaseHTTPRequestHandler, body: dict, model: str, stream: bool):  # type: ignore[no-untyped-def]
        unknown = sorted(set(body) - self.TOP_LEVEL) + sorted(set(body.get("generationConfig") or {}) - self.GENERATION)
        if unknown:
            message = f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
            return provider.send_json(handler, 400, _google_error(400, message))
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return provider.send_json(
                handler, 400, _google_error(400, "* GenerateContentRequest.contents: contents is not specified")
            )
        for content in contents:
            if content.get("role") not in ("user", "model") or not all(
                "text" in p for p in content.get("parts") or [{}]
            ):
                return provider.send_json(handler, 400, _google_error(400, "Please use a valid role: user, model."))
        n = (body.get("generationConfig") or {}).get("candidateCount") or 1
        usage = {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}
        if stream:
            first = {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": "Hello"}]}, "index": i} for i in range(n)
                ],
                "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
                "modelVersion": model,
                "responseId": "resp-stream",
            }
            last = {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": " there"}]}, "finishReason": "STOP", "index": i}
                    for i in range(n)
                ],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": "resp-stream",
            }
            return provider.send_events(handler, [(None, json.dumps(first)), (None, json.dumps(last))])
        provider.send_json(
            handler,
            200,
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "Hello from "}, {"text": "Gemini"}]},
                        "finishReason": "STOP",
                        "index": i,
                    }
                    for i in range(n)
                ],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": "resp-1",
            },
        )


class VertexServer(_GenerateContent, FakeProvider):
    """Vertex AI's ``/v1/projects/<p>/locations/<r>/publishers/google/models/<m>:<method>``
    (generateContent, streamGenerateContent, predict), with an access token ``tokens`` issued."""

    PATH = re.compile(
        r"/v1/projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/:]+):"
        r"(generateContent|streamGenerateContent|predict)"
    )

    def __init__(self, tokens: GoogleTokenServer, project: str, region: str) -> None:
        super().__init__("", auth="oauth2")
        self.tokens = tokens
        self.project = project
        self.region = region

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        match = self.PATH.fullmatch(request.path)
        if not match or (match[1], match[2]) != (self.project, self.region):
            return self.send_json(handler, 404, _google_error(404, f"Publisher model {request.path} not found."))
        given = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        if given not in self.tokens.issued:
            message = "Request had invalid authentication credentials. Expected OAuth 2 access token."
            return self.send_json(handler, 401, _google_error(401, message))
        if self.failures:
            failure = self.failures.pop(0)
            return self.send_json(
                handler, failure.status, _google_error(failure.status, failure.message), failure.headers
            )
        model, method = match[3], match[4]
        body = request.body if isinstance(request.body, dict) else {}
        if method == "predict":
            instances = body.get("instances")
            if not isinstance(instances, list) or not all(isinstance(i.get("content"), str) for i in instances):
                return self.send_json(handler, 400, _google_error(400, "instances[].content is required"))
            predictions = [
                {"embeddings": {"values": [0.1, 0.2, 0.3], "statistics": {"token_count": 2, "truncated": False}}}
                for _ in instances
            ]
            return self.send_json(
                handler, 200, {"predictions": predictions, "metadata": {"billableCharacterCount": 2 * len(instances)}}
            )
        if method == "streamGenerateContent" and request.query.get("alt") != ["sse"]:
            return self.send_json(handler, 400, _google_error(400, "this fake streams server-sent events only"))
        return self.generate(self, handler, body, model, method == "streamGenerateContent")


class GenerativeLanguageServer(_GenerateContent, FakeProvider):
    """The Generative Language API: ``/v1beta/models/<m>:<method>`` (generateContent,
    streamGenerateContent, embedContent, batchEmbedContents) with ``x-goog-api-key``. A wrong key is
    answered as Google does: 400 INVALID_ARGUMENT with reason ``API_KEY_INVALID``."""

    PATH = re.compile(
        r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent|embedContent|batchEmbedContents)"
    )

    def __init__(self, key: str) -> None:
        super().__init__(key, auth="header", auth_header="x-goog-api-key")

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        match = self.PATH.fullmatch(request.path)
        if not match:
            return self.send_json(handler, 404, _google_error(404, f"models/{request.path} is not found"))
        if "x-goog-api-key" not in request.headers:
            message = "Method doesn't allow unregistered callers (callers without established identity)."
            return self.send_json(handler, 403, _google_error(403, message))
        if not self.authorized(request):
            message = "API key not valid. Please pass a valid API key."
            return self.send_json(handler, 400, _google_error(400, message, "API_KEY_INVALID"))
        if self.failures:
            failure = self.failures.pop(0)
            return self.send_json(
                handler, failure.status, _google_error(failure.status, failure.message), failure.headers
            )
        model, method = match[1], match[2]
        body = request.body if isinstance(request.body, dict) else {}

        def text_of(content: Any) -> bool:
            parts = content.get("parts") if isinstance(content, dict) else None
            return isinstance(parts, list) and all(isinstance(p.get("text"), str) for p in parts)

        if method == "embedContent":
            if not text_of(body.get("content")):
                return self.send_json(
                    handler, 400, _google_error(400, "* EmbedContentRequest.content: contents is not specified")
                )
            return self.send_json(handler, 200, {"embedding": {"values": [0.1, 0.2, 0.3]}})
        if method == "batchEmbedContents":
            requests_ = body.get("requests")
            if not isinstance(requests_, list) or not all(
                r.get("model") == f"models/{model}" and text_of(r.get("content")) for r in requests_
            ):
                message = f"* BatchEmbedContentsRequest.model: unexpected model name format, or requests[].model is not models/{model}"
                return self.send_json(handler, 400, _google_error(400, message))
            return self.send_json(handler, 200, {"embeddings": [{"values": [0.1, 0.2, 0.3]} for _ in requests_]})
        if method == "streamGenerateContent" and request.query.get("alt") != ["sse"]:
            return self.send_json(handler, 400, _google_error(400, "this fake streams server-sent events only"))
        return self.generate(self, handler, body, model, method == "streamGenerateContent")
