"""Cohere: OpenAI-shaped chat, completions and embeddings ↔ Cohere's v2 API.

``POST {cohere_api_base or https://api.cohere.com}/v2/chat`` and ``/v2/embed`` with
``Authorization: Bearer <key>``. The translation:

- chat: ``messages`` keep their roles (system, user, assistant) with text content; ``max_tokens``,
  ``temperature``, ``seed``, ``frequency_penalty``, ``presence_penalty`` keep their names, ``top_p``
  becomes ``p``, ``top_k`` ``k``, ``stop`` ``stop_sequences``; ``n`` above 1 is refused (Cohere
  answers one message);
- completions: Cohere's Generate API is retired, so the prompt is one user message to ``/v2/chat``,
  answered as ``text_completion``;
- the answer's ``message.content[]`` text items become the choice's content, ``finish_reason``
  (COMPLETE, STOP_SEQUENCE → stop; MAX_TOKENS → length; TOOL_CALL → tool_calls) is mapped, and
  ``usage.tokens`` (what the model read and wrote; ``usage.billed_units`` when absent) becomes
  ``prompt_tokens``/``completion_tokens``;
- the event stream (message-start, content-delta, message-end with the finish reason and usage)
  becomes OpenAI chunks;
- embeddings: ``input`` becomes ``texts`` with ``input_type`` ``search_document`` (a request's own
  ``input_type`` wins) and ``embedding_types`` ``["float"]``; ``embeddings.float`` comes back as
  ``data[]``, ``meta.billed_units.input_tokens`` as ``prompt_tokens``.

Cohere answers a refused key with 401 (or 498, "invalid token"), which maps to 502.
"""

from __future__ import annotations

import json
from typing import Any

from endpoints_app.gateway.providers.base import (
    CHAT,
    EMBEDDINGS,
    Field,
    Provider,
    StreamDecoder,
    StreamFailed,
    UpstreamRequest,
    Usage,
    join_url,
    stop_list,
)
from endpoints_app.gateway.providers.translate import (
    ChunkDecoder,
    chat_messages,
    embeddings_answer,
    input_texts,
    one_choice,
    openai_answer,
    prompt_text,
)

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
# OpenAI request field → Cohere's name for it.
_FIELDS = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "p",
    "top_k": "k",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
DEFAULT_INPUT_TYPE = "search_document"
INVALID_TOKEN = 498  # Cohere's status for a key it does not know


def finish_reason(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return FINISH_REASONS.get(value, value.lower())


def usage_from(usage: Any) -> Usage:
    """``usage.tokens`` (or ``usage.billed_units``) as prompt/completion tokens."""
    usage = usage if isinstance(usage, dict) else {}
    counts = usage.get("tokens") or usage.get("billed_units") or {}
    return Usage(int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0))


class CohereProvider(Provider):
    name = "cohere"
    config_key = "cohere_config"
    fields = (Field("cohere_api_key", secret=True, required=True), Field("cohere_api_base", url=True))
    default_base_url = "https://api.cohere.com"

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        return {"authorization": f"Bearer {credentials['cohere_api_key']}"}

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
        base = config.get("cohere_api_base") or base_url
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            **self.credential_headers(config, credentials),
        }
        if task == EMBEDDINGS:
            out: dict[str, Any] = {
                "model": model,
                "texts": input_texts(body, "Cohere"),
                "input_type": body["input_type"] if isinstance(body.get("input_type"), str) else DEFAULT_INPUT_TYPE,
                "embedding_types": ["float"],
            }
            if isinstance(body.get("dimensions"), int):
                out["output_dimension"] = body["dimensions"]
            if isinstance(body.get("truncate"), str):
                out["truncate"] = body["truncate"]
            return UpstreamRequest(url=join_url(base, "v2/embed"), headers=headers, json=out)
        one_choice(body, "Cohere")
        if task == CHAT:
            system, messages = chat_messages(body["messages"], "Cohere")
        else:
            system, messages = [], [("user", prompt_text(body, "Cohere"))]
        out = {
            "model": model,
            "messages": [{"role": "system", "content": text} for text in system]
            + [{"role": role, "content": text} for role, text in messages],
        }
        for ours, theirs in _FIELDS.items():
            if body.get(ours) is not None:
                out[theirs] = body[ours]
        stops = stop_list(body.get("stop"))
        if stops:
            out["stop_sequences"] = stops
        stream = bool(body.get("stream"))
        if stream:
            out["stream"] = True
            headers["accept"] = "text/event-stream"
        return UpstreamRequest(url=join_url(base, "v2/chat"), headers=headers, json=out, stream=stream)

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValueError("the answer is not a JSON object")
        if task == EMBEDDINGS:
            vectors = (data.get("embeddings") or {}).get("float")
            if not isinstance(vectors, list):
                raise ValueError("the answer has no embeddings.float")
            billed = (data.get("meta") or {}).get("billed_units") or {}
            return embeddings_answer(model=model, vectors=vectors, prompt_tokens=int(billed.get("input_tokens") or 0))
        message = data.get("message")
        if not isinstance(message, dict):
            raise ValueError("the answer has no message")
        text = "".join(
            item.get("text", "")
            for item in message.get("content") or []
            if isinstance(item, dict) and item.get("type") == "text"
        )
        return openai_answer(
            task=task,
            id=data.get("id"),
            model=model,
            choices=[(text, finish_reason(data.get("finish_reason")))],
            usage=usage_from(data.get("usage")),
        )

    def error_status(self, status: int, data: Any) -> int:
        return 401 if status == INVALID_TOKEN else status

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return CohereStreamDecoder(task=task, model=model)


class CohereStreamDecoder(ChunkDecoder):
    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            return []
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type") or event
        if kind == "message-start":
            self.id = payload.get("id") or self.id
            return [self.chunk()]
        if kind == "content-delta":
            content = ((payload.get("delta") or {}).get("message") or {}).get("content") or {}
            text = content.get("text") if isinstance(content, dict) else None
            return [self.chunk(text=text)] if text else []
        if kind == "message-end":
            delta = payload.get("delta") or {}
            self.usage = usage_from(delta.get("usage"))
            self.done = True
            if delta.get("finish_reason") == "ERROR":
                raise StreamFailed(str(delta.get("error") or "the model failed while answering"))
            return [self.chunk(finish=finish_reason(delta.get("finish_reason")) or "stop")]
        return []  # content-start, content-end, tool-plan and citation events carry no text
