"""The audit log: every mutating action recorded with actor, source, before and after; append-only;
admins read, filter and export it; tokens and passwords never appear."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

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
