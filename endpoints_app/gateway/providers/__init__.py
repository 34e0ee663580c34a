"""External model providers, one module each (see ``base.Provider`` for the interface).

``PROVIDERS`` maps the ``external_model.provider`` value (reference §2.8) to its provider. A new
provider is one module with a ``Provider`` subclass, added here.
"""

from __future__ import annotations

from endpoints_app.gateway.providers.ai21labs import AI21LabsProvider
from endpoints_app.gateway.providers.amazon_bedrock import AmazonBedrockProvider
from endpoints_app.gateway.providers.anthropic import AnthropicProvider
from endpoints_app.gateway.providers.base import TASKS, Provider
from endpoints_app.gateway.providers.cohere import CohereProvider
from endpoints_app.gateway.providers.custom import CustomProvider
from endpoints_app.gateway.providers.databricks_model_serving import DatabricksModelServingProvider
from endpoints_app.gateway.providers.google_vertex_ai import GoogleCloudVertexAIProvider
from endpoints_app.gateway.providers.openai import OpenAIProvider
from endpoints_app.gateway.providers.palm import PaLMProvider

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        AI21LabsProvider(),
        AmazonBedrockProvider(),
        AnthropicProvider(),
        CohereProvider(),
        CustomProvider(),
        DatabricksModelServingProvider(),
        GoogleCloudVertexAIProvider(),
        OpenAIProvider(),
        PaLMProvider(),
    )
}


def get_provider(name: str) -> Provider | None:
    return PROVIDERS.get(name)


__all__ = ["PROVIDERS", "TASKS", "Provider", "get_provider"]
