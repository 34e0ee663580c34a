"""The common interface of external model providers, and the OpenAI-shaped request checks.

A provider module describes two things:

1. its config block (``openai_config``, ``anthropic_config``, …, reference §2.8) as a tuple of
   ``Field``s, plus ``check_config`` for rules across fields; ``endpoints_app.validation`` parses
   every block from these descriptions, so a provider's fields are written down once;
2. its wire translation: ``build_request`` turns an OpenAI-shaped request (reference §4.2) into
   the provider's own HTTP request, ``parse_response`` turns the provider's answer back into an
   OpenAI-shaped one, ``error_message`` reads the provider's error shape, and ``stream_decoder``
   turns the provider's server-sent events into OpenAI chunk objects.

Provider modules are pure: no I/O, no Django. ``endpoints_app.gateway.external`` sends the
requests (one shared ``httpx.AsyncClient``), maps the provider's errors and counts tokens. The one
exception is ``sign_in``, for providers whose key must first be exchanged for an access token
(Google's service accounts, Microsoft Entra ID's client credentials): it gets the shared client to
do that one request, and the operator's ``PROVIDER_BASE_URLS`` (where a token service is reached).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

CHAT = "llm/v1/chat"
COMPLETIONS = "llm/v1/completions"
EMBEDDINGS = "llm/v1/embeddings"
TASKS = (CHAT, COMPLETIONS, EMBEDDINGS)
# The path of each task below an OpenAI-compatible base URL.
OPENAI_PATHS = {CHAT: "chat/completions", COMPLETIONS: "completions", EMBEDDINGS: "embeddings"}
# Request fields that are Databricks' own (usage tracking, inference tables): never sent on.
DATABRICKS_ONLY_FIELDS = ("client_request_id", "usage_context", "extra_params", "dataframe_split", "dataframe_records")


class RequestRejected(Exception):
    """The client's OpenAI-shaped request cannot be translated for this provider (→ 400)."""


class NotTranslated(Exception):
    """The provider's config is stored, but queries to it are not supported yet (→ 501)."""


class StreamFailed(Exception):
    """The provider reported an error in the middle of a stream (its message, safe to show)."""


class SignInFailed(Exception):
    """Exchanging the configured key for an access token failed: the caller gets ``status`` with
    ``error_code`` and this message (which names no credential); ``headers`` (``retry-after``) too."""

    def __init__(self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_code = status, error_code
        self.headers = headers or {}


@dataclass(frozen=True)
class Field:
    """One field of a provider's config block.

    ``secret`` fields take a ``{{secrets/<scope>/<key>}}`` reference under ``name`` or a raw value
    under ``name + "_plaintext"``; ``fields`` describes a nested object (``api_key_auth``).
    """

    name: str
    required: bool = False
    secret: bool = False
    choices: tuple[str, ...] = ()
    case_insensitive: bool = False
    url: bool = False
    fields: tuple[Field, ...] | None = None


@dataclass
class UpstreamRequest:
    """One HTTP request to a provider. ``headers`` hold credentials: never log this object."""

    url: str
    headers: dict[str, str] = field(repr=False)
    json: dict[str, Any] = field(repr=False)
    stream: bool = False
    # The exact body bytes, when the provider signs them (AWS Signature V4): sent instead of ``json``.
    content: bytes | None = field(default=None, repr=False)

    def body(self) -> dict[str, Any]:
        """The body as ``httpx`` keyword arguments."""
        return {"json": self.json} if self.content is None else {"content": self.content}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def usage_of(answer: dict[str, Any]) -> Usage | None:
    """The token counts of an OpenAI-shaped answer or chunk, when it has them."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    return Usage(prompt if isinstance(prompt, int) else 0, completion if isinstance(completion, int) else 0)


class StreamDecoder:
    """Turns a provider's server-sent events into OpenAI chunk objects (one instance per query).

    ``feed`` takes one event (its ``event:`` name, "" when none, and its joined ``data:``) and
    returns the chunks to send; ``done`` is set when the provider said the answer is complete.
    ``usage`` holds the token counts seen so far.
    """

    def __init__(self) -> None:
        self.done = False
        self.usage: Usage | None = None

    def feed(self, event: str, data: str) -> list[dict[str, Any]]:
        raise NotImplementedError


class Provider:
    """One external model provider. Subclasses set the class attributes and override the wire
    translation; ``translated = False`` marks a provider whose config is accepted and stored but
    whose queries answer 501 until its translation is written."""

    name: str = ""
    config_key: str = ""
    fields: tuple[Field, ...] = ()
    tasks: tuple[str, ...] = TASKS
    translated: bool = True
    # Where the provider's API lives when the config does not say (MODELFLEET_PROVIDER_BASE_URLS
    # overrides it, e.g. for an egress proxy).
    default_base_url: str = ""
    # How the provider frames a streamed answer: "sse" (server-sent events), or a format of its own
    # that ``stream_events`` reads (Bedrock's binary event stream).
    stream_format: str = "sse"

    def check_config(self, config: dict[str, Any], where: str) -> None:
        """Rules across the block's fields; raise ``endpoints_app.errors.InvalidParameterValue``."""

    def destinations(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        """``(field, URL)`` for every place this config sends requests to, which the egress policy
        checks at config time (``endpoints_app.egress``): the URL fields; providers that build a host
        from a region add it."""
        return [(spec.name, config[spec.name]) for spec in self.fields if spec.url and config.get(spec.name)]

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        raise NotImplementedError

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
        raise NotTranslated(f"queries to provider '{self.name}' are not supported yet")

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        raise NotImplementedError

    def error_message(self, data: Any) -> str:
        """The provider's own error text from its error body ("" when it has none)."""
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return error["message"]
            if isinstance(error, str):
                return error
            if isinstance(data.get("message"), str):
                return data["message"]
        return ""

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        raise NotImplementedError

    def error_status(self, status: int, data: Any) -> int:
        """The HTTP status to map a provider error by: the provider's own, unless its error body says
        better (Google answers a wrong API key with 400 ``API_KEY_INVALID``: that is a refused key)."""
        return status

    def stream_events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
        """``(event name, data)`` of a stream that is not server-sent events (``stream_format``)."""
        raise NotImplementedError

    async def sign_in(
        self,
        *,
        http: httpx.AsyncClient,
        config: dict[str, Any],
        credentials: dict[str, str],
        timeout: httpx.Timeout,
        base_urls: Mapping[str, str],
    ) -> dict[str, str]:
        """The credentials ``build_request`` gets. Most providers take the configured key as it is;
        one that must exchange it for an access token first does so here (raise ``SignInFailed``).
        ``base_urls`` are ``settings.PROVIDER_BASE_URLS``: a token service's URL may be overridden there."""
        return credentials

    def forget_sign_in(self, credentials: dict[str, str]) -> None:
        """The provider refused (401/403) what ``sign_in`` returned: drop any cached access token in
        ``credentials`` so that the next query signs in afresh instead of reusing a revoked one."""


# Refresh a cached access token this long before it expires, so no query carries one that dies in flight.
TOKEN_REFRESH_MARGIN_SECONDS = 300


class TokenCache:
    """Access tokens a provider's ``sign_in`` obtained, by a key naming the credentials they came
    from; in this process, until ``TOKEN_REFRESH_MARGIN_SECONDS`` before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[Any, tuple[str, float]] = {}  # key → (token, expiry on time.monotonic())

    def get(self, key: Any) -> str | None:
        cached = self._tokens.get(key)
        if cached is not None and cached[1] - TOKEN_REFRESH_MARGIN_SECONDS > time.monotonic():
            return cached[0]
        return None

    def put(self, key: Any, token: str, expires_in: float) -> None:
        self._tokens[key] = (token, time.monotonic() + expires_in)

    def forget(self, token: str | None) -> None:
        """Drop ``token`` (the provider refused it) wherever it is cached."""
        for key, cached in list(self._tokens.items()):
            if cached[0] == token:
                del self._tokens[key]


# --- OpenAI-shaped request checks (reference §4.2), shared by every provider ----------------------


def check_openai_request(task: str, body: Any) -> dict[str, Any]:
    """The client's request, checked for the task's required fields; a copy with the Databricks-only
    fields removed and ``extra_params`` merged in (they are meant for the provider)."""
    if not isinstance(body, dict):
        raise RequestRejected("the request body must be a JSON object")
    if task == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestRejected("a chat request needs 'messages': a non-empty array of {role, content}")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestRejected(f"messages[{i}] must be an object with a 'role'")
    elif task == COMPLETIONS:
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
            raise RequestRejected("a completions request needs 'prompt': a string or an array of strings")
    elif task == EMBEDDINGS:
        value = body.get("input")
        if not (isinstance(value, str) or (isinstance(value, list) and value)):
            raise RequestRejected("an embeddings request needs 'input': a string or an array of strings")
        if body.get("stream"):
            raise RequestRejected("embeddings cannot be streamed; leave out 'stream'")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestRejected("'stream' must be true or false")
    for key in ("max_tokens", "n"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RequestRejected(f"'{key}' must be a positive integer")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))):
        raise RequestRejected("'temperature' must be a number")
    out = {k: v for k, v in body.items() if k not in DATABRICKS_ONLY_FIELDS}
    extra = body.get("extra_params")
    if extra is not None:
        if not isinstance(extra, dict):
            raise RequestRejected("'extra_params' must be an object")
        for key, value in extra.items():
            out.setdefault(key, value)
    try:  # Python's decoder reads NaN and Infinity, which no provider's JSON (nor httpx) accepts
        json.dumps(out, allow_nan=False)
    except ValueError:
        raise RequestRejected("numbers must be finite: NaN and Infinity are not JSON") from None
    return out


def iter_secret_fields(
    fields: tuple[Field, ...], config: dict[str, Any], prefix: str = ""
) -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(path, the dict holding it, field name)`` for every secret field of a parsed config block;
    nested ones have dotted paths (``api_key_auth.value``). The dict holds the field under its name
    (a reference) or under ``<name>_plaintext``, or not at all."""
    for spec in fields:
        if spec.fields is not None:
            nested = config.get(spec.name)
            if isinstance(nested, dict):
                yield from iter_secret_fields(spec.fields, nested, f"{prefix}{spec.name}.")
        elif spec.secret:
            yield f"{prefix}{spec.name}", config, spec.name


def has_secret(config: dict[str, Any], name: str) -> bool:
    """Whether a secret field of a config block was given, as a reference or as plaintext."""
    return config.get(name) is not None or config.get(f"{name}_plaintext") is not None


def stop_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RequestRejected("'stop' must be a string or an array of strings")


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now_s() -> int:
    return int(time.time())


def sse(chunk: dict[str, Any] | str) -> bytes:
    """One server-sent event in OpenAI's framing: ``data: <json>`` and a blank line."""
    data = chunk if isinstance(chunk, str) else json.dumps(chunk, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")
