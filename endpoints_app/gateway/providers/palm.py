"""PaLM: Google retired the PaLM models and their API, so the ``palm`` provider talks to their
successor, the Generative Language API (Gemini models, e.g. ``gemini-2.0-flash``), with the same
API key (``palm_api_key``; keys from Google AI Studio / MakerSuite work for both).

``POST https://generativelanguage.googleapis.com/v1beta/models/{model}:generateContent``
(``:streamGenerateContent?alt=sse`` for ``stream: true``) with the ``x-goog-api-key`` header (never
the ``?key=`` query parameter, which would put the key in URLs and access logs); the body and
answer are Vertex AI's ``generateContent`` shape, translated by ``gemini``. Embeddings: one text
goes to ``:embedContent`` (``{content: {parts: [{text}]}}`` → ``embedding.values``), several to
``:batchEmbedContents`` (one request each → ``embeddings[].values``); the API reports no token
counts for embeddings, so their ``usage`` is zero. A wrong key is answered by Google with 400
``API_KEY_INVALID``, which maps to 502 like any refused key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from endpoints_app.gateway.providers import gemini
from endpoints_app.gateway.providers.base import (
    EMBEDDINGS,
    Field,
    Provider,
    StreamDecoder,
    UpstreamRequest,
    join_url,
)
from endpoints_app.gateway.providers.translate import embeddings_answer, input_texts


class PaLMProvider(Provider):
    name = "palm"
    config_key = "palm_config"
    fields = (Field("palm_api_key", secret=True, required=True),)
    default_base_url = "https://generativelanguage.googleapis.com"

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        return {"x-goog-api-key": credentials["palm_api_key"]}

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
        name = f"models/{quote(model.removeprefix('models/'), safe='')}"
        base = join_url(base_url, f"v1beta/{name}")
        headers = {"content-type": "application/json", **self.credential_headers(config, credentials)}
        if task == EMBEDDINGS:
            texts = input_texts(body, "the Generative Language API")
            extra: dict[str, Any] = {}
            if isinstance(body.get("task_type"), str):
                extra["taskType"] = body["task_type"]
            if isinstance(body.get("dimensions"), int):
                extra["outputDimensionality"] = body["dimensions"]
            if len(texts) == 1:
                out: dict[str, Any] = {"content": {"parts": [{"text": texts[0]}]}, **extra}
                return UpstreamRequest(url=f"{base}:embedContent", headers=headers, json=out)
            out = {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **extra} for t in texts]}
            return UpstreamRequest(url=f"{base}:batchEmbedContents", headers=headers, json=out)
        out = gemini.generate_content_body(task, body, "the Generative Language API")
        stream = bool(body.get("stream"))
        url = f"{base}:streamGenerateContent?alt=sse" if stream else f"{base}:generateContent"
        return UpstreamRequest(url=url, headers=headers, json=out, stream=stream)

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        if task != EMBEDDINGS:
            return gemini.parse_generate_content(task=task, model=model, data=data)
        if not isinstance(data, dict):
            raise ValueError("the answer is not a JSON object")
        if isinstance(data.get("embedding"), dict):
            vectors = [data["embedding"]["values"]]
        elif isinstance(data.get("embeddings"), list):
            vectors = [e["values"] for e in data["embeddings"]]
        else:
            raise ValueError("the answer has no embedding")
        return embeddings_answer(model=model, vectors=vectors, prompt_tokens=0)

    def error_message(self, data: Any) -> str:
        return gemini.error_message(data) or super().error_message(data)

    def error_status(self, status: int, data: Any) -> int:
        return gemini.error_status(status, data)

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return gemini.GenerateContentStreamDecoder(task=task, model=model, candidates=int(body.get("n") or 1))
