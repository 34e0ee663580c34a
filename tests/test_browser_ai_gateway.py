# ruff: noqa: F811  (the gateway and fakes fixtures are imported from test_external_models)
"""Secrets, an external-model endpoint and its AI gateway in a real browser (Playwright driving
Debian's Chromium).

The whole ASGI app (Django pages and the inference gateway) runs in uvicorn in this process (the
``gateway`` fixture of tests.test_external_models); the provider is a fake OpenAI server on
loopback. Through the pages: create a scope and put the key in it, create an endpoint serving an
OpenAI model with that secret picked, set a rate limit and usage tracking; then real queries go
through the gateway, and the usage charts draw them. The key is in no page along the way.
"""

from __future__ import annotations

import time

import pytest

from endpoints_app.models import Endpoint, UsageRecord
from endpoints_app.services.tokens import create_token
from tests.browser import login, screenshot
from tests.providers import OpenAIServer
from tests.test_external_models import CHAT, KEY, fakes, gateway  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
REFERENCE = "{{secrets/team-keys/openai}}"


def no_key(page) -> None:  # type: ignore[no-untyped-def]
    assert KEY not in page.content()


def test_secret_external_endpoint_rate_limit_and_usage_chart(gateway, fakes, page, user):
    fake = OpenAIServer(KEY)
    fakes.append(fake)
    base = gateway.url
    login(page, base, "alice", "pw-alice-123")

    # 1. A scope, and the provider's key in it (a password input; the page never shows it again).
    page.goto(f"{base}/secrets/")
    page.fill("#id_scope", "team-keys")
    page.click("text=Create scope")
    page.wait_for_url(f"{base}/secrets/team-keys/")
    page.fill("#id_key", "openai")
    page.fill("#id_value", KEY)
    assert page.get_attribute("#id_value", "type") == "password"
    page.click("text=Put secret")
    page.wait_for_url(f"{base}/secrets/team-keys/")
    assert page.inner_text("table.secret-keys tbody th") == "openai"
    assert page.input_value("#id_value") == ""
    no_key(page)
    screenshot(page, "secrets-scope")
    page.goto(f"{base}/secrets/")
    no_key(page)
    screenshot(page, "secrets-list")

    # 2. An endpoint serving OpenAI's gpt-4o, the key picked from the secrets alice may read.
    page.goto(f"{base}/endpoints/new")
    page.fill("#id_name", "llm-chat")
    # (Registered model by default; external when the registry is empty, as in this test alone.)
    page.select_option("#id_entities-0-kind", "model")  # the script switches the fields shown
    assert page.is_visible("#id_entities-0-workload_size") and page.is_hidden("#id_entities-0-external_name")
    page.select_option("#id_entities-0-kind", "external")
    assert page.is_visible("#id_entities-0-external_name") and page.is_hidden("#id_entities-0-workload_size")
    page.select_option("#id_entities-0-provider", "anthropic")
    assert page.is_visible("#id_entities-0-anthropic_config__anthropic_api_key")
    assert page.is_hidden("#id_entities-0-openai_config__openai_api_key")
    page.select_option("#id_entities-0-provider", "openai")
    # A second row from the page's template gets the same switches; removing it gives its share back.
    page.click("text=Add served entity")
    page.select_option("#id_entities-1-kind", "external")
    page.select_option("#id_entities-1-provider", "custom")
    assert page.is_visible("#id_entities-1-custom_provider_config__api_key_auth__value_plaintext")
    page.locator("[data-entity='entities-1'] [data-remove-entity]").click()
    assert page.is_hidden("[data-entity='entities-1']")
    page.fill("#id_entities-0-external_name", "gpt-4o")
    assert page.inner_text("#id_entities-0-traffic_label") == "gpt-4o"  # the split follows the model's name
    page.select_option("#id_entities-0-openai_config__openai_api_key", REFERENCE)
    page.fill("#id_entities-0-openai_config__openai_api_base", f"{fake.url}/v1")
    screenshot(page, "endpoint-create-external")
    page.click("button.primary")
    page.wait_for_url(f"{base}/endpoints/llm-chat/")
    served = Endpoint.objects.get(name="llm-chat").active_config.served_entities.get()
    assert served.external_model["openai_config"]["openai_api_key"] == REFERENCE
    no_key(page)
    page.goto(f"{base}/endpoints/llm-chat/edit")
    assert page.input_value("#id_entities-0-openai_config__openai_api_key") == REFERENCE
    no_key(page)

    # 3. The AI gateway: 3 calls per minute for each user, and usage tracking.
    page.goto(f"{base}/endpoints/llm-chat/ai-gateway")
    page.check("#id_usage_tracking")
    page.click("text=Add rate limit")
    page.fill("#id_limits-0-calls", "3")
    assert page.is_disabled("#id_limits-0-principal")  # "everyone together" takes no principal
    page.select_option("#id_limits-0-key", "user")
    assert page.is_enabled("#id_limits-0-principal")
    screenshot(page, "ai-gateway-settings")
    page.click("text=Save settings")
    page.wait_for_url(f"{base}/endpoints/llm-chat/ai-gateway")
    assert Endpoint.objects.get(name="llm-chat").ai_gateway == {
        "rate_limits": [{"renewal_period": "minute", "key": "user", "calls": 3}],
        "usage_tracking_config": {"enabled": True},
    }

    # 4. Real queries through the gateway to the fake provider: the fourth is over the limit.
    time.sleep(1.2)  # the gateway's route table (with the AI-gateway settings) lives 1 s
    token = create_token(user=user, comment="browser test")[1]
    codes = [gateway.post("/serving-endpoints/llm-chat/invocations", CHAT, token).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"  # the key from the secret
    deadline = time.monotonic() + 10
    while sum(UsageRecord.objects.values_list("requests", flat=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # usage is written once a second

    # 5. The charts draw what was recorded.
    page.reload()
    page.wait_for_function(
        "() => { const c = window.Chart && Chart.getChart('usage-requests');"
        " return c && c.data.datasets[0].data.reduce((a, b) => a + b, 0) >= 3; }"
    )
    tokens = page.evaluate(
        "() => Chart.getChart('usage-tokens').data.datasets.map(d => d.data.reduce((a, b) => a + b, 0))"
    )
    assert tokens[0] > 0 and tokens[1] > 0  # input and output tokens
    assert page.evaluate("() => Chart.getChart('usage-users').data.labels") == ["alice"]
    assert page.inner_text("#usage-user-rows th") == "alice"
    assert "3 requests" in page.inner_text("#usage-status")
    no_key(page)
    screenshot(page, "ai-gateway-usage")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "ai-gateway-phone")
