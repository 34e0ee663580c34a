"""An endpoint's AI-gateway page: settings through ``put_ai_gateway`` with the form's ETag (or a
change request under a policy), errors next to their field, and usage for everyone who may see
the endpoint — settings for its managers only.

Personas: alice (editor, created the endpoint: CAN_MANAGE), vera (viewer role: CAN_VIEW), otto
(no role, no grant: outsider).
"""

from __future__ import annotations

import html as html_lib
import json
import re

import pytest

from endpoints_app.gateway.usage import UsageRecorder
from endpoints_app.models import ApprovalPolicy, AuditEvent, ChangeRequest, Endpoint, Role
from endpoints_app.services import ai_gateway, checks
from endpoints_app.services import endpoints as endpoint_services
from tests.test_dashboard_edit import etag_in, make_user
from tests.test_external_models import body_for, create, external, store_secret

pytestmark = pytest.mark.django_db
VALUE = "sk-gateway-page-1a2b3c4d5e6f7a8b"  # the endpoint's provider key: never in a page
URL = "/endpoints/llm/ai-gateway"
CURRENT = {
    "rate_limits": [{"calls": 5, "key": "user", "principal": "bob", "renewal_period": "minute"}],
    "guardrails": {"input": {"invalid_keywords": ["project x", "codename"]}, "output": {"pii": {"behavior": "MASK"}}},
    "usage_tracking_config": {"enabled": True},
}


@pytest.fixture
def llm(api, user) -> Endpoint:
    reference = store_secret(user, "llm-keys", "openai", VALUE)
    model = external(
        "openai", "openai_config", {"openai_api_base": "https://llm.example.com/v1", "openai_api_key": reference}
    )
    create(api, body_for("llm", {"external_model": model}))
    ai_gateway.put_ai_gateway(actor=user, name="llm", body=CURRENT)
    return Endpoint.objects.get(name="llm")


def page(response) -> str:
    text = response.content.decode()
    assert VALUE not in text
    return text


def errors_at(html: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</(?:ul|div)>', html, re.S)
    assert match, f"no error #{element_id} in the page"
    return html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


def settings_form(etag: str, *limits: dict, action: str = "save", **fields: str) -> dict:
    data = {
        "etag": etag,
        "edit_action": action,
        "limits-TOTAL_FORMS": str(len(limits)),
        "limits-INITIAL_FORMS": str(len(limits)),
        "limits-MIN_NUM_FORMS": "0",
        "limits-MAX_NUM_FORMS": "1000",
        "input-pii": "NONE",
        "output-pii": "NONE",
    }
    for i, limit in enumerate(limits):
        data.update({f"limits-{i}-{k}": str(v) for k, v in limit.items()})
    data.update(fields)
    return data


def test_a_manager_sees_the_current_settings_in_the_form(client, user, llm):
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 200
    html = page(response)
    assert etag_in(html) == checks.etag(llm)
    assert 'name="limits-0-calls" value="5"' in html and 'name="limits-0-principal" value="bob"' in html
    assert re.search(r'<option value="user" selected>', html)
    assert "project x\ncodename</textarea>" in html
    assert re.search(r'name="output-pii"[^>]*>.*?<option value="MASK" selected>', html, re.S)
    assert re.search(r'name="usage_tracking"[^>]*checked', html)
    data = json.loads(re.search(r'<script id="ai-gateway-data" type="application/json">(.*?)</script>', html).group(1))
    assert data == {"usageUrl": "/api/2.0/modelfleet/serving-endpoints/llm/usage", "everyone": True}
    assert 'id="usage-requests"' in html and "js/ai-gateway.js" in html and "vendor/chart.js" in html


def test_saving_puts_the_settings_through_the_service_with_the_forms_etag(client, user, llm):
    client.force_login(user)
    etag = etag_in(client.get(URL).content.decode())
    data = settings_form(
        etag,
        {"calls": 5, "key": "user", "principal": "bob"},
        {"calls": 100, "tokens": 5000, "key": "endpoint", "principal": ""},
        **{
            "input-invalid_keywords": "project x\r\n\r\nnew word",
            "input-pii": "BLOCK",
            "usage_tracking": "on",
            "fallbacks": "on",
        },
    )
    data["limits-INITIAL_FORMS"] = "1"  # the second row was added
    response = client.post(URL, data)
    assert response.status_code == 302 and response["Location"] == URL
    assert Endpoint.objects.get(name="llm").ai_gateway == {
        "rate_limits": [
            {"renewal_period": "minute", "key": "user", "calls": 5, "principal": "bob"},
            {"renewal_period": "minute", "key": "endpoint", "calls": 100, "tokens": 5000},
        ],
        "guardrails": {"input": {"invalid_keywords": ["project x", "new word"], "pii": {"behavior": "BLOCK"}}},
        "usage_tracking_config": {"enabled": True},
        "fallback_config": {"enabled": True},
    }
    assert AuditEvent.objects.filter(action="endpoint.update_ai_gateway", object_name="llm", actor=user).count() == 2


def test_removed_rows_and_cleared_fields_are_unset(client, user, llm):
    client.force_login(user)
    etag = etag_in(client.get(URL).content.decode())
    data = settings_form(etag, {"calls": 5, "key": "user", "principal": "bob", "DELETE": "on"})
    response = client.post(URL, data)
    assert response.status_code == 302
    # Usage tracking was on: it is kept as a switch, now off; everything else is gone.
    assert Endpoint.objects.get(name="llm").ai_gateway == {"usage_tracking_config": {"enabled": False}}


def test_add_rate_limit_without_javascript_renders_another_row(client, user, llm):
    client.force_login(user)
    etag = etag_in(client.get(URL).content.decode())
    response = client.post(
        URL, settings_form(etag, {"calls": 5, "key": "user", "principal": "bob"}, action="add_limit")
    )
    assert response.status_code == 200
    html = page(response)
    assert 'name="limits-TOTAL_FORMS" value="2"' in html and 'name="limits-1-calls"' in html
    assert Endpoint.objects.get(name="llm").ai_gateway == CURRENT | {
        "rate_limits": [{"renewal_period": "minute", "key": "user", "calls": 5, "principal": "bob"}],
        "guardrails": {
            "input": {"invalid_keywords": ["project x", "codename"]},
            "output": {"pii": {"behavior": "MASK"}},
        },
    }


def test_service_errors_appear_next_to_their_field(client, user, llm):
    client.force_login(user)
    etag = etag_in(client.get(URL).content.decode())
    response = client.post(URL, settings_form(etag, {"calls": 5, "key": "endpoint", "principal": "bob"}))
    assert response.status_code == 400
    assert "principal does not apply to key 'endpoint'" in errors_at(page(response), "id_limits-0-principal_error")
    response = client.post(URL, settings_form(etag, {"key": "user", "principal": "bob"}))
    assert "needs calls or tokens" in page(response)
    response = client.post(URL, settings_form(etag, inference_table="on"))
    assert response.status_code == 400
    assert "catalog_name and schema_name are required" in errors_at(page(response), "id_inference_table_error")
    response = client.post(URL, settings_form(etag, {"calls": -1, "key": "endpoint"}))
    assert response.status_code == 400 and "must be a whole number of at least 0" in page(response)
    assert Endpoint.objects.get(name="llm").ai_gateway["rate_limits"][0]["principal"] == "bob"  # unchanged


def test_a_change_made_since_the_form_was_opened_is_refused(client, user, llm):
    client.force_login(user)
    etag = etag_in(client.get(URL).content.decode())
    endpoint_services.patch_endpoint_tags(actor=user, name="llm", body={"add_tags": [{"key": "team", "value": "ml"}]})
    response = client.post(URL, settings_form(etag, {"calls": 1, "key": "endpoint"}))
    assert response.status_code == 412 and "changed since you opened this form" in page(response)
    assert Endpoint.objects.get(name="llm").ai_gateway["rate_limits"][0]["calls"] == 5


def test_under_a_policy_saving_proposes_a_change_request(client, user, llm):
    ApprovalPolicy.objects.create(endpoint_name="llm")
    client.force_login(user)
    html = page(client.get(URL))
    assert "saving creates a change request" in html and "Propose change" in html
    response = client.post(URL, settings_form(etag_in(html), {"calls": 1, "key": "endpoint"}))
    change = ChangeRequest.objects.get(endpoint_name="llm")
    assert response.status_code == 302 and response["Location"] == f"/change-requests/{change.pk}/"
    assert change.action == "ai_gateway" and change.status == "PENDING" and change.base_etag == etag_in(html)
    assert change.proposed["rate_limits"] == [{"renewal_period": "minute", "key": "endpoint", "calls": 1}]
    assert Endpoint.objects.get(name="llm").ai_gateway["rate_limits"][0]["calls"] == 5  # not applied yet
    detail = client.get(response["Location"])
    assert detail.status_code == 200 and "now waits for an approver" in page(detail)


def test_a_viewer_sees_the_page_and_their_own_usage_but_no_settings_form(client, django_user_model, llm):
    client.force_login(make_user(django_user_model, "vera", Role.VIEWER))
    response = client.get(URL)
    assert response.status_code == 200
    html = page(response)
    assert "Your usage" in html and 'name="etag"' not in html and "ai-gateway-form" not in html
    assert '"everyone": false' in html
    assert "Only managers of this endpoint (CAN_MANAGE) change these." in html and "&quot;codename&quot;" in html
    assert client.post(URL, settings_form("*", {"calls": 1, "key": "endpoint"})).status_code == 403
    assert Endpoint.objects.get(name="llm").ai_gateway["rate_limits"][0]["calls"] == 5


def test_an_outsider_gets_404(client, django_user_model, llm):
    client.force_login(make_user(django_user_model, "otto", None))
    assert client.get(URL).status_code == 404
    assert client.post(URL, settings_form("*", {"calls": 1, "key": "endpoint"})).status_code == 404
    assert client.get("/endpoints/nope/ai-gateway").status_code == 404
    assert Endpoint.objects.get(name="llm").ai_gateway["rate_limits"][0]["calls"] == 5


def test_other_methods_are_refused(client, user, llm):
    client.force_login(user)
    assert client.put(URL).status_code == 405
    assert client.delete(URL).status_code == 405


def test_the_charts_usage_api_answers_the_session_with_everyone_or_only_their_own(client, django_user_model, user, llm):
    recorder = UsageRecorder()
    for name, tokens in (("alice", 10), ("vera", 4), ("vera", 6)):
        recorder.observe(
            endpoint_id=llm.id, user_name=name, served_entity="gpt-4o", input_tokens=tokens, output_tokens=2
        )
    recorder.flush()
    client.force_login(user)
    usage = client.get("/api/2.0/modelfleet/serving-endpoints/llm/usage?group_by=user").json()["usage"]
    assert [(u["user"], u["requests"], u["input_tokens"]) for u in usage] == [("alice", 1, 10), ("vera", 2, 10)]
    client.force_login(make_user(django_user_model, "vera", Role.VIEWER))
    usage = client.get("/api/2.0/modelfleet/serving-endpoints/llm/usage?group_by=user").json()["usage"]
    assert [(u["user"], u["requests"]) for u in usage] == [("vera", 2)]
