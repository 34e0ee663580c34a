"""Azure OpenAI signed in with Microsoft Entra ID client credentials (``openai_api_type: azuread``
with ``microsoft_entra_tenant_id``, ``_client_id`` and ``_client_secret``), over real HTTP both ways.

``EntraTokenServer`` (tests.providers) is the tenant's token endpoint on 127.0.0.1: it checks the
client-credentials form and issues tokens; ``OpenAIServer`` plays Azure OpenAI and accepts only
the tokens it issued. ``PROVIDER_BASE_URLS["microsoft-entra"]`` points the gateway at it, so nothing
leaves loopback. The client secret and the access tokens must never show in an answer, a header,
the API's view of the endpoint, an audit row or a log line (caplog at DEBUG everywhere).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any
from urllib.parse import parse_qs

import pytest

from endpoints_app.models import AuditEvent
from tests import test_external_models as shared
from tests.providers import EntraTokenServer, OpenAIServer

CHAT, URL = shared.CHAT, shared.URL
body_for, create, external, store_secret, events_of = (
    shared.body_for,
    shared.create,
    shared.external,
    shared.store_secret,
    shared._events,
)
# The gateway in uvicorn on a thread, and the fake servers a test starts (stopped after it).
gateway, fakes = shared.gateway, shared.fakes

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "c0ffee00-1111-4222-8333-444455556666"
CLIENT_SECRET = "Xy8Q~fAkEcLiEnTsEcReT.9f3k2L1mN0pQrStUv"
DEPLOYMENT = "my-gpt4o"
SCOPE = "https://cognitiveservices.azure.com/.default"


def debug_logs(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "uvicorn", "django", "endpoints_app"):  # at their most talkative
        caplog.set_level(logging.DEBUG, logger=name)


def servers(fakes, settings, **token_options: Any) -> tuple[EntraTokenServer, OpenAIServer]:  # type: ignore[no-untyped-def]
    tokens = EntraTokenServer(TENANT, CLIENT_ID, CLIENT_SECRET, **token_options)
    azure = OpenAIServer("", azure_deployment=DEPLOYMENT, tokens=tokens)
    fakes += [tokens, azure]
    settings.PROVIDER_BASE_URLS = {"microsoft-entra": tokens.url}
    return tokens, azure


def entra_model(azure: OpenAIServer, secret: dict, *, task: str = "llm/v1/chat", **config: Any) -> dict:
    """An Azure OpenAI external model signing in with client credentials (``secret``: the client
    secret's field, as a reference or as plaintext)."""
    return external(
        "openai",
        "openai_config",
        {
            "openai_api_type": "azuread",
            "openai_api_base": azure.url,
            "openai_deployment_name": DEPLOYMENT,
            "openai_api_version": "2024-06-01",
            "microsoft_entra_tenant_id": TENANT,
            "microsoft_entra_client_id": CLIENT_ID,
            **secret,
            **config,
        },
        name="gpt-4o" if task == "llm/v1/chat" else "text-embedding-3-small",
        task=task,
    )


def endpoint(api, user, azure: OpenAIServer, name: str, secret: str = CLIENT_SECRET, **config: Any) -> str:  # type: ignore[no-untyped-def]
    reference = store_secret(user, "azure", f"{name}-secret", secret)
    model = entra_model(azure, {"microsoft_entra_client_secret": reference}, **config)
    create(api, body_for(name, {"name": "chat", "external_model": model}))
    return f"/serving-endpoints/{name}/invocations"


@pytest.mark.django_db(transaction=True)
def test_azuread_signs_in_with_client_credentials_once_and_sends_the_token(
    gateway, fakes, api, user, token, settings, caplog
):
    debug_logs(caplog)
    tokens, azure = servers(fakes, settings)
    path = endpoint(api, user, azure, "gpt")
    seen: list[str] = []

    def query(body: dict, endpoint_path: str = path, **kwargs: Any):  # type: ignore[no-untyped-def]
        response = gateway.post(endpoint_path, body, token, **kwargs)
        seen.append(response.text + json.dumps(dict(response.headers)))
        return response

    # 1. The first query signs in: the client-credentials grant, form-encoded, to the tenant's endpoint.
    response = query(CHAT | {"max_tokens": 20})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello from OpenAI"
    assert len(tokens.requests) == 1
    grant = tokens.requests[0]
    assert grant.path == f"/{TENANT}/oauth2/v2.0/token"
    assert grant.headers["content-type"] == "application/x-www-form-urlencoded"
    assert {k: v for k, v in parse_qs(grant.raw.decode()).items()} == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
        "scope": [SCOPE],
    }

    # 2. Azure OpenAI gets the deployment's URL with the api-version, and the issued token as Bearer.
    sent = azure.requests[-1]
    assert sent.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert sent.query == {"api-version": ["2024-06-01"]}
    assert sent.headers["authorization"] == f"Bearer {tokens.issued[0]}"
    assert "api-key" not in sent.headers and "model" not in sent.body

    # 3. One token serves the next queries: chat again, a stream, and embeddings with the same app.
    assert query(CHAT).status_code == 200
    streamed = query(CHAT | {"stream": True}, stream=True)
    events = events_of(streamed)
    seen.append("\n".join(events))
    assert events[-1] == "[DONE]"
    reference = store_secret(user, "azure", "emb-secret", CLIENT_SECRET)
    model = entra_model(azure, {"microsoft_entra_client_secret": reference}, task="llm/v1/embeddings")
    create(api, body_for("emb", {"name": "emb", "external_model": model}))
    embedded = query({"input": ["a", "b"]}, "/serving-endpoints/emb/invocations")
    assert embedded.status_code == 200, embedded.text
    assert azure.requests[-1].path == f"/openai/deployments/{DEPLOYMENT}/embeddings"
    assert len(tokens.requests) == 1 and len(tokens.issued) == 1
    assert all(r.headers["authorization"] == f"Bearer {tokens.issued[0]}" for r in azure.requests)

    # 4. Azure stops taking the token (the role assignment was removed): 502, saying so.
    revoked = list(tokens.issued)
    tokens.issued.clear()
    refused = query(CHAT)
    assert (refused.status_code, refused.json()["error_code"]) == (502, "BAD_GATEWAY")
    assert "refused the credentials configured for served model 'chat'" in refused.json()["message"]
    # ... and the refused token is dropped: the next query signs in afresh and is served.
    again = query(CHAT)
    assert again.status_code == 200, again.text
    assert len(tokens.requests) == 2 and azure.requests[-1].headers["authorization"] == f"Bearer {tokens.issued[-1]}"

    # 5. The secret and the token are nowhere: answers, headers, the API's view, audit rows, logs.
    seen.append(api.get(f"{URL}/gpt").content.decode())
    seen.append(json.dumps(list(AuditEvent.objects.values("before", "after", "object_name", "action"))))
    seen.append(caplog.text)
    assert "/oauth2/v2.0/token" in caplog.text  # httpx logged the sign-in: the logs are really looked at
    for text in seen:
        for value in [CLIENT_SECRET, CLIENT_SECRET[:12], *revoked]:
            assert value not in text


@pytest.mark.django_db(transaction=True)
def test_the_plaintext_client_secret_is_stored_as_a_secret_and_signs_in(gateway, fakes, api, user, token, settings):
    tokens, azure = servers(fakes, settings)
    model = entra_model(azure, {"microsoft_entra_client_secret_plaintext": CLIENT_SECRET})
    created = create(api, body_for("gpt", {"name": "chat", "external_model": model}))
    stored = created["config"]["served_entities"][0]["external_model"]["openai_config"]
    assert stored["microsoft_entra_client_secret"].startswith("{{secrets/")
    assert "microsoft_entra_client_secret_plaintext" not in stored and CLIENT_SECRET not in json.dumps(created)
    response = gateway.post("/serving-endpoints/gpt/invocations", CHAT, token)
    assert response.status_code == 200, response.text
    assert azure.requests[-1].headers["authorization"] == f"Bearer {tokens.issued[-1]}"


@pytest.mark.django_db(transaction=True)
def test_a_token_is_not_used_in_its_last_five_minutes(gateway, fakes, api, user, token, settings):
    # Entra's tokens live about an hour; one that expires within 5 minutes is never reused.
    tokens, azure = servers(fakes, settings, expires_in=300)
    path = endpoint(api, user, azure, "gpt")
    assert gateway.post(path, CHAT, token).status_code == 200
    assert gateway.post(path, CHAT, token).status_code == 200
    assert len(tokens.issued) == 2
    assert azure.requests[-1].headers["authorization"] == f"Bearer {tokens.issued[1]}"


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_queries_sign_in_once(gateway, fakes, api, user, token, settings):
    tokens, azure = servers(fakes, settings)
    path = endpoint(api, user, azure, "gpt")
    tokens.delay = 0.3  # the queries all arrive while the first sign-in is under way
    statuses: list[int] = []

    def query() -> None:
        statuses.append(gateway.post(path, CHAT, token).status_code)

    threads = [threading.Thread(target=query) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 5
    assert len(tokens.requests) == 1 and len(azure.requests) == 5


@pytest.mark.django_db(transaction=True)
def test_a_refused_client_secret_is_a_clear_502_that_never_shows_it(gateway, fakes, api, user, token, settings, caplog):
    debug_logs(caplog)
    tokens, azure = servers(fakes, settings)
    wrong = "Zz9Q~wRoNgSeCrEt.0a1b2c3d4e5f6g7h8i9j"

    # A working endpoint signs in first; another with the same tenant and client id but a wrong
    # secret must not ride on its token.
    assert gateway.post(endpoint(api, user, azure, "good"), CHAT, token).status_code == 200
    answered = len(azure.requests)
    refused = gateway.post(endpoint(api, user, azure, "bad", wrong), CHAT, token)
    assert refused.status_code == 502, refused.text
    assert refused.json() == {
        "error_code": "BAD_GATEWAY",
        "message": "Served model 'chat': Microsoft Entra ID refused the client credentials (HTTP 401: "
        "invalid_client: AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
        "request is the client secret value.); an endpoint manager must update microsoft_entra_tenant_id, "
        "microsoft_entra_client_id or the client secret",
    }
    assert len(azure.requests) == answered  # Azure OpenAI was not asked

    # A client id or a tenant the directory does not know: Entra's 400s are refused credentials too.
    unknown_app = gateway.post(
        endpoint(api, user, azure, "other-app", microsoft_entra_client_id="00000000-0000-4000-8000-000000000000"),
        CHAT,
        token,
    )
    assert (unknown_app.status_code, unknown_app.json()["error_code"]) == (502, "BAD_GATEWAY")
    assert "(HTTP 400: unauthorized_client: AADSTS700016: Application with identifier" in unknown_app.text
    unknown_tenant = gateway.post(
        endpoint(api, user, azure, "other-tenant", microsoft_entra_tenant_id="contoso.onmicrosoft.com"), CHAT, token
    )
    assert unknown_tenant.status_code == 502
    assert "AADSTS90002: Tenant 'contoso.onmicrosoft.com' not found." in unknown_tenant.json()["message"]

    for text in (refused.text, unknown_app.text, unknown_tenant.text, caplog.text):
        assert wrong not in text and wrong[:12] not in text and CLIENT_SECRET not in text


@pytest.mark.django_db(transaction=True)
def test_an_unavailable_token_endpoint_maps_like_a_provider(gateway, fakes, api, user, token, settings):
    tokens, azure = servers(fakes, settings)
    path = endpoint(api, user, azure, "gpt")

    # Slow: 504; down (5xx): 503; rate limiting: 429 with its Retry-After.
    settings.GATEWAY_TIMEOUT_SECONDS = 0.3
    tokens.delay = 1.0
    slow = gateway.post(path, CHAT, token)
    assert (slow.status_code, slow.json()["error_code"]) == (504, "DEADLINE_EXCEEDED")
    assert "Microsoft Entra ID's token endpoint did not answer in time" in slow.json()["message"]
    tokens.delay = 0.0
    settings.GATEWAY_TIMEOUT_SECONDS = 30
    for status in (500, 503):
        tokens.fail_next(status, "Service is temporarily unavailable")
        down = gateway.post(path, CHAT, token)
        assert (down.status_code, down.json()["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE"), down.text
    tokens.fail_next(429, "Too many requests", {"retry-after": "9"})
    limited = gateway.post(path, CHAT, token)
    assert (limited.status_code, limited.json()["error_code"]) == (429, "REQUEST_LIMIT_EXCEEDED")
    assert limited.headers["retry-after"] == "9"
    assert not azure.requests

    # Back up: the next query signs in and is answered.
    assert gateway.post(path, CHAT, token).status_code == 200
    assert len(tokens.issued) == 1


AZUREAD = {
    "openai_api_type": "azuread",
    "openai_api_base": "https://res.openai.azure.com",
    "openai_deployment_name": DEPLOYMENT,
    "openai_api_version": "2024-06-01",
}
TRIPLE = {
    "microsoft_entra_tenant_id": TENANT,
    "microsoft_entra_client_id": CLIENT_ID,
    "microsoft_entra_client_secret_plaintext": CLIENT_SECRET,
}
ONE_OF = "with openai_api_type 'azuread' give exactly one of openai_api_key"
CONFIGS = [
    ("an access token", {"openai_api_key_plaintext": "eyJ0eXAi.token"}, None),
    ("client credentials", TRIPLE, None),
    ("both", {"openai_api_key_plaintext": "eyJ0eXAi.token", **TRIPLE}, ONE_OF),
    (
        "a key and part of the credentials",
        {"openai_api_key_plaintext": "eyJ0eXAi.token", "microsoft_entra_client_id": CLIENT_ID},
        ONE_OF,
    ),
    ("part of the credentials", {k: v for k, v in TRIPLE.items() if k != "microsoft_entra_tenant_id"}, ONE_OF),
    ("neither", {}, ONE_OF),
    (
        "a tenant that is not one",
        TRIPLE | {"microsoft_entra_tenant_id": "../evil"},
        "microsoft_entra_tenant_id must be a tenant id",
    ),
    (
        "credentials with the azure api-key type",
        AZUREAD | TRIPLE | {"openai_api_type": "azure", "openai_api_key_plaintext": "k"},
        "apply only with openai_api_type 'azuread'",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("why", "credentials", "named"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_azuread_takes_exactly_one_way_to_sign_in(api, user, why, credentials, named):
    model = external("openai", "openai_config", AZUREAD | credentials)
    response = api.post(URL, body_for("gpt", {"name": "chat", "external_model": model}), format="json")
    if named is None:
        assert response.status_code == 200, response.content
        return
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert named in response.json()["message"]
    assert CLIENT_SECRET not in response.content.decode()
