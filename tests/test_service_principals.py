"""Service principals: created by admins (API, CLI, page) with a secret shown once and stored
hashed; signing in at ``/oidc/v1/token`` with their application id and secret for an hour-long
token that carries their own rights only; named in the permissions API as
``service_principal_name``; and deleting a secret or the principal ends its tokens at once, at the
API and at every gateway process (two real web processes: tests/test_revocation's harness).

Attacks: a wrong secret, another principal's secret, a deleted principal's or secret's secret, a
secret sent as a bearer token, a principal trying admin APIs.
"""

from __future__ import annotations

import base64
import time
import uuid

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from endpoints_app.cli.main import main as cli_main
from endpoints_app.models import (
    AuditEvent,
    EndpointPermission,
    Role,
    ServicePrincipal,
    ServicePrincipalSecret,
    UserProfile,
)
from endpoints_app.models.tokens import hash_token
from endpoints_app.services import service_principals as principal_services
from endpoints_app.services import signed_tokens
from endpoints_app.services.tokens import create_token
from tests.test_oauth import exchange
from tests.test_revocation import DEADLINE_SECONDS, Setup, provider, setup, webs  # noqa: F401 - the harness

SP = "/api/2.0/modelfleet/service-principals"


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def sign_in(client_id: str, secret: str, *, basic: bool = True):  # type: ignore[no-untyped-def]
    """The SDK's oauth-m2m exchange (client_secret_basic), or the form variant."""
    form = {"grant_type": "client_credentials", "scope": "all-apis"}
    if basic:
        header = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        return exchange(APIClient(), form, HTTP_AUTHORIZATION=header)
    return exchange(APIClient(), {**form, "client_id": client_id, "client_secret": secret})


@pytest.fixture
def boss(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-123456789")


@pytest.fixture
def admin(boss) -> APIClient:
    return bearer(create_token(user=boss)[1])


@pytest.fixture
def principal(boss) -> tuple[ServicePrincipal, str]:
    return principal_services.create_principal(actor=boss, display_name="nightly-batch")


def _endpoint(name: str, creator):  # type: ignore[no-untyped-def]
    from endpoints_app.models import Endpoint

    return Endpoint.objects.create(name=name, creator=creator)


# --- creating and listing -------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_admin_creates_a_principal_whose_secret_is_shown_once_and_stored_hashed(admin):
    made = admin.post(SP, {"display_name": "nightly-batch", "role": "viewer"}, format="json")
    assert made.status_code == 200, made.content
    body = made.json()
    assert uuid.UUID(body["application_id"]) and body["secret"].startswith("mfsp-")
    assert (body["display_name"], body["role"], len(body["secrets"])) == ("nightly-batch", "viewer", 1)
    stored = ServicePrincipalSecret.objects.get()
    assert stored.digest == hash_token(body["secret"]) and body["secret"] not in (stored.digest, stored.hint)
    listed = admin.get(SP).json()["service_principals"]
    assert [p["application_id"] for p in listed] == [body["application_id"]]
    assert body["secret"] not in str(listed) and body["secret"] not in str(
        admin.get(f"{SP}/{body['application_id']}").json()
    )
    # It is a user of its own, named by its application id, without a password.
    user = get_user_model().objects.get(username=body["application_id"])
    assert not user.has_usable_password()
    assert not APIClient().login(username=body["application_id"], password="")
    assert [u["username"] for u in admin.get("/api/2.0/modelfleet/users").json()["users"]] == ["boss"]  # people only
    # Audited, the secret never in the log.
    actions = list(AuditEvent.objects.filter(object_type="service_principal").values_list("action", flat=True))
    assert sorted(actions) == ["service_principal.create", "service_principal.secret_create"]
    assert body["secret"] not in str(list(AuditEvent.objects.values_list("after", flat=True)))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "display_name"),
        ({"display_name": ""}, "display_name"),
        ({"display_name": "x" * 256}, "display_name"),
        ({"display_name": ["a"]}, "display_name"),
        ({"display_name": "a", "role": "god"}, "role"),
    ],
)
def test_a_bad_principal_is_a_400_and_creates_nothing(admin, body, needle):
    answer = admin.post(SP, body, format="json")
    assert answer.status_code == 400 and needle in answer.json()["message"]
    assert not ServicePrincipal.objects.exists()


@pytest.mark.django_db
def test_secrets_rotate_up_to_a_limit_and_an_unknown_principal_or_secret_is_a_404(admin, principal):
    sp, _ = principal
    path = f"{SP}/{sp.application_id}/secrets"
    for _ in range(principal_services.MAX_SECRETS - 1):
        assert admin.post(path, {}, format="json").status_code == 200
    full = admin.post(path, {}, format="json")
    assert full.status_code == 400 and "at most" in full.json()["message"]
    for missing in (f"{SP}/{uuid.uuid4()}", f"{SP}/not-a-uuid", f"{SP}/{uuid.uuid4()}/secrets"):
        method = "post" if missing.endswith("secrets") else "get"
        assert getattr(admin, method)(missing, {}, format="json").status_code == 404
    other = principal_services.create_principal(actor=sp.user, display_name="other")[0]
    theirs = other.secrets.get().pk
    assert admin.delete(f"{path}/{theirs}").status_code == 404  # not this principal's secret
    assert ServicePrincipalSecret.objects.filter(pk=theirs).exists()


# --- signing in -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("basic", [True, False])
def test_a_principal_gets_an_hour_long_token_with_its_own_rights_only(principal, boss, basic):
    sp, secret = principal
    mine, other = _endpoint("mine", boss), _endpoint("other", boss)
    EndpointPermission.objects.create(endpoint=mine, user=sp.user, level="CAN_QUERY")
    answer = sign_in(str(sp.application_id), secret, basic=basic)
    assert answer.status_code == 200, answer.content
    assert (answer.json()["expires_in"], answer.json()["scope"], answer.json()["token_type"]) == (
        3600,
        "all-apis",
        "Bearer",
    )
    assert answer["Cache-Control"] == "no-store"
    token = answer.json()["access_token"]
    claims = signed_tokens.read(token)
    assert claims is not None and claims.user_id == sp.user.pk and claims.secret_id == sp.secrets.get().pk
    listed = bearer(token).get("/api/2.0/serving-endpoints").json()["endpoints"]
    assert [e["name"] for e in listed] == ["mine"]  # granted, and nothing else
    assert bearer(token).get(f"/api/2.0/serving-endpoints/{other.name}").status_code == 404
    event = AuditEvent.objects.get(action="oauth.token")
    assert (event.actor_name, event.object_type) == (str(sp.application_id), "service_principal")
    assert secret not in str(event.after) and token not in str(event.after)
    assert sp.secrets.get().last_used_at is not None
    # The application id is read case-insensitively (a UUID); its display name is not a client id.
    assert sign_in(str(sp.application_id).upper(), secret).status_code == 200
    assert sign_in("nightly-batch", secret).status_code == 401


@pytest.mark.django_db
def test_a_wrong_secret_another_principals_secret_or_a_deleted_ones_is_refused(principal, boss, user):
    sp, secret = principal
    other, other_secret = principal_services.create_principal(actor=boss, display_name="other")
    app_id = str(sp.application_id)
    pat = create_token(user=user)[1]
    refused = [
        (app_id, secret[:-1] + ("0" if secret[-1] != "0" else "1")),  # wrong secret
        (app_id, other_secret),  # another principal's secret
        (app_id, "mfsp-" + "0" * 48),  # made up
        (app_id, pat),  # a personal access token is not a principal's secret
        ("alice", secret),  # the principal's secret under a user's name
        (app_id, ""),
    ]
    for client_id, client_secret in refused:
        answer = sign_in(client_id, client_secret)
        assert answer.status_code == 401, (client_id, client_secret[:8])
        assert answer.json()["error"] == "invalid_client" and answer.json()["error_code"] == "UNAUTHENTICATED"
    assert not AuditEvent.objects.filter(action="oauth.token").exists()
    # A deleted secret, then a deleted principal.
    second = principal_services.create_secret(actor=boss, principal=sp)[1]
    principal_services.delete_secret(actor=boss, principal=sp, secret_id=sp.secrets.order_by("created_at").first().pk)
    assert sign_in(app_id, secret).status_code == 401
    assert sign_in(app_id, second).status_code == 200
    principal_services.delete_principal(actor=boss, principal=other)
    assert sign_in(str(other.application_id), other_secret).status_code == 401
    # Failed sign-ins count toward the address's limit (auth_throttle), as passwords do.
    assert AuditEvent.objects.filter(action="auth.failed").exists()


@pytest.mark.django_db
def test_a_secret_is_never_a_bearer_token(principal):
    _, secret = principal
    answer = bearer(secret).get("/api/2.0/serving-endpoints")
    assert answer.status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/2.0/modelfleet/users", None),
        ("post", "/api/2.0/modelfleet/users", {"username": "mallory", "role": "admin"}),
        ("patch", "/api/2.0/modelfleet/users/{app_id}", {"role": "admin"}),
        ("get", SP, None),
        ("post", SP, {"display_name": "sidekick", "role": "admin"}),
        ("delete", SP + "/{other}", None),
        ("post", SP + "/{app_id}/secrets", {}),
        ("post", "/api/2.0/modelfleet/tokens", {"user": "boss"}),
        ("get", "/api/2.0/modelfleet/audit-events", None),
        ("put", "/api/2.0/modelfleet/group-role-mappings/ml", {"role": "admin"}),
        ("post", "/api/2.0/modelfleet/approval-policies", {"tag_key": "a", "tag_value": "b"}),
    ],
)
def test_a_principal_cannot_use_admin_apis(principal, boss, method, path, body):
    sp, secret = principal
    other = principal_services.create_principal(actor=boss, display_name="other")[0]
    token = sign_in(str(sp.application_id), secret).json()["access_token"]
    path = path.replace("{app_id}", str(sp.application_id)).replace("{other}", str(other.application_id))
    answer = getattr(bearer(token), method)(path, body, format="json")
    assert answer.status_code == 403, answer.content
    assert UserProfile.objects.get(user=sp.user).role == Role.NONE
    assert ServicePrincipal.objects.count() == 2 and not get_user_model().objects.filter(username="mallory").exists()


@pytest.mark.django_db
def test_deleting_the_secret_or_the_principal_ends_its_tokens_at_the_api(admin, principal, boss):
    sp, secret = principal
    app_id = str(sp.application_id)
    token = sign_in(app_id, secret).json()["access_token"]
    assert bearer(token).get("/api/2.0/serving-endpoints").status_code == 200
    second = admin.post(f"{SP}/{app_id}/secrets", {}, format="json").json()
    later = sign_in(app_id, second["secret"]).json()["access_token"]
    first_id = sp.secrets.exclude(pk=second["id"]).get().pk
    assert admin.delete(f"{SP}/{app_id}/secrets/{first_id}").status_code == 200
    assert bearer(token).get("/api/2.0/serving-endpoints").status_code == 401
    assert bearer(later).get("/api/2.0/serving-endpoints").status_code == 200  # the other secret's token lives
    assert admin.delete(f"{SP}/{app_id}").status_code == 200
    assert bearer(later).get("/api/2.0/serving-endpoints").status_code == 401
    assert not get_user_model().objects.filter(username=app_id).exists()
    deleted = AuditEvent.objects.filter(object_id=app_id).values_list("action", flat=True)
    assert {"service_principal.secret_delete", "service_principal.delete"} <= set(deleted)
    # A token whose expiry passed is refused too (signed with the server's key, as the token endpoint does).
    fresh = principal_services.create_principal(actor=boss, display_name="fresh")[0]
    expired = signed_tokens.mint(
        signed_tokens.Claims(
            kind="workspace",
            user_id=fresh.user.pk,
            token_id=0,
            secret_id=fresh.secrets.get().pk,
            expires_at=int(time.time()) - 1,
        )
    )
    assert bearer(expired).get("/api/2.0/serving-endpoints").status_code == 401


# --- permissions ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_permissions_api_grants_a_principal_by_its_application_id(admin, principal, boss):
    sp, secret = principal
    endpoint = _endpoint("guarded", boss)
    url = f"/api/2.0/permissions/serving-endpoints/{endpoint.id}"
    entry = {"service_principal_name": str(sp.application_id), "permission_level": "CAN_MANAGE"}
    answer = admin.patch(url, {"access_control_list": [entry]}, format="json")
    assert answer.status_code == 200, answer.content
    (shown,) = [e for e in answer.json()["access_control_list"] if "service_principal_name" in e]
    assert shown["service_principal_name"] == str(sp.application_id) and shown["display_name"] == "nightly-batch"
    assert "user_name" not in shown
    assert EndpointPermission.objects.get(endpoint=endpoint).user == sp.user
    token = sign_in(str(sp.application_id), secret).json()["access_token"]
    assert bearer(token).get("/api/2.0/serving-endpoints/guarded").status_code == 200
    event = AuditEvent.objects.filter(action="permissions.update").get()
    assert event.after == [{"service_principal": str(sp.application_id), "level": "CAN_MANAGE"}]


# --- the page and the CLI -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_lists_creates_showing_the_secret_once_and_deletes(client, boss, user):
    client.force_login(user)  # an editor: not theirs to manage
    assert client.get("/service-principals/").status_code == 403
    assert client.post("/service-principals/", {"display_name": "x", "role": ""}).status_code == 403
    client.force_login(boss)
    assert client.get("/service-principals/").status_code == 200
    made = client.post("/service-principals/", {"display_name": "nightly-batch", "role": "viewer"})
    assert made.status_code == 201 and made["Cache-Control"] == "no-store"
    sp = ServicePrincipal.objects.get()
    html = made.content.decode()
    secret = html.split('id="new-secret">')[1].split("<")[0]
    assert secret.startswith("mfsp-") and str(sp.application_id) in html
    assert sign_in(str(sp.application_id), secret).status_code == 200
    listed = client.get("/service-principals/").content.decode()
    assert "nightly-batch" in listed and secret not in listed
    bad = client.post("/service-principals/", {"display_name": "", "role": ""})
    assert bad.status_code == 400 and "display_name" in bad.content.decode()
    assert client.post("/service-principals/", {"display_name": "a", "role": "admin"}).status_code == 400
    assert client.post(f"/service-principals/{uuid.uuid4()}/delete").status_code == 404
    gone = client.post(f"/service-principals/{sp.application_id}/delete")
    assert gone.status_code == 302 and not ServicePrincipal.objects.exists()
    assert sign_in(str(sp.application_id), secret).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_the_cli_creates_lists_rotates_and_deletes_principals(live_server, boss, monkeypatch, capsys):
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=boss)[1])
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", "/nonexistent/modelfleetcfg")
    assert cli_main(["service-principals", "create", "nightly-batch", "--role", "viewer"]) == 0
    out = capsys.readouterr().out
    client_id = out.split("client_id: ")[1].split()[0]
    secret = out.split("client_secret: ")[1].split()[0]
    assert ServicePrincipal.objects.get().application_id == uuid.UUID(client_id)
    assert sign_in(client_id, secret).status_code == 200
    assert cli_main(["service-principals", "list"]) == 0
    listed = capsys.readouterr().out
    assert client_id in listed and "nightly-batch" in listed and "viewer" in listed and secret not in listed
    assert cli_main(["service-principals", "create-secret", client_id]) == 0
    rotated = capsys.readouterr().out.strip()
    old_id = ServicePrincipalSecret.objects.get(digest=hash_token(secret)).pk
    assert cli_main(["service-principals", "delete-secret", client_id, str(old_id)]) == 0
    capsys.readouterr()
    assert sign_in(client_id, secret).status_code == 401 and sign_in(client_id, rotated).status_code == 200
    assert cli_main(["service-principals", "delete", client_id]) == 0
    assert not ServicePrincipal.objects.exists()
    assert cli_main(["service-principals", "delete", client_id]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- at the gateway -------------------------------------------------------------------------------


def _gateway_principal(setup: Setup) -> tuple[str, str, str]:  # noqa: F811 - the harness fixture's type
    """A principal created and granted CAN_QUERY through the API, and its workspace token."""
    made = setup.api("POST", SP, {"display_name": f"gw-{time.monotonic_ns()}"})
    setup.grant(service_principal_name=made["application_id"])
    answer = requests.post(
        f"{setup.webs[0].url}/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        auth=(made["application_id"], made["secret"]),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return made["application_id"], made["secret"], answer.json()["access_token"]


def test_deleting_a_secret_ends_its_tokens_at_every_gateway_within_a_second(
    setup: Setup,  # noqa: F811 - the harness's fixture
):
    app_id, _, token = _gateway_principal(setup)
    setup.warm(token, 200)
    secret_id = setup.api("GET", f"{SP}/{app_id}")["secrets"][0]["id"]
    setup.api("DELETE", f"{SP}/{app_id}/secrets/{secret_id}", via=1)
    assert setup.seconds_until(token, 401) < DEADLINE_SECONDS


def test_deleting_a_principal_ends_its_tokens_at_every_gateway_within_a_second(
    setup: Setup,  # noqa: F811 - the harness's fixture
):
    app_id, _, token = _gateway_principal(setup)
    setup.warm(token, 200)
    setup.api("DELETE", f"{SP}/{app_id}")
    assert setup.seconds_until(token, 401) < DEADLINE_SECONDS
    answer = requests.get(
        f"{setup.webs[1].url}/api/2.0/serving-endpoints", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401


def test_a_principals_token_is_refused_at_the_gateway_when_it_expires(
    setup: Setup,  # noqa: F811 - the harness's fixture
):
    app_id, _, _ = _gateway_principal(setup)
    sp = ServicePrincipal.objects.get(application_id=app_id)
    expires_at = int(time.time()) + 3
    token = signed_tokens.mint(
        signed_tokens.Claims(
            kind="workspace", user_id=sp.user.pk, token_id=0, secret_id=sp.secrets.get().pk, expires_at=expires_at
        )
    )
    setup.warm(token, 200)
    while expires_at - time.time() > 0.1:
        for web in setup.webs:
            setup.status(web, token)  # keep the caches hot up to the last moment
        time.sleep(0.05)
    time.sleep(0.2)
    for web in setup.webs:
        assert setup.status(web, token) == 401
