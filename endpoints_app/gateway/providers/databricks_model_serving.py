"""Another Databricks-compatible workspace (Databricks itself, or another Modelfleet).

``POST {databricks_workspace_url}/serving-endpoints/{name}/invocations`` with ``Authorization:
Bearer <token>``, where ``name`` (the external model's name) is the remote endpoint. Its
foundation and external model endpoints speak OpenAI's shapes already, so bodies, answers and
stream chunks pass through.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from endpoints_app.gateway.providers.base import Field, join_url
from endpoints_app.gateway.providers.openai_compatible import OpenAICompatible


class DatabricksModelServingProvider(OpenAICompatible):
    name = "databricks-model-serving"
    config_key = "databricks_model_serving_config"
    fields = (
        Field("databricks_workspace_url", required=True, url=True),
        Field("databricks_api_token", secret=True, required=True),
    )
    send_model = False  # the remote endpoint is named in the URL

    def credential_headers(self, config: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
        return {"authorization": f"Bearer {credentials['databricks_api_token']}"}

    def url(self, *, task: str, model: str, config: dict[str, Any], base_url: str) -> str:
        return join_url(config["databricks_workspace_url"], f"serving-endpoints/{quote(model, safe='')}/invocations")
