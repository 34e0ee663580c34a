"""OpenAI, and Azure OpenAI (``openai_api_type`` ``azure`` or ``azuread``).

OpenAI: ``POST {openai_api_base or https://api.openai.com/v1}/chat/completions`` (or
``/completions``, ``/embeddings``) with ``Authorization: Bearer <key>`` and, when configured,
``OpenAI-Organization``. Azure: ``POST {openai_api_base}/openai/deployments/{deployment}/chat/completions
?api-version={version}`` with the ``api-key`` header (``azure``) or ``Authorization: Bearer <Entra
ID token>`` (``azuread``). Bodies and answers are OpenAI's own, so they pass through; a streamed
OpenAI query asks for the final usage chunk so the gateway can count tokens.
"""

from __future__ import annotations

from typing import Any

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway.providers.base import (
    OPENAI_PATHS,
    Field,
    NotTranslated,
    StreamDecoder,
    has_secret,
    join_url,
)
from endpoints_app.gateway.providers.openai_compatible import OpenAICompatible, PassThroughDecoder

API_TYPES = ("openai", "azure", "azuread")
ENTRA_FIELDS = ("microsoft_entra_client_id", "microsoft_entra_tenant_id", "microsoft_entra_client_secret")


def api_type(config: dict[str, Any]) -> str:
    return str(config.get("openai_api_type") or "openai").lower()


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
        if has_secret(config, "openai_api_key"):
            return
        if kind == "azuread":
            if len(entra) != len(ENTRA_FIELDS):
                raise InvalidParameterValue(
                    f"{where}: with openai_api_type 'azuread' give openai_api_key (or openai_api_key_plaintext), "
                    "or all of microsoft_entra_client_id, microsoft_entra_tenant_id and microsoft_entra_client_secret"
                )
            return
        raise InvalidParameterValue(f"{where}.openai_api_key (or openai_api_key_plaintext) is required")

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        key = credentials.get("openai_api_key")
        kind = api_type(config)
        if key is None:
            raise NotTranslated(
                "signing in to Azure OpenAI with Microsoft Entra client credentials is not supported yet; "
                "set openai_api_key to an Entra ID access token (openai_api_type 'azuread') or to an API key"
            )
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

    def build_request(self, *, task, model, config, credentials, body, base_url):  # type: ignore[no-untyped-def]
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
