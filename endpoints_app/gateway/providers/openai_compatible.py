"""What every provider that already speaks OpenAI's wire format shares (OpenAI, Azure OpenAI, a
custom OpenAI-compatible service, another Databricks-compatible workspace): the client's body goes
on nearly unchanged, and the answer and stream chunks come back as they are."""

from __future__ import annotations

import json
from typing import Any

from endpoints_app.gateway.providers.base import (
    Provider,
    StreamDecoder,
    UpstreamRequest,
    usage_of,
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
        if not isinstance(chunk, dict):
            return []
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
        if not isinstance(data, dict):
            raise ValueError("the provider's answer is not a JSON object")
        return data

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return PassThroughDecoder()
