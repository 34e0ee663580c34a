"""Providers whose config blocks are validated and stored, but whose wire translation is not
written yet: a query to an endpoint serving one answers 501 NOT_IMPLEMENTED naming the provider.
Moving one to its own module with ``build_request``/``parse_response``/``stream_decoder`` (as in
``anthropic.py``) and ``translated = True`` is all it takes to serve it."""

from __future__ import annotations

from typing import Any

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.gateway.providers.base import CHAT, COMPLETIONS, Field, Provider, has_secret

BEDROCK_PROVIDERS = ("anthropic", "cohere", "ai21labs", "amazon")


class CohereProvider(Provider):
    name = "cohere"
    config_key = "cohere_config"
    fields = (Field("cohere_api_key", secret=True, required=True), Field("cohere_api_base", url=True))
    translated = False


class AI21LabsProvider(Provider):
    name = "ai21labs"
    config_key = "ai21labs_config"
    fields = (Field("ai21labs_api_key", secret=True, required=True),)
    tasks = (CHAT, COMPLETIONS)
    translated = False


class AmazonBedrockProvider(Provider):
    name = "amazon-bedrock"
    config_key = "amazon_bedrock_config"
    fields = (
        Field("aws_region", required=True),
        Field("bedrock_provider", required=True, choices=BEDROCK_PROVIDERS, case_insensitive=True),
        Field("aws_access_key_id", secret=True),
        Field("aws_secret_access_key", secret=True),
        Field("instance_profile_arn"),
        Field("uc_service_credential_name"),
    )
    translated = False

    def check_config(self, config: dict[str, Any], where: str) -> None:
        keys = [has_secret(config, "aws_access_key_id"), has_secret(config, "aws_secret_access_key")]
        if any(keys) and not all(keys):
            raise InvalidParameterValue(f"{where}: aws_access_key_id and aws_secret_access_key go together")
        methods = [
            name
            for name, given in (
                ("aws_access_key_id/aws_secret_access_key", all(keys)),
                ("instance_profile_arn", bool(config.get("instance_profile_arn"))),
                ("uc_service_credential_name", bool(config.get("uc_service_credential_name"))),
            )
            if given
        ]
        if len(methods) != 1:
            raise InvalidParameterValue(
                f"{where}: give exactly one way to authenticate to AWS: aws_access_key_id with aws_secret_access_key, "
                "instance_profile_arn, or uc_service_credential_name"
                + (f" (got {', '.join(methods)})" if methods else "")
            )


class GoogleCloudVertexAIProvider(Provider):
    name = "google-cloud-vertex-ai"
    config_key = "google_cloud_vertex_ai_config"
    fields = (
        Field("project_id", required=True),
        Field("region", required=True),
        Field("private_key", secret=True, required=True),
    )
    translated = False


class PaLMProvider(Provider):
    name = "palm"
    config_key = "palm_config"
    fields = (Field("palm_api_key", secret=True, required=True),)
    translated = False
