"""Google's ``generateContent`` shape, which Vertex AI and the Generative Language API share:
OpenAI-shaped chat and completions ↔ ``contents``/``candidates``, and Google's error body.

- system messages become ``systemInstruction: {parts: [{text}]}``; user messages become
  ``contents`` with role ``user``, assistant messages role ``model``, text in ``parts``;
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``, ``n``, ``seed``,
  ``presence_penalty``, ``frequency_penalty`` become ``generationConfig`` ``maxOutputTokens``,
  ``temperature``, ``topP``, ``topK``, ``stopSequences``, ``candidateCount``, ``seed``,
  ``presencePenalty``, ``frequencyPenalty``;
- each of the answer's ``candidates`` becomes a choice (the text of its ``content.parts``),
  ``finishReason`` the finish reason (STOP → stop; MAX_TOKENS → length; SAFETY, RECITATION,
  BLOCKLIST, PROHIBITED_CONTENT, SPII → content_filter); a prompt Google blocked
  (``promptFeedback.blockReason``, no candidates) is one empty choice with ``content_filter``;
- ``usageMetadata`` ``promptTokenCount`` becomes ``prompt_tokens``, ``candidatesTokenCount`` plus
  ``thoughtsTokenCount`` (a thinking model's reasoning, billed as output) ``completion_tokens``;
- the streamed variant (``:streamGenerateContent?alt=sse``) sends whole ``GenerateContentResponse``
  objects as server-sent events, each with the next piece of text; the one that gives every
  candidate a ``finishReason`` (and the final usage) is the last.
"""

from __future__ import annotations

import json
from typing import Any

from endpoints_app.gateway.providers.base import (
    CHAT,
    RequestRejected,
    StreamFailed,
    Usage,
    stop_list,
)
from endpoints_app.gateway.providers.translate import ChunkDecoder, chat_messages, openai_answer, prompt_text

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# OpenAI request field → its name in ``generationConfig``.
_GENERATION_FIELDS = {
    "max_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
# Error reasons (``error.details[].reason``) that mean the API key itself was refused; Google
# answers them with 400 INVALID_ARGUMENT.
REFUSED_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def finish_reason(value: Any) -> str | None:
    if not isinstance(value, str) or value == "FINISH_REASON_UNSPECIFIED":
        return None
    return FINISH_REASONS.get(value, value.lower())


def usage_from(metadata: Any) -> Usage:
    metadata = metadata if isinstance(metadata, dict) else {}
    output = int(metadata.get("candidatesTokenCount") or 0) + int(metadata.get("thoughtsTokenCount") or 0)
    return Usage(int(metadata.get("promptTokenCount") or 0), output)


def generate_content_body(task: str, body: dict[str, Any], provider: str) -> dict[str, Any]:
    if task == CHAT:
        system, messages = chat_messages(body["messages"], provider)
    else:
        system, messages = [], [("user", prompt_text(body, provider))]
    out: dict[str, Any] = {
        "contents": [
            {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]} for role, text in messages
        ]
    }
    if system:
        out["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    config = {theirs: body[ours] for ours, theirs in _GENERATION_FIELDS.items() if body.get(ours) is not None}
    stops = stop_list(body.get("stop"))
    if stops:
        if len(stops) > 5:
            raise RequestRejected(f"{provider} takes at most 5 stop sequences")
        config["stopSequences"] = stops
    if config:
        out["generationConfig"] = config
    return out


def _text(candidate: dict[str, Any]) -> str:
    parts = (candidate.get("content") or {}).get("parts") or []
    # A thinking model's own reasoning ("thought": true) is not part of the answer.
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought"))


def parse_generate_content(*, task: str, model: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    candidates = data.get("candidates")
    if not candidates:
        if (data.get("promptFeedback") or {}).get("blockReason"):
            choices: list[tuple[str, str | None]] = [("", "content_filter")]
        else:
            raise ValueError("the answer has no candidates")
    else:
        ordered = sorted(candidates, key=lambda c: int(c.get("index") or 0))
        choices = [(_text(c), finish_reason(c.get("finishReason"))) for c in ordered]
    return openai_answer(
        task=task,
        id=data.get("responseId"),
        model=data.get("modelVersion") or model,
        choices=choices,
        usage=usage_from(data.get("usageMetadata")),
    )


def error_message(data: Any) -> str:
    # {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT", "details": [...]}}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = error["message"] if isinstance(error.get("message"), str) else ""
        status = error["status"] if isinstance(error.get("status"), str) else ""
        return f"{status}: {message}" if status and message else message or status
    if isinstance(data, list) and data:  # a streamed request's error comes as an array of one
        return error_message(data[0])
    return ""


def error_status(status: int, data: Any) -> int:
    """401 for Google's 400 ``API_KEY_INVALID``: the key was refused, not the request."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        error = data[0].get("error")
    if status == 400 and isinstance(error, dict):
        reasons = {d.get("reason") for d in error.get("details") or [] if isinstance(d, dict)}
        if reasons & REFUSED_KEY_REASONS:
            return 401
    return status


class GenerateContentStreamDecoder(ChunkDecoder):
    def __init__(self, *, task: str, model: str, candidates: int) -> None:
        super().__init__(task=task, model=model)
        self.expected = candidates
        self.finished: set[int] = set()

    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        try:
            payload = json.loads(data)
        except ValueError:
            return []
        if not isinstance(payload, dict):
            return []
        if "error" in payload:
            raise StreamFailed(error_message(payload) or "the stream failed")
        self.id = payload.get("responseId") or self.id
        self.model = payload.get("modelVersion") or self.model
        if payload.get("usageMetadata"):
            self.usage = usage_from(payload["usageMetadata"])
        chunks = []
        candidates = payload.get("candidates") or []
        if not candidates and (payload.get("promptFeedback") or {}).get("blockReason"):
            self.done = True
            return [self.chunk(finish="content_filter")]
        for candidate in candidates:
            index = int(candidate.get("index") or 0)
            text, finish = _text(candidate), finish_reason(candidate.get("finishReason"))
            if text or index not in self._started:
                chunks.append(self.chunk(index=index, text=text))
            if finish:
                self.finished.add(index)
                chunks.append(self.chunk(index=index, finish=finish))
        if len(self.finished) >= self.expected:
            self.done = True
        return chunks
