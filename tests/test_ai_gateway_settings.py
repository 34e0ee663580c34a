"""``PUT …/ai-gateway``: validation, storage, If-Match, approvals, audit — and the SDK's put_ai_gateway."""

from __future__ import annotations

import pytest

from endpoints_app.models import ApprovalPolicy, AuditEvent, ChangeRequest, Endpoint, Role, UserProfile
from endpoints_app.services import changes
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db
URL = "/api/2.0/serving-endpoints/llm/ai-gateway"
SETTINGS = {
    "rate_limits": [
        {"calls": 100, "renewal_period": "minute"},
        {"tokens": 5000, "renewal_period": "minute", "key": "user"},
        {"calls": 10, "renewal_period": "minute", "key": "user_group", "principal": "interns"},
    ],
    "guardrails": {
        "input": {"invalid_keywords": ["falcon"], "pii": {"behavior": "BLOCK"}},
        "output": {"pii": {"behavior": "MASK"}},
    },
    "usage_tracking_config": {"enabled": True},
    "fallback_config": {"enabled": True},
    "inference_table_config": {"enabled": True, "catalog_name": "main", "schema_name": "logs"},
}
# As stored and answered: the default key is filled in.
STORED = {**SETTINGS, "rate_limits": [{**SETTINGS["rate_limits"][0], "key": "endpoint"}, *SETTINGS["rate_limits"][1:]]}


@pytest.fixture
def llm(api, registered_models) -> Endpoint:
    from tests.test_api_endpoints import create, mark_ready

    create(api, endpoint_body("llm", (registered_models["iris"], "1")))
    mark_ready("llm")
    return Endpoint.objects.get(name="llm")


def test_it_stores_the_settings_and_the_endpoint_shows_them(api, llm):
    response = api.put(URL, SETTINGS, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == STORED
    assert api.get("/api/2.0/serving-endpoints/llm").json()["ai_gateway"] == STORED
    event = AuditEvent.objects.filter(action="endpoint.update_ai_gateway").get()
    assert event.before == {"ai_gateway": None} and event.after == {"ai_gateway": STORED}


def test_an_empty_body_unsets_them(api, llm):
    api.put(URL, SETTINGS, format="json")
    response = api.put(URL, {}, format="json")
    assert response.status_code == 200 and response.json() == {}
    assert "ai_gateway" not in api.get("/api/2.0/serving-endpoints/llm").json()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"rate_limits": [{"calls": 5}]}, "ai_gateway.rate_limits[0].renewal_period"),
        ({"rate_limits": [{"calls": 5, "renewal_period": "minute", "key": "planet"}]}, "key must be one of"),
        ({"guardrails": {"input": {"safety": True}}}, "safety"),
        ({"guardrails": {"output": {"pii": {"behavior": "SHOUT"}}}}, "pii.behavior"),
        ({"fallback_config": {}}, "fallback_config.enabled is required"),
        ({"usage_tracking_config": {"enabled": "yes"}}, "true or false"),
        ({"inference_table_config": {"enabled": True}}, "catalog_name and schema_name"),
        ({"colour": "blue"}, "unknown fields: colour"),
    ],
)
def test_bad_settings_are_400_and_change_nothing(api, llm, body, needle):
    api.put(URL, {"usage_tracking_config": {"enabled": True}}, format="json")
    response = api.put(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE" and needle in response.json()["message"]
    llm.refresh_from_db()
    assert llm.ai_gateway == {"usage_tracking_config": {"enabled": True}}


def test_the_inference_table_must_be_disabled_before_renaming(api, llm):
    api.put(URL, {"inference_table_config": SETTINGS["inference_table_config"]}, format="json")
    renamed = {"inference_table_config": {"enabled": True, "catalog_name": "other", "schema_name": "logs"}}
    response = api.put(URL, renamed, format="json")
    assert response.status_code == 400 and "disable the inference table" in response.json()["message"]


def test_creating_with_bad_settings_is_refused(api, registered_models):
    body = endpoint_body("llm2", (registered_models["iris"], "1")) | {"ai_gateway": {"rate_limits": [{"calls": -1}]}}
    response = api.post("/api/2.0/serving-endpoints", body, format="json")
    assert response.status_code == 400 and "rate_limits" in response.json()["message"]
    assert not Endpoint.objects.filter(name="llm2").exists()


def test_a_stale_if_match_is_412(api, llm):
    etag = api.get("/api/2.0/serving-endpoints/llm")["ETag"]
    assert api.put(URL, SETTINGS, format="json", HTTP_IF_MATCH=etag).status_code == 200
    response = api.put(URL, {}, format="json", HTTP_IF_MATCH=etag)
    assert response.status_code == 412 and response.json()["error_code"] == "PRECONDITION_FAILED"


def test_under_a_policy_an_editor_must_propose_and_an_approver_applies(api, llm, user, django_user_model):
    ApprovalPolicy.objects.create(endpoint_name="llm")
    response = api.put(URL, SETTINGS, format="json")
    assert response.status_code == 403 and "--action ai-gateway" in response.json()["message"]
    proposed = api.post(
        "/api/2.0/modelfleet/change-requests",
        {"endpoint_name": "llm", "action": "ai_gateway", "body": SETTINGS},
        format="json",
    )
    assert proposed.status_code == 200, proposed.content
    assert '"usage_tracking_config"' in proposed.json()["diff"]
    approver = django_user_model.objects.create_user("ann", "ann@example.com", "pw-123456789")
    UserProfile.objects.create(user=approver, role=Role.APPROVER)
    change = changes.approve(actor=approver, request=ChangeRequest.objects.get(pk=proposed.json()["id"]))
    assert change.status == "APPLIED"
    llm.refresh_from_db()
    assert llm.ai_gateway == STORED


def test_a_bad_proposal_is_refused_when_proposed(api, llm):
    response = api.post(
        "/api/2.0/modelfleet/change-requests",
        {"endpoint_name": "llm", "action": "ai_gateway", "body": {"fallback_config": {}}},
        format="json",
    )
    assert response.status_code == 400 and not ChangeRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_sdk_puts_ai_gateway_settings(live_server, api, llm, token):
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import (
        AiGatewayRateLimit,
        AiGatewayRateLimitKey,
        AiGatewayRateLimitRenewalPeriod,
        AiGatewayUsageTrackingConfig,
    )

    w = WorkspaceClient(host=live_server.url, token=token)
    result = w.serving_endpoints.put_ai_gateway(
        "llm",
        rate_limits=[
            AiGatewayRateLimit(
                renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE, calls=7, key=AiGatewayRateLimitKey.USER
            )
        ],
        usage_tracking_config=AiGatewayUsageTrackingConfig(enabled=True),
    )
    assert result.rate_limits[0].calls == 7 and result.usage_tracking_config.enabled is True
    assert w.serving_endpoints.get("llm").ai_gateway.rate_limits[0].key == AiGatewayRateLimitKey.USER


@pytest.mark.django_db(transaction=True)
def test_the_cli_puts_ai_gateway_settings(live_server, llm, token, monkeypatch, capsys):
    import json

    from endpoints_app.cli.main import main

    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", token)
    code = main(["serving-endpoints", "put-ai-gateway", "llm", "--json", '{"fallback_config": {"enabled": true}}'])
    assert code == 0 and json.loads(capsys.readouterr().out) == {"fallback_config": {"enabled": True}}
    llm.refresh_from_db()
    assert llm.ai_gateway == {"fallback_config": {"enabled": True}}
    assert main(["serving-endpoints", "put-ai-gateway", "llm", "--json", '{"fallback_config": {}}']) == 1
    assert "fallback_config.enabled is required" in capsys.readouterr().err
