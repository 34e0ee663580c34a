"""External model endpoints: config validation, secrets, and queries through the gateway.

The gateway runs in uvicorn on 127.0.0.1 in this process (so ``caplog`` sees its logs); the
providers are the small servers of ``tests.providers`` on 127.0.0.1, speaking each provider's
wire protocol. Each gateway test gets its own gateway (fresh route-table and token caches).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from endpoints_app.gateway.metrics import read_token_counters
from endpoints_app.models import AuditEvent, Deployment, Endpoint, Secret, SecretScope, ServedEntity
from endpoints_app.services import secrets
from tests.conftest import endpoint_body
from tests.providers import AnthropicServer, DatabricksServer, FakeProvider, Fakes, OpenAIServer

URL = "/api/2.0/serving-endpoints"
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
KEY = "sk-live-4f9a8b7c6d5e4f3a2b1c"  # what every fake provider accepts


def external(provider: str, config_key: str, config: dict, *, name: str = "gpt-4o", task: str = "llm/v1/chat") -> dict:
    return {"provider": provider, "name": name, "task": task, config_key: config}


def body_for(endpoint: str, *entities: dict, routes: list[tuple[str, int]] | None = None) -> dict:
    body: dict[str, Any] = {"name": endpoint, "config": {"served_entities": list(entities)}}
    if routes:
        body["config"]["traffic_config"] = {
            "routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in routes]
        }
    return body


def store_secret(user, scope: str, key: str, value: str) -> str:  # type: ignore[no-untyped-def]
    """A secret in a scope of the user's (created when missing); its reference."""
    if not SecretScope.objects.filter(name=scope).exists():
        secrets.create_scope(actor=user, scope=scope)
    secrets.put_secret(actor=user, scope=scope, key=key, string_value=value)
    return f"{{{{secrets/{scope}/{key}}}}}"


def create(api, body: dict) -> dict:  # type: ignore[no-untyped-def]
    response = api.post(URL, body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


# --- the gateway in this process ------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    app: Any

    def post(self, path: str, body: Any, token: str, **kwargs: Any) -> requests.Response:
        return requests.post(
            self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    """``app`` served by uvicorn on a loopback port, on a thread, until the block ends."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield Gateway(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def gateway(transactional_db) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    """The whole ASGI app (Django and the gateway) in uvicorn on a thread, with a fresh gateway."""
    from django.core.asgi import get_asgi_application

    from endpoints_app.gateway.app import mount

    with serve_in_thread(mount(get_asgi_application())) as served:
        yield served


@pytest.fixture
def fakes(settings) -> Iterator[Fakes]:  # type: ignore[no-untyped-def]
    """Fake providers started by a test, stopped after it; the egress policy allows exactly them."""
    started = Fakes(settings)
    yield started
    started.stop()


# --- one setup per provider ------------------------------------------------------------------------


@dataclass
class ProviderCase:
    fake: FakeProvider
    # The external_model for a credential given as {field: value} (reference or plaintext form).
    model: Callable[[dict], dict]
    # The credential field (dotted for nested ones).
    field: str
    sent_key: Callable[[FakeProvider], str | None]  # the key as the provider received it
    embeddings: bool = True


def provider_case(kind: str, fakes: list[FakeProvider], settings) -> ProviderCase:  # type: ignore[no-untyped-def]
    if kind == "openai":
        fake = OpenAIServer(KEY)
        case = ProviderCase(
            fake,
            lambda cred: external("openai", "openai_config", {"openai_api_base": f"{fake.url}/v1", **cred}),
            "openai_api_key",
            lambda f: (f.requests[-1].headers.get("authorization") or "").removeprefix("Bearer "),
        )
    elif kind == "azure":
        fake = OpenAIServer(KEY, auth="api-key", azure_deployment="my-gpt4o")
        case = ProviderCase(
            fake,
            lambda cred: external(
                "openai",
                "openai_config",
                {
                    "openai_api_type": "azure",
                    "openai_api_base": fake.url,
                    "openai_deployment_name": "my-gpt4o",
                    "openai_api_version": "2024-06-01",
                    **cred,
                },
            ),
            "openai_api_key",
            lambda f: f.requests[-1].headers.get("api-key"),
        )
    elif kind == "anthropic":
        fake = AnthropicServer(KEY)
        settings.PROVIDER_BASE_URLS = {"anthropic": fake.url}
        case = ProviderCase(
            fake,
            lambda cred: external("anthropic", "anthropic_config", cred, name="claude-3-5-sonnet-20241022"),
            "anthropic_api_key",
            lambda f: f.requests[-1].headers.get("x-api-key"),
            embeddings=False,
        )
    elif kind == "dbx":  # another Databricks workspace ("databricks-" starts reserved endpoint names)
        fake = DatabricksServer(KEY, "remote-llama")
        case = ProviderCase(
            fake,
            lambda cred: external(
                "databricks-model-serving",
                "databricks_model_serving_config",
                {"databricks_workspace_url": fake.url, **cred},
                name="remote-llama",
            ),
            "databricks_api_token",
            lambda f: (f.requests[-1].headers.get("authorization") or "").removeprefix("Bearer "),
            embeddings=False,
        )
    else:
        assert kind == "custom"
        fake = OpenAIServer(KEY, auth="header", auth_header="X-LLM-Key")
        case = ProviderCase(
            fake,
            lambda cred: external(
                "custom",
                "custom_provider_config",
                {
                    "custom_provider_url": f"{fake.url}/v1",
                    "api_key_auth": {"key": "X-LLM-Key", **{k.split(".", 1)[1]: v for k, v in cred.items()}},
                },
                name="my-llama",
            ),
            "api_key_auth.value",
            lambda f: f.requests[-1].headers.get("x-llm-key"),
        )
    fakes.append(fake)
    return case


# --- creating endpoints ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_external_endpoint_is_ready_at_once_with_no_replicas(api, user):
    ref = store_secret(user, "team-keys", "openai", KEY)
    model = external("openai", "openai_config", {"openai_api_key": ref})
    created = create(api, body_for("gpt", {"external_model": model}))
    # No model server to wait for: the create call returns the endpoint serving already.
    assert created["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    got = api.get(f"{URL}/gpt").json()
    assert got["task"] == "llm/v1/chat"
    entity = got["config"]["served_entities"][0]
    assert entity["name"] == "gpt-4o"  # the model's name, "." and ":" replaced by "-"
    assert entity["external_model"] == model
    assert entity["state"]["deployment"] == "DEPLOYMENT_READY"
    assert "current_replicas" not in entity and "workload_size" not in entity
    assert not Deployment.objects.exists()
    # The Databricks SDK reads it (its dataclasses are the wire contract).
    from databricks.sdk.service.serving import ServingEndpointDetailed

    parsed = ServingEndpointDetailed.from_dict(got)
    assert parsed.config.served_entities[0].external_model.openai_config.openai_api_key == ref
    assert parsed.task == "llm/v1/chat"
    openapi = api.get(f"{URL}/gpt/openapi").json()
    assert "openai model gpt-4o" in openapi["paths"]["/served-models/gpt-4o/invocations"]["post"]["summary"]
    listed = api.get(URL).json()["endpoints"][0]
    assert listed["task"] == "llm/v1/chat"
    assert listed["config"]["served_entities"] == [{"name": "gpt-4o", "external_model": model}]


@pytest.mark.django_db
def test_the_user_docs_example_without_a_task_serves_chat(api, user):
    """The example of the user docs (seed/model-serving.md) leaves out ``task``: chat is assumed."""
    ref = store_secret(user, "my-scope", "openai-key", KEY)
    created = create(
        api,
        {
            "name": "openai-gpt4",
            "config": {
                "served_entities": [
                    {
                        "external_model": {
                            "name": "gpt-4",
                            "provider": "openai",
                            "openai_config": {"openai_api_key": ref},
                        }
                    }
                ]
            },
        },
    )
    assert created["task"] == "llm/v1/chat"
    assert created["config"]["served_entities"][0]["name"] == "gpt-4"


@pytest.mark.django_db
def test_a_plaintext_key_is_stored_as_a_secret_and_only_its_reference_is_kept(api, user):
    model = external("openai", "openai_config", {"openai_api_key_plaintext": KEY})
    created = create(api, body_for("plain", {"external_model": model}))
    config = created["config"]["served_entities"][0]["external_model"]["openai_config"]
    assert "openai_api_key_plaintext" not in config
    scope, key = secrets.parse_reference(config["openai_api_key"])
    assert scope == secrets.MANAGED_SCOPE
    assert secrets.resolve(scope=scope, key=key) == KEY
    # Nowhere else: not in the stored config, the API's answers or the audit log.
    stored = json.dumps(list(ServedEntity.objects.values("external_model")))
    assert KEY not in stored
    assert KEY not in json.dumps(created)
    assert KEY not in api.get(f"{URL}/plain").content.decode()
    assert KEY not in api.get(URL).content.decode()
    assert KEY not in json.dumps(list(AuditEvent.objects.values("before", "after", "object_name")))


@pytest.mark.django_db
def test_the_creator_needs_read_on_the_referenced_scope(api, user, django_user_model):
    from endpoints_app.models import Role, UserProfile

    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-123")
    UserProfile.objects.create(user=bob, role=Role.EDITOR)
    ref = store_secret(bob, "bobs-keys", "openai", KEY)  # alice has no READ on bob's scope

    def attempt(reference: str) -> Any:
        model = external("openai", "openai_config", {"openai_api_key": reference})
        return api.post(URL, body_for("nope", {"external_model": model}), format="json")

    denied = attempt(ref)
    assert denied.status_code == 403, denied.content
    assert denied.json()["error_code"] == "PERMISSION_DENIED"
    missing = attempt("{{secrets/no-such-scope/openai}}")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    missing_key = attempt(store_secret(user, "alices", "other", "x" * 8).replace("other", "absent"))
    assert missing_key.status_code == 404
    assert not Endpoint.objects.exists()


def _openai(**config: Any) -> dict:
    return external("openai", "openai_config", {"openai_api_key_plaintext": KEY, **config})


BAD_CONFIGS = [
    # (why, served entities, the field the message must name)
    (
        "unknown provider",
        [{"external_model": {"provider": "mistral", "name": "m", "task": "llm/v1/chat"}}],
        "config.served_entities[0].external_model.provider",
    ),
    ("unknown task", [{"external_model": _openai() | {"task": "llm/v1/rerank"}}], "external_model.task"),
    (
        "both credential forms",
        [{"external_model": _openai(openai_api_key="{{secrets/s/k}}")}],
        "openai_api_key or openai_api_key_plaintext",
    ),
    (
        "no credential",
        [{"external_model": external("anthropic", "anthropic_config", {})}],
        "anthropic_config.anthropic_api_key",
    ),
    (
        "a raw key where a reference goes",
        [{"external_model": external("openai", "openai_config", {"openai_api_key": "sk-raw-value-123"})}],
        "must be a secret reference",
    ),
    (
        "another provider's block",
        [{"external_model": external("openai", "anthropic_config", {"anthropic_api_key_plaintext": "k"})}],
        "anthropic_config does not go with provider 'openai'",
    ),
    ("no config block", [{"external_model": {"provider": "openai", "name": "gpt-4o"}}], "openai_config is required"),
    (
        "external and custom models mixed",
        [{"external_model": _openai()}, {"entity_name": "main.default.iris", "entity_version": "1"}],
        "either external models or custom models",
    ),
    (
        "two tasks",
        [
            {"external_model": _openai()},
            {"external_model": _openai() | {"name": "text-embedding-3-small", "task": "llm/v1/embeddings"}},
        ],
        "share one task",
    ),
    (
        "external model with workload fields",
        [{"external_model": _openai(), "workload_size": "Small"}],
        "cannot be combined with workload_size",
    ),
    (
        "embeddings from anthropic",
        [
            {
                "external_model": external(
                    "anthropic", "anthropic_config", {"anthropic_api_key_plaintext": "k"}, task="llm/v1/embeddings"
                )
            }
        ],
        "not offered by provider 'anthropic'",
    ),
    ("azure without its settings", [{"external_model": _openai(openai_api_type="azure")}], "openai_deployment_name"),
    ("an api type that does not exist", [{"external_model": _openai(openai_api_type="aws")}], "openai_api_type 'aws'"),
    (
        "custom provider with two auth methods",
        [
            {
                "external_model": external(
                    "custom",
                    "custom_provider_config",
                    {
                        "custom_provider_url": "https://llm.example.com/v1",
                        "api_key_auth": {"key": "X-Key", "value_plaintext": "a"},
                        "bearer_token_auth": {"token_plaintext": "b"},
                    },
                )
            }
        ],
        "exactly one of api_key_auth or bearer_token_auth",
    ),
    (
        "custom provider without a URL",
        [
            {
                "external_model": external(
                    "custom", "custom_provider_config", {"bearer_token_auth": {"token_plaintext": "b"}}
                )
            }
        ],
        "custom_provider_url is required",
    ),
    (
        "bedrock without a way to authenticate",
        [
            {
                "external_model": external(
                    "amazon-bedrock",
                    "amazon_bedrock_config",
                    {"aws_region": "us-east-1", "bedrock_provider": "anthropic"},
                )
            }
        ],
        "exactly one way to authenticate to AWS",
    ),
    (
        "bedrock with an unknown model family",
        [
            {
                "external_model": external(
                    "amazon-bedrock",
                    "amazon_bedrock_config",
                    {
                        "aws_region": "us-east-1",
                        "bedrock_provider": "mistral",
                        "instance_profile_arn": "arn:aws:iam::1:x",
                    },
                )
            }
        ],
        "bedrock_provider 'mistral'",
    ),
    (
        "vertex without a project",
        [
            {
                "external_model": external(
                    "google-cloud-vertex-ai",
                    "google_cloud_vertex_ai_config",
                    {"region": "us-central1", "private_key_plaintext": "k"},
                )
            }
        ],
        "project_id is required",
    ),
    (
        "a databricks workspace URL that is not a URL",
        [
            {
                "external_model": external(
                    "databricks-model-serving",
                    "databricks_model_serving_config",
                    {"databricks_workspace_url": "adb-123.azuredatabricks.net", "databricks_api_token_plaintext": "t"},
                )
            }
        ],
        "must be an http:// or https:// URL",
    ),
    (
        "external models in legacy served_models",
        "legacy",
        "go in served_entities",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("why", "entities", "named"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_external_model_config_is_refused_and_nothing_is_stored(api, user, why, entities, named):
    body: dict[str, Any]
    if entities == "legacy":
        body = {"name": "bad", "config": {"served_models": [{"external_model": _openai()}]}}
    else:
        body = body_for("bad", *entities)
        if len(entities) > 1:
            names = [e.get("name") or (e.get("external_model") or {}).get("name") or "iris-1" for e in entities]
            body["config"]["traffic_config"] = {
                "routes": [{"served_model_name": names[0], "traffic_percentage": 100}]
                + [{"served_model_name": n, "traffic_percentage": 0} for n in names[1:]]
            }
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, (why, response.content)
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert named in error["message"], error["message"]
    assert "sk-raw-value-123" not in error["message"] and KEY not in error["message"]
    assert not Endpoint.objects.exists()
    assert not Secret.objects.exists()


@pytest.mark.django_db
def test_an_external_endpoint_stays_external(api, user, registered_models):
    create(api, body_for("ext", {"external_model": _openai()}))
    custom = endpoint_body("ext", (registered_models["iris"], "1"))["config"]
    response = api.put(f"{URL}/ext/config", custom, format="json")
    assert response.status_code == 400
    assert "cannot be switched to custom models" in response.json()["message"]
    # Another external model is fine, and is live at once.
    updated = api.put(
        f"{URL}/ext/config",
        {"served_entities": [{"external_model": _openai() | {"name": "gpt-4o-mini"}}]},
        format="json",
    )
    assert updated.status_code == 200, updated.content
    assert updated.json()["config"]["served_entities"][0]["name"] == "gpt-4o-mini"
    assert updated.json()["config"]["config_version"] == 2


@pytest.mark.django_db
def test_a_change_request_cannot_carry_a_plaintext_key(api, user):
    response = api.post(
        "/api/2.0/modelfleet/change-requests",
        {
            "endpoint_name": "prop",
            "action": "create",
            "body": {"config": {"served_entities": [{"external_model": _openai()}]}},
        },
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "cannot carry plaintext credentials" in response.json()["message"]
    assert KEY not in response.content.decode()


# --- queries through the gateway, per provider ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic", "dbx", "custom"])
def test_each_provider_answers_openai_shaped_queries_and_the_key_never_shows(
    kind, gateway, fakes, api, token, settings, caplog
):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "uvicorn", "django"):  # every logger, at its most talkative
        caplog.set_level(logging.DEBUG, logger=name)
    case = provider_case(kind, fakes, settings)
    plaintext = {f"{case.field}_plaintext": KEY}
    entities = [{"name": "chat", "external_model": case.model(plaintext)}]
    create(api, body_for(f"{kind}-chat", *entities))
    seen: list[str] = []

    # 1. Chat, OpenAI-shaped both ways, the key taken from the secret and sent in the provider's header.
    response = gateway.post(f"/serving-endpoints/{kind}-chat/invocations", CHAT | {"max_tokens": 50}, token)
    seen.append(response.text + json.dumps(dict(response.headers)))
    assert response.status_code == 200, response.text
    assert response.headers["served-model-name"] == "chat"
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"].startswith("Hello from")
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] > 0 and answer["usage"]["completion_tokens"] > 0
    assert case.sent_key(case.fake) == KEY

    # 2. Embeddings, where the provider has them.
    if case.embeddings:
        model = case.model(plaintext) | {"task": "llm/v1/embeddings", "name": "text-embedding-3-small"}
        create(api, body_for(f"{kind}-emb", {"name": "emb", "external_model": model}))
        response = gateway.post(f"/serving-endpoints/{kind}-emb/invocations", {"input": ["a", "b"]}, token)
        seen.append(response.text)
        assert response.status_code == 200, response.text
        assert [d["index"] for d in response.json()["data"]] == [0, 1]
        assert response.json()["data"][0]["embedding"] == [0.1, 0.2, 0.3]
        assert case.fake.requests[-1].path.endswith("/embeddings")

    # 3. The provider refuses the key (it rotated the key; its message quotes the one it got).
    case.fake.key = "sk-rotated-by-the-provider"
    response = gateway.post(f"/serving-endpoints/{kind}-chat/invocations", CHAT, token)
    seen.append(response.text + json.dumps(dict(response.headers)))
    assert response.status_code == 502, response.text
    assert response.json()["error_code"] == "BAD_GATEWAY"
    assert "refused the credentials" in response.json()["message"]
    assert "answered 401" in caplog.text  # the gateway's own log lines are among what is checked below

    # 4. The key is nowhere: answers, the API's view of the endpoint, audit rows, logs.
    seen.append(api.get(f"{URL}/{kind}-chat").content.decode())
    seen.append(api.get(URL).content.decode())
    seen.append(json.dumps(list(AuditEvent.objects.values("before", "after", "object_name", "action"))))
    seen.append(caplog.text)
    for text in seen:
        assert KEY not in text
        assert KEY[:12] not in text  # not even a prefix of it


# --- queries: shapes, errors, streams ----------------------------------------------------------------


def _openai_endpoint(
    api, user, fake: OpenAIServer, name: str, *, task: str = "llm/v1/chat", model: str = "gpt-4o"
) -> None:  # type: ignore[no-untyped-def]
    ref = store_secret(user, "team-keys", f"{name}-key", KEY)
    config = {"openai_api_base": f"{fake.url}/v1", "openai_api_key": ref}
    create(api, body_for(name, {"external_model": external("openai", "openai_config", config, name=model, task=task)}))


@pytest.mark.django_db(transaction=True)
def test_openai_gets_its_own_request_shape_and_tokens_are_counted(gateway, fakes, api, user, token):
    fake = OpenAIServer(KEY)
    fakes.append(fake)
    _openai_endpoint(api, user, fake, "gpt")
    body = CHAT | {
        "temperature": 0.2,
        "max_tokens": 40,
        "client_request_id": "req-1",  # Databricks' own fields stay here
        "usage_context": {"team": "a"},
        "extra_params": {"top_p": 0.5},  # meant for the provider
    }
    response = gateway.post("/serving-endpoints/gpt/served-models/gpt-4o/invocations", body, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "messages": CHAT["messages"],
        "temperature": 0.2,
        "max_tokens": 40,
        "top_p": 0.5,
        "model": "gpt-4o",
    }
    gateway.app.gateway.metrics.flush()
    endpoint_id = Endpoint.objects.get(name="gpt").id
    assert read_token_counters(endpoint_id) == {"gpt-4o": {"prompt_tokens": 12, "completion_tokens": 5}}


@pytest.mark.django_db(transaction=True)
def test_provider_errors_become_clear_errors(gateway, fakes, api, user, token, settings):
    fake = OpenAIServer(KEY)
    fakes.append(fake)
    _openai_endpoint(api, user, fake, "gpt")
    path = "/serving-endpoints/gpt/invocations"

    fake.fail_next(429, "Rate limit reached for gpt-4o", {"retry-after": "7"})
    limited = gateway.post(path, CHAT, token)
    assert limited.status_code == 429
    assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "Rate limit reached for gpt-4o" in limited.json()["message"]
    assert limited.headers["retry-after"] == "7"

    fake.fail_next(400, "This model's maximum context length is 128000 tokens")
    rejected = gateway.post(path, CHAT, token)
    assert rejected.status_code == 400
    assert rejected.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "maximum context length" in rejected.json()["message"]

    fake.fail_next(500, "The server had an error while processing your request")
    failed = gateway.post(path, CHAT, token)
    assert failed.status_code == 502
    assert failed.json()["error_code"] == "BAD_GATEWAY"

    fake.fail_next(503, "The engine is currently overloaded")
    overloaded = gateway.post(path, CHAT, token)
    assert overloaded.status_code == 503
    assert overloaded.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"

    settings.GATEWAY_TIMEOUT_SECONDS = 0.3
    fake.delay = 1.0
    slow = gateway.post(path, CHAT, token)
    assert slow.status_code == 504
    assert slow.json()["error_code"] == "DEADLINE_EXCEEDED"
    fake.delay = 0.0
    settings.GATEWAY_TIMEOUT_SECONDS = 30

    bad = gateway.post(path, {"prompt": "no messages"}, token)
    assert bad.status_code == 400
    assert "needs 'messages'" in bad.json()["message"]
    not_json = requests.post(gateway.url + path, data=b"{", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert not_json.status_code == 400
    assert not_json.json()["error_code"] == "MALFORMED_REQUEST"
    fake.stop()
    unreachable = gateway.post(path, CHAT, token)
    assert unreachable.status_code == 502
    assert "Cannot reach provider 'openai'" in unreachable.json()["message"]


@pytest.mark.django_db(transaction=True)
def test_anthropic_gets_the_messages_api_shape_and_its_errors_map(gateway, fakes, api, user, token, settings):
    fake = AnthropicServer(KEY)
    fakes.append(fake)
    settings.PROVIDER_BASE_URLS = {"anthropic": fake.url}
    ref = store_secret(user, "team-keys", "anthropic", KEY)
    model = external("anthropic", "anthropic_config", {"anthropic_api_key": ref}, name="claude-3-5-haiku-20241022")
    create(api, body_for("claude", {"name": "claude", "external_model": model}))
    path = "/serving-endpoints/claude/invocations"

    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        ],
        "stop": "END",
        "temperature": 0.5,
    }
    response = gateway.post(path, body, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-3-5-haiku-20241022",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        ],
        "max_tokens": 1024,  # Anthropic requires it; the gateway's default
        "temperature": 0.5,
        "stop_sequences": ["END"],
    }
    answer = response.json()
    assert answer["id"] == "msg_fake1"
    assert answer["object"] == "chat.completion"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from Claude"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}

    fake.fail_next(400, 'messages: roles must alternate between "user" and "assistant"')
    rejected = gateway.post(path, CHAT, token)
    assert rejected.status_code == 400
    assert "invalid_request_error: messages: roles must alternate" in rejected.json()["message"]
    fake.fail_next(529, "Overloaded")
    assert gateway.post(path, CHAT, token).status_code == 503
    fake.fail_next(429, "Number of request tokens has exceeded your rate limit", {"retry-after": "3"})
    limited = gateway.post(path, CHAT, token)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    two = gateway.post(path, CHAT | {"n": 2}, token)
    assert two.status_code == 400 and "'n' must be 1" in two.json()["message"]


def _events(response: requests.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]


@pytest.mark.django_db(transaction=True)
def test_anthropic_streams_become_openai_chunks(gateway, fakes, api, user, token, settings):
    fake = AnthropicServer(KEY)
    fakes.append(fake)
    settings.PROVIDER_BASE_URLS = {"anthropic": fake.url}
    ref = store_secret(user, "team-keys", "anthropic", KEY)
    model = external("anthropic", "anthropic_config", {"anthropic_api_key": ref}, name="claude-3-5-haiku-20241022")
    create(api, body_for("claude", {"name": "claude", "external_model": model}))

    response = gateway.post("/serving-endpoints/claude/invocations", CHAT | {"stream": True}, token, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert fake.requests[-1].body["stream"] is True
    events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_fake2" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21}
    gateway.app.gateway.metrics.flush()
    counted = read_token_counters(Endpoint.objects.get(name="claude").id)
    assert counted == {"claude": {"prompt_tokens": 15, "completion_tokens": 6}}


@pytest.mark.django_db(transaction=True)
def test_openai_streams_pass_through_and_usage_is_counted_without_showing_it(gateway, fakes, api, user, token):
    fake = OpenAIServer(KEY)
    fakes.append(fake)
    _openai_endpoint(api, user, fake, "gpt")
    response = gateway.post("/serving-endpoints/gpt/invocations", CHAT | {"stream": True}, token, stream=True)
    assert response.status_code == 200
    # The gateway asked OpenAI for the usage chunk to count tokens; the client did not ask for it.
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello from OpenAI"
    assert all(c["choices"] for c in chunks)
    gateway.app.gateway.metrics.flush()
    assert read_token_counters(Endpoint.objects.get(name="gpt").id) == {
        "gpt-4o": {"prompt_tokens": 9, "completion_tokens": 3}
    }


@pytest.mark.django_db(transaction=True)
def test_the_openai_client_works_against_the_serving_endpoints_base_url(gateway, fakes, api, user, token):
    from openai import BadRequestError, NotFoundError, OpenAI

    fake = OpenAIServer(KEY)
    fakes.append(fake)
    _openai_endpoint(api, user, fake, "gpt-chat")
    _openai_endpoint(api, user, fake, "gpt-embed", task="llm/v1/embeddings", model="text-embedding-3-small")
    client = OpenAI(base_url=f"{gateway.url}/serving-endpoints", api_key=token, max_retries=0)

    completion = client.chat.completions.create(
        model="gpt-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=20
    )
    assert completion.choices[0].message.content == "Hello from OpenAI"
    assert completion.usage.total_tokens == 17
    assert fake.requests[-1].body["model"] == "gpt-4o"  # the endpoint's external model, not its name

    embeddings = client.embeddings.create(model="gpt-embed", input=["a", "b", "c"])
    assert len(embeddings.data) == 3

    stream = client.chat.completions.create(model="gpt-chat", messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "Hello from OpenAI"

    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="no-such-endpoint", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(BadRequestError, match="serves llm/v1/chat"):
        client.embeddings.create(model="gpt-chat", input="a")


@pytest.mark.django_db(transaction=True)
def test_list_external_models_in_the_cli(gateway, api, user, token, monkeypatch, capsys):
    from endpoints_app.cli.main import main

    create(api, body_for("gpt", {"external_model": _openai()}))
    model = external("anthropic", "anthropic_config", {"anthropic_api_key_plaintext": KEY}, name="claude-3-5-haiku")
    create(api, body_for("claude", {"external_model": model}))
    monkeypatch.setenv("MODELFLEET_HOST", gateway.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", token)

    assert main(["serving-endpoints", "list-external-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ENDPOINT", "SERVED", "MODEL", "PROVIDER", "MODEL", "TASK"]
    assert lines[1].split() == ["claude", "claude-3-5-haiku", "anthropic", "claude-3-5-haiku", "llm/v1/chat"]
    assert lines[2].split() == ["gpt", "gpt-4o", "openai", "gpt-4o", "llm/v1/chat"]

    assert main(["serving-endpoints", "list-external-models", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {
        "endpoint": "gpt",
        "served_model_name": "gpt-4o",
        "provider": "openai",
        "model": "gpt-4o",
        "task": "llm/v1/chat",
    } in rows
    assert len(rows) == 2


def test_provider_base_urls_are_parsed_strictly(monkeypatch):
    from dashboard.env import EnvError, env_url_map

    monkeypatch.setenv("MF_TEST_URLS", "anthropic=http://127.0.0.1:9000, openai=https://proxy.internal/v1")
    assert env_url_map("MF_TEST_URLS", ("openai", "anthropic")) == {
        "anthropic": "http://127.0.0.1:9000",
        "openai": "https://proxy.internal/v1",
    }
    for bad in ("antropic=http://x", "anthropic=ftp://x", "anthropic"):
        monkeypatch.setenv("MF_TEST_URLS", bad)
        with pytest.raises(EnvError, match="MF_TEST_URLS"):
            env_url_map("MF_TEST_URLS", ("openai", "anthropic"))


def test_translations_of_the_other_tasks_and_auth_forms():
    """Pure translation rules not covered by the server tests above."""
    from endpoints_app.gateway.providers import PROVIDERS

    anthropic = PROVIDERS["anthropic"]
    request = anthropic.build_request(
        task="llm/v1/completions",
        model="claude-3-5-haiku",
        config={},
        credentials={"anthropic_api_key": KEY},
        body={"prompt": ["Once upon a time"], "max_tokens": 5},
        base_url="https://api.anthropic.com",
    )
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.json["messages"] == [{"role": "user", "content": "Once upon a time"}]
    answer = anthropic.parse_response(
        task="llm/v1/completions",
        model="claude-3-5-haiku",
        data={"id": "m", "content": [{"type": "text", "text": " there"}], "stop_reason": "max_tokens", "usage": {}},
    )
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == " there" and answer["choices"][0]["finish_reason"] == "length"

    custom = PROVIDERS["custom"]
    config = {"custom_provider_url": "https://llm.example.com/v1/chat/completions", "bearer_token_auth": {}}
    request = custom.build_request(
        task="llm/v1/chat",
        model="llama",
        config=config,
        credentials={"bearer_token_auth.token": KEY},
        body={"messages": [{"role": "user", "content": "x"}], "model": "endpoint-name"},
        base_url="",
    )
    assert request.url == "https://llm.example.com/v1/chat/completions"  # already the full path
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json["model"] == "llama"

    openai = PROVIDERS["openai"]
    config = {
        "openai_api_type": "azuread",
        "openai_api_base": "https://res.openai.azure.com/",
        "openai_deployment_name": "gpt4o",
        "openai_api_version": "2024-06-01",
    }
    request = openai.build_request(
        task="llm/v1/embeddings",
        model="text-embedding-3-small",
        config=config,
        credentials={"openai_api_key": KEY},
        body={"input": "x"},
        base_url="",
    )
    assert request.url == "https://res.openai.azure.com/openai/deployments/gpt4o/embeddings?api-version=2024-06-01"
    assert request.headers["authorization"] == f"Bearer {KEY}" and "model" not in request.json
