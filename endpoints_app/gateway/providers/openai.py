"""OpenAI, and Azure OpenAI (``openai_api_type`` ``azure`` or ``azuread``).

OpenAI: ``POST {openai_api_base or https://api.openai.com/v1}/chat/completions`` (or
``/completions``, ``/embeddings``) with ``Authorization: Bearer <key>`` and, when configured,
``OpenAI-Organization``. Azure: ``POST {openai_api_base}/openai/deployments/{deployment}/chat/completions
?api-version={version}`` with the ``api-key`` header (``azure``) or ``Authorization: Bearer <Entra
ID token>`` (``azuread``). Bodies and answers are OpenAI's own, so they pass through; a streamed
OpenAI query asks for the final usage chunk so the gateway can count tokens.

``azuread`` takes either ``openai_api_key`` (an Entra ID access token the caller got) or the
client credentials of an app registration (``microsoft_entra_tenant_id``, ``_client_id``,
``_client_secret``). With the latter, ``sign_in`` POSTs the client-credentials grant to
``{authority}/{tenant}/oauth2/v2.0/token`` for the ``cognitiveservices`` scope; the authority is
``https://login.microsoftonline.com`` unless ``PROVIDER_BASE_URLS`` names a ``microsoft-entra`` URL
(a sovereign cloud, an egress proxy, a test). The access token is kept (per authority, tenant,
client id and secret, in this process) until ``TOKEN_REFRESH_MARGIN_SECONDS`` before it expires;
concurrent queries that find none wait for one sign-in. A token endpoint that refuses the
credentials answers 502 like any refused key, without its message quoting the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway.providers.base import (
    OPENAI_PATHS,
    Field,
    SignInFailed,
    StreamDecoder,
    TokenCache,
    UpstreamRequest,
    has_secret,
    join_url,
)
from endpoints_app.gateway.providers.openai_compatible import OpenAICompatible, PassThroughDecoder

API_TYPES = ("openai", "azure", "azuread")
ENTRA_FIELDS = ("microsoft_entra_client_id", "microsoft_entra_tenant_id", "microsoft_entra_client_secret")
# The PROVIDER_BASE_URLS key that overrides where Entra ID's token endpoint is reached.
ENTRA_SERVICE = "microsoft-entra"
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
TOKEN_FIELD = "entra_access_token"  # where sign_in puts the token among the credentials
# A tenant is a GUID or a domain name (contoso.onmicrosoft.com); it becomes a URL path segment.
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
MAX_DESCRIPTION = 200


def api_type(config: dict[str, Any]) -> str:
    return str(config.get("openai_api_type") or "openai").lower()


def uses_client_credentials(config: dict[str, Any], credentials: Mapping[str, str]) -> bool:
    """Whether the query signs in to Entra ID with the app registration's client credentials."""
    return api_type(config) == "azuread" and "openai_api_key" not in credentials


class OpenAIProvider(OpenAICompatible):
    name = "openai"
    config_key = "openai_config"
    default_base_url = "https://api.openai.com/v1"
    send_model = False  # set in build_request: Azure names the deployment in the URL instead
    fields = (
        Field("openai_api_key", secret=True),
        Field("openai_api_base", url=True),
        Field("openai_api_type", choices=API_TYPES, case_insensitive=True),
        Field("openai_api_version"),
        Field("openai_deployment_name"),
        Field("openai_organization"),
        Field("microsoft_entra_client_id"),
        Field("microsoft_entra_tenant_id"),
        Field("microsoft_entra_client_secret", secret=True),
    )

    def __init__(self) -> None:
        # Entra ID access tokens by (authority, tenant, client id, digest of the secret): a rotated
        # secret gets its own, and an endpoint with a wrong secret never rides on another's token.
        self._tokens = TokenCache()
        # One sign-in at a time per key, so a burst of queries asks Entra ID once (a lock belongs to
        # the event loop that made it).
        self._locks: dict[tuple[str, str, str, str], tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}

    def check_config(self, config: dict[str, Any], where: str) -> None:
        kind = api_type(config)
        if kind in ("azure", "azuread"):
            missing = [
                f for f in ("openai_api_base", "openai_deployment_name", "openai_api_version") if not config.get(f)
            ]
            if missing:
                raise InvalidParameterValue(
                    f"{where}: openai_api_type '{kind}' (Azure OpenAI) needs {', '.join(missing)}"
                )
        entra = [f for f in ENTRA_FIELDS if has_secret(config, f)]
        if entra and kind != "azuread":
            raise InvalidParameterValue(
                f"{where}: {', '.join(entra)} apply only with openai_api_type 'azuread' (Microsoft Entra ID)"
            )
        has_key = has_secret(config, "openai_api_key")
        if kind != "azuread":
            if not has_key:
                raise InvalidParameterValue(f"{where}.openai_api_key (or openai_api_key_plaintext) is required")
            return
        if has_key == bool(entra) or (entra and len(entra) != len(ENTRA_FIELDS)):
            raise InvalidParameterValue(
                f"{where}: with openai_api_type 'azuread' give exactly one of openai_api_key (or "
                "openai_api_key_plaintext, an Entra ID access token), or all of microsoft_entra_client_id, "
                "microsoft_entra_tenant_id and microsoft_entra_client_secret (or microsoft_entra_client_secret_plaintext)"
            )
        tenant = config.get("microsoft_entra_tenant_id")
        if entra and not (isinstance(tenant, str) and TENANT.fullmatch(tenant)):
            raise InvalidParameterValue(
                f"{where}.microsoft_entra_tenant_id must be a tenant id (a GUID) or its domain name"
            )

    # --- Microsoft Entra ID sign-in ---------------------------------------------------------------

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
        if not uses_client_credentials(config, credentials):
            return credentials
        secret = credentials.get("microsoft_entra_client_secret")
        if not secret:
            raise SignInFailed(
                500,
                "INTERNAL_ERROR",
                "the microsoft_entra_client_secret is empty; an endpoint manager must store the client secret",
            )
        authority = (base_urls.get(ENTRA_SERVICE) or ENTRA_AUTHORITY).rstrip("/")
        tenant, client_id = config["microsoft_entra_tenant_id"], config["microsoft_entra_client_id"]
        key = (authority, tenant, client_id, hashlib.sha256(secret.encode()).hexdigest())
        token = self._tokens.get(key)
        if token is None:
            async with self._lock(key):
                token = self._tokens.get(key)  # another query may have signed in meanwhile
                if token is None:
                    token = await self._request_token(http, authority, tenant, client_id, secret, timeout, key)
        return {**credentials, TOKEN_FIELD: token}

    def _lock(self, key: tuple[str, str, str, str]) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        held = self._locks.get(key)
        if held is None or held[0] is not loop:
            held = self._locks[key] = (loop, asyncio.Lock())
        return held[1]

    async def _request_token(
        self,
        http: httpx.AsyncClient,
        authority: str,
        tenant: str,
        client_id: str,
        secret: str,
        timeout: httpx.Timeout,
        key: tuple[str, str, str, str],
    ) -> str:
        url = f"{authority}/{quote(tenant, safe='')}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": ENTRA_SCOPE,
        }
        try:
            response = await http.post(url, data=form, headers={"accept": "application/json"}, timeout=timeout)
        except httpx.TimeoutException:
            raise SignInFailed(
                504, "DEADLINE_EXCEEDED", "Microsoft Entra ID's token endpoint did not answer in time"
            ) from None
        except httpx.HTTPError as exc:
            raise SignInFailed(
                502, "BAD_GATEWAY", f"Cannot reach Microsoft Entra ID's token endpoint: {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            raise self._refused(response.status_code, response.content, response.headers.get("retry-after"), secret)
        try:
            data = response.json()
            token = data["access_token"]
            expires_in = int(data.get("expires_in") or 3600)  # Entra's v1 endpoint sent it as a string
            if not isinstance(token, str) or not token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise SignInFailed(
                502, "BAD_GATEWAY", "Microsoft Entra ID's token endpoint answered without an access token"
            ) from None
        self._tokens.put(key, token, expires_in)
        return token

    @staticmethod
    def _refused(status: int, content: bytes, retry_after: str | None, secret: str) -> SignInFailed:
        # {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret
        # provided. …\r\nTrace ID: …"}: its first line names the cause; the secret is masked anyway.
        try:
            data = json.loads(content)
            error = str(data.get("error") or "")
            description = str(data.get("error_description") or "").split("\n")[0].strip()
        except (ValueError, AttributeError):
            error = description = ""
        said = ": ".join(p for p in (error, description) if p).replace(secret, "***")[:MAX_DESCRIPTION]
        said = f": {said}" if said else ""
        if status in (400, 401, 403):
            return SignInFailed(
                502,
                "BAD_GATEWAY",
                f"Microsoft Entra ID refused the client credentials (HTTP {status}{said}); an endpoint manager "
                "must update microsoft_entra_tenant_id, microsoft_entra_client_id or the client secret",
            )
        if status == 429:
            headers = {"retry-after": retry_after} if retry_after else {}
            return SignInFailed(
                429, "REQUEST_LIMIT_EXCEEDED", "Microsoft Entra ID's token endpoint is rate limiting", headers
            )
        if status >= 500:
            return SignInFailed(
                503, "TEMPORARILY_UNAVAILABLE", f"Microsoft Entra ID's token endpoint is unavailable (HTTP {status})"
            )
        return SignInFailed(502, "BAD_GATEWAY", f"Microsoft Entra ID's token endpoint failed (HTTP {status}{said})")

    # --- requests -------------------------------------------------------------------------------

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        kind = api_type(config)
        if uses_client_credentials(config, credentials):
            return {"authorization": f"Bearer {credentials[TOKEN_FIELD]}"}
        key = credentials["openai_api_key"]
        if kind == "azure":
            return {"api-key": key}
        headers = {"authorization": f"Bearer {key}"}
        if config.get("openai_organization") and kind == "openai":
            headers["openai-organization"] = config["openai_organization"]
        return headers

    def url(self, *, task: str, model: str, config: dict[str, Any], base_url: str) -> str:
        if api_type(config) == "openai":
            return join_url(config.get("openai_api_base") or base_url, OPENAI_PATHS[task])
        deployment = config["openai_deployment_name"]
        path = f"openai/deployments/{deployment}/{OPENAI_PATHS[task]}"
        return join_url(config["openai_api_base"], path) + f"?api-version={config['openai_api_version']}"

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
        request = super().build_request(
            task=task, model=model, config=config, credentials=credentials, body=body, base_url=base_url
        )
        if api_type(config) == "openai":
            # OpenAI takes the model in the body; Azure names the deployment in the URL instead.
            request.json["model"] = model
            if request.stream:
                # Ask for the final usage chunk, so streamed answers are counted too.
                request.json["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return request

    def stream_decoder(self, *, task: str, model: str, body: dict[str, Any]) -> StreamDecoder:
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        return PassThroughDecoder(hide_usage_chunk=not asked)
