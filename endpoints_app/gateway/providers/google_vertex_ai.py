"""Google Cloud Vertex AI: OpenAI-shaped chat, completions and embeddings ↔ Vertex AI's Gemini
``generateContent`` and the text-embedding models' ``predict``.

Signing in: ``private_key`` holds a service-account key (the JSON file Google hands out). Its key
signs a JWT (RS256; ``iss`` the account's ``client_email``, ``aud`` its ``token_uri``, scope
``cloud-platform``, one hour) that is POSTed to ``token_uri`` with grant type
``urn:ietf:params:oauth:grant-type:jwt-bearer``; the access token that comes back is kept (per key,
in this process) until ``TOKEN_REFRESH_MARGIN_SECONDS`` before it expires. A token endpoint that
refuses the key answers 502 like any refused key.

Then ``POST https://{region}-aiplatform.googleapis.com/v1/projects/{project_id}/locations/{region}
/publishers/google/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse`` for
``stream: true``) with ``Authorization: Bearer <token>``; the body and answer are translated by
``gemini``. Embeddings: ``:predict`` with ``instances: [{content}]`` (and ``task_type`` when the
request gives one) → ``predictions[].embeddings.values``, whose ``statistics.token_count`` add up
to ``prompt_tokens``; ``dimensions`` becomes ``parameters.outputDimensionality``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway.providers import gemini
from endpoints_app.gateway.providers.base import (
    EMBEDDINGS,
    Field,
    Provider,
    SignInFailed,
    StreamDecoder,
    TokenCache,
    UpstreamRequest,
    join_url,
)
from endpoints_app.gateway.providers.translate import embeddings_answer, input_texts

if TYPE_CHECKING:
    import httpx

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 3600
TOKEN_FIELD = "access_token"  # where sign_in puts the token among the credentials
# A Vertex AI location (us-central1, europe-west4, global): it becomes part of a host name, so
# nothing else (no "evil.example#", no dots) may get in.
REGION = re.compile(r"[a-z]+(-[a-z]+)+[0-9]{1,2}|global")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_uri_of(info: dict[str, Any]) -> str:
    """A key file's ``token_uri``: an http(s) URL (where it may point is the egress policy's call,
    at config time when the key is given in plaintext, and at every connection)."""
    uri = info.get("token_uri") or DEFAULT_TOKEN_URI
    if not isinstance(uri, str) or not uri.lower().startswith(("https://", "http://")):
        raise ValueError("the service-account key file's token_uri is not an http:// or https:// URL")
    return uri


def host_of_region(region: str) -> str:
    """Vertex AI's regional API host (``check_config`` made sure ``region`` is a location)."""
    return "https://aiplatform.googleapis.com" if region == "global" else f"https://{region}-aiplatform.googleapis.com"


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey
    token_uri: str

    @classmethod
    def parse(cls, secret: str) -> ServiceAccount:
        """The service account of a key file; ``ValueError`` naming what is missing, never a value."""
        try:
            info = json.loads(secret)
        except ValueError:
            raise ValueError("the private_key secret is not a service-account key file (JSON)") from None
        if not isinstance(info, dict):
            raise ValueError("the private_key secret is not a service-account key file (JSON object)")
        missing = [f for f in ("client_email", "private_key") if not isinstance(info.get(f), str)]
        if missing:
            raise ValueError(f"the service-account key file has no {' or '.join(missing)}")
        try:
            key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("the service-account key file's private_key is not a PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the service-account key file's private_key is not an RSA key")
        return cls(
            client_email=info["client_email"],
            private_key_id=str(info.get("private_key_id") or ""),
            private_key=key,
            token_uri=token_uri_of(info),
        )

    def assertion(self, now: int) -> str:
        """The signed JWT that asks ``token_uri`` for an access token."""
        header = {"alg": "RS256", "typ": "JWT"}
        if self.private_key_id:
            header["kid"] = self.private_key_id
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
        }
        signing_input = ".".join(_b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims))
        signature = self.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


class GoogleCloudVertexAIProvider(Provider):
    name = "google-cloud-vertex-ai"
    config_key = "google_cloud_vertex_ai_config"
    fields = (
        Field("project_id", required=True),
        Field("region", required=True),
        Field("private_key", secret=True, required=True),
    )

    def __init__(self) -> None:
        # Access tokens by a digest of the key file they were minted with (a rotated key gets its own).
        self._tokens = TokenCache()

    def check_config(self, config: dict[str, Any], where: str) -> None:
        if not REGION.fullmatch(config["region"]):
            raise InvalidParameterValue(
                f"{where}.region '{config['region']}' is not a Vertex AI location (like us-central1, or global)"
            )

    def destinations(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        found = [("region", host_of_region(config["region"]))]
        # A key file given in plaintext is at hand: its token_uri is checked now too (a referenced
        # one is checked when a query connects to it).
        plain = getattr(config.get("private_key_plaintext"), "value", None)
        try:
            info = json.loads(plain) if isinstance(plain, str) else None
        except ValueError:
            info = None
        if isinstance(info, dict) and isinstance(info.get("token_uri"), str):
            found.append(("private_key.token_uri", info["token_uri"]))
        return found

    def forget_sign_in(self, credentials: dict[str, str]) -> None:
        self._tokens.forget(credentials.get(TOKEN_FIELD))

    async def sign_in(
        self,
        *,
        http: httpx.AsyncClient,
        config: dict[str, Any],
        credentials: dict[str, str],
        timeout: httpx.Timeout,
        base_urls: Mapping[str, str],
    ) -> dict[str, str]:
        # The token URL is the key file's own token_uri (base_urls has no say here).
        secret = credentials["private_key"]
        cache_key = hashlib.sha256(secret.encode()).hexdigest()
        cached = self._tokens.get(cache_key)
        if cached is not None:
            return {**credentials, TOKEN_FIELD: cached}
        try:
            account = ServiceAccount.parse(secret)
        except ValueError as exc:
            raise SignInFailed(
                500,
                "INTERNAL_ERROR",
                f"{exc}; an endpoint manager must store the service account's JSON key file in the secret",
            ) from None
        response = await http.post(
            account.token_uri,
            data={"grant_type": JWT_BEARER, "assertion": account.assertion(int(time.time()))},
            headers={"accept": "application/json"},
            timeout=timeout,
        )
        if response.status_code != 200:
            raise self._refused(response.status_code, response.content, response.headers.get("retry-after"))
        try:
            data = response.json()
            token = data["access_token"]
            expires_in = int(data.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise SignInFailed(502, "BAD_GATEWAY", "Google's token endpoint answered without an access token") from None
        self._tokens.put(cache_key, token, expires_in)
        return {**credentials, TOKEN_FIELD: token}

    @staticmethod
    def _refused(status: int, content: bytes, retry_after: str | None) -> SignInFailed:
        # {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}: names no secret.
        try:
            data = json.loads(content)
            said = ": " + ": ".join(str(data[f]) for f in ("error", "error_description") if data.get(f))[:200]
        except (ValueError, TypeError, AttributeError):
            said = ""
        if status in (400, 401, 403):
            return SignInFailed(
                502,
                "BAD_GATEWAY",
                f"Google's token endpoint refused the service-account key (HTTP {status}{said}); "
                "an endpoint manager must update the key or its secret",
            )
        if status == 429:
            headers = {"retry-after": retry_after} if retry_after else {}
            return SignInFailed(429, "REQUEST_LIMIT_EXCEEDED", "Google's token endpoint is rate limiting", headers)
        if status in (502, 503, 504):
            return SignInFailed(
                503, "TEMPORARILY_UNAVAILABLE", f"Google's token endpoint is unavailable (HTTP {status})"
            )
        return SignInFailed(502, "BAD_GATEWAY", f"Google's token endpoint failed (HTTP {status}{said})")

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        return {"authorization": f"Bearer {credentials[TOKEN_FIELD]}"}

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
        region, project = config["region"], config["project_id"]
        host = host_of_region(region)
        path = (
            f"v1/projects/{quote(project, safe='')}/locations/{quote(region, safe='')}"
            f"/publishers/google/models/{quote(model, safe='')}"
        )
        base = join_url(base_url or host, path)
        headers = {"content-type": "application/json", **self.credential_headers(config, credentials)}
        if task == EMBEDDINGS:
            instances: list[dict[str, Any]] = [{"content": text} for text in input_texts(body, "Vertex AI")]
            if isinstance(body.get("task_type"), str):
                for instance in instances:
                    instance["task_type"] = body["task_type"]
            out: dict[str, Any] = {"instances": instances}
            if isinstance(body.get("dimensions"), int):
                out["parameters"] = {"outputDimensionality": body["dimensions"]}
            return UpstreamRequest(url=f"{base}:predict", headers=headers, json=out)
        out = gemini.generate_content_body(task, body, "Vertex AI")
        stream = bool(body.get("stream"))
        url = f"{base}:streamGenerateContent?alt=sse" if stream else f"{base}:generateContent"
        return UpstreamRequest(url=url, headers=headers, json=out, stream=stream)

    def parse_response(self, *, task: str, model: str, data: Any) -> dict[str, Any]:
        if task != EMBEDDINGS:
            return gemini.parse_generate_content(task=task, model=model, data=data)
        if not isinstance(data, dict) or not isinstance(data.get("predictions"), list):
            raise ValueError("the answer has no predictions")
        vectors, tokens = [], 0
        for prediction in data["predictions"]:
            embeddings = prediction["embeddings"]
            vectors.append(embeddings["values"])
            tokens += int((embeddings.get("statistics") or {}).get("token_count") or 0)
        return embeddings_answer(model=model, vectors=vectors, prompt_tokens=tokens)

    def error_message(self, data: Any) -> str:
        return gemini.error_message(data) or super().error_message(data)

    def error_status(self, status: int, data: Any) -> int:
        return gemini.error_status(status, data)

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        return gemini.GenerateContentStreamDecoder(task=task, model=model, candidates=int(body.get("n") or 1))
