"""The secrets pages: scopes, keys and ACLs through the same services as the Secrets API; actions
shown only to those who may take them and refused on the server anyway; a value never in a page.

Personas: alice (editor, created the scope: MANAGE), wanda (WRITE by ACL), rita (READ by ACL),
vera (viewer role: sees that the scope exists, may not read it), otto (no role, no ACL: outsider).
"""

from __future__ import annotations

import html as html_lib
import re

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from endpoints_app.models import AuditEvent, Role, Secret, SecretAcl, SecretScope
from endpoints_app.services import secrets
from tests.test_dashboard_edit import make_user

pytestmark = pytest.mark.django_db
VALUE = "sk-team-0a1b2c3d4e5f6a7b8c9d"  # the stored value: never in any page
NEW_VALUE = "sk-rotated-9f8e7d6c5b4a3f2e1d0c"


@pytest.fixture
def scope(user) -> SecretScope:
    created = secrets.create_scope(actor=user, scope="team-keys")
    secrets.put_secret(actor=user, scope="team-keys", key="openai", string_value=VALUE)
    secrets.put_secret(actor=user, scope="team-keys", key="anthropic", string_value=VALUE + "-2")
    return created


@pytest.fixture
def people(django_user_model, user, scope) -> dict:
    wanda = make_user(django_user_model, "wanda", None)
    rita = make_user(django_user_model, "rita", None)
    secrets.put_acl(actor=user, scope="team-keys", principal="wanda", permission="WRITE")
    secrets.put_acl(actor=user, scope="team-keys", principal="rita", permission="READ")
    return {
        "alice": user,
        "wanda": wanda,
        "rita": rita,
        "vera": make_user(django_user_model, "vera", Role.VIEWER),
        "otto": make_user(django_user_model, "otto", None),
    }


def body(response) -> str:
    """The page, checked for the secret values on the way."""
    text = response.content.decode()
    assert VALUE not in text and NEW_VALUE not in text
    return text


def errors_at(html: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</ul>', html, re.S)
    assert match, f"no error list #{element_id} in the page"
    return html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


# --- the scopes list -------------------------------------------------------------------------------


def test_the_scopes_page_lists_scopes_with_the_users_permission_and_key_count(client, user, scope):
    client.force_login(user)
    html = body(client.get("/secrets/"))
    assert '<a href="/secrets/team-keys/">team-keys</a>' in html
    assert '<span class="badge perm-manage">MANAGE</span>' in html
    assert re.search(r'data-label="Keys">2</td>', html)
    assert 'aria-current="page">Secrets</a>' in html  # the nav link
    assert "Create a scope" in html


def test_anonymous_users_are_sent_to_sign_in(client, scope):
    for url in ("/secrets/", "/secrets/team-keys/", "/secrets/team-keys/delete"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_an_editor_creates_a_scope_and_manages_it(client, user):
    client.force_login(user)
    response = client.post("/secrets/", {"scope": "ml-keys"})
    assert response.status_code == 302 and response["Location"] == "/secrets/ml-keys/"
    assert SecretAcl.objects.get(scope__name="ml-keys").principal == "alice"
    assert AuditEvent.objects.filter(action="secret_scope.create", object_name="ml-keys", actor=user).exists()
    response = client.post("/secrets/", {"scope": "shared", "everyone_manages": "on"})
    assert SecretAcl.objects.get(scope__name="shared").principal == "users"


def test_a_bad_or_taken_scope_name_is_shown_next_to_the_field(client, user, scope):
    client.force_login(user)
    response = client.post("/secrets/", {"scope": "bad name!"})
    assert response.status_code == 400
    assert "letters, digits, dashes" in errors_at(body(response), "id_scope_error")
    response = client.post("/secrets/", {"scope": "team-keys"})
    assert response.status_code == 409
    assert "already exists" in errors_at(body(response), "id_scope_error")
    assert 'value="team-keys"' in response.content.decode()  # what was typed is kept


def test_a_user_without_a_role_may_not_create_a_scope(client, people):
    client.force_login(people["rita"])
    assert "Create a scope" not in body(client.get("/secrets/"))
    assert client.post("/secrets/", {"scope": "mine"}).status_code == 403
    assert not SecretScope.objects.filter(name="mine").exists()


# --- one scope -------------------------------------------------------------------------------------


def test_the_scope_page_shows_keys_with_last_update_and_acls_to_a_manager(client, user, people):
    client.force_login(user)
    html = body(client.get("/secrets/team-keys/"))
    assert "<code>{{secrets/team-keys/openai}}</code>" in html
    updated = Secret.objects.get(scope__name="team-keys", key="openai").last_updated_timestamp
    from datetime import UTC, datetime

    assert datetime.fromtimestamp(updated / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") in html
    assert re.search(
        r'data-label="Principal">wanda</th>\s*<td data-label="Permission"><span class="badge perm-write">', html
    )
    assert 'name="action" value="put_secret"' in html and 'name="action" value="put_acl"' in html
    assert 'href="/secrets/team-keys/keys/openai/delete"' in html and 'href="/secrets/team-keys/delete"' in html


def test_a_writer_puts_a_secret_and_the_value_is_never_sent_back(client, people):
    client.force_login(people["wanda"])
    html = body(client.get("/secrets/team-keys/"))
    assert 'type="password" name="value"' in html
    assert "Access (ACLs)" not in html and 'href="/secrets/team-keys/delete"' not in html  # MANAGE only

    response = client.post("/secrets/team-keys/", {"action": "put_secret", "key": "bad key!", "value": NEW_VALUE})
    assert response.status_code == 400
    html = body(response)
    assert "Secret key must be 1–128 characters" in errors_at(html, "id_key_error")
    assert 'value="bad key!"' in html  # the key is kept; the value is not

    response = client.post("/secrets/team-keys/", {"action": "put_secret", "key": "openai", "value": NEW_VALUE})
    assert response.status_code == 302 and response["Location"] == "/secrets/team-keys/"
    assert secrets.resolve(scope="team-keys", key="openai") == NEW_VALUE
    body(client.get("/secrets/team-keys/"))  # nor in the page the redirect shows, with its message
    assert all(NEW_VALUE not in f"{e.before}{e.after}" for e in AuditEvent.objects.all())


def test_an_empty_value_is_refused_next_to_it(client, people):
    client.force_login(people["wanda"])
    response = client.post("/secrets/team-keys/", {"action": "put_secret", "key": "new", "value": ""})
    assert response.status_code == 400 and "required" in errors_at(body(response), "id_value_error")
    assert not Secret.objects.filter(key="new").exists()


def test_a_reader_sees_the_keys_but_may_not_change_anything(client, people):
    client.force_login(people["rita"])
    html = body(client.get("/secrets/team-keys/"))
    assert "{{secrets/team-keys/openai}}" in html
    assert "put_secret" not in html and "/keys/openai/delete" not in html and "Access (ACLs)" not in html
    assert (
        client.post("/secrets/team-keys/", {"action": "put_secret", "key": "x", "value": NEW_VALUE}).status_code == 403
    )
    assert (
        client.post(
            "/secrets/team-keys/", {"action": "put_acl", "principal": "rita", "permission": "MANAGE"}
        ).status_code
        == 403
    )
    assert client.post("/secrets/team-keys/", {"action": "delete_acl", "principal": "wanda"}).status_code == 403
    assert client.get("/secrets/team-keys/keys/openai/delete").status_code == 403
    assert client.post("/secrets/team-keys/keys/openai/delete").status_code == 403
    assert client.get("/secrets/team-keys/delete").status_code == 403
    assert client.post("/secrets/team-keys/delete").status_code == 403
    assert Secret.objects.filter(scope__name="team-keys").count() == 2
    assert SecretAcl.objects.get(scope__name="team-keys", principal="rita").permission == "READ"


def test_a_viewer_sees_that_the_scope_exists_but_may_not_open_it(client, people):
    client.force_login(people["vera"])
    html = body(client.get("/secrets/"))
    assert "team-keys" in html and 'href="/secrets/team-keys/"' not in html
    assert "openai" not in html
    response = client.get("/secrets/team-keys/")
    assert response.status_code == 403 and "This needs READ" in body(response)


def test_an_outsider_gets_404_for_everything_about_the_scope(client, people):
    client.force_login(people["otto"])
    assert "team-keys" not in body(client.get("/secrets/"))
    for url in ("/secrets/team-keys/", "/secrets/team-keys/delete", "/secrets/team-keys/keys/openai/delete"):
        assert client.get(url).status_code == 404, url
        assert client.post(url, {"action": "put_secret", "key": "x", "value": NEW_VALUE}).status_code == 404, url
    assert client.get("/secrets/no-such-scope/").status_code == 404
    assert Secret.objects.filter(scope__name="team-keys").count() == 2


def test_deleting_a_secret_asks_first_then_deletes(client, people):
    client.force_login(people["wanda"])
    page = client.get("/secrets/team-keys/keys/openai/delete")
    assert page.status_code == 200 and "Delete secret openai?" in body(page)
    assert client.get("/secrets/team-keys/keys/nope/delete").status_code == 404
    response = client.post("/secrets/team-keys/keys/openai/delete")
    assert response.status_code == 302 and response["Location"] == "/secrets/team-keys/"
    assert list(Secret.objects.filter(scope__name="team-keys").values_list("key", flat=True)) == ["anthropic"]
    assert AuditEvent.objects.filter(action="secret.delete", object_name="team-keys", actor=people["wanda"]).exists()


def test_a_manager_grants_changes_and_removes_acls(client, user, people):
    client.force_login(user)
    response = client.post("/secrets/team-keys/", {"action": "put_acl", "principal": "vera", "permission": "READ"})
    assert response.status_code == 302
    response = client.post("/secrets/team-keys/", {"action": "put_acl", "principal": "rita", "permission": "WRITE"})
    assert SecretAcl.objects.get(scope__name="team-keys", principal="rita").permission == "WRITE"
    response = client.post("/secrets/team-keys/", {"action": "put_acl", "principal": "nobody", "permission": "READ"})
    assert response.status_code == 400
    assert "is not a user or group" in errors_at(body(response), "id_principal_error")
    response = client.post("/secrets/team-keys/", {"action": "delete_acl", "principal": "wanda"})
    assert response.status_code == 302
    assert set(SecretAcl.objects.filter(scope__name="team-keys").values_list("principal", flat=True)) == {
        "alice",
        "rita",
        "vera",
    }
    assert client.post("/secrets/team-keys/", {"action": "delete_acl", "principal": "wanda"}).status_code == 404
    assert client.post("/secrets/team-keys/", {"action": "frobnicate"}).status_code == 400


def test_a_writer_may_not_change_acls(client, people):
    client.force_login(people["wanda"])
    response = client.post("/secrets/team-keys/", {"action": "put_acl", "principal": "wanda", "permission": "MANAGE"})
    assert response.status_code == 403
    assert SecretAcl.objects.get(scope__name="team-keys", principal="wanda").permission == "WRITE"


def test_deleting_a_scope_asks_first_and_needs_manage(client, user, people):
    client.force_login(people["wanda"])
    assert client.get("/secrets/team-keys/delete").status_code == 403
    assert client.post("/secrets/team-keys/delete").status_code == 403
    client.force_login(user)
    page = client.get("/secrets/team-keys/delete")
    assert page.status_code == 200 and "its 2 secrets and its ACLs" in body(page)
    response = client.post("/secrets/team-keys/delete")
    assert response.status_code == 302 and response["Location"] == "/secrets/"
    assert not SecretScope.objects.filter(name="team-keys").exists()
    assert not Secret.objects.exists()


def test_other_methods_are_refused(client, user, scope):
    client.force_login(user)
    assert client.put("/secrets/").status_code == 405
    assert client.delete("/secrets/team-keys/").status_code == 405
    assert client.delete("/secrets/team-keys/delete").status_code == 405


def test_an_admin_sees_the_managed_scope_of_typed_credentials_but_never_a_value(client, django_user_model, user):
    secrets.store_plaintext(user=user, scope=secrets.MANAGED_SCOPE, key="chat-gpt-4o-openai_api_key", value=VALUE)
    admin = make_user(django_user_model, "ada", Role.ADMIN)
    client.force_login(admin)
    html = body(client.get("/secrets/"))
    assert f'href="/secrets/{secrets.MANAGED_SCOPE}/"' in html and "managed by Modelfleet" in html
    body(client.get(f"/secrets/{secrets.MANAGED_SCOPE}/"))
    client.force_login(user)  # not an admin: the managed scope does not exist for her
    assert secrets.MANAGED_SCOPE not in body(client.get("/secrets/"))
    assert client.get(f"/secrets/{secrets.MANAGED_SCOPE}/").status_code == 404


# --- the scopes list reads a fixed number of queries ---------------------------------------------


def scopes_page_queries(client, person) -> tuple[int, str]:
    client.force_login(person)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/secrets/")
    assert response.status_code == 200
    return len(queries), body(response)


def test_the_scopes_list_reads_as_many_queries_for_30_scopes_as_for_3(client, django_user_model, user):
    """Each user's permission on every scope comes from one bulk read (``scope_permissions``), not
    one query per scope: the same count for 3 and 30 scopes, for an admin, a role holder, and a
    user without a role who sees scopes through a group's ACL."""
    crew = Group.objects.create(name="crew")
    gus = make_user(django_user_model, "gus", None)
    gus.groups.add(crew)
    people = {
        "admin": django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123"),
        "editor": user,
        "by group": gus,
    }

    def add_scopes(first: int, last: int) -> None:
        for i in range(first, last):
            secrets.create_scope(actor=user, scope=f"scope-{i:02d}")
            secrets.put_acl(actor=user, scope=f"scope-{i:02d}", principal="crew", permission="WRITE")

    add_scopes(0, 3)
    few = {name: scopes_page_queries(client, person) for name, person in people.items()}
    add_scopes(3, 30)
    for name, person in people.items():
        count, html = scopes_page_queries(client, person)
        assert count == few[name][0], name
        expected = "MANAGE" if name != "by group" else "WRITE"
        assert html.count(f'<span class="badge perm-{expected.lower()}">{expected}</span>') == 30, name
