"""Cohere, AI21 Labs, Amazon Bedrock, Google Cloud Vertex AI and PaLM (the Generative Language API)
through the gateway, over real HTTP both ways.

Each provider is a small server of ``tests.providers`` on 127.0.0.1 speaking its wire protocol:
Bedrock's recomputes every AWS Signature V4 with the secret key, Google's token endpoint verifies
the service account's RS256 JWT with its public key. Keys are read from the secrets store by
reference; none may show in an answer, a header or a log line (caplog at DEBUG everywhere).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from endpoints_app.gateway.metrics import read_token_counters
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.models import Endpoint
from tests import test_external_models as shared
from tests.providers import (
    AI21Server,
    BedrockServer,
    CohereServer,
    FakeProvider,
    GenerativeLanguageServer,
    GoogleTokenServer,
    VertexServer,
)

CHAT, KEY = shared.CHAT, shared.KEY
body_for, create, external, store_secret, events_of = (
    shared.body_for,
    shared.create,
    shared.external,
    shared.store_secret,
    shared._events,
)
# The gateway in uvicorn on a thread, and the fake providers a test starts (stopped after it).
gateway, fakes = shared.gateway, shared.fakes

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
CLIENT_EMAIL = "gateway@my-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """A throwaway RSA key pair for the Google service account."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def key_file(key: rsa.RSAPrivateKey, token_uri: str) -> str:
    """A service-account key file as Google hands it out."""
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "my-project",
            "private_key_id": "0f1e2d3c4b5a",
            "private_key": pem(key),
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }
    )


@dataclass
class Case:
    """One provider set up for a test: its fake(s) and the external models that point at them."""

    fake: FakeProvider  # the provider's API
    chat: dict  # external_model serving chat
    embeddings: dict | None  # external_model serving embeddings, where the provider has them
    key_was_sent: Callable[[], bool]  # the last request carried the secret, in the provider's way
    refuse_key: Callable[[], None]  # from now on the provider refuses the configured key
    secrets: list[str] = field(default_factory=list)  # values that must never show
    extra: dict[str, Any] = field(default_factory=dict)


def setup(kind: str, user, settings, started: list[FakeProvider], rsa_key: rsa.RSAPrivateKey) -> Case:  # type: ignore[no-untyped-def]
    if kind == "cohere":
        fake = CohereServer(KEY)
        started.append(fake)
        settings.PROVIDER_BASE_URLS = {"cohere": fake.url}
        ref = store_secret(user, "team-keys", "cohere", KEY)
        case = Case(
            fake,
            external("cohere", "cohere_config", {"cohere_api_key": ref}, name="command-r-plus"),
            # cohere_api_base in the config is used as well (this one bypasses the setting).
            external(
                "cohere",
                "cohere_config",
                {"cohere_api_key": ref, "cohere_api_base": fake.url},
                name="embed-english-v3.0",
                task="llm/v1/embeddings",
            ),
            lambda: fake.requests[-1].headers.get("authorization") == f"Bearer {KEY}",
            lambda: setattr(fake, "key", "rotated-cohere-key"),
            [KEY],
        )
    elif kind == "ai21labs":
        fake = AI21Server(KEY)
        started.append(fake)
        settings.PROVIDER_BASE_URLS = {"ai21labs": fake.url}
        ref = store_secret(user, "team-keys", "ai21", KEY)
        case = Case(
            fake,
            external("ai21labs", "ai21labs_config", {"ai21labs_api_key": ref}, name="jamba-mini"),
            None,
            lambda: fake.requests[-1].headers.get("authorization") == f"Bearer {KEY}",
            lambda: setattr(fake, "key", "rotated-ai21-key"),
            [KEY],
        )
    elif kind == "amazon-bedrock":
        fake = BedrockServer(AWS_KEY_ID, AWS_SECRET, "eu-west-3")
        started.append(fake)
        settings.PROVIDER_BASE_URLS = {"amazon-bedrock": fake.url}
        config = {
            "aws_region": "eu-west-3",
            "aws_access_key_id": store_secret(user, "aws", "key-id", AWS_KEY_ID),
            "aws_secret_access_key": store_secret(user, "aws", "secret", AWS_SECRET),
        }
        verified = {"count": 0}

        def signed() -> bool:
            # The fake answered 403 unless the signature it recomputed with the secret matched.
            before, verified["count"] = verified["count"], fake.verified
            return fake.verified == before + 1 and AWS_KEY_ID in fake.requests[-1].headers["authorization"]

        case = Case(
            fake,
            external(
                "amazon-bedrock",
                "amazon_bedrock_config",
                config | {"bedrock_provider": "anthropic"},
                name="anthropic.claude-3-5-haiku-20241022-v1:0",
            ),
            external(
                "amazon-bedrock",
                "amazon_bedrock_config",
                config | {"bedrock_provider": "Amazon"},  # the family is case-insensitive
                name="amazon.titan-embed-text-v2:0",
                task="llm/v1/embeddings",
            ),
            signed,
            lambda: setattr(fake, "key", "a-different-secret-access-key"),
            [AWS_SECRET, AWS_KEY_ID],
        )
    elif kind == "google-cloud-vertex-ai":
        tokens = GoogleTokenServer(rsa_key.public_key(), CLIENT_EMAIL)
        fake = VertexServer(tokens, "my-project", "us-central1")
        started += [tokens, fake]
        settings.PROVIDER_BASE_URLS = {"google-cloud-vertex-ai": fake.url}
        secret = key_file(rsa_key, f"{tokens.url}/token")
        revoked: list[str] = []

        def revoke() -> None:  # Google forgets the tokens it issued (the key was deleted)
            revoked.extend(tokens.issued)
            tokens.issued.clear()

        config = {
            "project_id": "my-project",
            "region": "us-central1",
            "private_key": store_secret(user, "gcp", "vertex-sa", secret),
        }
        case = Case(
            fake,
            external("google-cloud-vertex-ai", "google_cloud_vertex_ai_config", config, name="gemini-2.0-flash"),
            external(
                "google-cloud-vertex-ai",
                "google_cloud_vertex_ai_config",
                config,
                name="text-embedding-005",
                task="llm/v1/embeddings",
            ),
            lambda: fake.requests[-1].headers.get("authorization") == f"Bearer {tokens.issued[-1]}",
            revoke,
            # A stretch of the private key's PEM body, and the access tokens it was exchanged for.
            [pem(rsa_key).splitlines()[5]],
            {"tokens": tokens, "revoked": revoked},
        )
    else:
        assert kind == "palm"
        fake = GenerativeLanguageServer(KEY)
        started.append(fake)
        settings.PROVIDER_BASE_URLS = {"palm": fake.url}
        ref = store_secret(user, "team-keys", "palm", KEY)
        case = Case(
            fake,
            external("palm", "palm_config", {"palm_api_key": ref}, name="gemini-2.0-flash"),
            external("palm", "palm_config", {"palm_api_key": ref}, name="text-embedding-004", task="llm/v1/embeddings"),
            lambda: fake.requests[-1].headers.get("x-goog-api-key") == KEY and "key" not in fake.requests[-1].query,
            lambda: setattr(fake, "key", "rotated-palm-key"),
            [KEY],
        )
    return case


def debug_logs(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "uvicorn", "django", "endpoints_app"):
        caplog.set_level(logging.DEBUG, logger=name)


KINDS = ["cohere", "ai21labs", "amazon-bedrock", "google-cloud-vertex-ai", "palm"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", KINDS)
def test_each_provider_serves_openai_shaped_queries_and_its_key_never_shows(
    kind, gateway, fakes, api, user, token, settings, caplog, rsa_key
):
    debug_logs(caplog)
    case = setup(kind, user, settings, fakes, rsa_key)
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    path = "/serving-endpoints/chat/invocations"
    seen: list[str] = []

    def query(body: dict, endpoint_path: str = path, **kwargs: Any):  # type: ignore[no-untyped-def]
        response = gateway.post(endpoint_path, body, token, **kwargs)
        seen.append(response.text + json.dumps(dict(response.headers)))
        return response

    # 1. Chat, OpenAI-shaped both ways, with the key from the secret store.
    response = query(CHAT | {"max_tokens": 50})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"].startswith("Hello from")
    assert answer["choices"][0]["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert case.key_was_sent()

    # 2. Streamed: OpenAI chunks, then [DONE]; the last chunk has the finish reason and the usage.
    response = query(CHAT | {"stream": True}, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response)
    seen.append("\n".join(events))
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == ("Hello from Jamba" if kind == "ai21labs" else "Hello there")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["prompt_tokens"] > 0 and chunks[-1]["usage"]["completion_tokens"] > 0
    assert case.key_was_sent()

    # 3. Embeddings, where the provider has them.
    if case.embeddings is not None:
        create(api, body_for("emb", {"name": "emb", "external_model": case.embeddings}))
        # Titan embeds one text per call; the others take several.
        texts = "a" if kind == "amazon-bedrock" else ["a", "b"]
        response = query({"input": texts}, "/serving-endpoints/emb/invocations")
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert [d["index"] for d in data] == list(range(len(texts) if isinstance(texts, list) else 1))
        assert data[0]["embedding"] == [0.1, 0.2, 0.3] and data[0]["object"] == "embedding"
        assert case.key_was_sent()

    # 4. The provider's errors, mapped.
    case.fake.fail_next(429, "Too many requests", {"retry-after": "7"})
    limited = query(CHAT)
    assert limited.status_code == 429, limited.text
    assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert limited.headers["retry-after"] == "7"
    case.fake.fail_next(500, "internal failure")
    failed = query(CHAT)
    assert (failed.status_code, failed.json()["error_code"]) == (502, "BAD_GATEWAY")
    case.fake.fail_next(503, "service unavailable")
    overloaded = query(CHAT)
    assert (overloaded.status_code, overloaded.json()["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")

    # 5. The provider refuses the key (rotated, deleted): 502, saying so, never quoting it.
    case.refuse_key()
    refused = query(CHAT)
    assert refused.status_code == 502, refused.text
    assert refused.json()["error_code"] == "BAD_GATEWAY"
    assert "refused the credentials configured for served model 'chat'" in refused.json()["message"]

    # 6. The key is nowhere: not in an answer, a header, or a log line.
    secrets_ = case.secrets + case.extra.get("revoked", [])
    assert kind != "google-cloud-vertex-ai" or secrets_[1:], "the access tokens are checked too"
    for value in secrets_:
        for text in seen:
            assert value not in text
        assert value not in caplog.text
    assert all(set(e) == {"error_code", "message"} for e in (limited.json(), failed.json(), refused.json()))


# --- Cohere ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cohere_gets_the_v2_chat_and_embed_shapes(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("cohere", user, settings, fakes, rsa_key)
    fake = case.fake
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "How "}, {"type": "text", "text": "are you?"}]},
        ],
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": "END",
        "extra_params": {"top_k": 5},
        "client_request_id": "req-1",
    }
    response = gateway.post("/serving-endpoints/chat/invocations", body, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert sent.path == "/v2/chat"
    assert sent.body == {
        "model": "command-r-plus",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "How are you?"},
        ],
        "max_tokens": 64,
        "temperature": 0.3,
        "p": 0.9,
        "k": 5,
        "stop_sequences": ["END"],
    }
    answer = response.json()
    assert answer["id"] == "c0-answer"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from Cohere"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    # usage.tokens (what the model read), not billed_units.
    assert answer["usage"] == {"prompt_tokens": 71, "completion_tokens": 4, "total_tokens": 75}

    create(api, body_for("emb", {"name": "emb", "external_model": case.embeddings}))
    response = gateway.post("/serving-endpoints/emb/invocations", {"input": ["a", "b", "c"]}, token)
    assert response.status_code == 200, response.text
    assert fake.requests[-1].path == "/v2/embed"
    assert fake.requests[-1].body == {
        "model": "embed-english-v3.0",
        "texts": ["a", "b", "c"],
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    assert response.json()["usage"] == {"prompt_tokens": 6, "completion_tokens": 0, "total_tokens": 6}
    assert response.json()["model"] == "embed-english-v3.0"

    # Cohere's 498 "invalid token" is a refused key too; a 400 keeps Cohere's message.
    fake.fail_next(498, "invalid api token")
    assert gateway.post("/serving-endpoints/chat/invocations", CHAT, token).status_code == 502
    fake.fail_next(400, "invalid request: message must be at least 1 token long")
    rejected = gateway.post("/serving-endpoints/chat/invocations", CHAT, token)
    assert rejected.status_code == 400
    assert "message must be at least 1 token long" in rejected.json()["message"]
    two = gateway.post("/serving-endpoints/chat/invocations", CHAT | {"n": 2}, token)
    assert two.status_code == 400 and "'n' must be 1" in two.json()["message"]
    tool = gateway.post("/serving-endpoints/chat/invocations", {"messages": [{"role": "tool", "content": "x"}]}, token)
    assert tool.status_code == 400 and "role 'tool' cannot be sent to Cohere" in tool.json()["message"]


@pytest.mark.django_db(transaction=True)
def test_cohere_streams_are_counted(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("cohere", user, settings, fakes, rsa_key)
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    response = gateway.post("/serving-endpoints/chat/invocations", CHAT | {"stream": True}, token, stream=True)
    chunks = [json.loads(e) for e in events_of(response)[:-1]]
    assert case.fake.requests[-1].body["stream"] is True
    assert case.fake.requests[-1].headers["accept"] == "text/event-stream"
    assert {c["id"] for c in chunks} == {"c0-stream"}
    assert chunks[-1]["usage"] == {"prompt_tokens": 71, "completion_tokens": 4, "total_tokens": 75}
    gateway.app.gateway.metrics.flush()
    counted = read_token_counters(Endpoint.objects.get(name="chat").id)
    assert counted == {"chat": {"prompt_tokens": 71, "completion_tokens": 4}}


# --- AI21 Labs ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_ai21_gets_its_chat_shape_and_completions_become_chat(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("ai21labs", user, settings, fakes, rsa_key)
    fake = case.fake
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    body = CHAT | {"max_tokens": 20, "n": 2, "stop": ["\n\n"], "user": "u-1", "logit_bias": {"1": 2}}
    response = gateway.post("/serving-endpoints/chat/invocations", body, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert sent.path == "/studio/v1/chat/completions"
    # Fields AI21 does not take (user, logit_bias) are left out.
    assert sent.body == {
        "model": "jamba-mini",
        "messages": CHAT["messages"],
        "max_tokens": 20,
        "n": 2,
        "stop": ["\n\n"],
    }
    answer = response.json()
    assert answer["object"] == "chat.completion" and isinstance(answer["created"], int)
    assert answer["model"] == "jamba-mini" and answer["id"] == "chat-ai21-1"
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"] == {"prompt_tokens": 18, "completion_tokens": 4, "total_tokens": 22}

    # Completions: the Jurassic-2 API is retired; the prompt is one user message to the chat API.
    model = case.chat | {"task": "llm/v1/completions"}
    create(api, body_for("complete", {"name": "complete", "external_model": model}))
    response = gateway.post("/serving-endpoints/complete/invocations", {"prompt": "Once upon", "max_tokens": 5}, token)
    assert response.status_code == 200, response.text
    assert fake.requests[-1].body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert response.json()["object"] == "text_completion"
    assert response.json()["choices"][0]["text"] == "Hello from Jamba"

    # AI21's {"detail": ...} errors keep their message.
    fake.fail_next(422, "Invalid message sequence: the last message must be from the user")
    rejected = gateway.post("/serving-endpoints/chat/invocations", CHAT, token)
    assert rejected.status_code == 400
    assert "Invalid message sequence" in rejected.json()["message"]
    validation = {"detail": [{"loc": ["body", "messages", 0, "content"], "msg": "str type expected", "type": "t"}]}
    assert PROVIDERS["ai21labs"].error_message(validation) == "body.messages.0.content: str type expected"
    embeddings = api.post(
        shared.URL, body_for("emb", {"external_model": case.chat | {"task": "llm/v1/embeddings"}}), format="json"
    )
    assert embeddings.status_code == 400
    assert "not offered by provider 'ai21labs'" in embeddings.json()["message"]


# --- Amazon Bedrock -------------------------------------------------------------------------------


def test_the_sigv4_signer_matches_aws_published_test_vector():
    """AWS's Signature V4 test suite, "get-vanilla": a signer that differs in any step fails it."""
    from endpoints_app.gateway.providers import aws

    canonical = aws.canonical_request(
        "GET",
        "https://example.amazonaws.com/",
        {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"},
        ["host", "x-amz-date"],
        b"",
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = aws.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "service")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    assert signature == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    # A path segment is encoded once more than on the wire (every service but S3).
    assert aws.canonical_request("POST", "https://h/model/a%3A0/converse", {}, [], b"").split("\n")[1] == (
        "/model/a%253A0/converse"
    )


@pytest.mark.django_db(transaction=True)
def test_bedrock_gets_a_signed_converse_request(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("amazon-bedrock", user, settings, fakes, rsa_key)
    fake = case.fake
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    body = CHAT | {"max_tokens": 30, "temperature": 0.1, "top_p": 0.8, "stop": ["Human:"]}
    response = gateway.post("/serving-endpoints/chat/invocations", body, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    # The model id goes in the path, its ":" percent-encoded (and signed encoded twice).
    assert sent.target == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
    assert (
        "/eu-west-3/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, "
        in (sent.headers["authorization"])
    )
    assert fake.verified == 1
    assert sent.body == {
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 30, "temperature": 0.1, "topP": 0.8, "stopSequences": ["Human:"]},
    }
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "Hello from Bedrock"
    assert answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}

    # Bedrock's own errors: a model error is the provider failing; a validation error keeps its message.
    fake.fail_next(424, "The model returned an error")
    assert gateway.post("/serving-endpoints/chat/invocations", CHAT, token).status_code == 502
    opening = gateway.post(
        "/serving-endpoints/chat/invocations", {"messages": [{"role": "assistant", "content": "x"}]}, token
    )
    assert opening.status_code == 400
    assert "A conversation must start with a user message." in opening.json()["message"]

    # Slow provider: 504.
    settings.GATEWAY_TIMEOUT_SECONDS = 0.3
    fake.delay = 1.0
    slow = gateway.post("/serving-endpoints/chat/invocations", CHAT, token)
    assert (slow.status_code, slow.json()["error_code"]) == (504, "DEADLINE_EXCEEDED")


@pytest.mark.django_db(transaction=True)
def test_bedrock_streams_its_binary_event_stream_as_openai_chunks(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("amazon-bedrock", user, settings, fakes, rsa_key)
    fake = case.fake
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    response = gateway.post("/serving-endpoints/chat/invocations", CHAT | {"stream": True}, token, stream=True)
    events = events_of(response)
    assert fake.requests[-1].path.endswith("/converse-stream") and fake.verified == 1
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello there"
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    gateway.app.gateway.metrics.flush()
    assert read_token_counters(Endpoint.objects.get(name="chat").id) == {
        "chat": {"prompt_tokens": 11, "completion_tokens": 4}
    }

    # An exception in the middle of the stream becomes a last error event (the status line is sent).
    fake.stream_exception = "throttlingException"
    response = gateway.post("/serving-endpoints/chat/invocations", CHAT | {"stream": True}, token, stream=True)
    last = json.loads(events_of(response)[-1])
    assert last["error_code"] == "BAD_GATEWAY"
    assert "throttlingException: Too many requests" in last["message"]


@pytest.mark.django_db(transaction=True)
def test_bedrock_titan_embeddings_and_what_is_not_offered(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("amazon-bedrock", user, settings, fakes, rsa_key)
    fake = case.fake
    create(api, body_for("emb", {"name": "emb", "external_model": case.embeddings}))
    response = gateway.post("/serving-endpoints/emb/invocations", {"input": ["one text"]}, token)
    assert response.status_code == 200, response.text
    assert fake.requests[-1].target == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert fake.requests[-1].body == {"inputText": "one text"}
    assert response.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    several = gateway.post("/serving-endpoints/emb/invocations", {"input": ["a", "b"]}, token)
    assert several.status_code == 400 and "one text per request" in several.json()["message"]

    # Embeddings of another model family, and sign-in methods that need cloud metadata: 501.
    cohere_family = case.embeddings["amazon_bedrock_config"] | {"bedrock_provider": "cohere"}
    create(
        api,
        body_for(
            "emb2",
            {
                "name": "emb2",
                "external_model": case.embeddings
                | {"amazon_bedrock_config": cohere_family, "name": "cohere.embed-english-v3"},
            },
        ),
    )
    other = gateway.post("/serving-endpoints/emb2/invocations", {"input": "a"}, token)
    assert (other.status_code, other.json()["error_code"]) == (501, "NOT_IMPLEMENTED")
    profile = {"aws_region": "eu-west-3", "bedrock_provider": "amazon", "instance_profile_arn": "arn:aws:iam::1:x"}
    model = external("amazon-bedrock", "amazon_bedrock_config", profile, name="amazon.nova-lite-v1:0")
    create(api, body_for("profile", {"name": "profile", "external_model": model}))
    requests_before = len(fake.requests)
    answer = gateway.post("/serving-endpoints/profile/invocations", CHAT, token)
    assert (answer.status_code, answer.json()["error_code"]) == (501, "NOT_IMPLEMENTED")
    assert "instance_profile_arn" in answer.json()["message"]
    assert len(fake.requests) == requests_before  # nothing sent anywhere


# --- Google Cloud Vertex AI -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_vertex_signs_in_with_the_service_account_once_and_calls_generate_content(
    gateway, fakes, api, user, token, settings, rsa_key
):
    case = setup("google-cloud-vertex-ai", user, settings, fakes, rsa_key)
    fake, tokens = case.fake, case.extra["tokens"]
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Again"},
        ],
        "max_tokens": 40,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "n": 2,
    }
    response = gateway.post("/serving-endpoints/chat/invocations", body, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert (
        sent.path
        == "/v1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"
    )
    assert sent.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello"}]},
            {"role": "user", "parts": [{"text": "Again"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 40,
            "temperature": 0.5,
            "topP": 0.9,
            "candidateCount": 2,
            "stopSequences": ["END"],
        },
    }
    answer = response.json()
    assert answer["id"] == "resp-1" and answer["model"] == "gemini-2.0-flash"
    assert [c["message"]["content"] for c in answer["choices"]] == ["Hello from Gemini"] * 2
    assert answer["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}

    # The token request: a JWT-bearer grant whose RS256 assertion the fake verified with the public key.
    assert len(tokens.requests) == 1
    grant = tokens.requests[0]
    assert grant.headers["content-type"] == "application/x-www-form-urlencoded"
    form = dict(part.split("=", 1) for part in grant.raw.decode().split("&"))
    assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    header, claims, _ = form["assertion"].split(".")
    pad = lambda text: text + "=" * (-len(text) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {"alg": "RS256", "typ": "JWT", "kid": "0f1e2d3c4b5a"}
    claims = json.loads(base64.urlsafe_b64decode(pad(claims)))
    assert claims["iss"] == CLIENT_EMAIL and claims["aud"] == f"{tokens.url}/token"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["exp"] - claims["iat"] == 3600

    # The access token is kept: more queries, streamed ones and embeddings sign in no more.
    gateway.post("/serving-endpoints/chat/invocations", CHAT, token)
    response = gateway.post("/serving-endpoints/chat/invocations", CHAT | {"stream": True}, token, stream=True)
    assert events_of(response)[-1] == "[DONE]"
    assert fake.requests[-1].query == {"alt": ["sse"]}
    assert fake.requests[-1].path.endswith(":streamGenerateContent")
    create(api, body_for("emb", {"name": "emb", "external_model": case.embeddings}))
    response = gateway.post("/serving-endpoints/emb/invocations", {"input": ["a", "b"], "dimensions": 256}, token)
    assert response.status_code == 200, response.text
    assert fake.requests[-1].path.endswith("/models/text-embedding-005:predict")
    assert fake.requests[-1].body == {
        "instances": [{"content": "a"}, {"content": "b"}],
        "parameters": {"outputDimensionality": 256},
    }
    assert response.json()["usage"]["prompt_tokens"] == 4  # statistics.token_count, added up
    assert len(tokens.requests) == 1

    # Vertex's own error shape keeps its status and message.
    fake.fail_next(400, "Unable to submit request because it has an empty text parameter.")
    rejected = gateway.post("/serving-endpoints/chat/invocations", CHAT, token)
    assert rejected.status_code == 400
    assert "INVALID_ARGUMENT: Unable to submit request" in rejected.json()["message"]


@pytest.mark.django_db(transaction=True)
def test_vertex_sign_in_failures_are_clear(gateway, fakes, api, user, token, settings, rsa_key):
    case = setup("google-cloud-vertex-ai", user, settings, fakes, rsa_key)
    tokens = case.extra["tokens"]
    config = case.chat["google_cloud_vertex_ai_config"]

    def endpoint(name: str, secret: str) -> str:
        model = case.chat | {
            "google_cloud_vertex_ai_config": config | {"private_key": store_secret(user, "gcp", name, secret)}
        }
        create(api, body_for(name, {"name": "chat", "external_model": model}))
        return f"/serving-endpoints/{name}/invocations"

    # A key Google does not know (signed by another key pair): the token endpoint refuses it.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = gateway.post(endpoint("unknown-key", key_file(other, f"{tokens.url}/token")), CHAT, token)
    assert refused.status_code == 502, refused.text
    assert refused.json()["error_code"] == "BAD_GATEWAY"
    assert (
        "token endpoint refused the service-account key (HTTP 400: invalid_grant: Invalid JWT Signature.)"
        in (refused.json()["message"])
    )
    assert not case.fake.requests

    # Not a key file at all: the endpoint's secret must be fixed.
    broken = gateway.post(endpoint("not-json", "-----BEGIN PRIVATE KEY-----\nabc"), CHAT, token)
    assert (broken.status_code, broken.json()["error_code"]) == (500, "INTERNAL_ERROR")
    assert "not a service-account key file" in broken.json()["message"]
    assert "abc" not in broken.text

    # The token endpoint is slow: 504; down: 503.
    path = endpoint("slow", key_file(rsa_key, f"{tokens.url}/token"))
    settings.GATEWAY_TIMEOUT_SECONDS = 0.3
    tokens.delay = 1.0
    slow = gateway.post(path, CHAT, token)
    assert (slow.status_code, slow.json()["error_code"]) == (504, "DEADLINE_EXCEEDED")
    tokens.delay = 0.0
    settings.GATEWAY_TIMEOUT_SECONDS = 30
    tokens.fail_next(503)
    down = gateway.post(path, CHAT, token)
    assert (down.status_code, down.json()["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert gateway.post(path, CHAT, token).status_code == 200

    # Google revokes the access token: that query is refused, and the next one signs in afresh.
    signed_in = len(tokens.issued)
    tokens.issued.clear()
    revoked = gateway.post(path, CHAT, token)
    assert (revoked.status_code, revoked.json()["error_code"]) == (502, "BAD_GATEWAY")
    assert gateway.post(path, CHAT, token).status_code == 200
    assert len(tokens.issued) == 1 and signed_in >= 1


# --- PaLM (the Generative Language API) -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_palm_talks_to_the_generative_language_api_with_the_key_in_a_header(
    gateway, fakes, api, user, token, settings, rsa_key
):
    case = setup("palm", user, settings, fakes, rsa_key)
    fake = case.fake
    create(api, body_for("chat", {"name": "chat", "external_model": case.chat}))
    response = gateway.post("/serving-endpoints/chat/invocations", CHAT | {"max_tokens": 8}, token)
    assert response.status_code == 200, response.text
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.query == {}  # never ?key=
    assert sent.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 8},
    }

    # Completions: the prompt is the one user turn.
    create(api, body_for("complete", {"name": "c", "external_model": case.chat | {"task": "llm/v1/completions"}}))
    response = gateway.post("/serving-endpoints/complete/invocations", {"prompt": ["Once"]}, token)
    assert response.json()["choices"][0]["text"] == "Hello from Gemini"
    assert response.json()["object"] == "text_completion"

    # One text: embedContent; several: batchEmbedContents.
    create(api, body_for("emb", {"name": "emb", "external_model": case.embeddings}))
    one = gateway.post("/serving-endpoints/emb/invocations", {"input": "a"}, token)
    assert one.status_code == 200, one.text
    assert fake.requests[-1].path == "/v1beta/models/text-embedding-004:embedContent"
    assert fake.requests[-1].body == {"content": {"parts": [{"text": "a"}]}}
    many = gateway.post("/serving-endpoints/emb/invocations", {"input": ["a", "b"]}, token)
    assert many.status_code == 200, many.text
    assert fake.requests[-1].path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert [d["index"] for d in many.json()["data"]] == [0, 1]

    # Google answers a wrong key with 400 API_KEY_INVALID: still a refused key (502), not a bad request.
    fake.key = "rotated"
    refused = gateway.post("/serving-endpoints/chat/invocations", CHAT, token)
    assert refused.status_code == 502 and "refused the credentials" in refused.json()["message"]
    assert KEY not in refused.text


def test_generate_content_translation_rules():
    """Pure rules of the Google shape not covered over HTTP above."""
    from endpoints_app.gateway.providers import gemini

    blocked = gemini.parse_generate_content(
        task="llm/v1/chat",
        model="gemini-2.0-flash",
        data={"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}},
    )
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert blocked["choices"][0]["message"]["content"] == ""
    thinking = gemini.parse_generate_content(
        task="llm/v1/chat",
        model="gemini-2.5-pro",
        data={
            "candidates": [
                {
                    "content": {"parts": [{"text": "let me think", "thought": True}, {"text": "42"}]},
                    "finishReason": "MAX_TOKENS",
                }
            ],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1, "thoughtsTokenCount": 30},
        },
    )
    assert thinking["choices"][0]["message"]["content"] == "42"
    assert thinking["choices"][0]["finish_reason"] == "length"
    assert thinking["usage"] == {"prompt_tokens": 4, "completion_tokens": 31, "total_tokens": 35}
    key_refused = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}
    assert gemini.error_status(400, key_refused) == 401
    assert gemini.error_status(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}) == 400
