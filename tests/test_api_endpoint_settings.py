"""An endpoint's settings beside its config, through the REST API in process: legacy rate limits
(in a create and ``PUT …/rate-limits``, stored as AI-gateway rate limits), email notifications,
telemetry config; and the Databricks routes Modelfleet answers with a clear 400 (provisioned
throughput, ``/api/2.0/external-function``). Live clients: tests/test_client_sdk_extras.py and
tests/test_client_mlflow_deployments.py.
"""

from __future__ import annotations

import pytest

from endpoints_app.models import AuditEvent, Endpoint
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create

pytestmark = pytest.mark.django_db
URL = "/api/2.0/serving-endpoints"
PER_USER = {"calls": 10, "key": "user", "renewal_period": "minute"}


@pytest.fixture
def churn(api, registered_models) -> Endpoint:
    create(api, endpoint_body("churn", (registered_models["iris"], "1")))
    return Endpoint.objects.get(name="churn")


# --- legacy rate limits -----------------------------------------------------------------------------


def test_a_creates_legacy_rate_limits_become_ai_gateway_rate_limits(api, registered_models):
    body = endpoint_body("limited", (registered_models["iris"], "1"))
    body["rate_limits"] = [{"calls": "20", "renewal_period": "minute"}, PER_USER]
    created = create(api, body)
    assert created["ai_gateway"]["rate_limits"] == [
        {"calls": 20, "key": "endpoint", "renewal_period": "minute"},
        {"calls": 10, "key": "user", "renewal_period": "minute"},
    ]


def test_legacy_rate_limits_join_the_other_ai_gateway_settings_of_a_create(api, registered_models):
    body = endpoint_body("limited", (registered_models["iris"], "1"))
    body["ai_gateway"] = {"usage_tracking_config": {"enabled": True}}
    body["rate_limits"] = [PER_USER]
    assert create(api, body)["ai_gateway"] == {"usage_tracking_config": {"enabled": True}, "rate_limits": [PER_USER]}


@pytest.mark.parametrize(
    ("rate_limits", "ai_gateway", "says"),
    [
        ([PER_USER], {"rate_limits": [PER_USER]}, "give rate limits once"),
        ([{"calls": 5, "renewal_period": "hour"}], None, "renewal_period"),
        ([{"renewal_period": "minute"}], None, "calls is required"),
        ([{"calls": 5, "key": "user_group", "renewal_period": "minute"}], None, "'user' or 'endpoint'"),
        ([{"calls": 5, "tokens": 9, "renewal_period": "minute"}], None, "unknown fields: tokens"),
        ({"calls": 5}, None, "must be an array"),
    ],
)
def test_bad_legacy_rate_limits_are_refused(api, registered_models, rate_limits, ai_gateway, says):
    body = endpoint_body("limited", (registered_models["iris"], "1"))
    body["rate_limits"] = rate_limits
    if ai_gateway:
        body["ai_gateway"] = ai_gateway
    response = api.post(URL, body, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert says in response.json()["message"]
    assert not Endpoint.objects.filter(name="limited").exists()


def test_put_rate_limits_replaces_the_rate_limits_and_keeps_the_other_settings(api, churn):
    guard = {
        "guardrails": {"input": {"invalid_keywords": ["secret"]}},
        "rate_limits": [{"tokens": 500, "key": "endpoint", "renewal_period": "minute"}],
    }
    assert api.put(f"{URL}/churn/ai-gateway", guard, format="json").status_code == 200
    response = api.put(f"{URL}/churn/rate-limits", {"rate_limits": [PER_USER]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"rate_limits": [PER_USER]}
    stored = Endpoint.objects.get(name="churn").ai_gateway
    assert stored["rate_limits"] == [PER_USER] and stored["guardrails"]["input"]["invalid_keywords"] == ["secret"]
    assert AuditEvent.objects.filter(action="endpoint.update_rate_limits", object_name="churn").exists()
    cleared = api.put(f"{URL}/churn/rate-limits", {}, format="json")
    assert cleared.json() == {"rate_limits": []} and Endpoint.objects.get(name="churn").ai_gateway["rate_limits"] == []


def test_put_rate_limits_checks_if_match_and_the_body(api, churn):
    stale = api.put(f"{URL}/churn/rate-limits", {"rate_limits": [PER_USER]}, format="json", HTTP_IF_MATCH='"old"')
    assert stale.status_code == 412
    bad = api.put(
        f"{URL}/churn/rate-limits", {"rate_limits": [{"calls": -1, "renewal_period": "minute"}]}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert api.put(f"{URL}/missing/rate-limits", {"rate_limits": []}, format="json").status_code == 404


# --- notifications and telemetry --------------------------------------------------------------------


def test_update_notifications_sets_and_clears_the_email_lists(api, churn):
    body = {
        "email_notifications": {"on_update_failure": ["ops@example.com", "ops@example.com"], "on_update_success": []}
    }
    response = api.patch(f"{URL}/churn/notifications", body, format="json")
    assert response.status_code == 200, response.content
    expected = {"on_update_failure": ["ops@example.com"], "on_update_success": []}
    assert response.json() == {"name": "churn", "email_notifications": expected}
    assert api.get(f"{URL}/churn").json()["email_notifications"] == expected
    assert AuditEvent.objects.filter(action="endpoint.update_email_notifications").count() == 1
    assert api.patch(f"{URL}/churn/notifications", {}, format="json").json() == {"name": "churn"}
    assert Endpoint.objects.get(name="churn").email_notifications is None


@pytest.mark.parametrize(
    "notifications",
    [{"on_update_failure": ["not-an-email"]}, {"on_update_failure": "ops@example.com"}, {"on_failure": []}, []],
)
def test_bad_notifications_are_refused(api, churn, notifications):
    response = api.patch(f"{URL}/churn/notifications", {"email_notifications": notifications}, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_patch_telemetry_config_sets_it_and_an_empty_body_removes_it(api, churn):
    telemetry = {
        "enabled_telemetry_features": ["TELEMETRY_FEATURE_LOGS"],
        "inference_table_config": {"name": "main.serving.churn_payloads", "sampling_fraction": 0.25},
    }
    response = api.patch(f"{URL}/churn/telemetry-config", {"telemetry_config": telemetry}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "churn" and response.json()["telemetry_config"] == telemetry
    removed = api.patch(f"{URL}/churn/telemetry-config", {}, format="json")
    assert removed.status_code == 200 and "telemetry_config" not in removed.json()


@pytest.mark.parametrize(
    "telemetry",
    [
        {"inference_table_config": {"sampling_fraction": 1.5}},
        {"inference_table_config": {"name": "no-dots"}},
        {"enabled_telemetry_features": ["TELEMETRY_FEATURE_EVERYTHING"]},
        {"table_names": {"logs_table": "a.b"}},
        {"unknown": True},
    ],
)
def test_bad_telemetry_configs_are_refused_at_create_and_patch(api, churn, registered_models, telemetry):
    response = api.patch(f"{URL}/churn/telemetry-config", {"telemetry_config": telemetry}, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    body = endpoint_body("other", (registered_models["iris"], "1"))
    body["telemetry_config"] = telemetry
    assert api.post(URL, body, format="json").status_code == 400


# --- not supported: a clear 400 ---------------------------------------------------------------------


def test_provisioned_throughput_routes_answer_not_supported(api, churn):
    created = api.post(f"{URL}/pt", {"name": "llama", "config": {"served_entities": []}}, format="json")
    assert created.status_code == 400 and created.json()["error_code"] == "BAD_REQUEST"
    assert (
        "Provisioned-throughput endpoints" in created.json()["message"] and "not supported" in created.json()["message"]
    )
    updated = api.put(f"{URL}/pt/churn/config", {"config": {}}, format="json")
    assert updated.status_code == 400 and "not supported" in updated.json()["message"]
    assert api.post(f"{URL}/churn", {}, format="json").status_code == 405  # POST means nothing for any other name


def test_an_endpoint_may_still_be_named_pt(api, registered_models):
    create(api, endpoint_body("pt", (registered_models["iris"], "1")))
    assert api.get(f"{URL}/pt").json()["name"] == "pt"
    assert api.delete(f"{URL}/pt").status_code == 200


def test_external_function_answers_not_supported_even_for_text(api):
    response = api.post(
        "/api/2.0/external-function",
        {"connection_name": "c", "method": "GET", "path": "/"},
        format="json",
        HTTP_ACCEPT="text/plain",
    )
    assert response.status_code == 400
    assert "Unity Catalog connections are not supported" in response.json()["message"]


def test_the_list_and_create_answer_with_a_trailing_slash(api, registered_models):
    assert (
        api.post(f"{URL}/", endpoint_body("slashed", (registered_models["iris"], "1")), format="json").status_code
        == 200
    )
    assert [e["name"] for e in api.get(f"{URL}/").json()["endpoints"]] == ["slashed"]
