"""Administration: users and roles, tokens (created once, hashed, revocable), through API and CLI."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from endpoints_app.models import AccessToken, AuditEvent
from endpoints_app.services.tokens import authenticate_token, create_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_api(django_user_model) -> APIClient:
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-12345")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=admin)[1]}")
    return client


def test_admins_create_users_set_roles_and_deactivate(admin_api):
    created = admin_api.post("/api/2.0/modelfleet/users", {"username": "dave", "role": "editor"}, format="json")
    assert created.status_code == 200 and created.json()["role"] == "editor"
    assert admin_api.post("/api/2.0/modelfleet/users", {"username": "dave"}, format="json").status_code == 409
    assert (
        admin_api.post("/api/2.0/modelfleet/users", {"username": "eve", "role": "king"}, format="json").status_code
        == 400
    )
    assert (
        admin_api.patch("/api/2.0/modelfleet/users/dave", {"role": "approver"}, format="json").json()["role"]
        == "approver"
    )
    token = admin_api.post("/api/2.0/modelfleet/tokens", {"user": "dave", "comment": "ci"}, format="json").json()[
        "token"
    ]
    assert authenticate_token(token).username == "dave"
    assert admin_api.patch("/api/2.0/modelfleet/users/dave", {"active": False}, format="json").json()["active"] is False
    assert authenticate_token(token) is None  # a deactivated user's tokens stop at once
    assert [e for e in AuditEvent.objects.order_by("id").values_list("action", flat=True) if e.startswith("user.")] == [
        "user.create",
        "user.role",
        "user.deactivate",
    ]
    assert admin_api.patch("/api/2.0/modelfleet/users/nobody", {"role": "viewer"}, format="json").status_code == 404


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/2.0/modelfleet/groups", "name"),
        ("/api/2.0/modelfleet/users", "username"),
        ("/api/2.0/modelfleet/tokens", "user"),
        ("/api/2.0/modelfleet/change-requests", "action"),
    ],
)
@pytest.mark.parametrize("value", [{"a": 1}, ["ml-team"], 7, True])
def test_names_that_are_not_strings_are_refused_not_turned_into_text(admin_api, path, field, value):
    # Before, a group created from {"name": {"a": 1}} was named "{'a': 1}".
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    body = {field: value, "endpoint_name": "e"} if field == "action" else {field: value}
    response = admin_api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"{field} must be a string" in response.json()["message"]
    assert not Group.objects.exists() and get_user_model().objects.count() == 1


def test_non_admins_cannot_manage_users(api):
    assert api.get("/api/2.0/modelfleet/users").status_code == 403
    assert api.post("/api/2.0/modelfleet/users", {"username": "x"}, format="json").status_code == 403
    assert api.post("/api/2.0/modelfleet/tokens", {"user": "someone-else"}, format="json").status_code == 403


def test_users_manage_their_own_tokens(api, user, token):
    created = api.post("/api/2.0/modelfleet/tokens", {"comment": "laptop"}, format="json").json()
    assert created["token"].startswith("mf-") and created["user"] == "alice"
    row = AccessToken.objects.get(pk=created["id"])
    assert created["token"] not in (row.digest, row.hint)
    listed = api.get("/api/2.0/modelfleet/tokens").json()["tokens"]
    assert {t["comment"] for t in listed} == {"test", "laptop"} and all("token" not in t for t in listed)
    assert api.delete(f"/api/2.0/modelfleet/tokens/{created['id']}").status_code == 200
    assert authenticate_token(created["token"]) is None
    other = create_token(user=type(user).objects.create_user("zed"))[0]
    assert api.delete(f"/api/2.0/modelfleet/tokens/{other.pk}").status_code == 404  # not theirs: does not exist


@pytest.mark.django_db(transaction=True)
def test_the_cli_administers_users_and_tokens(live_server, django_user_model, monkeypatch, capsys):
    from endpoints_app.cli.main import main

    admin = django_user_model.objects.create_superuser("root2", "r2@example.com", "pw-root-12345")
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=admin)[1])
    assert main(["users", "create", "frank", "--role", "viewer"]) == 0
    assert main(["users", "set-role", "frank", "editor"]) == 0
    assert main(["users", "list"]) == 0
    assert "frank" in capsys.readouterr().out
    assert main(["tokens", "create", "--user", "frank", "--comment", "bot"]) == 0
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert authenticate_token(raw).username == "frank"
    token_id = AccessToken.objects.get(user__username="frank").pk
    assert main(["tokens", "revoke", str(token_id)]) == 0
    assert authenticate_token(raw) is None
    assert main(["audit", "list", "--action", "user."]) == 0
    out = capsys.readouterr().out
    assert "user.create" in out and "user.role" in out
    assert main(["audit", "export", "--action", "token."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line for line in lines if '"token.create"' in line] and raw not in "".join(lines)
    assert main(["groups", "create", "ops"]) == 0
    assert main(["groups", "add-member", "ops", "frank"]) == 0
    assert main(["groups", "list"]) == 0
    assert "ops: frank" in capsys.readouterr().out
    assert main(["users", "deactivate", "frank"]) == 0


def test_groups_carry_endpoint_grants(admin_api, api, registered_models, django_user_model):
    from endpoints_app.models import Endpoint, EndpointPermission, PermissionLevel
    from tests.conftest import endpoint_body
    from tests.test_api_endpoints import create

    create(api, endpoint_body("team-ep", (registered_models["iris"], "1")))
    member = django_user_model.objects.create_user("gina", "g@example.com", "pw-123456789")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=member)[1]}")
    assert client.get("/api/2.0/serving-endpoints/team-ep").status_code == 404  # an outsider

    assert admin_api.post("/api/2.0/modelfleet/groups", {"name": "ml-team"}, format="json").status_code == 200
    assert admin_api.post("/api/2.0/modelfleet/groups", {"name": "ml-team"}, format="json").status_code == 409
    added = admin_api.put("/api/2.0/modelfleet/groups/ml-team/members/gina")
    assert added.json() == {"name": "ml-team", "members": ["gina"]}
    endpoint = Endpoint.objects.get(name="team-ep")
    response = api.patch(
        f"/api/2.0/permissions/serving-endpoints/{endpoint.id}",
        {"access_control_list": [{"group_name": "ml-team", "permission_level": "CAN_QUERY"}]},
        format="json",
    )
    assert response.status_code == 200
    assert EndpointPermission.objects.filter(
        endpoint=endpoint, group__name="ml-team", level=PermissionLevel.CAN_QUERY
    ).exists()
    assert client.get("/api/2.0/serving-endpoints/team-ep").json()["permission_level"] == "CAN_QUERY"
    assert admin_api.delete("/api/2.0/modelfleet/groups/ml-team/members/gina").json()["members"] == []
    assert client.get("/api/2.0/serving-endpoints/team-ep").status_code == 404
    assert api.post("/api/2.0/modelfleet/groups", {"name": "x"}, format="json").status_code == 403
    assert AuditEvent.objects.filter(action__startswith="group.").count() == 3
