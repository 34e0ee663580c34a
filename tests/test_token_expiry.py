"""Personal access tokens with an expiry: ``lifetime_seconds`` on both token APIs (ours and
Databricks' ``/api/2.0/token/create``), a per-user maximum set by admins, and an expired token
refused at the API and at the gateway at once (the gateway caches a token no longer than it lives).

The gateway tests run two real web processes (tests/test_revocation's harness) with an
external-model endpoint answered by a fake OpenAI server.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from rest_framework.test import APIClient

from endpoints_app.cli.main import main as cli_main
from endpoints_app.models import AccessToken, AuditEvent, Role, UserProfile
from endpoints_app.services import signed_tokens
from endpoints_app.services.tokens import MAX_LIFETIME_SECONDS, create_token
from tests.test_oauth import exchange
from tests.test_revocation import Setup, _person, provider, setup, webs  # noqa: F401 - the harness's fixtures

TOKENS = "/api/2.0/modelfleet/tokens"


def client_for(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def admin(django_user_model) -> APIClient:
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-123456789")
    return client_for(create_token(user=user)[1])


@pytest.fixture
def bob(django_user_model):  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user("bob", "bob@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=Role.VIEWER)
    return user


# --- the APIs -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_created_with_a_lifetime_shows_when_it_expires(api):
    before = time.time()
    made = api.post(TOKENS, {"comment": "ci", "lifetime_seconds": 600}, format="json")
    assert made.status_code == 200, made.content
    assert before * 1000 + 600_000 <= made.json()["expiry_time"] <= time.time() * 1000 + 600_000
    forever = api.post(TOKENS, {"comment": "forever"}, format="json").json()
    assert forever["expiry_time"] == -1
    listed = {t["comment"]: t["expiry_time"] for t in api.get(TOKENS).json()["tokens"]}
    assert listed["ci"] == made.json()["expiry_time"] and listed["forever"] == -1
    event = AuditEvent.objects.filter(action="token.create", object_id=str(made.json()["id"])).get()
    assert event.after["lifetime_seconds"] == 600 and made.json()["token"] not in str(event.after)


@pytest.mark.django_db
def test_the_databricks_token_api_creates_lists_and_deletes_the_callers_own_tokens(api, bob):
    made = api.post("/api/2.0/token/create", {"comment": "sdk", "lifetime_seconds": 3600}, format="json")
    assert made.status_code == 200, made.content
    info = made.json()["token_info"]
    assert made.json()["token_value"].startswith("mf-") and info["comment"] == "sdk"
    assert info["expiry_time"] - info["creation_time"] == pytest.approx(3_600_000, abs=1000)
    assert (
        api.post("/api/2.0/token/create", {"lifetime_seconds": -1}, format="json").json()["token_info"]["expiry_time"]
        == -1
    )
    listed = api.get("/api/2.0/token/list").json()["token_infos"]
    assert info["token_id"] in [t["token_id"] for t in listed]
    # Another user's token is not the caller's to delete, whatever its id.
    theirs = create_token(user=bob)[0]
    refused = api.post("/api/2.0/token/delete", {"token_id": str(theirs.pk)}, format="json")
    assert refused.status_code == 404 and refused.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    for bad in ("²", "1" * 40, "-1", ""):
        assert api.post("/api/2.0/token/delete", {"token_id": bad}, format="json").status_code == 404
    assert api.post("/api/2.0/token/delete", {"token_id": info["token_id"]}, format="json").status_code == 200
    assert AccessToken.objects.get(pk=int(info["token_id"])).revoked_at is not None
    assert client_for(made.json()["token_value"]).get(TOKENS).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("lifetime", [0, -5, "600", True, 1.5, 10**12, [600], {"s": 1}])
def test_a_lifetime_that_is_not_whole_positive_seconds_is_a_400(api, lifetime):
    for path in (TOKENS, "/api/2.0/token/create"):
        answer = api.post(path, {"lifetime_seconds": lifetime}, format="json")
        assert answer.status_code == 400, (path, lifetime, answer.content)
        assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "lifetime_seconds" in answer.json()["message"]
    assert AccessToken.objects.count() == 1  # alice's own, from the fixture


@pytest.mark.django_db
def test_an_admin_sets_a_users_maximum_and_longer_or_endless_tokens_are_refused(admin, bob):
    bob_api = client_for(create_token(user=bob)[1])
    assert (
        bob_api.patch("/api/2.0/modelfleet/users/bob", {"max_token_lifetime_seconds": 60}, format="json").status_code
        == 403
    )  # only admins
    answer = admin.patch("/api/2.0/modelfleet/users/bob", {"max_token_lifetime_seconds": 3600}, format="json")
    assert answer.status_code == 200 and answer.json()["max_token_lifetime_seconds"] == 3600
    for body in ({"lifetime_seconds": 3601}, {}, {"lifetime_seconds": -1}):
        for path in (TOKENS, "/api/2.0/token/create"):
            refused = bob_api.post(path, body, format="json")
            assert refused.status_code == 400, (path, body)
            assert refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "at most 3600 seconds" in refused.json()["message"]
    # An admin making a token for bob is held to bob's maximum too.
    assert admin.post(TOKENS, {"user": "bob", "lifetime_seconds": 7200}, format="json").status_code == 400
    assert bob_api.post(TOKENS, {"lifetime_seconds": 3600}, format="json").status_code == 200
    assert AccessToken.objects.filter(user=bob).count() == 2  # the fixture's and the one within the limit
    event = AuditEvent.objects.get(action="user.max_token_lifetime")
    assert (event.actor_name, event.object_name, event.after) == ("boss", "bob", {"max_token_lifetime_seconds": 3600})
    # null lifts the limit again; a bad value is a 400.
    assert (
        admin.patch("/api/2.0/modelfleet/users/bob", {"max_token_lifetime_seconds": None}, format="json").json()[
            "max_token_lifetime_seconds"
        ]
        is None
    )
    assert bob_api.post(TOKENS, {}, format="json").status_code == 200
    bad = admin.patch("/api/2.0/modelfleet/users/bob", {"max_token_lifetime_seconds": "soon"}, format="json")
    assert bad.status_code == 400 and "max_token_lifetime_seconds" in bad.json()["message"]
    # The longest lifetime allowed (100 years) is past a 32-bit column: stored and read back whole.
    longest = admin.patch(
        "/api/2.0/modelfleet/users/bob", {"max_token_lifetime_seconds": MAX_LIFETIME_SECONDS}, format="json"
    )
    assert longest.status_code == 200 and longest.json()["max_token_lifetime_seconds"] == MAX_LIFETIME_SECONDS > 2**31


@pytest.mark.django_db
def test_an_expired_token_gets_401_at_the_api_and_at_the_token_endpoint(bob):
    token, raw = create_token(user=bob, lifetime_seconds=60)
    assert client_for(raw).get(TOKENS).status_code == 200
    exchanged = exchange(APIClient(), {"grant_type": "client_credentials", "client_id": "bob", "client_secret": raw})
    assert exchanged.status_code == 200
    assert 55 <= exchanged.json()["expires_in"] <= 60  # never outlives the token it stands for
    workspace = exchanged.json()["access_token"]
    assert client_for(workspace).get(TOKENS).status_code == 200
    AccessToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client_for(raw).get(TOKENS).status_code == 401
    assert client_for(workspace).get(TOKENS).status_code == 401  # dies with the expired token
    again = exchange(APIClient(), {"grant_type": "client_credentials", "client_id": "bob", "client_secret": raw})
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"


@pytest.mark.django_db(transaction=True)
def test_the_cli_creates_a_token_with_a_lifetime_and_sets_a_maximum(
    live_server, django_user_model, monkeypatch, capsys, bob
):
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-123456789")
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=boss)[1])
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", "/nonexistent/modelfleetcfg")
    assert cli_main(["tokens", "create", "--user", "bob", "--lifetime-seconds", "120"]) == 0
    out = capsys.readouterr()
    assert "expires" in out.err and out.out.strip().startswith("mf-")
    made = AccessToken.objects.get(user=bob)
    assert made.expires_at is not None and 110 < (made.expires_at - timezone.now()).total_seconds() <= 120
    assert cli_main(["users", "set-max-token-lifetime", "bob", "60"]) == 0
    assert "at most 60 seconds" in capsys.readouterr().out
    assert cli_main(["tokens", "create", "--user", "bob", "--lifetime-seconds", "120"]) == 1
    assert "at most 60 seconds" in capsys.readouterr().err
    assert cli_main(["users", "set-max-token-lifetime", "bob", "none"]) == 0
    assert "without limit" in capsys.readouterr().out
    assert cli_main(["tokens", "list", "--user", "bob"]) == 0
    assert "EXPIRES" in capsys.readouterr().out


# --- at the gateway -------------------------------------------------------------------------------


def test_an_expiring_token_is_refused_at_the_gateway_when_it_expires_not_a_cache_lifetime_later(
    setup: Setup,  # noqa: F811 - the harness's fixture
    django_user_model,
):
    """The gateway caches tokens for 5 s (gateway.app's TOKEN_TTL_SECONDS): a token expiring in
    2 s, queried right before, must be refused right after its expiry by both processes."""
    bob, _ = _person(django_user_model, "bob", Role.VIEWER)
    setup.grant(user_name="bob")
    token, raw = create_token(user=bob, lifetime_seconds=3)
    assert token.expires_at is not None
    setup.warm(raw, 200)
    left = (token.expires_at - timezone.now()).total_seconds()
    assert left > 0.5, "the warm-up took too long to test anything"
    while (token.expires_at - timezone.now()).total_seconds() > 0.1:
        for web in setup.webs:
            setup.status(web, raw)  # keep the caches hot up to the last moment
        time.sleep(0.05)
    time.sleep(0.2)
    for web in setup.webs:
        assert setup.status(web, raw) == 401
    answer = requests.get(
        f"{setup.webs[0].url}/api/2.0/serving-endpoints", headers={"Authorization": f"Bearer {raw}"}, timeout=10
    )
    assert answer.status_code == 401


def test_an_oauth_token_of_an_expiring_personal_token_stops_with_it_at_the_gateway(
    setup: Setup,  # noqa: F811 - the harness's fixture
    django_user_model,
):
    bob, _ = _person(django_user_model, "bob", Role.VIEWER)
    setup.grant(user_name="bob")
    token, raw = create_token(user=bob, lifetime_seconds=4)
    exchanged = requests.post(
        f"{setup.webs[0].url}/oidc/v1/token",
        data={"grant_type": "client_credentials", "client_id": "bob", "client_secret": raw},
        timeout=10,
    )
    assert exchanged.status_code == 200 and exchanged.json()["expires_in"] <= 4
    workspace = exchanged.json()["access_token"]
    claims = signed_tokens.read(workspace)
    assert claims is not None and token.expires_at is not None
    assert claims.expires_at <= token.expires_at.timestamp()  # whole seconds, never later
    setup.warm(workspace, 200)
    while claims.expires_at - time.time() > 0.1:
        for web in setup.webs:
            setup.status(web, workspace)
        time.sleep(0.05)
    time.sleep(0.2)
    for web in setup.webs:
        assert setup.status(web, workspace) == 401
