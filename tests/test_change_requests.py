"""Change requests: policies, propose, approve (applied once, through the same services), reject,
stale requests, self-approval refused, and the audit trail of each step."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from endpoints_app.models import ApprovalPolicy, AuditEvent, ChangeRequest, ConfigUpdate, Endpoint, Role, UserProfile
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready

pytestmark = pytest.mark.django_db
CR = "/api/2.0/modelfleet/change-requests"


def client_with_role(django_user_model, name: str, role: str) -> APIClient:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


@pytest.fixture
def prod(api, registered_models) -> Endpoint:
    body = endpoint_body("prod-model", (registered_models["iris"], "1"))
    body["tags"] = [{"key": "env", "value": "prod"}]
    create(api, body)
    mark_ready("prod-model")
    ApprovalPolicy.objects.create(tag_key="env", tag_value="prod")
    return Endpoint.objects.get(name="prod-model")


@pytest.fixture
def approver(django_user_model) -> APIClient:
    return client_with_role(django_user_model, "paula", Role.APPROVER)


def new_config(registered_models) -> dict:
    return endpoint_body("x", (registered_models["iris"], "2"))["config"]


def test_a_direct_change_to_a_covered_endpoint_needs_approval(api, prod, registered_models):
    response = api.put("/api/2.0/serving-endpoints/prod-model/config", new_config(registered_models), format="json")
    assert response.status_code == 403 and response.json()["error_code"] == "PERMISSION_DENIED"
    assert "need approval" in response.json()["message"] and "change-requests propose" in response.json()["message"]
    assert api.delete("/api/2.0/serving-endpoints/prod-model").status_code == 403
    assert Endpoint.objects.get(name="prod-model").config_versions.count() == 1


def test_propose_then_approve_applies_it_once(api, approver, prod, registered_models, django_user_model):
    proposed = api.post(
        CR,
        {"endpoint_name": "prod-model", "action": "update_config", "body": new_config(registered_models)},
        format="json",
    )
    assert proposed.status_code == 200, proposed.content
    change = proposed.json()
    assert change["status"] == "PENDING"
    assert '-      "entity_version": "1"' in change["diff"] and '+      "entity_version": "2"' in change["diff"]
    assert mail.outbox and "approval needed" in mail.outbox[-1].subject and "paula@example.com" in mail.outbox[-1].to

    approved = approver.post(f"{CR}/{change['id']}/approve", {"comment": "lgtm"}, format="json")
    assert approved.status_code == 200 and approved.json()["status"] == "APPLIED"
    endpoint = Endpoint.objects.get(name="prod-model")
    assert endpoint.config_update == ConfigUpdate.IN_PROGRESS and endpoint.pending_config.version == 2
    second = client_with_role(django_user_model, "quinn", Role.APPROVER)
    again = second.post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert again.status_code == 409  # applied once
    assert endpoint.config_versions.count() == 2
    steps = [
        a
        for a in AuditEvent.objects.order_by("id").values_list("action", flat=True)
        if a.startswith(("change_request", "endpoint.update"))
    ]
    assert steps == ["change_request.propose", "change_request.approve", "endpoint.update_config"]


def test_the_author_cannot_approve_their_own_request(django_user_model, prod, registered_models):
    paula = client_with_role(django_user_model, "paula2", Role.APPROVER)
    from endpoints_app.models import EndpointPermission, PermissionLevel

    EndpointPermission.objects.create(
        endpoint=prod, user=django_user_model.objects.get(username="paula2"), level=PermissionLevel.CAN_MANAGE
    )
    change = paula.post(
        CR,
        {"endpoint_name": "prod-model", "action": "update_config", "body": new_config(registered_models)},
        format="json",
    ).json()
    response = paula.post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert response.status_code == 403 and "your own" in response.json()["message"]
    assert ChangeRequest.objects.get(pk=change["id"]).status == "PENDING"


def test_a_rejected_request_changes_nothing(api, approver, prod, registered_models):
    change = api.post(
        CR,
        {"endpoint_name": "prod-model", "action": "update_config", "body": new_config(registered_models)},
        format="json",
    ).json()
    rejected = approver.post(f"{CR}/{change['id']}/reject", {"comment": "not now"}, format="json").json()
    assert rejected["status"] == "REJECTED" and rejected["comment"] == "not now"
    assert Endpoint.objects.get(name="prod-model").config_versions.count() == 1


def test_a_request_whose_endpoint_changed_is_stale(api, approver, prod, registered_models, django_user_model):
    change = api.post(
        CR,
        {"endpoint_name": "prod-model", "action": "update_config", "body": new_config(registered_models)},
        format="json",
    ).json()
    admin = client_with_role(django_user_model, "ada", Role.ADMIN)
    tagged = admin.patch(  # admins change covered endpoints directly (an editor's tag change needs approval)
        "/api/2.0/serving-endpoints/prod-model/tags", {"add_tags": [{"key": "owner", "value": "ml"}]}, format="json"
    )
    assert tagged.status_code == 200, tagged.content
    response = approver.post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert response.status_code == 409 and "stale" in response.json()["message"]
    assert ChangeRequest.objects.get(pk=change["id"]).status == "STALE"
    assert Endpoint.objects.get(name="prod-model").config_versions.count() == 1


def test_only_approvers_decide_and_only_admins_set_policies(api, prod, registered_models, django_user_model):
    change = api.post(
        CR,
        {"endpoint_name": "prod-model", "action": "update_config", "body": new_config(registered_models)},
        format="json",
    ).json()
    viewer = client_with_role(django_user_model, "vic", Role.VIEWER)
    assert viewer.post(f"{CR}/{change['id']}/approve", {}, format="json").status_code == 404  # not theirs to see
    assert api.post("/api/2.0/modelfleet/approval-policies", {"endpoint_name": "x"}, format="json").status_code == 403
    admin = client_with_role(django_user_model, "ada", Role.ADMIN)
    assert (
        admin.post(
            "/api/2.0/modelfleet/approval-policies", {"endpoint_name": "x", "tag_key": "y"}, format="json"
        ).status_code
        == 400
    )
    assert admin.post("/api/2.0/modelfleet/approval-policies", {"endpoint_name": "x"}, format="json").status_code == 200


def test_approvers_may_change_directly(approver, prod, registered_models, django_user_model):
    from endpoints_app.models import EndpointPermission, PermissionLevel

    EndpointPermission.objects.create(
        endpoint=prod, user=django_user_model.objects.get(username="paula"), level=PermissionLevel.CAN_MANAGE
    )
    response = approver.put(
        "/api/2.0/serving-endpoints/prod-model/config", new_config(registered_models), format="json"
    )
    assert response.status_code == 200


def test_a_bad_proposal_is_refused_up_front(api, prod):
    response = api.post(
        CR, {"endpoint_name": "prod-model", "action": "update_config", "body": {"served_entities": []}}, format="json"
    )
    assert response.status_code == 400
    assert api.post(CR, {"endpoint_name": "prod-model", "action": "explode"}, format="json").status_code == 400
    assert ChangeRequest.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_cli_proposes_and_approves(
    live_server, django_user_model, registered_models, monkeypatch, capsys, tmp_path
):
    import json

    from endpoints_app.cli.main import main

    author = django_user_model.objects.create_user("cli-author", "a@example.com", "pw-123456789")
    UserProfile.objects.create(user=author, role=Role.EDITOR)
    reviewer = django_user_model.objects.create_user("cli-reviewer", "r@example.com", "pw-123456789")
    UserProfile.objects.create(user=reviewer, role=Role.APPROVER)
    ApprovalPolicy.objects.create(endpoint_name="cli-ep")
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=author)[1])
    (tmp_path / "ep.json").write_text(json.dumps(endpoint_body("cli-ep", (registered_models["iris"], "1"))["config"]))
    assert (
        main(
            [
                "serving-endpoints",
                "create",
                "--json",
                json.dumps(endpoint_body("cli-ep", (registered_models["iris"], "1"))),
                "--no-wait",
            ]
        )
        == 1
    )
    assert "need approval" in capsys.readouterr().err
    assert (
        main(["change-requests", "propose", "cli-ep", "--action", "create", "--json", f"@{tmp_path / 'ep.json'}"]) != 0
    )
    capsys.readouterr()
    create_body = {"config": json.loads((tmp_path / "ep.json").read_text())}
    assert (
        main(
            [
                "change-requests",
                "propose",
                "cli-ep",
                "--action",
                "create",
                "--json",
                json.dumps(create_body),
                "-o",
                "json",
            ]
        )
        == 0
    )
    cr = json.loads(capsys.readouterr().out)
    assert main(["change-requests", "approve", str(cr["id"])]) == 1  # an editor cannot approve
    assert "approver" in capsys.readouterr().err
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=reviewer)[1])
    assert main(["change-requests", "approve", str(cr["id"]), "--comment", "ok"]) == 0
    assert "APPLIED" in capsys.readouterr().out
    assert Endpoint.objects.filter(name="cli-ep").exists()
    assert main(["change-requests", "list", "--status", "applied"]) == 0
    assert "cli-ep" in capsys.readouterr().out


# -- one rule for the page and the API ----------------------------------------------------------


@pytest.fixture
def everyone_and_their_requests(django_user_model) -> tuple[dict, list[ChangeRequest]]:
    """Seven personas, and change requests by three of them on two endpoints in three states."""
    people = {"root": django_user_model.objects.create_superuser("root", "root@example.com", "pw-123456789")}
    for name, role in [
        ("ada", Role.ADMIN),
        ("paula", Role.APPROVER),
        ("alice", Role.EDITOR),
        ("bob", Role.EDITOR),
        ("vic", Role.VIEWER),
    ]:
        people[name] = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
        UserProfile.objects.create(user=people[name], role=role)
    people["otto"] = django_user_model.objects.create_user("otto", "otto@example.com", "pw-123456789")  # no role
    requests = [
        ChangeRequest.objects.create(endpoint_name=endpoint, action="delete", author=people[author], status=status)
        for author, endpoint, status in [
            ("alice", "ab", "PENDING"),
            ("alice", "ab", "REJECTED"),
            ("alice", "other", "PENDING"),
            ("bob", "other", "PENDING"),
            ("bob", "ab", "APPLIED"),
            ("paula", "ab", "PENDING"),
        ]
    ]
    return people, requests


def listed_on_the_page(client, params: dict) -> list[int]:
    response = client.get("/change-requests/", params)
    assert response.status_code == 200
    return [
        int(i) for i in re.findall(r'<td data-label="#"><a href="/change-requests/(\d+)/">', response.content.decode())
    ]


@pytest.mark.parametrize(
    "page_params, api_params",
    [
        ({}, {}),
        ({"status": "PENDING"}, {"status": "PENDING"}),
        ({"status": "rejected"}, {"status": "rejected"}),  # both take any case
        ({"endpoint_name": "other"}, {"endpoint_name": "other"}),
        ({"status": "PENDING", "endpoint_name": "ab"}, {"status": "PENDING", "endpoint_name": "ab"}),
    ],
)
def test_the_page_and_the_api_list_the_same_change_requests_for_each_persona(
    client, everyone_and_their_requests, page_params, api_params
):
    people, requests = everyone_and_their_requests
    for name, person in people.items():
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=person)[1]}")
        response = api.get(CR, api_params)
        assert response.status_code == 200
        from_api = [c["id"] for c in response.json()["change_requests"]]
        client.force_login(person)
        assert listed_on_the_page(client, page_params) == from_api, name
        sees_all = name in ("root", "ada", "paula")
        expected = [
            r.pk
            for r in reversed(requests)
            if (sees_all or r.author_id == person.pk)
            and r.status == (page_params.get("status", "").upper() or r.status)
            and r.endpoint_name == (page_params.get("endpoint_name") or r.endpoint_name)
        ]
        assert from_api == expected, name


def test_the_page_and_the_api_open_the_same_change_requests_for_each_persona(client, everyone_and_their_requests):
    people, requests = everyone_and_their_requests
    missing = max(r.pk for r in requests) + 1
    for name, person in people.items():
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=person)[1]}")
        client.force_login(person)
        for request_id in [r.pk for r in requests] + [missing]:
            from_api = api.get(f"{CR}/{request_id}")
            page = client.get(f"/change-requests/{request_id}/")
            assert page.status_code == from_api.status_code, (name, request_id)
            if from_api.status_code == 404:
                # Someone else's request reads exactly as one that does not exist.
                assert from_api.json() == {
                    "error_code": "RESOURCE_DOES_NOT_EXIST",
                    "message": f"Change request {request_id} does not exist",
                }
        visible = {r.pk for r in requests if api.get(f"{CR}/{r.pk}").status_code == 200}
        assert visible == {c["id"] for c in api.get(CR).json()["change_requests"]}, name


def test_the_list_reads_a_fixed_number_of_queries(api, user, django_user_model):
    def count_for(n: int) -> int:
        ChangeRequest.objects.bulk_create(
            ChangeRequest(endpoint_name="ab", action="delete", author=user) for _ in range(n)
        )
        with CaptureQueriesContext(connection) as queries:
            body = api.get(CR).json()
        assert len(body["change_requests"]) == ChangeRequest.objects.count()
        return len(queries)

    api.get(CR)  # the first call also records when the token was last used (then throttled)
    assert count_for(3) == count_for(27)
