"""Small HTTP servers on 127.0.0.1 that speak each LLM provider's wire protocol, for tests.

Each checks what the provider documents (path, auth header, required headers, body shape) and
answers in the provider's own shapes: success, error and server-sent-event streams. They record
every request so tests can assert what the gateway sent. Nothing here leaves loopback.

- ``OpenAIServer``: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` with
  ``Authorization: Bearer``; Azure's ``/openai/deployments/<d>/...?api-version=`` with ``api-key``
  (or Bearer for Entra ID); a custom OpenAI-compatible service with any auth header.
- ``AnthropicServer``: ``/v1/messages`` with ``x-api-key`` and ``anthropic-version``.
- ``DatabricksServer``: ``/serving-endpoints/<name>/invocations`` with Bearer.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any


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
                    "POST", parsed.path, parse_qs(parsed.query), {k.lower(): v for k, v in self.headers.items()}, body
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
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

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

    def __init__(self, key: str, *, auth: str = "bearer", auth_header: str = "", azure_deployment: str = "") -> None:
        super().__init__(key, auth=auth, auth_header=auth_header)
        self.azure_deployment = azure_deployment
        self.reply = "Hello from OpenAI"  # what chat completions answer

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
