"""Anthropic: OpenAI-shaped chat and completions ↔ the Messages API.

``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``. The translation:

- system messages are lifted out of ``messages`` into ``system`` (joined by a blank line);
  ``max_tokens`` is required by Anthropic and defaults to ``DEFAULT_MAX_TOKENS``; ``stop`` becomes
  ``stop_sequences``; ``user`` becomes ``metadata.user_id``; ``n`` above 1 is refused (Anthropic
  answers one message); content parts of type ``text`` are kept, other parts are refused;
- a completions request is one user message with the prompt, answered as ``text_completion``;
- the answer's text blocks become ``choices[0].message.content``, ``stop_reason`` becomes
  ``finish_reason`` (end_turn/stop_sequence → stop, max_tokens → length, tool_use →
  tool_calls), and ``usage.input_tokens``/``output_tokens`` become ``prompt_tokens``/
  ``completion_tokens``;
- the event stream (message_start, content_block_delta, message_delta, message_stop, error)
  becomes OpenAI ``chat.completion.chunk`` objects.

Anthropic has no embeddings API, so ``llm/v1/embeddings`` is refused when the endpoint is created.
"""

from __future__ import annotations

import json
from typing import Any

from endpoints_app.gateway.providers.base import (
    CHAT,
    COMPLETIONS,
    Field,
    Provider,
    RequestRejected,
    StreamDecoder,
    StreamFailed,
    UpstreamRequest,
    Usage,
    completion_id,
    join_url,
    now_s,
    stop_list,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
# OpenAI request fields with the same meaning in the Messages API.
_SAME_FIELDS = ("temperature", "top_p", "top_k")


def _text(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content in Anthropic's form: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        blocks = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestRejected(
                    f"{where}.content[{i}] is of type '{kind}'; only text parts can be sent to Anthropic for now"
                )
            blocks.append({"type": "text", "text": part["text"]})
        return blocks
    raise RequestRejected(f"{where}.content must be a string or an array of text parts")


def _plain(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


class AnthropicProvider(Provider):
    name = "anthropic"
    config_key = "anthropic_config"
    fields = (Field("anthropic_api_key", secret=True, required=True),)
    tasks = (CHAT, COMPLETIONS)
    default_base_url = "https://api.anthropic.com"

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        return {"x-api-key": credentials["anthropic_api_key"], "anthropic-version": API_VERSION}

    def build_request(
        self,
        *,
        task: str,
        model: str,
        config: dict[str, Any],
        credentials: dict[str, str],
        body: dict[str, Any],
        base_url: str,
    ) -> UpstreamRequest:
        if task == CHAT:
            system, messages = self._messages(body["messages"])
        else:
            prompt = body["prompt"]
            if isinstance(prompt, list):
                if len(prompt) != 1 or not isinstance(prompt[0], str):
                    raise RequestRejected("Anthropic takes one prompt per request; send 'prompt' as one string")
                prompt = prompt[0]
            system, messages = [], [{"role": "user", "content": prompt}]
        n = body.get("n")
        if n is not None and n != 1:
            raise RequestRejected("Anthropic answers one message per request; 'n' must be 1")
        out: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": body.get("max_tokens") or DEFAULT_MAX_TOKENS,
        }
        if system:
            out["system"] = "\n\n".join(system)
        for key in _SAME_FIELDS:
            if body.get(key) is not None:
                out[key] = body[key]
        stops = stop_list(body.get("stop"))
        if stops:
            out["stop_sequences"] = stops
        if isinstance(body.get("user"), str):
            out["metadata"] = {"user_id": body["user"]}
        stream = bool(body.get("stream"))
        if stream:
            out["stream"] = True
        return UpstreamRequest(
            url=join_url(base_url, "v1/messages"),
            headers={"content-type": "application/json", **self.credential_headers(config, credentials)},
            json=out,
            stream=stream,
        )

    @staticmethod
    def _messages(raw: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for i, message in enumerate(raw):
            role, where = message["role"], f"messages[{i}]"
            if role == "system":
                system.append(_plain(_text(message.get("content", ""), where)))
            elif role in ("user", "assistant"):
                messages.append({"role": role, "content": _text(message.get("content", ""), where)})
            else:
                raise RequestRejected(
                    f"{where}.role '{role}' cannot be sent to Anthropic; use system, user or assistant"
                )
        if not messages:
            raise RequestRejected("Anthropic needs at least one user message besides the system prompt")
        return system, messages

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise ValueError("the answer is not an Anthropic message")
        text = "".join(b.get("text", "") for b in data["content"] if isinstance(b, dict) and b.get("type") == "text")
        finish = FINISH_REASONS.get(data.get("stop_reason") or "", data.get("stop_reason"))
        usage = data.get("usage") or {}
        counts = Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))
        common = {"id": data.get("id") or completion_id(), "created": now_s(), "model": data.get("model") or model}
        if task == COMPLETIONS:
            return {
                **common,
                "object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "usage": counts.as_openai(),
            }
        return {
            **common,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": counts.as_openai(),
        }

    def error_message(self, data: Any) -> str:
        # {"type": "error", "error": {"type": "invalid_request_error", "message": "..."}}
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error = data["error"]
            message = error.get("message") if isinstance(error.get("message"), str) else ""
            kind = error.get("type") if isinstance(error.get("type"), str) else ""
            return f"{kind}: {message}" if kind and message else message or kind
        return super().error_message(data)

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return AnthropicStreamDecoder(task=task, model=model)


class AnthropicStreamDecoder(StreamDecoder):
    def __init__(self, *, task: str, model: str) -> None:
        super().__init__()
        self.task = task
        self.id = completion_id()
        self.model = model
        self.created = now_s()
        self.usage = Usage()

    def _chunk(self, *, delta: dict[str, Any] | None = None, text: str = "", finish: str | None = None) -> dict:
        if self.task == COMPLETIONS:
            choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        else:
            choice = {"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish}
            kind = "chat.completion.chunk"
        assert self.usage is not None
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            # Databricks sends usage in every chunk (reference §4.2): the counts so far.
            "usage": self.usage.as_openai(),
        }

    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            return []
        kind = event or (payload.get("type") if isinstance(payload, dict) else "") or ""
        assert self.usage is not None
        if kind == "message_start":
            message = payload.get("message") or {}
            self.id = message.get("id") or self.id
            self.model = message.get("model") or self.model
            usage = message.get("usage") or {}
            self.usage.prompt_tokens = int(usage.get("input_tokens") or 0)
            self.usage.completion_tokens = int(usage.get("output_tokens") or 0)
            return [self._chunk(delta={"role": "assistant", "content": ""})]
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk(delta={"content": delta["text"]}, text=delta["text"])]
            return []
        if kind == "message_delta":
            usage = payload.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.usage.completion_tokens = int(usage["output_tokens"])
            if usage.get("input_tokens") is not None:
                self.usage.prompt_tokens = int(usage["input_tokens"])
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                return [self._chunk(finish=FINISH_REASONS.get(reason, reason))]
            return []
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            error = payload.get("error") or {}
            raise StreamFailed(f"{error.get('type', 'error')}: {error.get('message', '')}".strip(": "))
        return []  # ping, content_block_start, content_block_stop
