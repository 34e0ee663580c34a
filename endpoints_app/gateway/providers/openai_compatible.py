"""What every provider that already speaks OpenAI's wire format shares (OpenAI, Azure OpenAI, a
custom OpenAI-compatible service, another Databricks-compatible workspace): the client's body goes
on nearly unchanged, and the answer and stream chunks come back as they are."""

from __future__ import annotations

import json
from typing import Any

from endpoints_app.gateway.providers.base import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    Provider,
    StreamDecoder,
    UpstreamRequest,
    usage_of,
)

# The list each task's answer carries, and the key every item of it has.
ANSWER_ITEMS = {CHAT: ("choices", "message"), COMPLETIONS: ("choices", "text"), EMBEDDINGS: ("data", "embedding")}


def is_openai_answer(task: str, data: Any) -> bool:
    """Whether ``data`` is an OpenAI answer for ``task``: an object with a non-empty ``choices``
    (``data`` for embeddings) list of objects that each have ``message`` (``text``, ``embedding``)."""
    items_key, item_key = ANSWER_ITEMS[task]
    items = data.get(items_key) if isinstance(data, dict) else None
    return (
        isinstance(items, list) and bool(items) and all(isinstance(item, dict) and item_key in item for item in items)
    )


class PassThroughDecoder(StreamDecoder):
    """OpenAI's own stream: ``data: {chunk}`` events, then ``data: [DONE]``.

    ``hide_usage_chunk``: the gateway asked the provider for a final usage-only chunk (to count
    tokens) that the client did not ask for; it is counted and not sent on.
    """

    def __init__(self, *, hide_usage_chunk: bool = False) -> None:
        super().__init__()
        self.hide_usage_chunk = hide_usage_chunk

    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            return []  # a keep-alive or comment: nothing to send on
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            return []  # not an OpenAI chunk: nothing of it is sent on (a usage chunk has "choices": [])
        usage = usage_of(chunk)
        if usage is not None:
            self.usage = usage
            if self.hide_usage_chunk and not chunk.get("choices"):
                return []
        return [chunk]


class OpenAICompatible(Provider):
    """A provider whose API takes OpenAI-shaped bodies and answers OpenAI-shaped ones."""

    # Send the external model's name as "model" (OpenAI does; a Databricks endpoint or an Azure
    # deployment is named in the URL instead).
    send_model = True

    def url(self, *, task: str, model: str, config: dict[str, Any], base_url: str) -> str:
        raise NotImplementedError

    def upstream_body(self, *, task: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        out.pop("model", None)
        if self.send_model:
            out["model"] = model
        return out

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
        return UpstreamRequest(
            url=self.url(task=task, model=model, config=config, base_url=base_url),
            headers={"content-type": "application/json", **self.credential_headers(config, credentials)},
            json=self.upstream_body(task=task, model=model, body=body),
            stream=bool(body.get("stream")),
        )

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        """The answer as it came, once it has OpenAI's shape for the task: it goes to the caller
        verbatim, so anything else (another service's JSON, reached by a misdirected URL) is refused."""
        if not is_openai_answer(task, data):
            raise ValueError(f"the provider's answer is not an OpenAI {task} response")
        return data

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return PassThroughDecoder()
