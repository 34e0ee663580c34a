"""Changes to a remote workspace's endpoints through the gate (issue 16 part 4), against a real
remote on loopback (tests/databricks_remote.py: answers as Databricks documents it, stateful).

Covered: a workspace-wide approval policy makes an editor's config change wait (the API's 403
names how to propose); an editor granted in the workspace proposes, an approver granted there
approves, and the remote serves the new traffic split, the fleet's copy and the audit row say so
(what was sent and what came back, never the token); a remote changed in between makes the
request stale (409, STALE, as a local ETag); a config the remote refuses and a remote that is
down show on the change request (FAILED, the remote's words) and in the audit row; who may
propose and approve; unknown workspace, invalid config and a local-only name are 404 / 400 / 404;
changes no policy covers apply at once (tags, AI gateway, create, delete).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from endpoints_app.egress import parse_allow_list
from endpoints_app.models import (
    ApprovalPolicy,
    AuditEvent,
    ChangeRequest,
    ChangeRequestStatus,
    Endpoint,
    Role,
    UserProfile,
    Workspace,
    WorkspaceGrant,
)
from endpoints_app.monitoring import remote as remote_polling
from endpoints_app.services import secrets as secret_services
from endpoints_app.services import workspaces as workspace_services
from tests import databricks_remote
from tests.databricks_remote import RemoteState

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "dapi" + "remotechanges" * 3
WS = "/api/2.0/modelfleet/workspaces/far/serving-endpoints"
CR = "/api/2.0/modelfleet/change-requests"
SPLIT = {
    "served_entities": [
        {"name": "clf-1", "entity_name": "prod.ml.clf", "entity_version": "1", "workload_size": "Small"},
        {"name": "clf-2", "entity_name": "prod.ml.clf", "entity_version": "2", "workload_size": "Small"},
    ],
    "traffic_config": {
        "routes": [
            {"served_model_name": "clf-1", "traffic_percentage": 80},
            {"served_model_name": "clf-2", "traffic_percentage": 20},
        ]
    },
}


@pytest.fixture
def remote(settings) -> Iterator[tuple[str, RemoteState]]:
    with databricks_remote.serve() as (url, state):
        settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{url.rsplit(':', 1)[1]}")
        secret_services._cache.clear()
        state.endpoints["churn"] = databricks_remote.endpoint("churn")
        yield url, state


def user(django_user_model, name: str, role: str = "", grant: str = "") -> Any:
    found = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=found, role=role)
    if grant:
        WorkspaceGrant.objects.create(workspace=Workspace.objects.get(name="far"), user=found, role=grant)
    return found


@pytest.fixture
def far(remote, django_user_model) -> Workspace:
    """The remote registered as ``far`` and swept once, so its endpoint is in the fleet."""
    admin = user(django_user_model, "root", Role.ADMIN)
    workspace = workspace_services.create_workspace(
        actor=admin, body={"name": "far", "host": remote[0], "token": TOKEN}
    )
    result = remote_polling.run_sweep(workspace.pk)
    assert result is not None and result.ok, result
    assert Endpoint.fleet.filter(workspace=workspace, name="churn").exists()
    return workspace


def client(who: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(who)
    return api


def error(response: Any) -> tuple[int, str]:
    body = response.json()
    assert set(body) >= {"error_code", "message"}, body
    return response.status_code, body["error_code"]


def audit_rows(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_a_workspace_policy_makes_the_split_wait_for_an_approver_there(far, remote, django_user_model):
    url, state = remote
    ApprovalPolicy.objects.create(workspace=far)  # every change in far needs an approver
    editor = user(django_user_model, "ed", grant="editor")  # no global role: granted in far only
    approver = user(django_user_model, "ap", grant="approver")

    # The API refuses the direct change, naming how to propose it; nothing reached the remote.
    refused = client(editor).put(f"{WS}/churn/config", SPLIT, format="json")
    assert error(refused) == (403, "PERMISSION_DENIED") and "workspace 'far'" in refused.json()["message"]
    assert not [r for r in state.requests if r["method"] != "GET"]

    proposed = client(editor).post(
        CR, {"endpoint_name": "churn", "workspace": "far", "action": "update_config", "body": SPLIT}, format="json"
    )
    assert proposed.status_code == 200, proposed.content
    change = proposed.json()
    assert (change["status"], change["workspace"], change["base_config_version"]) == ("PENDING", "far", 1)
    assert '"traffic_percentage": 20' in change["diff"]

    # The editor cannot approve; the approver granted in far can (they see it, though not their own).
    assert error(client(editor).post(f"{CR}/{change['id']}/approve", {}, format="json"))[0] == 403
    approved = client(approver).post(f"{CR}/{change['id']}/approve", {"comment": "ok"}, format="json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "APPLIED"

    # The remote serves 80/20 at its next config version, and the fleet's copy shows it at once.
    routes = state.endpoints["churn"]["config"]["traffic_config"]["routes"]
    assert {r["served_model_name"]: r["traffic_percentage"] for r in routes} == {"clf-1": 80, "clf-2": 20}
    assert state.endpoints["churn"]["config"]["config_version"] == 2
    copy = Endpoint.fleet.get(workspace=far, name="churn")
    assert copy.active_config is not None and copy.active_config.version == 2
    assert copy.active_config.traffic_config["routes"][1]["traffic_percentage"] == 20

    # The audit row: what was sent and what came back, and no token anywhere.
    (row,) = audit_rows("remote_endpoint.update_config")
    assert row.actor_id == approver.pk and row.object_name == "churn"
    assert row.after["request"]["method"] == "PUT" and row.after["request"]["path"].endswith("/churn/config")
    assert row.after["request"]["body"]["traffic_config"] == SPLIT["traffic_config"]
    assert row.after["response"]["config"]["config_version"] == 2 and row.after["change_request"] == change["id"]
    assert TOKEN not in json.dumps([e.after for e in AuditEvent.objects.all()])
    sent = [r for r in state.requests if r["method"] == "PUT"]
    assert len(sent) == 1 and sent[0]["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_a_remote_changed_since_the_proposal_makes_it_stale(far, remote, django_user_model):
    _url, state = remote
    ApprovalPolicy.objects.create(workspace=far)
    editor = user(django_user_model, "ed", grant="editor")
    approver = user(django_user_model, "ap", Role.APPROVER)
    change = (
        client(editor)
        .post(
            CR, {"endpoint_name": "churn", "workspace": "far", "action": "update_config", "body": SPLIT}, format="json"
        )
        .json()
    )
    state.endpoints["churn"]["config"]["config_version"] = 5  # someone changed it on the remote itself

    refused = client(approver).post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert error(refused) == (409, "RESOURCE_CONFLICT") and "stale" in refused.json()["message"]
    request = ChangeRequest.objects.get(pk=change["id"])
    assert request.status == ChangeRequestStatus.STALE and "config_version 1, now 5" in request.error
    assert not [r for r in state.requests if r["method"] == "PUT"]  # nothing was sent


def test_a_config_the_remote_refuses_shows_on_the_request_and_in_the_audit(far, remote, django_user_model):
    _url, state = remote
    ApprovalPolicy.objects.create(workspace=far, endpoint_name="churn")
    editor = user(django_user_model, "ed", grant="editor")
    approver = user(django_user_model, "ap", grant="approver")
    bad = {"served_entities": [{"name": "m", "entity_name": "missing.model", "entity_version": "1"}]}
    change = (
        client(editor)
        .post(CR, {"endpoint_name": "churn", "workspace": "far", "action": "update_config", "body": bad}, format="json")
        .json()
    )
    answer = client(approver).post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert error(answer) == (400, "INVALID_PARAMETER_VALUE")
    request = ChangeRequest.objects.get(pk=change["id"])
    assert request.status == ChangeRequestStatus.FAILED
    assert "far" in request.error and "missing.model does not exist" in request.error
    (row,) = audit_rows("remote_endpoint.update_config.failed")
    assert row.after["request"]["body"]["served_entities"][0]["entity_name"] == "missing.model"
    assert "missing.model does not exist" in row.after["error"]
    assert state.endpoints["churn"]["config"]["config_version"] == 1


def test_a_remote_that_is_down_fails_the_request_with_why(far, remote, django_user_model, settings):
    url, state = remote
    ApprovalPolicy.objects.create(workspace=far)
    editor = user(django_user_model, "ed", grant="editor")
    approver = user(django_user_model, "ap", grant="approver")
    change = (
        client(editor)
        .post(
            CR, {"endpoint_name": "churn", "workspace": "far", "action": "update_config", "body": SPLIT}, format="json"
        )
        .json()
    )
    # The remote goes away: its host now answers on a port nothing listens on.
    Workspace.objects.filter(pk=far.pk).update(host="http://127.0.0.1:9")
    settings.EGRESS_ALLOW = parse_allow_list("127.0.0.1:9")
    answer = client(approver).post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert error(answer) == (502, "REMOTE_WORKSPACE_ERROR")
    request = ChangeRequest.objects.get(pk=change["id"])
    assert request.status == ChangeRequestStatus.FAILED and "Cannot reach" in request.error
    assert TOKEN not in request.error


def test_who_may_change_a_remote_endpoint(far, remote, django_user_model):
    viewer = user(django_user_model, "vi", grant="viewer")
    outsider = user(django_user_model, "out")
    local_editor = user(django_user_model, "led", Role.NONE)
    WorkspaceGrant.objects.create(workspace=workspace_services.ensure_local(), user=local_editor, role="editor")
    body = {"add_tags": [{"key": "team", "value": "ml"}]}
    assert error(client(viewer).patch(f"{WS}/churn/tags", body, format="json")) == (403, "PERMISSION_DENIED")
    assert error(client(outsider).patch(f"{WS}/churn/tags", body, format="json")) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert error(client(local_editor).patch(f"{WS}/churn/tags", body, format="json"))[0] == 404
    proposal = {"endpoint_name": "churn", "workspace": "far", "action": "tags", "body": body}
    assert error(client(viewer).post(CR, proposal, format="json")) == (403, "PERMISSION_DENIED")
    # An approver of local only neither sees nor approves far's requests.
    ApprovalPolicy.objects.create(workspace=far)
    editor = user(django_user_model, "ed", grant="editor")
    change = client(editor).post(CR, proposal, format="json").json()
    local_approver = user(django_user_model, "lap")
    WorkspaceGrant.objects.create(workspace=workspace_services.ensure_local(), user=local_approver, role="approver")
    assert error(client(local_approver).post(f"{CR}/{change['id']}/approve", {}, format="json"))[0] == 404


def test_bad_input_is_a_clear_4xx(far, remote, django_user_model):
    _url, state = remote
    editor = user(django_user_model, "ed", Role.EDITOR)
    Endpoint.objects.create(name="only-local")
    api = client(editor)
    assert error(
        api.put("/api/2.0/modelfleet/workspaces/nowhere/serving-endpoints/churn/config", SPLIT, format="json")
    ) == (
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )
    bad = {"served_entities": [{"entity_name": "prod.ml.clf"}]}  # no version
    assert error(api.put(f"{WS}/churn/config", bad, format="json")) == (400, "INVALID_PARAMETER_VALUE")
    assert error(api.put(f"{WS}/only-local/config", SPLIT, format="json")) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert error(api.put(f"{WS}/churn/config", "[]", content_type="application/json")) == (
        400,
        "INVALID_PARAMETER_VALUE",
    )
    assert not [r for r in state.requests if r["method"] != "GET"]


def test_changes_no_policy_covers_apply_at_once(far, remote, django_user_model):
    _url, state = remote
    editor = user(django_user_model, "ed", grant="editor")
    api = client(editor)
    tags = api.patch(f"{WS}/churn/tags", {"add_tags": [{"key": "team", "value": "ml"}]}, format="json")
    assert tags.status_code == 200, tags.content
    assert tags.json() == {"tags": [{"key": "team", "value": "ml"}]}
    assert {t.key: t.value for t in Endpoint.fleet.get(workspace=far, name="churn").tags.all()} == {"team": "ml"}
    gateway = api.put(f"{WS}/churn/ai-gateway", {"usage_tracking_config": {"enabled": True}}, format="json")
    assert gateway.status_code == 200 and state.endpoints["churn"]["ai_gateway"] == {
        "usage_tracking_config": {"enabled": True}
    }
    created = api.post(WS, {"name": "fresh", "config": SPLIT}, format="json")
    assert created.status_code == 200, created.content
    assert created.json()["name"] == "fresh" and Endpoint.fleet.filter(workspace=far, name="fresh").exists()
    # The remote refuses a second one of the same name: its 409 passes through.
    Endpoint.fleet.filter(workspace=far, name="fresh").delete()
    assert error(api.post(WS, {"name": "fresh", "config": SPLIT}, format="json")) == (409, "RESOURCE_ALREADY_EXISTS")
    assert api.delete(f"{WS}/churn").status_code == 200
    assert "churn" not in state.endpoints
    assert Endpoint.fleet.get(workspace=far, name="churn").remote_gone_at is not None  # kept, marked gone
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="remote_endpoint.").order_by("id")] == [
        "remote_endpoint.tags",
        "remote_endpoint.ai_gateway",
        "remote_endpoint.create",
        "remote_endpoint.create.failed",
        "remote_endpoint.delete",
    ]


def test_a_tag_policy_of_the_workspace_covers_its_endpoints_only(far, remote, django_user_model):
    ApprovalPolicy.objects.create(workspace=far, tag_key="env", tag_value="prod")
    editor = user(django_user_model, "ed", Role.EDITOR)
    api = client(editor)
    # Adding the policy's tag is a change the approvers guard.
    refused = api.patch(f"{WS}/churn/tags", {"add_tags": [{"key": "env", "value": "prod"}]}, format="json")
    assert error(refused) == (403, "PERMISSION_DENIED")
    # The same tag on a local endpoint: the far policy does not cover it (the local one would).
    assert (
        ApprovalPolicy.objects.filter(workspace__isnull=True).count() == 0
        and api.patch(f"{WS}/churn/tags", {"add_tags": [{"key": "env", "value": "dev"}]}, format="json").status_code
        == 200
    )


def test_an_approval_policy_names_its_workspace(far, django_user_model):
    admin = django_user_model.objects.get(username="root")
    api = client(admin)
    created = api.post("/api/2.0/modelfleet/approval-policies", {"workspace": "far"}, format="json")
    assert created.status_code == 200, created.content
    assert created.json()["workspace"] == "far" and created.json()["endpoint_name"] is None
    assert ApprovalPolicy.objects.get().workspace == far
    listed = api.get("/api/2.0/modelfleet/approval-policies").json()["policies"]
    assert [p["workspace"] for p in listed] == ["far"]
    local = api.post("/api/2.0/modelfleet/approval-policies", {"tag_key": "env", "tag_value": "prod"}, format="json")
    assert local.json()["workspace"] == "local"
    missing = api.post("/api/2.0/modelfleet/approval-policies", {"workspace": "nowhere"}, format="json")
    assert error(missing) == (404, "RESOURCE_DOES_NOT_EXIST")


def test_the_cli_changes_and_proposes_with_workspace(
    far, remote, django_user_model, live_server, monkeypatch, tmp_path, capsys
):
    from endpoints_app.cli.main import main as cli_main
    from endpoints_app.services.tokens import create_token

    _url, state = remote
    editor = user(django_user_model, "ed", grant="editor")
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=editor)[1])
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", str(tmp_path / "no-such-config"))
    tags = json.dumps({"add_tags": [{"key": "team", "value": "ml"}]})
    assert cli_main(["serving-endpoints", "patch", "churn", "--workspace", "far", "--json", tags]) == 0
    assert state.endpoints["churn"]["tags"] == [{"key": "team", "value": "ml"}]
    ApprovalPolicy.objects.create(workspace=far)
    # Gated now: the direct change is refused (exit 1), the proposal opens a request for far.
    config = json.dumps(SPLIT)
    assert cli_main(["serving-endpoints", "update-config", "churn", "--workspace", "far", "--json", config]) == 1
    argv = ["change-requests", "propose", "churn", "--workspace", "far", "--action", "update-config", "--json", config]
    capsys.readouterr()
    assert cli_main(argv) == 0
    request = ChangeRequest.objects.get()
    assert f"Change request #{request.pk}: update_config churn in workspace far — PENDING" in capsys.readouterr().out
    assert request.workspace == far and request.status == ChangeRequestStatus.PENDING
    assert request.base_config_version == 1


def test_the_remote_page_edits_the_split_through_the_gate(far, remote, django_user_model):
    from django.test import Client

    _url, state = remote
    state.endpoints["churn"] = databricks_remote.endpoint("churn", entities=("clf-1", "clf-2"), version=2)
    Workspace.objects.filter(pk=far.pk).update(next_poll_at=None)
    assert remote_polling.run_sweep(far.pk) is not None  # the copy now has both entities, 50/50
    page = "/workspaces/far/endpoints/churn/traffic/"
    editor = user(django_user_model, "ed", grant="editor")
    viewer = user(django_user_model, "vi", grant="viewer")

    as_viewer = Client()
    as_viewer.force_login(viewer)
    assert as_viewer.get(page).status_code == 403
    assert "Edit the traffic split" not in as_viewer.get("/workspaces/far/endpoints/churn/").content.decode()

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(editor)
    shown = strict.get(page)
    assert shown.status_code == 200 and 'name="split-1-traffic"' in shown.content.decode()
    assert 'src="/static/js/traffic-split.js"' in shown.content.decode()
    form = {"split-0-traffic": "80", "split-1-traffic": "20"}
    assert strict.post(page, form).status_code == 403  # no CSRF token
    assert state.endpoints["churn"]["config"]["config_version"] == 2

    as_editor = Client()
    as_editor.force_login(editor)
    assert as_editor.post(page, {"split-0-traffic": "70", "split-1-traffic": "20"}).status_code == 400  # 90 %
    saved = as_editor.post(page, form)
    assert saved.status_code == 302 and saved["Location"] == "/workspaces/far/endpoints/churn/"
    routes = state.endpoints["churn"]["config"]["traffic_config"]["routes"]
    assert [(r["served_model_name"], r["traffic_percentage"]) for r in routes] == [("clf-1", 80), ("clf-2", 20)]
    assert state.endpoints["churn"]["config"]["served_entities"][1]["entity_version"] == "2"

    # The remote moved on since the last poll (a third entity there): the split, built from the
    # fleet's older copy, is refused rather than sent back over it, applied or proposed.
    Workspace.objects.filter(pk=far.pk).update(next_poll_at=None)
    assert remote_polling.run_sweep(far.pk) is not None  # the copy now says version 3 (the 80/20)
    moved = databricks_remote.endpoint("churn", entities=("clf-1", "clf-2", "clf-3"), version=4)
    state.endpoints["churn"] = moved
    refused = as_editor.post(page, {"split-0-traffic": "50", "split-1-traffic": "50"})
    assert refused.status_code == 400 and "changed since" in refused.content.decode()
    assert len(state.endpoints["churn"]["config"]["served_entities"]) == 3  # untouched
    state.endpoints["churn"] = databricks_remote.endpoint("churn", entities=("clf-1", "clf-2"), version=5)
    Workspace.objects.filter(pk=far.pk).update(next_poll_at=None)
    assert remote_polling.run_sweep(far.pk) is not None  # the copy is current again

    ApprovalPolicy.objects.create(workspace=far)
    proposed = as_editor.post(page, {"split-0-traffic": "50", "split-1-traffic": "50"})
    request = ChangeRequest.objects.get()
    assert proposed.status_code == 302 and proposed["Location"] == f"/change-requests/{request.pk}/"
    assert request.workspace == far and request.proposed["traffic_config"]["routes"][0]["traffic_percentage"] == 50
    # A workspace approver sees the request's page with the decision form and the remote endpoint's link.
    approver = user(django_user_model, "ap", grant="approver")
    as_approver = Client()
    as_approver.force_login(approver)
    detail = as_approver.get(f"/change-requests/{request.pk}/").content.decode()
    assert 'href="/workspaces/far/endpoints/churn/"' in detail and "in workspace far" in detail
    assert f"/change-requests/{request.pk}/approve" in detail
    approved = as_approver.post(f"/change-requests/{request.pk}/approve", {"comment": "ok"})
    assert approved.status_code == 302
    request.refresh_from_db()
    assert request.status == ChangeRequestStatus.APPLIED
    assert state.endpoints["churn"]["config"]["traffic_config"]["routes"][0]["traffic_percentage"] == 50
