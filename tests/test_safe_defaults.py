"""Safe defaults (issue 11, item 6), each attacked: password guessing on the sign-in page and the
admin, token guessing on the API (throttled per address in shared Redis counters, aggregated in
the audit log), weak passwords, a forged Host header, missing security headers, and a production
start with a published or missing secret key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from rest_framework.test import APIClient

from endpoints_app.models import AuditEvent, Role, UserProfile
from endpoints_app.services.tokens import create_token
from tests.test_external_models import gateway  # noqa: F401  (the ASGI app in uvicorn, a fixture)
from tests.test_settings_env import start_settings

pytestmark = pytest.mark.django_db
GUESSER = "203.0.113.7"  # TEST-NET-3: the attacker's address
BYSTANDER = "198.51.100.20"
LIMIT = 10  # the default: 10 failures per 5 minutes


def sign_in(client, password: str, address: str = GUESSER, path: str = "/accounts/login/"):
    return client.post(path, {"username": "alice", "password": password}, REMOTE_ADDR=address)


def audit_rows(address: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(source=address, action__startswith="auth.").order_by("id"))


# --- sign-in throttling ------------------------------------------------------------------------


def test_password_guessing_is_throttled_per_address_and_audited_once_per_window(client, user):
    assert settings.AUTH_FAILURE_LIMIT == LIMIT and settings.AUTH_FAILURE_WINDOW_SECONDS == 300
    for attempt in range(LIMIT):
        response = sign_in(client, f"guess-{attempt}")
        assert response.status_code == 200 and b'role="alert"' in response.content
    # Over the limit even the right password is refused, before it is checked.
    refused = sign_in(client, "pw-alice-123")
    assert refused.status_code == 429 and "_auth_user_id" not in client.session
    assert "Too many failed sign-ins" in refused.content.decode()
    assert 0 < int(refused["Retry-After"]) <= 300
    # Another address is not affected.
    assert sign_in(client, "pw-alice-123", address=BYSTANDER).status_code == 302

    for attempt in range(30):  # a flood writes nothing more to the audit log
        sign_in(client, f"more-{attempt}")
    rows = audit_rows(GUESSER)
    assert [r.action for r in rows] == ["auth.failed", "auth.throttled"]
    assert rows[0].object_name == "alice" and rows[1].after["failures"] == LIMIT
    assert rows[1].after["window_seconds"] == 300
    assert not [r for r in rows if "guess-" in json.dumps([r.before, r.after])]


def test_the_admin_sign_in_is_throttled_too(client, user):
    user.is_staff = user.is_superuser = True
    user.save()
    for attempt in range(LIMIT):
        sign_in(client, f"guess-{attempt}", path="/admin/login/")
    response = sign_in(client, "pw-alice-123", path="/admin/login/")
    assert response.status_code == 200 and "_auth_user_id" not in client.session  # the form again, not signed in


def test_token_guessing_is_throttled_with_429_and_retry_after(user, token):
    guesser = APIClient(REMOTE_ADDR=GUESSER)
    for attempt in range(LIMIT):
        guesser.credentials(HTTP_AUTHORIZATION=f"Bearer mf-guess-{attempt:04d}-abcdefghij")
        assert guesser.get("/api/2.0/serving-endpoints").status_code == 401
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")  # even a good token, from this address
    response = guesser.get("/api/2.0/serving-endpoints")
    assert response.status_code == 429 and response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert 0 < int(response["Retry-After"]) <= 300 and GUESSER in response.json()["message"]
    bystander = APIClient(REMOTE_ADDR=BYSTANDER)
    bystander.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert bystander.get("/api/2.0/serving-endpoints").status_code == 200
    rows = audit_rows(GUESSER)
    assert [(r.action, r.object_type) for r in rows] == [("auth.failed", "token"), ("auth.throttled", "token")]
    assert "abcdefghij" not in json.dumps([[r.object_name, r.after] for r in rows])


def test_token_guessing_at_the_gateway_is_throttled(gateway, user, token):  # noqa: F811 (a fixture)
    """The inference gateway (the same ASGI app, uvicorn on loopback) counts bad tokens against
    the caller's address like the API does."""
    import httpx

    url = f"{gateway.url}/serving-endpoints/anything/invocations"
    with httpx.Client(timeout=10) as http:
        for attempt in range(LIMIT):
            answer = http.post(url, json={"inputs": []}, headers={"Authorization": f"Bearer mf-guess-{attempt:04d}"})
            assert answer.status_code == 401
        refused = http.post(url, json={"inputs": []}, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 429 and refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert 0 < int(refused.headers["retry-after"]) <= 300
    rows = audit_rows("127.0.0.1")
    assert [(r.action, r.object_type) for r in rows] == [("auth.failed", "token"), ("auth.throttled", "token")]


def test_the_counters_are_shared_across_processes(client, user):
    for attempt in range(LIMIT):
        sign_in(client, f"guess-{attempt}")
    code = (
        "import django; django.setup(); from endpoints_app import auth_throttle; "
        f"print(auth_throttle.check({GUESSER!r}) is not None, auth_throttle.check({BYSTANDER!r}) is not None)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings"}  # REDIS_URL: the test run's Redis
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


# --- passwords ---------------------------------------------------------------------------------


@pytest.fixture
def admin_api(django_user_model) -> APIClient:
    admin = django_user_model.objects.create_user("root", "root@example.com", "pw-root-long-enough-1")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=admin)[1]}")
    return client


@pytest.mark.parametrize(
    "password, words",
    [
        ("12345678901", "entirely numeric"),
        ("short-1", "too short"),
        ("password123", "too common"),
        ("dave.example", "too similar"),
    ],
)
def test_weak_passwords_are_refused_with_the_validators_messages(admin_api, django_user_model, password, words):
    body = {"username": "dave", "email": "dave@example.com", "role": "viewer", "password": password}
    response = admin_api.post("/api/2.0/modelfleet/users", body, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert words in response.json()["message"]
    assert not django_user_model.objects.filter(username="dave").exists()


def test_a_strong_password_is_accepted(admin_api, django_user_model):
    body = {"username": "dave", "role": "viewer", "password": "correct-horse-battery-7"}
    assert admin_api.post("/api/2.0/modelfleet/users", body, format="json").status_code == 200
    assert django_user_model.objects.get(username="dave").check_password("correct-horse-battery-7")


# --- hosts and headers -------------------------------------------------------------------------


def test_an_unknown_host_header_is_refused(client):
    assert client.get("/accounts/login/", HTTP_HOST="evil.example").status_code == 400
    assert client.get("/accounts/login/", HTTP_HOST="localhost:8000").status_code == 200
    api = APIClient()
    assert api.get("/api/2.0/serving-endpoints", HTTP_HOST="evil.example").status_code == 400


def test_pages_carry_the_security_headers_and_a_strict_csp(client, user, registered_models, api):
    from tests.conftest import endpoint_body
    from tests.test_api_endpoints import create

    create(
        api,
        endpoint_body(
            "split",
            (registered_models["iris"], "1"),
            (registered_models["iris"], "2"),
            routes=[("iris-1", 30), ("iris-2", 70)],
        ),
    )
    for page in ("/accounts/login/", "/", "/endpoints/split/", "/endpoints/split/edit"):
        if page == "/":
            client.force_login(user)
        response = client.get(page)
        assert response.status_code == 200, page
        csp = response["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        html = response.content.decode()
        # What the policy would block: inline scripts, style attributes, event handler attributes.
        assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html), page
        assert not re.search(r"\sstyle=\"", html) and not re.search(r"\son[a-z]+=\"", html), page
    assert 'class="seg seg-1 share-70"' in client.get("/endpoints/split/edit").content.decode()
    assert "Content-Security-Policy" not in client.get("/api/2.0/serving-endpoints")  # JSON needs none


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MODELFLEET_ALLOWED_HOSTS", "bad host!"),
        ("MODELFLEET_CSRF_TRUSTED_ORIGINS", "modelfleet.example.com"),
        ("MODELFLEET_SECURE_COOKIES", "maybe"),
        ("MODELFLEET_HSTS_SECONDS", "a year"),
        ("MODELFLEET_ENV", "prod"),
        ("MODELFLEET_AUTH_FAILURE_LIMIT", "0"),
    ],
)
def test_a_bad_security_setting_stops_start_up(variable, value, tmp_path):
    result = start_settings(MODELFLEET_DATA_DIR=str(tmp_path), **{variable: value})
    assert result.returncode != 0 and variable in result.stderr


def show_settings(tmp_path, **env: str) -> subprocess.CompletedProcess:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps(["
        "s.ALLOWED_HOSTS, s.CSRF_TRUSTED_ORIGINS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_HSTS_SECONDS, getattr(s, 'SECURE_PROXY_SSL_HEADER', None)]))"
    )
    full = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    full.update({"DJANGO_SETTINGS_MODULE": "dashboard.settings", "MODELFLEET_DATA_DIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_the_defaults_answer_loopback_only_and_the_environment_opens_more(tmp_path):
    default = show_settings(tmp_path)
    assert default.returncode == 0, default.stderr
    hosts, origins, session_secure, csrf_secure, hsts, proxy = json.loads(default.stdout)
    assert hosts == ["localhost", "127.0.0.1", "[::1]"] and "*" not in hosts
    assert (origins, session_secure, csrf_secure, hsts, proxy) == ([], False, False, 0, None)
    behind_tls = show_settings(
        tmp_path,
        MODELFLEET_PUBLIC_URL="https://fleet.example.com",
        MODELFLEET_CSRF_TRUSTED_ORIGINS="https://fleet.example.com",
        MODELFLEET_HSTS_SECONDS="31536000",
        MODELFLEET_TRUST_X_FORWARDED_PROTO="true",
    )
    assert behind_tls.returncode == 0, behind_tls.stderr
    hosts, origins, session_secure, csrf_secure, hsts, proxy = json.loads(behind_tls.stdout)
    assert "fleet.example.com" in hosts and origins == ["https://fleet.example.com"]
    assert session_secure and csrf_secure and hsts == 31536000 and proxy == ["HTTP_X_FORWARDED_PROTO", "https"]


# --- the secret key ----------------------------------------------------------------------------

GOOD_KEY = "Vq3x9LrT0b_wZk2NfP8sYc4HuJm7aEd1GiQo6KtBnXy5RlWz-UvS"


@pytest.mark.parametrize(
    "env",
    [
        {"MODELFLEET_ENV": "production"},  # missing
        {"MODELFLEET_ENV": "production", "MODELFLEET_SECRET_KEY": "too-short-but-random-9f8e7d"},
        {"MODELFLEET_ENV": "production", "MODELFLEET_SECRET_KEY": "a" * 60},  # long, not random
        {"MODELFLEET_SECRET_KEY": "change-me-in-production"},  # the key compose used to ship, anywhere
        {"MODELFLEET_ENV": "production", "MODELFLEET_SECRET_KEY": "change-me-in-production"},
    ],
)
def test_production_refuses_a_default_weak_or_missing_secret_key(tmp_path, env):
    result = show_settings(tmp_path, **env)
    assert result.returncode != 0 and "MODELFLEET_SECRET_KEY" in result.stderr
    assert not (tmp_path / "secret_key").exists()  # production never generates one


def test_production_refuses_debug(tmp_path):
    result = show_settings(
        tmp_path, MODELFLEET_ENV="production", MODELFLEET_SECRET_KEY=GOOD_KEY, MODELFLEET_DEBUG="true"
    )
    assert result.returncode != 0 and "MODELFLEET_DEBUG" in result.stderr


def test_production_starts_with_a_random_key_and_development_generates_one(tmp_path):
    assert show_settings(tmp_path, MODELFLEET_ENV="production", MODELFLEET_SECRET_KEY=GOOD_KEY).returncode == 0
    assert not (tmp_path / "secret_key").exists()
    assert show_settings(tmp_path).returncode == 0  # make run: development, no key given
    assert len((tmp_path / "secret_key").read_text().strip()) >= 50


def test_compose_ships_no_secret_key_and_runs_as_production():
    compose = yaml.safe_load((Path(settings.BASE_DIR) / "docker-compose.yml").read_text())
    env = compose["x-modelfleet"]["environment"]
    assert env["MODELFLEET_ENV"] == "production"
    assert env["MODELFLEET_SECRET_KEY"].startswith("${MODELFLEET_SECRET_KEY:?")  # compose refuses to start without
    assert "*" not in env["MODELFLEET_ALLOWED_HOSTS"]


def test_compose_ships_no_database_or_redis_password():
    # A published password would let anything that reaches the network (a replica on an old kernel,
    # a neighbour container) into the database or the broker.
    text = (Path(settings.BASE_DIR) / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    env = compose["x-modelfleet"]["environment"]
    assert "${MODELFLEET_DB_PASSWORD:?" in env["DATABASE_URL"] and "${MODELFLEET_DB_PASSWORD" in env["MLFLOW_TRACKING_URI"]
    assert env["REDIS_URL"].startswith("redis://:${MODELFLEET_REDIS_PASSWORD:?")
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${MODELFLEET_DB_PASSWORD:?")
    redis = compose["services"]["valkey"]
    assert "--requirepass" in " ".join(redis["command"]) and "MODELFLEET_REDIS_PASSWORD:?" in redis["environment"]["REDISCLI_AUTH"]
    assert "modelfleet:modelfleet@" not in text
