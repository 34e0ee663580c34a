"""Roles per workspace (issue 15: groups mapped to roles per workspace; issue 16 part 5: grants
scoped to a workspace, a user sees only the workspaces granted).

Covered: an admin grants a user or a group viewer, editor or approver in a workspace through the
API and the CLI; the role in ``local`` is the role for everything this installation serves (an
editor there with no global role creates endpoints, a viewer there cannot); the registry and its
page show a user only ``local`` and the workspaces granted; a revoke reaches the gateway within a
second (two real web processes, as tests/test_revocation.py); every change audited and announced
(access generation). Single sign-on: a per-workspace group mapping becomes a grant at sign-in
against a real OpenID provider, and leaving the group at the provider removes it at the next.
Attacks: a workspace editor granting themselves more, admin as a workspace role, grants for
workspaces, users and groups that do not exist, malformed bodies.
"""

from __future__ import annotations

import io
import sqlite3

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from endpoints_app import access, access_generation
from endpoints_app.cli.main import main as cli_main
from endpoints_app.models import (
    AuditEvent,
    Endpoint,
    GroupRoleMapping,
    Role,
    UserProfile,
    Workspace,
    WorkspaceGrant,
    WorkspaceKind,
)
from endpoints_app.services import sso as sso_services
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body
from tests.oidc_provider.process import start_provider
from tests.test_revocation import DEADLINE_SECONDS, Setup, provider, setup, webs  # noqa: F401 - fixtures
from tests.test_sso import CALLBACK, authorize

W = "/api/2.0/modelfleet/workspaces"
MAPPINGS = "/api/2.0/modelfleet/group-role-mappings"
ENDPOINTS = "/api/2.0/serving-endpoints"
ISSUER = "https://idp.example.com"


def person(django_user_model, name: str, role: str = Role.NONE):  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    return user


def client_of(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


@pytest.fixture
def admin(django_user_model) -> APIClient:
    return client_of(person(django_user_model, "root", Role.ADMIN))


def remote(name: str) -> Workspace:
    return Workspace.objects.create(name=name, kind=WorkspaceKind.REMOTE, host=f"https://{name}.test", state="OK")


def grant(admin: APIClient, workspace: str, role: str, **principal: str) -> dict:
    response = admin.put(f"{W}/{workspace}/grants", {**principal, "role": role}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def fresh(user):  # type: ignore[no-untyped-def]
    """The user as a new request loads them (their grants read again)."""
    return type(user).objects.get(pk=user.pk)


# --- the role in local is the role here ----------------------------------------------------------------


@pytest.mark.django_db
def test_a_user_without_a_global_role_granted_editor_on_local_creates_an_endpoint(
    admin, django_user_model, registered_models
):
    ivy = person(django_user_model, "ivy")
    ivy_api = client_of(ivy)
    body = endpoint_body("ivy-ep", (registered_models["iris"], "1"))
    refused = ivy_api.post(ENDPOINTS, body, format="json")
    assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED"

    assert grant(admin, "local", "editor", user_name="ivy") == {"user_name": "ivy", "role": "editor", "source": "api"}
    created = ivy_api.post(ENDPOINTS, body, format="json")
    assert created.status_code == 200, created.content
    assert Endpoint.objects.filter(name="ivy-ep", creator=ivy).exists()
    assert (access.global_role(fresh(ivy)), access.role_of(fresh(ivy))) == (Role.NONE, Role.EDITOR)
    # Her record still shows no global role: the grant is in local only.
    users = {u["username"]: u for u in admin.get("/api/2.0/modelfleet/users").json()["users"]}
    assert users["ivy"]["role"] in ("", None, "none")

    event = AuditEvent.objects.get(action="workspace.grant")
    assert (event.object_name, event.before, event.after) == (
        "local",
        None,
        {"user_name": "ivy", "role": "editor", "source": "api"},
    )


@pytest.mark.django_db
def test_a_viewer_on_local_sees_every_endpoint_but_cannot_create_one(admin, api, django_user_model, registered_models):
    api.post(ENDPOINTS, endpoint_body("alice-ep", (registered_models["iris"], "1")), format="json")
    jay = person(django_user_model, "jay")
    jay_api = client_of(jay)
    assert jay_api.get(ENDPOINTS).json().get("endpoints", []) == []
    assert jay_api.get(f"{ENDPOINTS}/alice-ep").status_code == 404

    grant(admin, "local", "viewer", user_name="jay")
    assert [e["name"] for e in jay_api.get(ENDPOINTS).json()["endpoints"]] == ["alice-ep"]
    assert jay_api.get(f"{ENDPOINTS}/alice-ep").status_code == 200
    refused = jay_api.post(ENDPOINTS, endpoint_body("jay-ep", (registered_models["iris"], "1")), format="json")
    assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED"
    assert jay_api.put(f"{ENDPOINTS}/alice-ep/config", {"served_entities": []}, format="json").status_code == 403


@pytest.mark.django_db
def test_a_group_grant_gives_its_members_the_role_and_the_higher_role_counts(admin, django_user_model):
    kim = person(django_user_model, "kim", Role.VIEWER)
    kim.groups.add(Group.objects.create(name="ml-ops"))
    grant(admin, "local", "approver", group_name="ml-ops")
    assert access.role_of(fresh(kim)) == Role.APPROVER and access.may_approve(fresh(kim))
    grant(admin, "local", "viewer", user_name="kim")  # lower than the group's: the group's counts
    assert access.role_of(fresh(kim)) == Role.APPROVER
    listed = admin.get(f"{W}/local/grants").json()["grants"]
    assert listed == [
        {"user_name": "kim", "role": "viewer", "source": "api"},
        {"group_name": "ml-ops", "role": "approver", "source": "api"},
    ]
    assert admin.delete(f"{W}/local/grants?group_name=ml-ops").status_code == 200
    assert access.role_of(fresh(kim)) == Role.VIEWER
    # A grant elsewhere does not count here.
    remote("prod")
    grant(admin, "prod", "editor", user_name="kim")
    assert (access.role_of(fresh(kim)), access.role_of(fresh(kim), "prod")) == (Role.VIEWER, Role.EDITOR)


# --- who sees which workspace ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_user_sees_only_local_and_the_workspaces_granted(admin, django_user_model):
    remote("prod")
    remote("staging")
    lee = person(django_user_model, "lee")
    lee_api = client_of(lee)
    assert [w["name"] for w in lee_api.get(W).json()["workspaces"]] == ["local"]
    assert lee_api.get(f"{W}/prod").status_code == 404

    grant(admin, "prod", "viewer", user_name="lee")
    assert [w["name"] for w in lee_api.get(W).json()["workspaces"]] == ["local", "prod"]
    assert lee_api.get(f"{W}/prod").status_code == 200
    assert lee_api.get(f"{W}/staging").json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    page = Client()
    page.force_login(lee)
    html = page.get("/workspaces/").content.decode()
    assert "prod" in html and "staging" not in html
    # A global role sees every workspace.
    viewer_api = client_of(person(django_user_model, "max", Role.VIEWER))
    assert [w["name"] for w in viewer_api.get(W).json()["workspaces"]] == ["local", "prod", "staging"]


# --- only admins grant --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_only_admins_list_and_change_grants(admin, api, django_user_model):
    remote("prod")
    ned = person(django_user_model, "ned")
    ned.groups.add(Group.objects.create(name="team"))
    grant(admin, "prod", "editor", user_name="ned")
    for caller in (api, client_of(ned)):  # a global editor; an editor in prod
        for response in (
            caller.get(f"{W}/prod/grants"),
            caller.put(f"{W}/prod/grants", {"user_name": "ned", "role": "approver"}, format="json"),
            caller.delete(f"{W}/prod/grants?user_name=ned"),
        ):
            assert response.status_code == 403 and response.json()["error_code"] == "PERMISSION_DENIED"
    assert list(WorkspaceGrant.objects.values_list("user__username", "role")) == [("ned", "editor")]
    assert admin.post(f"{W}/prod/grants", {}, format="json").status_code == 405


@pytest.mark.django_db
def test_a_workspace_editor_cannot_grant_themselves_more(admin, django_user_model):
    oli = person(django_user_model, "oli")
    grant(admin, "local", "editor", user_name="oli")
    oli_api = client_of(oli)
    for workspace, role in (("local", "approver"), ("local", "admin")):
        response = oli_api.put(f"{W}/{workspace}/grants", {"user_name": "oli", "role": role}, format="json")
        assert response.status_code == 403, response.content
    # Nor through the global routes: roles, mappings, groups are admins' too.
    assert oli_api.patch("/api/2.0/modelfleet/users/oli", {"role": "admin"}, format="json").status_code == 403
    assert oli_api.put(f"{MAPPINGS}/x", {"role": "admin"}, format="json").status_code == 403
    assert oli_api.put(f"{MAPPINGS}/x", {"role": "approver", "workspace": "local"}, format="json").status_code == 403
    assert access.role_of(fresh(oli)) == Role.EDITOR and access.global_role(fresh(oli)) == Role.NONE


@pytest.mark.django_db
def test_grants_name_what_exists_and_bodies_are_checked(admin, django_user_model):
    person(django_user_model, "pam")
    Group.objects.create(name="team")
    cases = [
        ("nowhere", {"user_name": "pam", "role": "viewer"}, 404, "Workspace 'nowhere' does not exist"),
        ("local", {"user_name": "nobody", "role": "viewer"}, 404, "User 'nobody' does not exist"),
        ("local", {"group_name": "no-team", "role": "viewer"}, 404, "Group 'no-team' does not exist"),
        ("local", {"user_name": "pam", "role": "admin"}, 400, "admin is a global role only"),
        ("local", {"user_name": "pam", "role": "owner"}, 400, "role must be one of viewer, editor, approver"),
        ("local", {"user_name": "pam", "role": ["editor"]}, 400, "role must be one of"),
        ("local", {"user_name": 7, "role": "viewer"}, 400, "user_name must be a string"),
        ("local", {"group_name": {"a": 1}, "role": "viewer"}, 400, "group_name must be a string"),
        ("local", {"user_name": "pam", "group_name": "team", "role": "viewer"}, 400, "exactly one of"),
        ("local", {"role": "viewer"}, 400, "exactly one of"),
        ("local", {"user_name": "pam", "role": "viewer", "level": 3}, 400, "Unknown field 'level'"),
        ("local", ["user_name", "pam"], 400, "must be a JSON object"),
        ("local", {"user_name": "x" * 151, "role": "viewer"}, 400, "user_name must be a string of 1–150"),
    ]
    for workspace, body, status, says in cases:
        response = admin.put(f"{W}/{workspace}/grants", body, format="json")
        assert response.status_code == status, (body, response.content)
        assert says in response.json()["message"], (body, response.json())
        assert response.json()["error_code"] == (
            "RESOURCE_DOES_NOT_EXIST" if status == 404 else "INVALID_PARAMETER_VALUE"
        )
    assert not WorkspaceGrant.objects.exists()
    assert admin.get(f"{W}/nowhere/grants").status_code == 404
    missing = admin.delete(f"{W}/local/grants?user_name=pam")
    assert missing.status_code == 404 and "has no role granted" in missing.json()["message"]
    assert admin.delete(f"{W}/local/grants").status_code == 400
    assert admin.delete(f"{W}/local/grants?user_name=pam&group_name=team").status_code == 400


@pytest.mark.django_db
def test_the_cli_grants_lists_and_revokes(admin, live_server, django_user_model, monkeypatch, capsys):
    person(django_user_model, "quin")
    root = django_user_model.objects.get(username="root")
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=root)[1])
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", "/nonexistent/modelfleet-config")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli_main(["workspaces", "grant", "local", "--user", "quin", "--role", "editor"]) == 0
    assert "User quin is editor in workspace local" in capsys.readouterr().out
    assert cli_main(["workspaces", "grants", "local"]) == 0
    out = capsys.readouterr().out
    assert "user quin" in out and "editor" in out
    assert cli_main(["workspaces", "grants", "local", "-o", "json"]) == 0
    assert '"user_name": "quin"' in capsys.readouterr().out
    assert cli_main(["workspaces", "revoke", "local", "--user", "quin"]) == 0
    assert not WorkspaceGrant.objects.exists()
    assert cli_main(["workspaces", "revoke", "local", "--user", "quin"]) == 1
    assert "has no role granted" in capsys.readouterr().err
    assert cli_main(["workspaces", "grant", "local", "--user", "quin", "--role", "admin"]) == 2  # argparse


# --- announced at once ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # on_commit runs for real
def test_every_grant_change_bumps_the_access_generation(admin, django_user_model):
    remote("prod")
    person(django_user_model, "rae")
    for step in (
        lambda: grant(admin, "local", "viewer", user_name="rae"),
        lambda: grant(admin, "local", "editor", user_name="rae"),
        lambda: admin.delete(f"{W}/local/grants?user_name=rae"),
        lambda: grant(admin, "prod", "viewer", user_name="rae"),
        lambda: admin.delete(f"{W}/prod"),  # its grants go with it
    ):
        before = access_generation.current()
        step()
        assert access_generation.current() > before
    assert not WorkspaceGrant.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_mapping_changes_and_sign_ins_that_change_grants_bump_the_access_generation(admin, settings):
    settings.OIDC_GROUP_ROLES = {}
    admin.put(f"{MAPPINGS}/ml-eng", {"role": "editor", "workspace": "local"}, format="json")
    claims = {"sub": "b1", "preferred_username": "bea", "groups": ["ml-eng"]}
    for step in (
        lambda: sso_services.sign_in(issuer=ISSUER, claims=claims),  # the grant appears
        lambda: admin.put(f"{MAPPINGS}/ml-eng", {"role": "viewer", "workspace": "local"}, format="json"),
        lambda: sso_services.sign_in(issuer=ISSUER, claims={**claims, "groups": []}),  # it goes
        lambda: sso_services.sign_in(issuer=ISSUER, claims=claims),
        lambda: admin.delete(f"{MAPPINGS}/ml-eng?workspace=local"),
    ):
        before = access_generation.current()
        step()
        assert access_generation.current() > before
    assert not WorkspaceGrant.objects.exists()


@pytest.mark.django_db
def test_an_approver_in_local_decides_and_is_told_of_proposals(admin, django_user_model):
    from django.contrib.auth import get_user_model as users

    sue = person(django_user_model, "sue", Role.VIEWER)
    sue.groups.add(Group.objects.create(name="approvers"))
    person(django_user_model, "tom", Role.VIEWER)
    grant(admin, "local", "approver", group_name="approvers")
    assert access.may_approve(fresh(sue))
    approvers = users().objects.filter(access.approvers()).distinct().values_list("username", flat=True)
    assert sorted(approvers) == ["root", "sue"]


def test_a_revoked_local_grant_stops_at_the_gateway_within_a_second(setup: Setup, django_user_model):  # noqa: F811
    """Viewer in local: the gateway sees the endpoint (403, CAN_VIEW, no query); revoked: it does
    not exist for them (404). Granted and revoked through either process."""
    una = person(django_user_model, "una")
    token = create_token(user=una)[1]
    setup.warm(setup.admin, 200)
    setup.warm(token, 404)
    setup.api("PUT", f"{W}/local/grants", {"user_name": "una", "role": "viewer"})
    assert setup.seconds_until(token, 403) < DEADLINE_SECONDS
    setup.warm(token, 403)
    setup.api("DELETE", f"{W}/local/grants?user_name=una", via=1)
    assert setup.seconds_until(token, 404) < DEADLINE_SECONDS


# --- single sign-on: per-workspace group mappings ----------------------------------------------------------


@pytest.mark.django_db
def test_the_mapping_api_takes_a_workspace(admin, settings):
    settings.OIDC_GROUP_ROLES = {"ops": "viewer"}
    remote("prod")
    put = admin.put(f"{MAPPINGS}/ml-eng", {"role": "editor", "workspace": "prod"}, format="json")
    assert put.json() == {"group": "ml-eng", "role": "editor", "source": "api", "workspace": "prod"}
    admin.put(f"{MAPPINGS}/ml-eng", {"role": "viewer"}, format="json")  # its global role: another mapping
    assert admin.get(MAPPINGS).json()["mappings"] == [
        {"group": "ml-eng", "role": "viewer", "source": "api", "workspace": None},
        {"group": "ops", "role": "viewer", "source": "settings", "workspace": None},
        {"group": "ml-eng", "role": "editor", "source": "api", "workspace": "prod"},
    ]
    for body, status in (
        ({"role": "admin", "workspace": "prod"}, 400),
        ({"role": "editor", "workspace": "nowhere"}, 404),
        ({"role": "editor", "workspace": 3}, 400),
        ({"role": "editor", "workspace": "prod", "extra": 1}, 400),
    ):
        assert admin.put(f"{MAPPINGS}/ml-eng", body, format="json").status_code == status, body
    assert admin.delete(f"{MAPPINGS}/ml-eng?workspace=nowhere").status_code == 404
    assert admin.delete(f"{MAPPINGS}/ml-eng?workspace=prod").status_code == 200
    assert admin.delete(f"{MAPPINGS}/ml-eng?workspace=prod").status_code == 404
    assert list(GroupRoleMapping.objects.values_list("group_name", "workspace")) == [("ml-eng", None)]
    assert sso_services.role_for_groups(["ml-eng"]) == Role.VIEWER


@pytest.mark.django_db
def test_sign_in_turns_workspace_mappings_into_grants_that_follow_the_claim(admin, settings):
    settings.OIDC_GROUP_ROLES = {}
    remote("prod")
    admin.put(f"{MAPPINGS}/ml-eng", {"role": "editor", "workspace": "prod"}, format="json")
    admin.put(f"{MAPPINGS}/ml-ops", {"role": "approver", "workspace": "local"}, format="json")
    claims = {"sub": "v1", "preferred_username": "vic", "groups": ["ml-eng", "ml-ops"]}
    vic = sso_services.sign_in(issuer=ISSUER, claims=claims)
    assert access.global_role(fresh(vic)) == Role.NONE
    assert (access.role_of(fresh(vic)), access.role_of(fresh(vic), "prod")) == (Role.APPROVER, Role.EDITOR)
    grant(admin, "prod", "viewer", user_name="vic")  # an admin's grant: sign-ins leave it alone
    listed = admin.get(f"{W}/prod/grants").json()["grants"]
    assert {"user_name": "vic", "role": "editor", "source": "group_role_mapping", "mapped_group": "ml-eng"} in listed

    # The mapping's role changes: its grants at once.
    admin.put(f"{MAPPINGS}/ml-ops", {"role": "viewer", "workspace": "local"}, format="json")
    assert access.role_of(fresh(vic)) == Role.VIEWER
    # Left both groups at the provider: the next sign-in removes the mapped grants, not the admin's.
    vic = sso_services.sign_in(issuer=ISSUER, claims={**claims, "groups": []})
    assert (access.role_of(fresh(vic)), access.role_of(fresh(vic), "prod")) == (Role.NONE, Role.VIEWER)
    assert list(WorkspaceGrant.objects.values_list("mapping", "role")) == [(None, "viewer")]
    rows = [e.after["workspace_roles"] for e in AuditEvent.objects.filter(action="user.workspace_roles").order_by("id")]
    assert rows == [{"local": "approver", "prod": "editor"}, {}]
    # Deleting a mapping removes what it gave at once.
    vic = sso_services.sign_in(issuer=ISSUER, claims=claims)
    admin.delete(f"{MAPPINGS}/ml-eng?workspace=prod")
    assert access.role_of(fresh(vic), "prod") == Role.VIEWER


@pytest.fixture(scope="module")
def oidc(tmp_path_factory):
    running = start_provider(
        tmp_path_factory.mktemp("oidc-provider"), redirect_uri=CALLBACK, users=["wes:pw-wes-123:ml-eng"]
    )
    yield running
    running.stop()


def leave_group_at_provider(oidc, username: str, group: str) -> None:
    """What the provider's admin does: the provider's own database, its membership row gone."""
    with sqlite3.connect(oidc.log_path.parent / "provider.sqlite3") as db:
        db.execute(
            "DELETE FROM auth_user_groups WHERE user_id = (SELECT id FROM auth_user WHERE username = ?) "
            "AND group_id = (SELECT id FROM auth_group WHERE name = ?)",
            (username, group),
        )


@pytest.mark.django_db
def test_a_real_sign_in_grants_the_mapped_workspace_role_and_leaving_the_group_removes_it(admin, oidc, settings):
    settings.OIDC_ISSUER, settings.OIDC_CLIENT_ID = oidc.issuer, oidc.client_id
    settings.OIDC_CLIENT_SECRET, settings.OIDC_GROUP_ROLES = oidc.client_secret, {}
    assert admin.put(f"{MAPPINGS}/ml-eng", {"role": "editor", "workspace": "local"}, format="json").status_code == 200

    browser = Client()
    assert browser.get(authorize(browser, oidc, "wes", "pw-wes-123")).status_code == 302
    wes = get_user_model().objects.get(username="wes")
    assert (access.global_role(wes), access.role_of(fresh(wes))) == (Role.NONE, Role.EDITOR)
    assert browser.get("/endpoints/new").status_code == 200  # an editor's page, through the local grant

    browser.post("/accounts/logout/")
    leave_group_at_provider(oidc, "wes", "ml-eng")
    assert browser.get(authorize(browser, oidc, "wes", "pw-wes-123")).status_code == 302
    assert access.role_of(fresh(wes)) == Role.NONE
    assert not WorkspaceGrant.objects.filter(user=wes).exists()
    assert browser.get("/endpoints/new").status_code == 403
