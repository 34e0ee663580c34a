"""AI21 Labs: OpenAI-shaped chat and completions ↔ AI21 Studio's chat completions API (Jamba).

``POST https://api.ai21.com/studio/v1/chat/completions`` with ``Authorization: Bearer <key>``. The
body is close to OpenAI's: ``messages`` (system, user, assistant; text content), ``max_tokens``,
``temperature``, ``top_p``, ``stop``, ``n``, ``stream``, ``response_format``, ``seed`` and
``documents`` go on; other OpenAI fields are left out (tool calling is not translated yet).
The answer has ``choices`` and ``usage`` like OpenAI's but no ``object``/``created``; those are
added, and each stream chunk becomes a ``chat.completion.chunk`` with the usage so far (AI21 sends
it in the last chunk, before ``data: [DONE]``).

AI21's older Jurassic-2 ``complete`` API is retired, so a completions request is one user message
to the chat API, answered as ``text_completion``. AI21 has no embeddings API any more, so
``llm/v1/embeddings`` is refused when the endpoint is created.
"""

from __future__ import annotations

import json
from typing import Any

from endpoints_app.gateway.providers.base import (
    CHAT,
    COMPLETIONS,
    Field,
    Provider,
    StreamDecoder,
    UpstreamRequest,
    Usage,
    join_url,
    stop_list,
)
from endpoints_app.gateway.providers.translate import ChunkDecoder, chat_messages, openai_answer, prompt_text

# OpenAI request fields AI21's chat API takes as they are.
_SAME_FIELDS = ("max_tokens", "temperature", "top_p", "n", "response_format", "seed", "documents")


def usage_from(usage: Any) -> Usage:
    usage = usage if isinstance(usage, dict) else {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


class AI21LabsProvider(Provider):
    name = "ai21labs"
    config_key = "ai21labs_config"
    fields = (Field("ai21labs_api_key", secret=True, required=True),)
    tasks = (CHAT, COMPLETIONS)
    default_base_url = "https://api.ai21.com"

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        return {"authorization": f"Bearer {credentials['ai21labs_api_key']}"}

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
            system, messages = chat_messages(body["messages"], "AI21 Labs")
        else:
            system, messages = [], [("user", prompt_text(body, "AI21 Labs"))]
        out: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": text} for text in system]
            + [{"role": role, "content": text} for role, text in messages],
        }
        for key in _SAME_FIELDS:
            if body.get(key) is not None:
                out[key] = body[key]
        stops = stop_list(body.get("stop"))
        if stops:
            out["stop"] = stops
        stream = bool(body.get("stream"))
        if stream:
            out["stream"] = True
        return UpstreamRequest(
            url=join_url(base_url, "studio/v1/chat/completions"),
            headers={"content-type": "application/json", **self.credential_headers(config, credentials)},
            json=out,
            stream=stream,
        )

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError("the answer has no choices")
        choices = []
        for choice in data["choices"]:
            message = choice.get("message") or {}
            choices.append((message.get("content") or "", choice.get("finish_reason")))
        return openai_answer(
            task=task,
            id=data.get("id"),
            model=data.get("model") or model,
            choices=choices,
            usage=usage_from(data.get("usage")),
        )

    def error_message(self, data: Any) -> str:
        # {"detail": "Forbidden: Bad or missing API token."}, or FastAPI's validation errors:
        # {"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "..."}]}
        if isinstance(data, dict):
            detail = data.get("detail")
            if isinstance(detail, str):
                return detail
            if isinstance(detail, list):
                return "; ".join(
                    f"{'.'.join(str(p) for p in d.get('loc') or [])}: {d.get('msg', '')}".strip(": ")
                    for d in detail
                    if isinstance(d, dict)
                )
        return super().error_message(data)

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return AI21StreamDecoder(task=task, model=model)


class AI21StreamDecoder(ChunkDecoder):
    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            return []
        if not isinstance(payload, dict):
            return []
        self.id = payload.get("id") or self.id
        if isinstance(payload.get("usage"), dict):
            self.usage = usage_from(payload["usage"])
        chunks = []
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            index = int(choice.get("index") or 0)
            text, finish = delta.get("content") or "", choice.get("finish_reason")
            if text or finish or index not in self._started:
                chunks.append(self.chunk(index=index, text=text, finish=finish))
        return chunks
