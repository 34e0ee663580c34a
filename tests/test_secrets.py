"""The secrets store: Databricks' Secrets API, encryption at rest, ACLs, and the helpers endpoints use."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Group
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from dashboard.env import EnvError, env_fernet_key
from endpoints_app import access, encryption
from endpoints_app.errors import PermissionDenied, ResourceConflict, ResourceDoesNotExist
from endpoints_app.models import AuditEvent, Role, Secret, SecretAcl, SecretScope, UserProfile
from endpoints_app.services import secrets as secret_services
from endpoints_app.services.tokens import create_token

pytestmark = pytest.mark.django_db

S = "/api/2.0/secrets"
VALUE = "sk-live-7c1f0e9d-very-secret"


@pytest.fixture(autouse=True)
def _fresh_resolve_cache():
    secret_services._cache.clear()
    yield
    secret_services._cache.clear()


def make_user(django_user_model, name: str, role: str = Role.NONE, *, superuser: bool = False):
    if superuser:
        return django_user_model.objects.create_superuser(name, f"{name}@example.com", "pw-12345678")
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-12345678")
    UserProfile.objects.create(user=user, role=role)
    return user


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


@pytest.fixture
def personas(django_user_model, user, api):
    """alice (editor) owns scope ``team``; everyone else starts without an ACL on it."""
    assert api.post(f"{S}/scopes/create", {"scope": "team"}, format="json").status_code == 200
    people = {
        "viewer": make_user(django_user_model, "victor", Role.VIEWER),
        "outsider": make_user(django_user_model, "olga"),
        "admin": make_user(django_user_model, "root", superuser=True),
        "editor2": make_user(django_user_model, "eddie", Role.EDITOR),
    }
    clients = {name: client_for(u) for name, u in people.items()}
    clients["owner"] = api
    return people, clients


def put(client: APIClient, scope: str, key: str, **value):
    return client.post(f"{S}/put", {"scope": scope, "key": key, **value}, format="json")


# -- it works -----------------------------------------------------------------------------------


def test_an_editor_creates_a_scope_stores_lists_and_deletes_secrets(api, user):
    assert api.post(f"{S}/scopes/create", {"scope": "ml-team"}, format="json").json() == {}
    assert put(api, "ml-team", "openai_key", string_value=VALUE).json() == {}
    assert put(api, "ml-team", "cert.pem", bytes_value=base64.b64encode(b"\x00\xffbin").decode()).status_code == 200

    assert api.get(f"{S}/scopes/list").json() == {"scopes": [{"name": "ml-team", "backend_type": "DATABRICKS"}]}
    listed = api.get(f"{S}/list", {"scope": "ml-team"}).json()["secrets"]
    assert [s["key"] for s in listed] == ["cert.pem", "openai_key"]
    assert all(
        isinstance(s["last_updated_timestamp"], int) and set(s) == {"key", "last_updated_timestamp"} for s in listed
    )
    assert api.get(f"{S}/acls/list", {"scope": "ml-team"}).json() == {
        "items": [{"principal": "alice", "permission": "MANAGE"}]
    }
    assert secret_services.resolve(scope="ml-team", key="openai_key") == VALUE

    assert api.post(f"{S}/delete", {"scope": "ml-team", "key": "openai_key"}, format="json").json() == {}
    assert [s["key"] for s in api.get(f"{S}/list", {"scope": "ml-team"}).json()["secrets"]] == ["cert.pem"]
    assert api.post(f"{S}/scopes/delete", {"scope": "ml-team"}, format="json").json() == {}
    assert api.get(f"{S}/list", {"scope": "ml-team"}).status_code == 404
    assert not Secret.objects.exists() and not SecretAcl.objects.exists()

    actions = list(
        AuditEvent.objects.filter(object_type="secret_scope").order_by("id").values_list("action", flat=True)
    )
    assert actions == [
        "secret_scope.create",
        "secret.put",
        "secret.put",
        "secret.delete",
        "secret_scope.delete",
    ]
    assert set(AuditEvent.objects.filter(object_type="secret_scope").values_list("actor_name", flat=True)) == {"alice"}


def test_put_overwrites_and_moves_the_timestamp_forward(api, user):
    api.post(f"{S}/scopes/create", {"scope": "s"}, format="json")
    put(api, "s", "k", string_value="one")
    first = Secret.objects.get().last_updated_timestamp
    put(api, "s", "k", string_value="two")
    assert Secret.objects.count() == 1
    assert Secret.objects.get().last_updated_timestamp > first
    assert secret_services.resolve(scope="s", key="k") == "two"
    overwrite = AuditEvent.objects.filter(action="secret.put").order_by("id").last()
    assert overwrite.before == {"key": "k", "last_updated_timestamp": first}


def test_creating_a_scope_twice_is_a_conflict(api, user):
    assert api.post(f"{S}/scopes/create", {"scope": "dup"}, format="json").status_code == 200
    again = api.post(f"{S}/scopes/create", {"scope": "dup"}, format="json")
    assert again.status_code == 409 and again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    assert SecretScope.objects.count() == 1


def test_initial_manage_principal_users_gives_everyone_manage(api, user, django_user_model):
    api.post(f"{S}/scopes/create", {"scope": "shared", "initial_manage_principal": "users"}, format="json")
    assert list(SecretAcl.objects.values_list("principal", "permission")) == [("users", "MANAGE")]
    nobody = client_for(make_user(django_user_model, "nora"))
    assert put(nobody, "shared", "k", string_value="v").status_code == 200


# -- encryption at rest -------------------------------------------------------------------------


def test_values_are_encrypted_at_rest_and_another_key_cannot_read_them(api, user):
    api.post(f"{S}/scopes/create", {"scope": "s"}, format="json")
    put(api, "s", "k", string_value=VALUE)
    with connection.cursor() as cursor:
        cursor.execute("SELECT encrypted_value FROM endpoints_app_secret")
        (raw,) = cursor.fetchone()
    raw = bytes(raw)
    assert VALUE.encode() not in raw and base64.b64encode(VALUE.encode()) not in raw
    assert VALUE.encode() not in bytes(raw).replace(b"\x00", b"")
    assert encryption.decrypt(raw, what="s/k") == VALUE.encode()

    with override_settings(SECRETS_KEY=Fernet.generate_key().decode()):
        with pytest.raises(encryption.SecretsKeyError, match="different key") as caught:
            secret_services.resolve(scope="s", key="k")
    assert caught.value.status == 500 and VALUE not in caught.value.message
    assert secret_services.resolve(scope="s", key="k") == VALUE  # the right key still works


def test_the_key_comes_from_the_setting_when_given(api, user, tmp_path):
    key = Fernet.generate_key().decode()
    with override_settings(SECRETS_KEY=key, DATA_DIR=tmp_path):
        api.post(f"{S}/scopes/create", {"scope": "s"}, format="json")
        put(api, "s", "k", string_value=VALUE)
        assert not (tmp_path / "secrets_key").exists()
    assert Fernet(key.encode()).decrypt(bytes(Secret.objects.get().encrypted_value)) == VALUE.encode()


def test_without_the_setting_a_key_file_is_generated_once_with_mode_0600(tmp_path):
    with override_settings(SECRETS_KEY=None, DATA_DIR=tmp_path / "data"):
        token = encryption.encrypt(b"x")
        key_file = tmp_path / "data" / "secrets_key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        key = key_file.read_text()
        assert Fernet(key.encode()).decrypt(token) == b"x"
        assert encryption.load_or_create_key_file(key_file) == key  # reused, never regenerated
        assert [p.name for p in key_file.parent.iterdir()] == ["secrets_key"]  # no temporary file left


def test_a_corrupt_key_file_is_a_clear_error(tmp_path):
    (tmp_path / "secrets_key").write_text("not-a-key")
    with pytest.raises(encryption.SecretsKeyError, match="does not hold a valid key"):
        encryption.load_or_create_key_file(tmp_path / "secrets_key")


def test_the_key_setting_is_parsed_strictly_without_echoing_it(monkeypatch):
    good = Fernet.generate_key().decode()
    monkeypatch.setenv("MODELFLEET_SECRETS_KEY", good)
    assert env_fernet_key("MODELFLEET_SECRETS_KEY") == good
    monkeypatch.delenv("MODELFLEET_SECRETS_KEY")
    assert env_fernet_key("MODELFLEET_SECRETS_KEY") is None
    for bad in ("hunter2-is-my-password", good[:-2], base64.urlsafe_b64encode(b"x" * 31).decode()):
        monkeypatch.setenv("MODELFLEET_SECRETS_KEY", bad)
        with pytest.raises(EnvError, match="MODELFLEET_SECRETS_KEY") as caught:
            env_fernet_key("MODELFLEET_SECRETS_KEY")
        assert bad not in str(caught.value)


# -- the value never leaks ----------------------------------------------------------------------


def test_no_response_audit_row_or_log_line_contains_the_value(api, user, caplog):
    caplog.set_level(logging.DEBUG)
    encoded = base64.b64encode(VALUE.encode()).decode()
    responses = [
        api.post(f"{S}/scopes/create", {"scope": "s"}, format="json"),
        put(api, "s", "k", string_value=VALUE),
        put(api, "s", "k", bytes_value=encoded),
        put(api, "s", "bad key", string_value=VALUE),
        put(api, "s", "k2", string_value=VALUE, bytes_value=encoded),
        put(api, "nope", "k", string_value=VALUE),
        api.get(f"{S}/list", {"scope": "s"}),
        api.get(f"{S}/get", {"scope": "s", "key": "k"}),
        api.get(f"{S}/scopes/list"),
        api.post(f"{S}/delete", {"scope": "s", "key": "k"}, format="json"),
    ]
    texts = [r.content.decode() for r in responses]
    texts += [json.dumps([e.before, e.after]) for e in AuditEvent.objects.all()]
    texts.append(caplog.text)
    assert AuditEvent.objects.filter(action="secret.put").count() == 2
    for text in texts:
        assert VALUE not in text and encoded not in text


def test_get_secret_never_returns_the_value(personas):
    people, clients = personas
    put(clients["owner"], "team", "k", string_value=VALUE)
    for who in ("owner", "admin"):
        answer = clients[who].get(f"{S}/get", {"scope": "team", "key": "k"})
        assert answer.status_code == 403 and answer.json()["error_code"] == "PERMISSION_DENIED"
        assert "{{secrets/team/k}}" in answer.json()["message"] and VALUE not in answer.content.decode()
    assert clients["owner"].get(f"{S}/get", {"scope": "team", "key": "missing"}).status_code == 404
    assert clients["outsider"].get(f"{S}/get", {"scope": "team", "key": "k"}).status_code == 404


# -- who may do what ----------------------------------------------------------------------------


def test_outsiders_do_not_see_a_scope_they_have_no_acl_on(personas):
    _, clients = personas
    put(clients["owner"], "team", "k", string_value="v")
    outsider = clients["outsider"]
    assert outsider.get(f"{S}/scopes/list").json() == {"scopes": []}
    for response in (
        outsider.get(f"{S}/list", {"scope": "team"}),
        put(outsider, "team", "k", string_value="evil"),
        outsider.post(f"{S}/delete", {"scope": "team", "key": "k"}, format="json"),
        outsider.get(f"{S}/acls/list", {"scope": "team"}),
        outsider.post(f"{S}/acls/put", {"scope": "team", "principal": "olga", "permission": "MANAGE"}, format="json"),
        outsider.post(f"{S}/scopes/delete", {"scope": "team"}, format="json"),
    ):
        assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert secret_services.resolve(scope="team", key="k") == "v"


def test_a_viewer_without_an_acl_sees_the_scope_but_may_not_list_it(personas):
    _, clients = personas
    viewer = clients["viewer"]
    assert viewer.get(f"{S}/scopes/list").json()["scopes"] == [{"name": "team", "backend_type": "DATABRICKS"}]
    denied = viewer.get(f"{S}/list", {"scope": "team"})
    assert denied.status_code == 403 and denied.json()["error_code"] == "PERMISSION_DENIED"
    assert "READ" in denied.json()["message"]
    assert put(viewer, "team", "k", string_value="v").status_code == 403
    created = viewer.post(f"{S}/scopes/create", {"scope": "mine"}, format="json")
    assert created.status_code == 403 and not SecretScope.objects.filter(name="mine").exists()
    assert clients["outsider"].post(f"{S}/scopes/create", {"scope": "mine"}, format="json").status_code == 403


def grant(clients, principal: str, permission: str) -> None:
    body = {"scope": "team", "principal": principal, "permission": permission}
    assert clients["owner"].post(f"{S}/acls/put", body, format="json").status_code == 200


def test_read_may_list_but_not_write(personas):
    _, clients = personas
    put(clients["owner"], "team", "k", string_value="v")
    grant(clients, "olga", "READ")
    reader = clients["outsider"]
    assert reader.get(f"{S}/scopes/list").json()["scopes"] == [{"name": "team", "backend_type": "DATABRICKS"}]
    assert [s["key"] for s in reader.get(f"{S}/list", {"scope": "team"}).json()["secrets"]] == ["k"]
    assert put(reader, "team", "k", string_value="changed").status_code == 403
    assert reader.post(f"{S}/delete", {"scope": "team", "key": "k"}, format="json").status_code == 403
    assert reader.get(f"{S}/acls/list", {"scope": "team"}).status_code == 403
    assert reader.post(f"{S}/scopes/delete", {"scope": "team"}, format="json").status_code == 403
    assert secret_services.resolve(scope="team", key="k") == "v"


def test_write_may_put_and_delete_but_not_change_acls(personas):
    _, clients = personas
    grant(clients, "victor", "WRITE")
    writer = clients["viewer"]
    assert put(writer, "team", "k", string_value="v").status_code == 200
    assert writer.post(f"{S}/delete", {"scope": "team", "key": "k"}, format="json").status_code == 200
    body = {"scope": "team", "principal": "victor", "permission": "MANAGE"}
    assert writer.post(f"{S}/acls/put", body, format="json").status_code == 403
    assert writer.get(f"{S}/acls/get", {"scope": "team", "principal": "victor"}).status_code == 403
    assert SecretAcl.objects.get(principal="victor").permission == "WRITE"


def test_manage_through_a_group_changes_acls_and_deletes_the_scope(personas):
    people, clients = personas
    group = Group.objects.create(name="ml-admins")
    people["editor2"].groups.add(group)
    grant(clients, "ml-admins", "MANAGE")
    grant(clients, "eddie", "READ")  # the highest of user and group ACLs counts
    manager = clients["editor2"]
    assert (
        manager.post(
            f"{S}/acls/put", {"scope": "team", "principal": "victor", "permission": "read"}, format="json"
        ).json()
        == {}
    )
    assert manager.get(f"{S}/acls/get", {"scope": "team", "principal": "victor"}).json() == {
        "principal": "victor",
        "permission": "READ",
    }
    assert manager.post(f"{S}/acls/delete", {"scope": "team", "principal": "victor"}, format="json").json() == {}
    missing = manager.get(f"{S}/acls/get", {"scope": "team", "principal": "victor"})
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert manager.post(f"{S}/acls/delete", {"scope": "team", "principal": "victor"}, format="json").status_code == 404
    assert manager.post(f"{S}/scopes/delete", {"scope": "team"}, format="json").status_code == 200
    acl_audits = AuditEvent.objects.filter(action__startswith="secret_acl.").order_by("id")
    assert [(e.action, e.actor_name) for e in acl_audits][-2:] == [
        ("secret_acl.put", "eddie"),
        ("secret_acl.delete", "eddie"),
    ]
    assert acl_audits.filter(action="secret_acl.delete").get().before == {"principal": "victor", "permission": "READ"}


def test_admins_may_do_everything(personas):
    _, clients = personas
    admin = clients["admin"]
    assert put(admin, "team", "k", string_value="v").status_code == 200
    assert admin.get(f"{S}/acls/list", {"scope": "team"}).status_code == 200
    grant(clients, "olga", "READ")
    assert admin.post(f"{S}/acls/delete", {"scope": "team", "principal": "alice"}, format="json").status_code == 200
    assert clients["owner"].get(f"{S}/acls/list", {"scope": "team"}).status_code == 403  # alice lost MANAGE
    assert admin.post(f"{S}/scopes/delete", {"scope": "team"}, format="json").status_code == 200


def test_acls_name_existing_users_or_groups_only(personas):
    _, clients = personas
    for body in (
        {"scope": "team", "principal": "ghost", "permission": "READ"},
        {"scope": "team", "principal": "victor", "permission": "OWNER"},
        {"scope": "team", "principal": "", "permission": "READ"},
    ):
        answer = clients["owner"].post(f"{S}/acls/put", body, format="json")
        assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert list(SecretAcl.objects.values_list("principal", flat=True)) == ["alice"]


# -- bad input ----------------------------------------------------------------------------------


BIG = "x" * (128 * 1024 + 1)


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "team", "key": "k", "string_value": "a", "bytes_value": "YQ=="},
        {"scope": "team", "key": "k"},
        {"scope": "team", "key": "k", "bytes_value": "not base64!"},
        {"scope": "team", "key": "k", "string_value": BIG},
        {"scope": "team", "key": "k", "string_value": 42},
        {"scope": "team", "key": "a/b", "string_value": "v"},
        {"scope": "team", "key": "", "string_value": "v"},
        {"scope": "team", "key": "k" * 129, "string_value": "v"},
        {"scope": ["team"], "key": "k", "string_value": "v"},
        ["team", "k", "v"],
    ],
)
def test_a_bad_put_is_400_and_stores_nothing(personas, body):
    _, clients = personas
    answer = clients["owner"].post(f"{S}/put", body, format="json")
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not Secret.objects.exists() and not AuditEvent.objects.filter(action="secret.put").exists()


def test_the_largest_value_allowed_is_128_kib(personas):
    _, clients = personas
    assert put(clients["owner"], "team", "k", string_value=BIG[:-1]).status_code == 200


def test_malformed_json_is_400(api, user):
    answer = api.post(f"{S}/scopes/create", "{not json", content_type="application/json")
    assert answer.status_code == 400 and answer.json()["error_code"] == "MALFORMED_REQUEST"


@pytest.mark.parametrize(
    "body",
    [
        {"scope": "has space"},
        {"scope": ""},
        {"scope": "x" * 129},
        {},
        {"scope": "modelfleet-mine"},
        {"scope": "kv", "scope_backend_type": "AZURE_KEYVAULT"},
        {"scope": "kv", "backend_azure_keyvault": {"resource_id": "r", "dns_name": "d"}},
        {"scope": "kv", "initial_manage_principal": "alice"},
    ],
)
def test_a_bad_scope_is_400_and_creates_nothing(api, user, body):
    answer = api.post(f"{S}/scopes/create", body, format="json")
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not SecretScope.objects.exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/scopes/create"),
        ("get", "/scopes/delete"),
        ("post", "/scopes/list"),
        ("get", "/put"),
        ("delete", "/delete"),
        ("post", "/list"),
        ("post", "/get"),
        ("get", "/acls/put"),
        ("put", "/acls/delete"),
        ("post", "/acls/get"),
        ("post", "/acls/list"),
    ],
)
def test_the_wrong_method_is_405(api, user, method, path):
    answer = getattr(api, method)(f"{S}{path}")
    assert answer.status_code == 405 and answer.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_missing_query_parameters_are_400_and_anonymous_is_401(api, user, anon):
    for path in ("/list", "/acls/list", "/acls/get?scope=team", "/get?scope=team"):
        answer = api.get(f"{S}{path}")
        assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert anon.get(f"{S}/scopes/list").status_code == 401
    assert anon.post(f"{S}/scopes/create", {"scope": "x"}, format="json").status_code == 401


def test_a_scope_holds_at_most_1000_secrets(personas):
    _, clients = personas
    scope = SecretScope.objects.get(name="team")
    Secret.objects.bulk_create(
        Secret(scope=scope, key=f"k{i}", encrypted_value=b"x", last_updated_timestamp=1) for i in range(1000)
    )
    answer = put(clients["owner"], "team", "one-more", string_value="v")
    assert answer.status_code == 400 and answer.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    assert put(clients["owner"], "team", "k7", string_value="v").status_code == 200  # overwriting is fine


# -- helpers for endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{secrets/my_scope/my_key}}", ("my_scope", "my_key")),
        ("{{ secrets/my-scope/key.v2 }}", ("my-scope", "key.v2")),
        ("{{\tsecrets / s / k\n}}", ("s", "k")),
        ("{{secrets/s}}", None),
        ("{{secrets/s/k/x}}", None),
        ("prefix {{secrets/s/k}}", None),
        ("{{secret/s/k}}", None),
        ("{{secrets/s/k}", None),
        ("{{secrets/has space/k}}", None),
        ("sk-plain-text", None),
        ("", None),
    ],
)
def test_parse_reference(text, expected):
    assert secret_services.parse_reference(text) == expected


def test_check_can_read_per_persona(personas):
    people, clients = personas
    put(clients["owner"], "team", "k", string_value="v")
    grant(clients, "eddie", "READ")
    for who in ("owner", "admin", "editor2"):
        user = people.get(who) or type(people["admin"]).objects.get(username="alice")
        access.check_can_read(user=user, scope="team", key="k")
    with pytest.raises(PermissionDenied):
        access.check_can_read(user=people["viewer"], scope="team", key="k")
    with pytest.raises(ResourceDoesNotExist):
        access.check_can_read(user=people["outsider"], scope="team", key="k")
    with pytest.raises(ResourceDoesNotExist, match="missing"):
        access.check_can_read(user=people["editor2"], scope="team", key="missing")
    with pytest.raises(ResourceDoesNotExist):
        access.check_can_read(user=people["admin"], scope="nope", key="k")


def test_resolve_is_one_query_and_sees_changes_and_deletes(personas, django_assert_num_queries):
    _, clients = personas
    put(clients["owner"], "team", "k", string_value="first")
    assert secret_services.resolve(scope="team", key="k") == "first"
    with django_assert_num_queries(1):
        assert secret_services.resolve(scope="team", key="k") == "first"
    put(clients["owner"], "team", "k", string_value="second")
    assert secret_services.resolve(scope="team", key="k") == "second"
    clients["owner"].post(f"{S}/delete", {"scope": "team", "key": "k"}, format="json")
    with pytest.raises(ResourceDoesNotExist):
        secret_services.resolve(scope="team", key="k")
    put(clients["owner"], "team", "k", string_value="third")
    assert secret_services.resolve(scope="team", key="k") == "third"


def test_resolve_refuses_bytes_that_are_not_text(personas):
    _, clients = personas
    put(clients["owner"], "team", "bin", bytes_value=base64.b64encode(b"\xff\xfe").decode())
    with pytest.raises(Exception, match="not UTF-8"):
        secret_services.resolve(scope="team", key="bin")


def test_store_plaintext_keeps_the_credential_in_a_managed_scope(personas):
    people, clients = personas
    alice = type(people["admin"]).objects.get(username="alice")
    ref = secret_services.store_plaintext(
        user=alice, scope=secret_services.MANAGED_SCOPE, key="ep1-openai_api_key", value=VALUE
    )
    assert ref == "{{secrets/modelfleet-managed/ep1-openai_api_key}}"
    assert secret_services.parse_reference(ref) == ("modelfleet-managed", "ep1-openai_api_key")
    assert secret_services.resolve(scope="modelfleet-managed", key="ep1-openai_api_key") == VALUE
    assert SecretScope.objects.get(name="modelfleet-managed").managed

    # Who stored it may reference it; other users do not even see the scope; admins see everything.
    access.check_can_read(user=alice, scope="modelfleet-managed", key="ep1-openai_api_key")
    with pytest.raises(ResourceDoesNotExist):
        access.check_can_read(user=people["editor2"], scope="modelfleet-managed", key="ep1-openai_api_key")
    assert [s["name"] for s in clients["owner"].get(f"{S}/scopes/list").json()["scopes"]] == ["team"]
    assert clients["owner"].get(f"{S}/list", {"scope": "modelfleet-managed"}).status_code == 404
    assert put(clients["owner"], "modelfleet-managed", "ep1-openai_api_key", string_value="x").status_code == 404
    assert {s["name"] for s in clients["admin"].get(f"{S}/scopes/list").json()["scopes"]} == {
        "team",
        "modelfleet-managed",
    }

    secret_services.store_plaintext(user=alice, scope="modelfleet-managed", key="ep2-key", value="other")
    assert SecretScope.objects.filter(name="modelfleet-managed").count() == 1
    events = AuditEvent.objects.filter(object_name="modelfleet-managed").order_by("id")
    assert [e.action for e in events] == ["secret_scope.create", "secret.put", "secret.put"]
    assert all(VALUE not in json.dumps([e.before, e.after]) for e in events)
    with pytest.raises(ResourceConflict):
        secret_services.store_plaintext(user=alice, scope="team", key="k", value="v")


# -- the real Databricks SDK --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_databricks_sdk_manages_secrets(live_server, user, token, django_user_model):
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import NotFound, PermissionDenied, ResourceAlreadyExists
    from databricks.sdk.service.workspace import AclPermission

    make_user(django_user_model, "victor", Role.VIEWER)
    w = WorkspaceClient(host=live_server.url, token=token)
    w.secrets.create_scope(scope="sdk-scope")
    with pytest.raises(ResourceAlreadyExists):
        w.secrets.create_scope(scope="sdk-scope")
    w.secrets.put_secret(scope="sdk-scope", key="api_key", string_value=VALUE)
    w.secrets.put_secret(scope="sdk-scope", key="blob", bytes_value=base64.b64encode(b"raw bytes").decode())

    assert [(s.name, s.backend_type.value) for s in w.secrets.list_scopes()] == [("sdk-scope", "DATABRICKS")]
    listed = list(w.secrets.list_secrets(scope="sdk-scope"))
    assert [s.key for s in listed] == ["api_key", "blob"] and all(s.last_updated_timestamp > 0 for s in listed)

    w.secrets.put_acl(scope="sdk-scope", principal="victor", permission=AclPermission.READ)
    acls = {(a.principal, a.permission) for a in w.secrets.list_acls(scope="sdk-scope")}
    assert acls == {("alice", AclPermission.MANAGE), ("victor", AclPermission.READ)}
    assert w.secrets.get_acl(scope="sdk-scope", principal="victor").permission == AclPermission.READ
    with pytest.raises(PermissionDenied):
        w.secrets.get_secret(scope="sdk-scope", key="api_key")
    w.secrets.delete_acl(scope="sdk-scope", principal="victor")

    w.secrets.delete_secret(scope="sdk-scope", key="api_key")
    assert [s.key for s in w.secrets.list_secrets(scope="sdk-scope")] == ["blob"]
    assert secret_services.resolve(scope="sdk-scope", key="blob") == "raw bytes"
    w.secrets.delete_scope(scope="sdk-scope")
    assert list(w.secrets.list_scopes()) == []
    with pytest.raises(NotFound) as caught:
        list(w.secrets.list_secrets(scope="sdk-scope"))
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"


# -- one rule for one scope and for many --------------------------------------------------------


def test_scope_permissions_agrees_with_scope_permission_for_every_persona(django_user_model, user):
    """The bulk read (the scopes page) and the one-scope read (every service call) give the same
    permission: the best of the user's own, their groups' and ``users`` ACLs; MANAGE for admins;
    nothing on a managed scope for anyone else."""
    team = Group.objects.create(name="team-readers")
    grace = make_user(django_user_model, "grace")
    grace.groups.add(team)
    inactive = make_user(django_user_model, "ivan", Role.EDITOR)
    inactive.is_active = False
    inactive.save()
    people = [
        user,
        grace,
        inactive,
        make_user(django_user_model, "root", superuser=True),
        make_user(django_user_model, "victor", Role.VIEWER),
        None,
    ]
    by_name = secret_services.create_scope(actor=user, scope="by-name")
    by_group = secret_services.create_scope(actor=user, scope="by-group")
    everyone = secret_services.create_scope(actor=user, scope="everyone", initial_manage_principal="users")
    best_of = secret_services.create_scope(actor=user, scope="best-of")
    for scope, principal, permission in [
        ("by-name", "grace", "WRITE"),
        ("by-group", "team-readers", "READ"),
        ("best-of", "users", "READ"),
        ("best-of", "team-readers", "WRITE"),
        ("best-of", "grace", "READ"),
    ]:
        secret_services.put_acl(actor=user, scope=scope, principal=principal, permission=permission)
    secret_services.store_plaintext(user=user, scope=secret_services.MANAGED_SCOPE, key="k", value="v")
    managed = SecretScope.objects.get(name=secret_services.MANAGED_SCOPE)
    scopes = [by_name, by_group, everyone, best_of, managed]
    for person in people:
        bulk = access.scope_permissions(person, scopes)
        assert bulk == {s.pk: access.scope_permission(person, s) for s in scopes}, person
    assert [access.scope_permissions(grace, scopes)[s.pk] for s in scopes] == [
        "WRITE",
        "READ",
        "MANAGE",
        "WRITE",
        None,
    ]
    assert set(access.scope_permissions(people[3], scopes).values()) == {"MANAGE"}  # the admin


def test_scope_permissions_reads_twice_whatever_the_number_of_scopes(django_user_model, user):
    scopes = [secret_services.create_scope(actor=user, scope=f"s-{i:02d}") for i in range(30)]
    reader = make_user(django_user_model, "rhea")
    for scope in scopes[::3]:
        secret_services.put_acl(actor=user, scope=scope.name, principal="rhea", permission="READ")
    reader = type(reader).objects.select_related("profile").get(pk=reader.pk)  # its role read once, here
    for count in (3, 30):
        with CaptureQueriesContext(connection) as queries:
            permissions = access.scope_permissions(reader, scopes[:count])
        assert len(queries) == 2, [q["sql"] for q in queries]  # the user's groups, their ACLs
        assert sum(p == "READ" for p in permissions.values()) == len(scopes[:count:3])
