"""The tokens page, the models page and the sign-in page."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from endpoints_app.models import AccessToken, AuditEvent, EndpointPermission, PermissionLevel, Role, UserProfile
from endpoints_app.services.tokens import authenticate_token, create_token
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def bob(django_user_model):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-12345")
    UserProfile.objects.create(user=bob, role=Role.VIEWER)
    return bob


# --- tokens ---------------------------------------------------------------------------------------


def test_the_tokens_page_lists_only_my_tokens(user, bob):
    create_token(user=user, comment="laptop")
    create_token(user=bob, comment="bob's ci")
    html = signed_in(user).get("/account/tokens/").content.decode()
    assert "laptop" in html and "bob&#x27;s ci" not in html and "bob's ci" not in html
    assert 'aria-current="page">Tokens' in html


def test_creating_a_token_shows_it_once_and_it_works(user):
    client = signed_in(user)
    response = client.post("/account/tokens/", {"comment": "notebook"})
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    raw = re.search(r'<code id="new-token">([^<]+)</code>', response.content.decode()).group(1)
    assert authenticate_token(raw) == user
    token = AccessToken.objects.get(user=user)
    assert token.comment == "notebook" and raw.startswith(token.hint)
    audit = AuditEvent.objects.get(action="token.create")
    assert audit.actor == user and audit.after == {"hint": token.hint, "comment": "notebook"}
    assert raw not in client.get("/account/tokens/").content.decode()  # shown once only


def test_a_comment_too_long_is_refused_with_a_message(user):
    response = signed_in(user).post("/account/tokens/", {"comment": "x" * 256})
    assert response.status_code == 400 and "at most 255 characters" in response.content.decode()
    assert not AccessToken.objects.exists()


def test_revoking_my_token_stops_it_and_is_audited(user):
    token, raw = create_token(user=user, comment="old")
    client = signed_in(user)
    response = client.post(f"/account/tokens/{token.pk}/revoke")
    assert response.status_code == 302 and response["Location"] == "/account/tokens/"
    assert authenticate_token(raw) is None
    assert AuditEvent.objects.filter(action="token.revoke", actor=user, object_id=str(token.pk)).exists()
    html = client.get("/account/tokens/").content.decode()
    assert "is revoked" in html and "revoked 20" in html
    assert f"/account/tokens/{token.pk}/revoke" not in html


def test_someone_elses_token_does_not_exist_for_me(user, bob):
    token, raw = create_token(user=bob)
    response = signed_in(user).post(f"/account/tokens/{token.pk}/revoke")
    assert response.status_code == 404
    assert authenticate_token(raw) == bob


def test_revoking_needs_post(user):
    token, _ = create_token(user=user)
    assert signed_in(user).get(f"/account/tokens/{token.pk}/revoke").status_code == 405


def test_token_pages_need_a_signed_in_user(client):
    assert client.get("/account/tokens/").status_code == 302
    assert client.post("/account/tokens/", {"comment": "x"}).status_code == 302
    assert not AccessToken.objects.exists()


# --- models -----------------------------------------------------------------------------------------


def test_the_models_page_lists_versions_and_the_endpoints_serving_them(user, api, registered_models):
    api.post("/api/2.0/serving-endpoints", endpoint_body("iris-prod", (registered_models["iris"], "2")), format="json")
    html = signed_in(user).get("/models/").content.decode()
    section = re.search(r'<section class="card" id="model-maindefaultiris".*?</section>', html, flags=re.S).group(0)
    rows = dict(re.findall(r'<th scope="row">(\d+)</th>(.*?)</tr>', section, flags=re.S))
    assert set(rows) >= {"1", "2"}
    assert 'href="/endpoints/iris-prod/">iris-prod</a>' in rows["2"] and "as iris-2 (deploying)" in rows["2"]
    assert "iris-prod" not in rows["1"]
    assert "main.default.broken" in html  # every registered model is listed
    assert "modelfleet models register" in html  # editors are told how to add one


def test_the_models_page_hides_endpoints_i_may_not_see(user, api, registered_models, django_user_model):
    api.post("/api/2.0/serving-endpoints", endpoint_body("secret-ep", (registered_models["iris"], "1")), format="json")
    outsider = django_user_model.objects.create_user("olga", "olga@example.com", "pw-123456789")
    html = signed_in(outsider).get("/models/").content.decode()
    assert "main.default.iris" in html and "secret-ep" not in html
    assert "modelfleet models register" not in html
    EndpointPermission.objects.create(
        endpoint_id=api.get("/api/2.0/serving-endpoints/secret-ep").json()["id"],
        user=outsider,
        level=PermissionLevel.CAN_VIEW,
    )
    assert "secret-ep" in signed_in(outsider).get("/models/").content.decode()


def test_the_models_page_searches_by_name(user, registered_models):
    html = signed_in(user).get("/models/?q=constant").content.decode()
    assert "main.default.constant" in html and "main.default.iris" not in html
    assert "No model named like" in signed_in(user).get("/models/?q=zzz").content.decode()


# --- sign-in --------------------------------------------------------------------------------------


def test_the_sign_in_page_and_a_wrong_password(client, user):
    assert b'<h1 id="login-h">Sign in</h1>' in client.get("/accounts/login/").content
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200 and b'role="alert"' in response.content
    response = client.post(
        "/accounts/login/?next=/models/", {"username": "alice", "password": "pw-alice-123", "next": "/models/"}
    )
    assert response.status_code == 302 and response["Location"] == "/models/"


def test_signing_out_needs_post_and_ends_the_session(user):
    client = signed_in(user)
    assert client.get("/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302
