"""OAuth for Databricks clients: ``/oidc/v1/token`` and the tokens it mints (services.oauth,
services.signed_tokens), through the REST API in process. The live clients (the SDK's
``oauth-m2m`` and ``serving_endpoints_data_plane``) are in tests/test_client_sdk_extras.py.

Three personas around one route-optimized endpoint: alice manages it, quinn may query it, vera
may only view it; an outsider sees nothing.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from rest_framework.test import APIClient

from endpoints_app.models import AccessToken, Endpoint, EndpointPermission, PermissionLevel, Role, UserProfile
from endpoints_app.services import oauth, signed_tokens
from endpoints_app.services.tokens import authenticate_credential, create_token, revoke_token
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create

pytestmark = pytest.mark.django_db
TOKEN_URL = "/oidc/v1/token"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def routed(api, registered_models) -> Endpoint:
    body = endpoint_body("routed", (registered_models["iris"], "1"))
    body["route_optimized"] = True
    create(api, body)
    return Endpoint.objects.get(name="routed")


def person(django_user_model, name: str, role: str = Role.NONE, grant: str | None = None, endpoint=None):  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    if grant:
        EndpointPermission.objects.create(endpoint=endpoint, user=user, level=grant)
    return user, create_token(user=user)[1]


def exchange(client: APIClient, form: dict, **headers: str):  # type: ignore[no-untyped-def]
    from urllib.parse import urlencode

    return client.generic("POST", TOKEN_URL, urlencode(form), content_type=FORM, **headers)


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def workspace_token(anon: APIClient, client_id: str, secret: str) -> str:
    response = exchange(
        anon, {"grant_type": "client_credentials", "scope": "all-apis"}, HTTP_AUTHORIZATION=basic(client_id, secret)
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


def data_plane_token(anon: APIClient, assertion: str, endpoint: Endpoint):  # type: ignore[no-untyped-def]
    return exchange(
        anon,
        {
            "grant_type": oauth.JWT_BEARER,
            "assertion": assertion,
            "authorization_details": oauth.authorization_details(endpoint),
        },
    )


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


# --- discovery --------------------------------------------------------------------------------------


def test_the_host_metadata_names_the_oidc_root_and_discovery_names_the_token_endpoint(anon):
    meta = anon.get("/.well-known/databricks-config").json()
    assert meta["oidc_endpoint"] == "http://testserver/oidc"
    discovery = anon.get("/oidc/.well-known/oauth-authorization-server").json()
    assert discovery["token_endpoint"] == "http://testserver/oidc/v1/token"
    assert set(discovery["grant_types_supported"]) == {"client_credentials", oauth.JWT_BEARER}


# --- client credentials: a user name and a personal access token -------------------------------------


def test_client_credentials_give_a_short_lived_token_that_acts_as_the_user(anon, user, token):
    response = exchange(anon, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic("alice", token))
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    answer = response.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 3600 and answer["scope"] == "all-apis"
    assert answer["access_token"].startswith("mfo-") and token not in answer["access_token"]
    listed = bearer(answer["access_token"]).get("/api/2.0/modelfleet/tokens")
    assert listed.status_code == 200 and len(listed.json()["tokens"]) == 1  # alice's own list


def test_the_email_address_names_the_client_too_and_the_form_may_carry_the_credentials(anon, user, token):
    form = {"grant_type": "client_credentials", "client_id": "ALICE@example.com", "client_secret": token}
    assert exchange(anon, form).status_code == 200


@pytest.mark.parametrize(
    ("client_id", "secret_of"),
    [("bob", "alice"), ("alice", "nobody"), ("", "alice"), ("alice", "workspace-token")],
)
def test_wrong_client_credentials_are_refused_with_invalid_client(anon, user, token, client_id, secret_of):
    secret = {"alice": token, "nobody": "mf-" + "0" * 40, "workspace-token": workspace_token(anon, "alice", token)}[
        secret_of
    ]
    response = exchange(anon, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic(client_id, secret))
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client" and body["error_code"] == "UNAUTHENTICATED" and body["message"]
    assert token not in response.content.decode()


def test_bad_requests_get_oauth_errors(anon, user, token):
    cases = [
        ({"grant_type": "password", "username": "alice", "password": "x"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "sql all-apis"}, "invalid_scope"),
        ({"grant_type": "client_credentials", "client_id": "a\x00b", "client_secret": token}, "invalid_request"),
        ({"grant_type": "client_credentials", "client_id": "a" * 5000, "client_secret": token}, "invalid_request"),
    ]
    for form, error in cases:
        response = exchange(anon, form)
        assert response.status_code == 400 and response.json()["error"] == error, (form, response.content)
    as_json = anon.post(TOKEN_URL, {"grant_type": "client_credentials"}, format="json")
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    assert anon.get(TOKEN_URL).status_code == 405


def test_guessing_client_secrets_is_throttled_like_any_bad_token(anon, user, token, settings):
    settings.AUTH_FAILURE_LIMIT = 3
    for _ in range(3):
        exchange(anon, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic("alice", "mf-wrong"))
    response = exchange(anon, {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic("alice", token))
    assert response.status_code == 429 and response.json()["error"] == "slow_down" and response["Retry-After"]


def test_a_workspace_token_dies_with_its_personal_access_token_and_its_user(anon, user, token, django_user_model):
    issued = workspace_token(anon, "alice", token)
    assert bearer(issued).get("/api/2.0/serving-endpoints").status_code == 200
    revoke_token(token=AccessToken.objects.get(user=user))
    assert bearer(issued).get("/api/2.0/serving-endpoints").status_code == 401
    other, other_token = person(django_user_model, "olga", Role.VIEWER)
    issued = workspace_token(anon, "olga", other_token)
    other.is_active = False
    other.save()
    assert bearer(issued).get("/api/2.0/serving-endpoints").status_code == 401


def test_a_tampered_or_expired_token_is_nobody(anon, user, token):
    issued = workspace_token(anon, "alice", token)
    payload, _, signature = issued.removeprefix("mfo-").rpartition(":")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = "mfo-" + base64.urlsafe_b64encode(json.dumps({**claims, "u": claims["u"] + 1}).encode()).decode().rstrip(
        "="
    )
    assert authenticate_credential(forged + ":" + signature) is None
    assert authenticate_credential(issued[:-2] + "AA") is None
    token_id = AccessToken.objects.get(user=user).pk
    expired = signed_tokens.mint(
        signed_tokens.Claims(kind="workspace", user_id=user.pk, token_id=token_id, expires_at=int(time.time()) - 1)
    )
    assert authenticate_credential(expired) is None
    # A workspace token's signature does not make a data-plane token (one salt per kind).
    assert authenticate_credential("mfdp-" + issued.removeprefix("mfo-")) is None


# --- data-plane tokens: one endpoint, query only ----------------------------------------------------


def test_a_route_optimized_endpoint_shows_its_data_plane(api, routed):
    body = api.get("/api/2.0/serving-endpoints/routed").json()
    url = "http://testserver/serving-endpoints/routed/invocations"
    assert body["route_optimized"] is True and body["endpoint_url"] == url
    info = body["data_plane_info"]["query_info"]
    assert info["endpoint_url"] == url
    assert json.loads(info["authorization_details"]) == [
        {
            "type": "workspace_permission",
            "object_type": "serving-endpoints",
            "object_path": f"/serving-endpoints/{routed.id}",
            "actions": ["query_inference_endpoint"],
        }
    ]


def test_an_endpoint_that_is_not_route_optimized_has_no_data_plane(api, anon, token, registered_models):
    create(api, endpoint_body("plain", (registered_models["iris"], "1")))
    body = api.get("/api/2.0/serving-endpoints/plain").json()
    assert "endpoint_url" not in body and "data_plane_info" not in body
    response = data_plane_token(anon, token, Endpoint.objects.get(name="plain"))
    assert response.status_code == 400 and "not route-optimized" in response.json()["error_description"]


def test_a_caller_who_may_query_gets_a_data_plane_token_for_that_endpoint_only(anon, routed, django_user_model):
    quinn, quinn_token = person(django_user_model, "quinn", grant=PermissionLevel.CAN_QUERY, endpoint=routed)
    response = data_plane_token(anon, workspace_token(anon, "quinn", quinn_token), routed)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["token_type"] == "Bearer" and 0 < answer["expires_in"] <= oauth.DATA_PLANE_TOKEN_SECONDS
    credential = authenticate_credential(answer["access_token"])
    assert credential is not None and credential.user == quinn and credential.endpoint_id == routed.id
    # It is no API token, and no assertion for another data-plane token.
    assert bearer(answer["access_token"]).get("/api/2.0/serving-endpoints/routed").status_code == 401
    again = data_plane_token(anon, answer["access_token"], routed)
    assert again.status_code == 401 and again.json()["error"] == "invalid_grant"


def test_a_personal_access_token_may_be_the_assertion_too(anon, routed, token):
    assert data_plane_token(anon, token, routed).status_code == 200


def test_view_rights_are_not_enough_and_an_outsider_learns_nothing(anon, routed, django_user_model):
    _, vera_token = person(django_user_model, "vera", grant=PermissionLevel.CAN_VIEW, endpoint=routed)
    response = data_plane_token(anon, vera_token, routed)
    assert response.status_code == 403 and response.json()["error"] == "access_denied"
    _, outsider_token = person(django_user_model, "outsider")
    unseen = data_plane_token(anon, outsider_token, routed)
    assert unseen.status_code == 404 and "routed" not in unseen.content.decode()
    gone = exchange(
        anon,
        {
            "grant_type": oauth.JWT_BEARER,
            "assertion": outsider_token,
            "authorization_details": oauth.authorization_details(routed).replace(routed.id, "0" * 32),
        },
    )
    assert gone.status_code == 404 and gone.json() == unseen.json()


@pytest.mark.parametrize(
    "details",
    [
        "",
        "not json",
        "[]",
        '[{"type":"workspace_permission","object_type":"serving-endpoints","object_path":"/x","actions":[]}]',
        '[{"type":"workspace_permission","object_type":"serving-endpoints","object_path":"/serving-endpoints/x",'
        '"actions":["query_inference_endpoint","manage"]}]',
        '{"type":"workspace_permission"}',
    ],
)
def test_authorization_details_must_ask_for_the_query_right_on_one_endpoint(anon, routed, token, details):
    form = {"grant_type": oauth.JWT_BEARER, "assertion": token, "authorization_details": details}
    response = exchange(anon, form)
    assert response.status_code == 400 and response.json()["error"] == "invalid_authorization_details"


def test_a_data_plane_token_never_outlives_its_assertion(anon, user, routed):
    token_id = AccessToken.objects.create(user=user, digest="d" * 64, hint="x").pk
    soon = signed_tokens.mint(
        signed_tokens.Claims(kind="workspace", user_id=user.pk, token_id=token_id, expires_at=int(time.time()) + 30)
    )
    answer = data_plane_token(anon, soon, routed).json()
    assert answer["expires_in"] <= 30
