"""Single sign-on against a real OpenID provider (django-oauth-toolkit, ``tests.oidc_provider``,
its own process on loopback): the whole authorization code flow with PKCE through Django's test
client, the provider's pages driven with requests; then the sign-in rules on claims directly
(``services.sso.sign_in``), the group → role API, and password sign-in switched off."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth.models import Group
from django.test import Client

from dashboard.env import EnvError
from dashboard.oidc_env import env_group_roles, env_issuer
from endpoints_app.models import AuditEvent, GroupRoleMapping, Role, SsoIdentity, UserProfile
from endpoints_app.services import sso as sso_services
from tests.oidc_provider.process import start_provider

CALLBACK = "http://testserver/accounts/sso/callback"
MAPPINGS = "/api/2.0/modelfleet/group-role-mappings"


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    running = start_provider(
        tmp_path_factory.mktemp("oidc-provider"),
        redirect_uri=CALLBACK,
        users=["carol:pw-carol-123:ml-eng,data", "dave:pw-dave-123:ml-admins", "erin:pw-erin-123:"],
    )
    yield running
    running.stop()


@pytest.fixture
def sso(settings, provider):
    settings.OIDC_ISSUER = provider.issuer
    settings.OIDC_CLIENT_ID = provider.client_id
    settings.OIDC_CLIENT_SECRET = provider.client_secret
    settings.OIDC_GROUP_ROLES = {"ml-eng": "viewer", "ml-admins": "admin"}
    return provider


def provider_session(provider, username: str, password: str) -> requests.Session:
    """A browser-like session signed in at the provider."""
    session = requests.Session()
    session.get(f"{provider.url}/accounts/login/", timeout=10)
    answer = session.post(
        f"{provider.url}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["provider_csrf"]},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text
    return session


def authorize(client: Client, provider, username: str, password: str, next_url: str = "") -> str:
    """Start at Modelfleet, sign in at the provider; the callback URL the provider sends back to."""
    start = client.get("/accounts/sso/login" + (f"?next={next_url}" if next_url else ""))
    assert start.status_code == 302, start.content
    answer = provider_session(provider, username, password).get(start["Location"], allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    assert answer.headers["Location"].startswith(CALLBACK + "?")
    return answer.headers["Location"].removeprefix("http://testserver")


@pytest.mark.django_db
def test_a_first_sign_in_creates_the_user_with_the_groups_and_role_the_provider_gives(sso):
    GroupRoleMapping.objects.create(group_name="ml-eng", role=Role.EDITOR)  # the API's mapping beats the settings'
    client = Client()
    start = client.get("/accounts/sso/login?next=/endpoints/new")
    query = parse_qs(urlsplit(start["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["nonce"][0] and query["state"][0] and query["scope"] == ["openid email profile"]

    callback = authorize(client, sso, "carol", "pw-carol-123", next_url="/endpoints/new")
    response = client.get(callback)
    assert response.status_code == 302 and response["Location"] == "/endpoints/new"
    identity = SsoIdentity.objects.select_related("user__profile").get()
    carol = identity.user
    assert (carol.username, carol.email, carol.profile.role) == ("carol", "carol@example.com", Role.EDITOR)
    assert identity.issuer == sso.issuer and identity.groups == ["data", "ml-eng"]
    assert sorted(carol.groups.values_list("name", flat=True)) == ["data", "ml-eng"]
    assert not carol.has_usable_password()
    assert client.get("/").status_code == 200  # signed in: the fleet list
    login = AuditEvent.objects.get(action="auth.login")
    assert login.actor == carol and login.after == {
        "method": "sso",
        "issuer": sso.issuer,
        "groups": ["data", "ml-eng"],
        "role": "editor",
    }
    assert AuditEvent.objects.filter(action="user.create", object_name="carol").exists()

    # Signing in again finds the same user by (issuer, subject).
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302
    assert client.get(authorize(client, sso, "carol", "pw-carol-123")).status_code == 302
    assert SsoIdentity.objects.count() == 1 and AuditEvent.objects.filter(action="auth.login").count() == 2
    assert client.get("/").status_code == 200


@pytest.mark.django_db
def test_a_settings_mapping_gives_admin_and_no_mapped_group_gives_no_role(sso):
    dave = Client()
    dave.get(authorize(dave, sso, "dave", "pw-dave-123"))
    erin = Client()
    erin.get(authorize(erin, sso, "erin", "pw-erin-123"))
    roles = dict(UserProfile.objects.values_list("user__username", "role"))
    assert roles == {"dave": Role.ADMIN, "erin": Role.NONE}


@pytest.mark.django_db
def test_a_callback_whose_state_is_not_this_sessions_is_refused_and_audited(sso):
    victim, attacker = Client(), Client()
    callback = authorize(attacker, sso, "carol", "pw-carol-123")
    victim.get("/accounts/sso/login")  # the victim has a state of their own, not this one
    response = victim.get(callback)
    assert response.status_code == 400
    assert "Single sign-on failed" in response.content.decode()
    assert victim.get("/").status_code == 302  # not signed in
    failed = AuditEvent.objects.get(action="auth.failed")
    assert failed.object_type == "sso" and "state" in failed.object_name.lower()
    assert not SsoIdentity.objects.exists()


@pytest.mark.django_db
def test_a_code_cannot_be_used_twice(sso):
    client = Client()
    callback = authorize(client, sso, "carol", "pw-carol-123")
    assert client.get(callback).status_code == 302
    assert client.get(callback).status_code == 400  # the state is spent
    assert AuditEvent.objects.filter(action="auth.failed", object_type="sso").exists()


@pytest.mark.django_db
def test_an_error_from_the_provider_is_a_failed_sign_in(sso):
    client = Client()
    start = client.get("/accounts/sso/login")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    response = client.get(f"/accounts/sso/callback?error=access_denied&error_description=denied+by+user&state={state}")
    assert response.status_code == 400 and "denied by user" in response.content.decode()
    assert AuditEvent.objects.get(action="auth.failed").object_type == "sso"


@pytest.mark.django_db
def test_a_discovery_document_naming_another_issuer_is_refused(sso, settings):
    settings.OIDC_ISSUER = sso.issuer.replace("127.0.0.1", "localhost")  # same server, another issuer name
    response = Client().get("/accounts/sso/login")
    assert response.status_code == 502 and "issuer" in response.content.decode()


@pytest.mark.django_db
def test_without_single_sign_on_its_routes_do_not_exist_and_the_page_has_no_button(settings):
    settings.OIDC_ISSUER = None
    client = Client()
    assert client.get("/accounts/sso/login").status_code == 404
    assert client.get("/accounts/sso/callback?code=x&state=y").status_code == 404
    assert "sso-sign-in" not in client.get("/accounts/login/").content.decode()


# --- the sign-in rules, on verified claims ----------------------------------------------------------

ISSUER = "https://idp.example.com"


@pytest.mark.django_db
def test_groups_follow_the_claim_but_memberships_set_by_hand_stay(settings):
    settings.OIDC_GROUP_ROLES = {"ml-admins": "admin"}
    user = sso_services.sign_in(issuer=ISSUER, claims={"sub": "s1", "preferred_username": "fay", "groups": ["a", "b"]})
    user.groups.add(Group.objects.create(name="by-hand"))
    user = sso_services.sign_in(issuer=ISSUER, claims={"sub": "s1", "groups": ["b", "ml-admins"]})
    assert sorted(user.groups.values_list("name", flat=True)) == ["b", "by-hand", "ml-admins"]
    assert user.profile.role == Role.ADMIN
    user = sso_services.sign_in(issuer=ISSUER, claims={"sub": "s1", "groups": []})
    assert list(user.groups.values_list("name", flat=True)) == ["by-hand"]
    assert UserProfile.objects.get(user=user).role == Role.NONE  # the provider is the source of truth
    assert [e.after["role"] for e in AuditEvent.objects.filter(action="user.role").order_by("id")] == ["admin", ""]


@pytest.mark.django_db
def test_a_provider_name_never_takes_over_a_local_user(django_user_model):
    local = django_user_model.objects.create_superuser("admin", "a@example.com", "pw-admin-123456")
    user = sso_services.sign_in(issuer=ISSUER, claims={"sub": "evil", "preferred_username": "admin"})
    assert user != local and user.username.startswith("admin-") and not user.is_superuser


@pytest.mark.django_db
def test_a_user_provisioned_ahead_without_password_is_linked(django_user_model):
    provisioned = django_user_model.objects.create_user("gus", "gus@example.com", None)
    user = sso_services.sign_in(issuer=ISSUER, claims={"sub": "g", "preferred_username": "gus"})
    assert user == provisioned and SsoIdentity.objects.get(user=provisioned).subject == "g"


@pytest.mark.django_db
def test_a_deactivated_user_cannot_sign_in(django_user_model):
    user = sso_services.sign_in(issuer=ISSUER, claims={"sub": "h", "preferred_username": "hal"})
    django_user_model.objects.filter(pk=user.pk).update(is_active=False)
    with pytest.raises(sso_services.SignInRefused, match="deactivated"):
        sso_services.sign_in(issuer=ISSUER, claims={"sub": "h"})
    with pytest.raises(sso_services.SignInRefused, match="subject"):
        sso_services.sign_in(issuer=ISSUER, claims={"preferred_username": "nobody"})


# --- the group → role API ------------------------------------------------------------------------------


@pytest.fixture
def admin_api(django_user_model):
    from rest_framework.test import APIClient

    from endpoints_app.services.tokens import create_token

    admin = django_user_model.objects.create_user("root", "root@example.com", "pw-root-123456")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=admin)[1]}")
    return client


@pytest.mark.django_db
def test_admins_map_groups_to_roles_through_the_api(admin_api, api, settings):
    settings.OIDC_GROUP_ROLES = {"ml-eng": "viewer", "ops": "approver"}
    assert admin_api.put(f"{MAPPINGS}/ml-eng", {"role": "editor"}, format="json").json() == {
        "group": "ml-eng",
        "role": "editor",
        "source": "api",
        "workspace": None,
    }
    assert admin_api.get(MAPPINGS).json()["mappings"] == [
        {"group": "ml-eng", "role": "editor", "source": "api", "workspace": None},
        {"group": "ops", "role": "approver", "source": "settings", "workspace": None},
    ]
    event = AuditEvent.objects.get(action="sso.group_role.set")
    assert (event.object_name, event.before, event.after["role"]) == ("ml-eng", None, "editor")
    assert sso_services.role_for_groups(["ml-eng", "nobody"]) == Role.EDITOR

    bad = admin_api.put(f"{MAPPINGS}/ml-eng", {"role": "owner"}, format="json")
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert api.get(MAPPINGS).status_code == 403  # an editor
    assert api.put(f"{MAPPINGS}/ml-eng", {"role": "admin"}, format="json").json()["error_code"] == "PERMISSION_DENIED"
    assert admin_api.post(MAPPINGS, {}, format="json").status_code == 405

    assert admin_api.delete(f"{MAPPINGS}/ml-eng").status_code == 200
    assert admin_api.delete(f"{MAPPINGS}/ml-eng").status_code == 404
    assert AuditEvent.objects.filter(action="sso.group_role.delete", object_name="ml-eng").count() == 1
    assert sso_services.role_for_groups(["ml-eng"]) == Role.VIEWER  # the settings' mapping again


# --- password sign-in switched off ----------------------------------------------------------------------


@pytest.mark.django_db
def test_with_local_login_off_only_the_break_glass_admin_signs_in_with_a_password(sso, settings, django_user_model):
    settings.LOCAL_LOGIN = False
    settings.BREAK_GLASS_ADMIN = "admin"
    django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-admin-123456")
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123456")
    UserProfile.objects.create(user=alice, role=Role.EDITOR)

    page = Client().get("/accounts/login/").content.decode()
    assert 'id="sso-sign-in"' in page and "Break-glass sign-in" in page
    refused = Client()
    assert refused.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123456"}).status_code == 200
    assert refused.get("/").status_code == 302
    assert AuditEvent.objects.filter(action="auth.failed", object_name="alice").exists()
    assert Client().login(username="alice", password="pw-alice-123456") is False  # /admin/ uses the same backend
    allowed = Client()
    assert allowed.post("/accounts/login/", {"username": "admin", "password": "pw-admin-123456"}).status_code == 302
    assert allowed.get("/").status_code == 200


def test_the_issuer_must_be_https_or_loopback(monkeypatch):
    for good in (
        "https://login.example.com/realms/x",
        "http://127.0.0.1:9000/o",
        "http://localhost:8080",
        "http://[::1]:1",
    ):
        monkeypatch.setenv("X_ISSUER", good)
        assert env_issuer("X_ISSUER") == good
    for bad in ("http://login.example.com", "ftp://127.0.0.1/x", "https://x.example.com/?a=1", "not a url"):
        monkeypatch.setenv("X_ISSUER", bad)
        with pytest.raises(EnvError, match="X_ISSUER"):
            env_issuer("X_ISSUER")
    monkeypatch.setenv("X_ROLES", "ml-admins=admin, ml-eng=editor")
    assert env_group_roles("X_ROLES") == {"ml-admins": "admin", "ml-eng": "editor"}
    monkeypatch.setenv("X_ROLES", "ml-admins=owner")
    with pytest.raises(EnvError, match="X_ROLES"):
        env_group_roles("X_ROLES")
