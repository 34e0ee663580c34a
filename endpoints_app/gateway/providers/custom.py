"""A custom provider: any service that speaks OpenAI's API (vLLM, Ollama, LiteLLM, …).

``custom_provider_url`` is the service's OpenAI-compatible base URL (e.g.
``https://llm.example.com/v1``); the task's path (``/chat/completions``, ``/completions``,
``/embeddings``) is added to it unless the URL already ends with it. Authentication is either
``api_key_auth`` (the header named by ``key`` carries ``value``) or ``bearer_token_auth``
(``Authorization: Bearer <token>``).
"""

from __future__ import annotations

from typing import Any

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway.providers.base import OPENAI_PATHS, Field, join_url
from endpoints_app.gateway.providers.openai_compatible import OpenAICompatible

HEADER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
# Headers that say where a request goes or how it is framed, never a credential: ``Host`` would
# send the request to another virtual host than the checked URL names (or to a proxy's other
# upstream), the connection and framing ones would desynchronise the connection.
RESERVED_HEADERS = frozenset(
    (
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "content-encoding",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    )
)


class CustomProvider(OpenAICompatible):
    name = "custom"
    config_key = "custom_provider_config"
    fields = (
        Field("custom_provider_url", required=True, url=True),
        Field("api_key_auth", fields=(Field("key", required=True), Field("value", secret=True, required=True))),
        Field("bearer_token_auth", fields=(Field("token", secret=True, required=True),)),
    )

    def check_config(self, config: dict[str, Any], where: str) -> None:
        given = [name for name in ("api_key_auth", "bearer_token_auth") if config.get(name) is not None]
        if len(given) != 1:
            raise InvalidParameterValue(
                f"{where}: give exactly one of api_key_auth or bearer_token_auth"
                + (f" (got {' and '.join(given)})" if given else "")
            )
        key = (config.get("api_key_auth") or {}).get("key")
        if key is not None and (not key or not set(key) <= HEADER_NAME_CHARS):
            raise InvalidParameterValue(f"{where}.api_key_auth.key '{key}' is not a valid HTTP header name")
        if key is not None and key.lower() in RESERVED_HEADERS:
            raise InvalidParameterValue(
                f"{where}.api_key_auth.key '{key}' cannot carry a credential: it is a routing or framing header "
                "(use a header such as Authorization or X-Api-Key)"
            )

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        if config.get("api_key_auth") is not None:
            return {config["api_key_auth"]["key"].lower(): credentials["api_key_auth.value"]}
        return {"authorization": f"Bearer {credentials['bearer_token_auth.token']}"}

    def url(self, *, task: str, model: str, config: dict[str, Any], base_url: str) -> str:
        url = config["custom_provider_url"]
        path = OPENAI_PATHS[task]
        return url if url.rstrip("/").endswith("/" + path) else join_url(url, path)
