"""The audit log: every mutating action recorded with actor, source, before and after; append-only;
admins read, filter and export it; tokens and passwords never appear."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from endpoints_app import audit
from endpoints_app.models import AppendOnlyError, AuditEvent
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready

pytestmark = pytest.mark.django_db
URL = "/api/2.0/modelfleet/audit-events"


@pytest.fixture
def admin_api(django_user_model) -> APIClient:
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-12345")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=admin)[1]}")
    return client


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def test_endpoint_changes_are_audited_with_before_and_after(api, registered_models, token):
    iris = registered_models["iris"]
    create(api, endpoint_body("audited", (iris, "1")))
    mark_ready("audited")
    api.put("/api/2.0/serving-endpoints/audited/config", endpoint_body("x", (iris, "2"))["config"], format="json")
    api.patch("/api/2.0/serving-endpoints/audited/tags", {"add_tags": [{"key": "env", "value": "prod"}]}, format="json")
    api.delete("/api/2.0/serving-endpoints/audited")
    assert [a for a in actions() if a.startswith("endpoint.")] == [
        "endpoint.create",
        "endpoint.config_applied",
        "endpoint.update_config",
        "endpoint.tags",
        "endpoint.delete",
    ]
    update = AuditEvent.objects.get(action="endpoint.update_config")
    assert update.actor_name == "alice" and update.source == "127.0.0.1"
    assert update.before["config"]["served_entities"][0]["entity_version"] == "1"
    assert update.after["pending_config"]["served_entities"][0]["entity_version"] == "2"
    tags = AuditEvent.objects.get(action="endpoint.tags")
    assert tags.before == {} and tags.after == {"env": "prod"}
    # No token anywhere in the log.
    dump = json.dumps(list(AuditEvent.objects.values("before", "after", "object_name")))
    assert token not in dump


def test_a_rejected_change_writes_nothing(api, registered_models):
    create(api, endpoint_body("strict", (registered_models["iris"], "1")))
    count = AuditEvent.objects.count()
    api.put("/api/2.0/serving-endpoints/strict/config", {"served_entities": []}, format="json")
    assert AuditEvent.objects.count() == count


def test_failed_logins_are_audited_without_the_secret(anon, django_user_model, client):
    anon.credentials(HTTP_AUTHORIZATION="Bearer mf-secret-guess-1234567890")
    assert anon.get("/api/2.0/serving-endpoints").status_code == 401
    event = AuditEvent.objects.get(action="auth.failed")
    assert "mf-secret-guess-1234567890" not in json.dumps([event.object_name, event.before, event.after])
    django_user_model.objects.create_user("carol", "c@example.com", "right-password-1")
    client.post("/admin/login/", {"username": "carol", "password": "wrong-password-9"})
    failed = AuditEvent.objects.filter(action="auth.failed", object_type="user").get()
    assert failed.object_name == "carol" and "wrong-password-9" not in json.dumps(failed.after)


def test_tokens_are_audited_by_hint_only(user):
    _, raw = create_token(user=user, comment="ci")
    event = AuditEvent.objects.filter(action="token.create").last()
    assert event.after == {"hint": raw[:8], "comment": "ci"}
    assert raw not in json.dumps(event.after)


def test_audit_rows_cannot_be_changed_or_deleted(user):
    create_token(user=user)
    event = AuditEvent.objects.first()
    event.action = "forged"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update(action="forged")


def test_admins_filter_page_and_export(admin_api, api, registered_models):
    for i in range(3):
        create(api, endpoint_body(f"ep-{i}", (registered_models["iris"], "1")))
    body = admin_api.get(URL, {"action": "endpoint.create", "limit": 2}).json()
    assert [e["object_name"] for e in body["events"]] == ["ep-2", "ep-1"]
    rest = admin_api.get(URL, {"action": "endpoint.create", "limit": 2, "page_token": body["next_page_token"]}).json()
    assert [e["object_name"] for e in rest["events"]] == ["ep-0"] and "next_page_token" not in rest
    assert admin_api.get(URL, {"actor": "alice", "object_type": "endpoint"}).json()["events"]
    export = admin_api.get(URL, {"format": "jsonl", "action": "endpoint.create"})
    lines = [json.loads(line) for line in b"".join(export.streaming_content).decode().splitlines()]
    assert [e["object_name"] for e in lines] == ["ep-0", "ep-1", "ep-2"]
    assert admin_api.get(URL, {"limit": "0"}).status_code == 400


def test_only_admins_read_the_audit_log(api, anon):
    assert api.get(URL).status_code == 403
    assert anon.get(URL).status_code == 401


# -- one filter set for the page and the API ----------------------------------------------------


@pytest.fixture
def logged(user, admin_api, django_user_model, client) -> dict:
    """Five events by two actors, a few milliseconds either side of ``mid`` (epoch ms); the admin
    signed in to the page."""
    root = django_user_model.objects.get(username="root")
    client.force_login(root)

    def log(rows: list[tuple]) -> None:
        for actor, action, object_type, object_id, name in rows:
            audit.record(actor=actor, action=action, object_type=object_type, object_id=object_id, object_name=name)

    log([(user, "test.alpha", "widget", "1", "thing-0"), (root, "test.beta", "gadget", "2", "thing-1")])
    log([(user, "other.gamma", "widget", "7", "thing-2")])
    time.sleep(0.005)
    mid = int(time.time() * 1000)
    time.sleep(0.005)
    log([(root, "test.alpha", "widget", "7", "thing-3"), (user, "test.beta", "gadget", "3", "thing-4")])
    return {"mid": str(mid), "hour_ago": (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}


def page_rows(client, params: dict) -> tuple[list[str], list[str]]:
    """The actions and object names the audit page lists, top to bottom."""
    response = client.get("/audit/", params)
    assert response.status_code == 200
    html = response.content.decode()
    return (
        re.findall(r'<td data-label="Action"><code>([^<]*)</code>', html),
        re.findall(r'<td data-label="Object">[^<]*<strong>(thing-\d)</strong>', html),
    )


def api_rows(admin_api, params: dict) -> tuple[list[str], list[str]]:
    response = admin_api.get(URL, params)
    assert response.status_code == 200, response.content
    events = response.json()["events"]
    return [e["action"] for e in events], [e["object_name"] for e in events if e["object_name"].startswith("thing-")]


@pytest.mark.parametrize(
    "params, things",
    [
        ({}, ["thing-4", "thing-3", "thing-2", "thing-1", "thing-0"]),
        ({"actor": "alice"}, ["thing-4", "thing-2", "thing-0"]),
        ({"actor": "  alice "}, ["thing-4", "thing-2", "thing-0"]),  # trimmed in both
        ({"action": "test."}, ["thing-4", "thing-3", "thing-1", "thing-0"]),
        ({"action": "test.beta"}, ["thing-4", "thing-1"]),
        ({"object_type": "widget"}, ["thing-3", "thing-2", "thing-0"]),
        ({"object_id": "7"}, ["thing-3", "thing-2"]),
        ({"object_name": "thing-3"}, ["thing-3"]),
        ({"since": "{mid}"}, ["thing-4", "thing-3"]),
        ({"until": "{mid}"}, ["thing-2", "thing-1", "thing-0"]),
        ({"since": "{hour_ago}", "actor": "root", "action": "test"}, ["thing-3", "thing-1"]),  # as the page sends it
        ({"since": "{mid}", "object_type": "gadget"}, ["thing-4"]),
    ],
)
def test_the_same_audit_filter_gives_the_same_rows_in_the_page_and_the_api(client, admin_api, logged, params, things):
    params = {k: v.format(**logged) for k, v in params.items()}
    from_page = page_rows(client, params)
    assert from_page == api_rows(admin_api, params)
    assert from_page[1] == things


@pytest.mark.parametrize(
    "params, field",
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-45T10:00"}, "until"),
        ({"since": "99999999999999999999"}, "since"),  # past the year 9999: was a 500
        ({"until": "\u00b2"}, "until"),  # a digit to str.isdigit, not to int(): was a 500
        ({"actor": "ro\x00ot"}, "actor"),  # PostgreSQL refuses NUL in a query: was a 500 there
    ],
)
def test_a_bad_filter_is_a_400_in_the_api_and_an_inline_error_on_the_page(client, admin_api, logged, params, field):
    response = admin_api.get(URL, params)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert response.json()["message"].startswith(f"{field}: ")
    page = client.get("/audit/", params)
    assert page.status_code == 200
    html = page.content.decode()
    error = re.search(rf'id="id_{field}_error"><li>([^<]*)</li>', html)
    assert error, f"no inline error for {field}"
    assert html_lib.unescape(error[1]) == response.json()["message"].removeprefix(f"{field}: ")
    # The filter that did not parse is left out; the page still lists the log.
    assert "thing-4" in html


def test_a_forged_paging_parameter_is_a_400(admin_api, logged):
    huge = base64.urlsafe_b64encode(b"9" * 30).decode()
    for params in ({"page_token": huge}, {"page_token": "%%%"}, {"limit": "\u00b2"}, {"limit": "1001"}):
        response = admin_api.get(URL, params)
        assert response.status_code == 400, params
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_the_page_and_the_api_page_through_the_same_events(client, admin_api, user):
    for i in range(60):
        audit.record(actor=user, action="test.event", object_type="thing", object_name=f"thing-{i:02d}")
    first = admin_api.get(URL, {"action": "test.", "limit": 50}).json()
    second = admin_api.get(URL, {"action": "test.", "limit": 50, "page_token": first["next_page_token"]}).json()
    older = int(base64.urlsafe_b64decode(first["next_page_token"]).decode())
    client.force_login(user.__class__.objects.get(username="root"))
    page = client.get("/audit/", {"action": "test."}).content.decode()
    assert f"before={older}" in page  # the page's next link is the API's next page_token
    next_page = client.get("/audit/", {"action": "test.", "before": older}).content.decode()
    names = re.findall(r"<strong>(thing-\d\d)</strong>", next_page)
    assert names == [e["object_name"] for e in second["events"]] and len(names) == 10


def test_the_api_reads_a_fixed_number_of_queries(admin_api, user):
    def count_for(n: int) -> int:
        for i in range(n):
            audit.record(actor=user, action="test.event", object_type="thing", object_name=f"thing-{i}")
        with CaptureQueriesContext(connection) as queries:
            assert admin_api.get(URL, {"action": "test."}).status_code == 200
        return len(queries)

    admin_api.get(URL)  # the first call also records when the token was last used (then throttled)
    assert count_for(3) == count_for(27)
