"""SCIM provisioning (``/api/2.0/preview/scim/v2/``) against a live server (pytest-django's
``live_server``: the real WSGI app on a loopback port), driven by real clients:

- the databricks-sdk's ``w.users``, ``w.groups`` and ``w.current_user`` (create, get, list with
  filters and paging, update, patch, delete, and the SDK's own errors for 404/409);
- scim2-tester, an independent RFC 7643/7644 checker, over its every check for Users and Groups
  and discovery, with no error;
- deactivation revokes at once: the user's token gets 401, their dashboard session is gone;
- every change is an audit row; non-admins get a SCIM 403; hostile filters a 400, quickly.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound, PermissionDenied, ResourceConflict
from databricks.sdk.service import iam
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from scim2_client import BaseSyncSCIMClient
from scim2_tester import Status, check_server

from endpoints_app import scim_filter
from endpoints_app.models import AccessToken, AuditEvent, Role, ServicePrincipal, UserProfile
from endpoints_app.scim_schemas import ERROR, USER_SCHEMA
from endpoints_app.services.tokens import create_token

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = "/api/2.0/preview/scim/v2"


@pytest.fixture
def admin_token(django_user_model) -> str:
    admin = django_user_model.objects.create_user("scim-admin", "scim@example.com", "pw-scim-123456789")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    return create_token(user=admin, comment="idp")[1]


@pytest.fixture
def w(live_server, admin_token) -> WorkspaceClient:
    return WorkspaceClient(host=live_server.url, token=admin_token, auth_type="pat")


def scim(live_server, token: str, method: str, path: str, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.request(
        method, f"{live_server.url}{ROOT}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
    )


# --- the databricks-sdk ---------------------------------------------------------------------------------


def test_the_sdk_creates_finds_updates_and_deletes_users(w):
    created = w.users.create(
        user_name="ada@example.com",
        display_name="Ada Lovelace",
        name=iam.Name(given_name="Ada", family_name="Lovelace"),
        emails=[iam.ComplexValue(value="ada@example.com", primary=True, type="work")],
        external_id="okta-00u1",
        entitlements=[iam.ComplexValue(value="workspace-access")],  # Databricks-only: ignored
    )
    assert created.id and created.user_name == "ada@example.com" and created.active is True
    assert created.emails[0].value == "ada@example.com"

    got = w.users.get(created.id)
    assert (got.display_name, got.name.given_name, got.name.family_name) == ("Ada Lovelace", "Ada", "Lovelace")
    assert got.external_id == "okta-00u1"

    for expression in (
        'userName eq "ADA@example.com"',  # userName is case-insensitive
        'externalId eq "okta-00u1"',
        'emails.value co "ada@"',
        'displayName sw "Ada" and active eq true',
        f'userName eq "nobody" or id eq "{created.id}"',
    ):
        assert [u.id for u in w.users.list(filter=expression)] == [created.id], expression
    assert list(w.users.list(filter='externalId eq "OKTA-00U1"')) == []  # externalId is case-exact

    w.users.update(created.id, user_name="ada@example.com", display_name="Countess", active=True)
    after = w.users.get(created.id)
    assert after.display_name == "Countess" and after.name is None and not after.emails  # PUT replaces

    w.users.patch(
        created.id,
        operations=[iam.Patch(op=iam.PatchOp.REPLACE, path="name.givenName", value="Augusta")],
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    assert w.users.get(created.id).name.given_name == "Augusta"

    w.users.delete(created.id)
    with pytest.raises(NotFound):
        w.users.get(created.id)


def test_the_sdk_pages_through_every_user(w, django_user_model):
    for i in range(7):
        django_user_model.objects.create_user(f"page-{i}")
    listed = [u.user_name for u in w.users.list(count=3, sort_by="userName", attributes="userName")]
    assert [n for n in listed if n.startswith("page-")] == [f"page-{i}" for i in range(7)]


def test_the_sdk_manages_groups_and_their_members(w, django_user_model):
    ada = w.users.create(user_name="ada")
    bob = w.users.create(user_name="bob")
    team = w.groups.create(display_name="ml-team", members=[iam.ComplexValue(value=ada.id)], external_id="g-1")
    assert [m.value for m in team.members] == [ada.id]

    w.groups.patch(
        team.id,
        operations=[iam.Patch(op=iam.PatchOp.ADD, path="members", value=[{"value": bob.id}])],
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    assert sorted(m.value for m in w.groups.get(team.id).members) == sorted([ada.id, bob.id])
    assert sorted(django_user_model.objects.get(username="bob").groups.values_list("name", flat=True)) == ["ml-team"]
    assert [g.display for g in w.users.get(bob.id).groups] == ["ml-team"]

    w.groups.patch(
        team.id,
        operations=[iam.Patch(op=iam.PatchOp.REMOVE, path=f'members[value eq "{ada.id}"]')],
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    assert [m.value for m in w.groups.get(team.id).members] == [bob.id]
    assert [g.id for g in w.groups.list(filter=f'members eq "{bob.id}"')] == [team.id]
    assert [g.id for g in w.groups.list(filter='displayName eq "ML-TEAM"')] == [team.id]

    w.groups.update(team.id, display_name="ml-platform", members=[])
    renamed = w.groups.get(team.id)
    assert renamed.display_name == "ml-platform" and not renamed.members

    with pytest.raises(ResourceConflict):
        w.groups.create(display_name="ml-platform")
    w.groups.delete(team.id)
    assert not Group.objects.filter(name="ml-platform").exists()
    with pytest.raises(NotFound):
        w.groups.delete(team.id)


def test_me_is_any_signed_in_user(live_server, django_user_model):
    viewer = django_user_model.objects.create_user("just-a-viewer")
    UserProfile.objects.create(user=viewer, role=Role.VIEWER)
    token = create_token(user=viewer)[1]
    me = WorkspaceClient(host=live_server.url, token=token, auth_type="pat").current_user.me()
    assert me.user_name == "just-a-viewer"
    with pytest.raises(PermissionDenied):
        list(WorkspaceClient(host=live_server.url, token=token, auth_type="pat").users.list())


# --- revocation -------------------------------------------------------------------------------------------


def test_deactivation_ends_sessions_and_tokens_at_once(w, live_server, django_user_model):
    user = w.users.create(user_name="leaver", active=True)
    leaver = django_user_model.objects.get(username="leaver")
    leaver.set_password("pw-leaver-123456789")
    leaver.save()
    token = create_token(user=leaver, comment="laptop")[1]
    browser = requests.Session()
    browser.get(f"{live_server.url}/accounts/login/", timeout=30)
    signed_in = browser.post(
        f"{live_server.url}/accounts/login/",
        data={
            "username": "leaver",
            "password": "pw-leaver-123456789",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": f"{live_server.url}/accounts/login/"},
        timeout=30,
    )
    assert signed_in.ok and Session.objects.count() == 1
    me = f"{live_server.url}{ROOT}/Me"
    assert requests.get(me, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200

    w.users.patch(
        user.id,
        operations=[iam.Patch(op=iam.PatchOp.REPLACE, path="active", value="False")],  # as Microsoft Entra sends it
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    assert requests.get(me, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 401
    assert Session.objects.count() == 0
    assert not AccessToken.objects.filter(user=leaver, revoked_at__isnull=True).exists()
    assert w.users.get(user.id).active is False

    w.users.patch(
        user.id,
        operations=[iam.Patch(op=iam.PatchOp.REPLACE, value={"active": True})],
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    assert w.users.get(user.id).active is True
    # Reactivated, but the revoked token stays revoked.
    assert requests.get(me, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 401


# --- audit --------------------------------------------------------------------------------------------------


def test_every_scim_change_is_an_audit_event(w):
    start = AuditEvent.objects.count()
    user = w.users.create(user_name="audited", display_name="A")
    w.users.patch(
        user.id,
        operations=[iam.Patch(op=iam.PatchOp.REPLACE, path="displayName", value="B")],
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    w.users.patch(
        user.id,
        # The SDK leaves a falsy value out of the operation, so false goes inside an object.
        operations=[iam.Patch(op=iam.PatchOp.REPLACE, value={"active": False})],
        schemas=[iam.PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    group = w.groups.create(display_name="audited-group", members=[iam.ComplexValue(value=user.id)])
    w.groups.update(group.id, display_name="renamed-group")
    w.groups.delete(group.id)
    w.users.delete(user.id)
    actions = list(AuditEvent.objects.order_by("pk")[start:].values_list("action", "actor_name"))
    assert actions == [
        ("user.create", "scim-admin"),
        ("user.update", "scim-admin"),
        ("user.update", "scim-admin"),
        ("user.deactivate", "scim-admin"),
        ("group.create", "scim-admin"),
        ("group.set_members", "scim-admin"),
        ("group.update", "scim-admin"),
        ("group.set_members", "scim-admin"),
        ("group.delete", "scim-admin"),
        ("user.delete", "scim-admin"),
    ]
    deleted = AuditEvent.objects.get(action="user.delete")
    assert deleted.before["display_name"] == "B" and deleted.object_name == "audited"


# --- errors and hostile input ---------------------------------------------------------------------------


def test_errors_are_scim_errors(live_server, admin_token, django_user_model):
    outsider = django_user_model.objects.create_user("outsider")
    denied = scim(live_server, create_token(user=outsider)[1], "GET", "/Users")
    assert denied.status_code == 403 and denied.json()["schemas"] == [ERROR] and denied.json()["status"] == "403"
    missing = scim(live_server, admin_token, "GET", "/Users/999999")
    assert missing.status_code == 404 and missing.json()["schemas"] == [ERROR]
    assert scim(live_server, admin_token, "GET", "/Users/not-a-number").status_code == 404
    assert (
        scim(live_server, admin_token, "POST", "/Users", json={"displayName": "no userName"}).json()["status"] == "400"
    )
    tagged = scim(live_server, admin_token, "POST", "/Users", json={"userName": "first.last+ml@example.com"})
    assert tagged.status_code == 201 and tagged.json()["userName"] == "first.last+ml@example.com"
    long_email = {"userName": "long-mail", "emails": [{"value": "a" * 250 + "@example.com"}]}
    too_long = scim(live_server, admin_token, "POST", "/Users", json=long_email)
    assert too_long.status_code == 400 and "email" in too_long.json()["detail"]  # not a database error (PostgreSQL)
    odd = scim(live_server, admin_token, "POST", "/Users", json={"userName": "no spaces or !"})
    assert odd.status_code == 400 and odd.json()["scimType"] == "invalidValue"
    duplicate = scim(live_server, admin_token, "POST", "/Groups", json={"displayName": "g"})
    again = scim(live_server, admin_token, "POST", "/Groups", json={"displayName": "g"})
    assert duplicate.status_code == 201 and again.status_code == 409 and again.json()["scimType"] == "uniqueness"
    renamed = scim(live_server, admin_token, "PUT", f"/Users/{outsider.pk}", json={"userName": "someone-else"})
    assert renamed.status_code == 400 and renamed.json()["scimType"] == "mutability"
    bad_patch = scim(live_server, admin_token, "PATCH", f"/Users/{outsider.pk}", json={"Operations": [{"op": "move"}]})
    assert bad_patch.status_code == 400 and bad_patch.json()["scimType"] == "invalidSyntax"
    read_only = {"Operations": [{"op": "add", "path": "groups", "value": [{"value": "1"}]}]}
    assert scim(live_server, admin_token, "PATCH", f"/Users/{outsider.pk}", json=read_only).json()["scimType"] == (
        "mutability"
    )
    unknown_member = scim(
        live_server, admin_token, "POST", "/Groups", json={"displayName": "h", "members": [{"value": "9999999"}]}
    )
    assert unknown_member.status_code == 400
    assert scim(live_server, admin_token, "DELETE", "/Schemas").status_code == 405
    assert scim(live_server, admin_token, "GET", "/Nothing/here").json()["status"] == "404"
    anonymous = requests.get(f"{live_server.url}{ROOT}/Users", timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error_code"] == "UNAUTHENTICATED"


def test_any_other_path_under_the_root_is_a_scim_404_line_breaks_included(live_server, admin_token):
    """Found by the OpenAPI fuzzer: a path with an encoded line break passed by the catch-all (Django's
    ``path`` converter stops at one) and got the API's 404, not SCIM's."""
    for path in ("/Nothing/here", "/a%0Ab", "/Users%0A", "/%0A"):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = scim(live_server, admin_token, method, path)
            assert response.status_code == 404, (method, path, response.content)
            assert response.json()["schemas"] == [ERROR] and response.json()["status"] == "404", (method, path)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("userName eq " + '"' + "a" * 2000 + '"', "longer than"),
        ("(" * 50 + 'userName eq "a"' + ")" * 50, "deeper"),
        (" or ".join(['userName eq "a"'] * 30), "more than 20"),
        ('userName eq "unclosed', "closing quote"),
        ('emails[type eq "work"].value eq "a"', "not supported"),
        ('password eq "x"', "cannot filter"),
        ('userName regex "a"', "unknown operator"),
        ("userName eq", "expected"),
        ('userName eq "a" )', "unexpected"),
        ('active eq "yes"', "boolean"),
    ],
)
def test_hostile_filters_are_a_400_quickly(live_server, admin_token, expression, says):
    started = time.monotonic()
    response = scim(live_server, admin_token, "GET", "/Users", params={"filter": expression})
    assert time.monotonic() - started < 2
    assert response.status_code == 400, response.text
    assert response.json()["scimType"] == "invalidFilter" and says in response.json()["detail"]


def test_groups_hold_users_only_and_service_principals_are_not_users(live_server, admin_token, django_user_model):
    robot = django_user_model.objects.create_user("robot-user")
    ServicePrincipal.objects.create(user=robot, display_name="robot")
    team = Group.objects.create(name="nest")
    nested = {"displayName": "outer", "members": [{"value": str(team.pk), "type": "Group"}]}
    refused = scim(live_server, admin_token, "POST", "/Groups", json=nested)
    assert refused.status_code == 400 and "groups do not nest" in refused.json()["detail"]
    listed = scim(live_server, admin_token, "GET", "/Users").json()
    assert [u["userName"] for u in listed["Resources"]] == ["scim-admin"]
    assert scim(live_server, admin_token, "GET", f"/Users/{robot.pk}").status_code == 404
    assert scim(live_server, admin_token, "DELETE", f"/Users/{robot.pk}").status_code == 404
    assert django_user_model.objects.filter(pk=robot.pk, is_active=True).exists()


def test_what_entra_and_okta_send_but_is_not_kept_is_accepted_and_ignored(live_server, admin_token):
    """Their default attribute mappings send more of RFC 7643's User than is kept here."""
    enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    created = scim(
        live_server,
        admin_token,
        "POST",
        "/Users",
        json={
            "schemas": [USER_SCHEMA, enterprise],
            "userName": "grace@example.com",
            "title": "Rear Admiral",
            "phoneNumbers": [{"type": "work", "value": "+1 555 0100"}],
            enterprise: {"department": "Navy", "employeeNumber": "1906"},
        },
    )
    assert created.status_code == 201, created.text
    operations = [
        {"op": "Replace", "path": "title", "value": "Commodore"},
        {"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0101"},
        {"op": "Replace", "path": f"{enterprise}:department", "value": "Research"},
        {"op": "Add", "value": {enterprise: {"manager": {"value": "1"}}, "name.formatted": "Grace Hopper"}},
        {"op": "Replace", "path": "name.givenName", "value": "Grace"},
    ]
    patched = scim(live_server, admin_token, "PATCH", f"/Users/{created.json()['id']}", json={"Operations": operations})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == {"givenName": "Grace"} and "title" not in patched.json()
    unknown = {"Operations": [{"op": "replace", "path": "favouriteColour", "value": "blue"}]}
    refused = scim(live_server, admin_token, "PATCH", f"/Users/{created.json()['id']}", json=unknown)
    assert refused.status_code == 400 and refused.json()["scimType"] == "invalidPath"


def test_sizes_are_bounded(live_server, admin_token, django_user_model):
    """Each list a request carries, and each page an answer holds, has a ceiling: a 400 past it."""
    target = django_user_model.objects.create_user("target")
    operation = {"op": "replace", "path": "displayName", "value": "x"}
    many = scim(live_server, admin_token, "PATCH", f"/Users/{target.pk}", json={"Operations": [operation] * 1001})
    assert many.status_code == 400 and many.json()["scimType"] == "tooMany"
    crowd = {"displayName": "crowd", "members": [{"value": str(i)} for i in range(10_001)]}
    too_many_members = scim(live_server, admin_token, "POST", "/Groups", json=crowd)
    assert too_many_members.status_code == 400 and "at most 10000" in too_many_members.json()["detail"]
    long_path = {"Operations": [{"op": "replace", "path": "name." + "x" * 600, "value": "x"}]}
    refused = scim(live_server, admin_token, "PATCH", f"/Users/{target.pk}", json=long_path)
    assert refused.status_code == 400 and refused.json()["scimType"] == "invalidPath"
    long_name = scim(
        live_server, admin_token, "PUT", f"/Users/{target.pk}", json={"userName": "target", "displayName": "d" * 256}
    )
    assert long_name.status_code == 400 and "at most 255" in long_name.json()["detail"]
    assert scim(live_server, admin_token, "GET", "/Users", params={"attributes": "a," * 1001}).status_code == 400
    assert scim(live_server, admin_token, "GET", "/Users", params={"count": "9" * 12}).status_code == 400
    page = scim(live_server, admin_token, "GET", "/Users", params={"count": "100000"}).json()
    assert page["itemsPerPage"] == page["totalResults"] == 2  # the count is capped, not refused
    ignored = b"[" + b",".join([b'{"value": "workspace-access"}'] * 200_000) + b"]"  # about 6 MB
    huge = scim(
        live_server, admin_token, "POST", "/Users", data=b'{"userName": "huge", "entitlements": ' + ignored + b"}"
    )
    assert huge.status_code in (400, 413), huge.text[:200]
    assert not django_user_model.objects.filter(username="huge").exists()


def test_the_filter_reader_never_backtracks():
    """A pathological string for a regex-based reader: linear here."""
    started = time.monotonic()
    with pytest.raises(scim_filter.InvalidFilter):
        scim_filter.parse_filter('"' + "\\\\" * 499, {"username": scim_filter.Attribute("username")})
    assert time.monotonic() - started < 0.1


# --- scim2-tester -------------------------------------------------------------------------------------------


class RequestsSCIMClient(BaseSyncSCIMClient):
    """scim2-client over ``requests``: its httpx engine needs an httpx release this project's
    other clients do not use."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _stays_under_base_url(self, endpoint: str) -> bool:
        return urljoin(self.base_url + "/", endpoint.lstrip("/")).startswith(self.base_url + "/") or (
            urljoin(self.base_url + "/", endpoint.lstrip("/")) == self.base_url
        )

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        target = url if url.startswith("http") else self.base_url + "/" + url.lstrip("/")
        return self.session.request(method, target, timeout=30, **kwargs)


def test_scim2_tester_finds_no_failure(live_server, admin_token):
    client = RequestsSCIMClient(f"{live_server.url}{ROOT}", admin_token)
    results = check_server(client)
    failures = [r for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
    assert not failures, "\n".join(f"{r.resource_type} {r.title}: {r.reason}" for r in failures)
    ran = {(r.resource_type, r.title) for r in results if r.status == Status.SUCCESS}
    for resource_type in ("User", "Group"):
        for check in (
            "object_creation",
            "object_query",
            "object_query_without_id",
            "object_query_with_attributes",
            "object_list_with_attributes",
            "object_replacement",
            "object_deletion",
            "check_add_attribute",
            "check_remove_attribute",
            "check_replace_attribute",
        ):
            assert (resource_type, check) in ran, (resource_type, check)
    # Nothing else is left out but the server-wide /.search, which is optional (RFC 7644 §3.4.3).
    assert {r.title for r in results if r.status != Status.SUCCESS} <= {"search_with_attributes"}
    assert sum(r.status == Status.SUCCESS for r in results) >= 60
