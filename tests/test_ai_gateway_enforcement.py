# ruff: noqa: F811  (the gateway and fakes fixtures are imported from test_external_models)
"""AI-gateway settings at query time: rate limits (also across two web processes), guardrails on
the way in and out, fallbacks between served entities, and usage tracking.

Queries go over real HTTP to the gateway (uvicorn) and on to fake OpenAI servers on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import Group

from endpoints_app.gateway.usage import recorder
from endpoints_app.models import EndpointPermission, PermissionLevel, Role, UsageRecord, UserProfile
from endpoints_app.services.tokens import create_token
from tests.providers import OpenAIServer
from tests.stack import database_url, free_port
from tests.test_external_models import CHAT, KEY, body_for, create, external, store_secret

pytestmark = pytest.mark.django_db(transaction=True)
# The gateway fixture (uvicorn in this process) and the fake providers' fixture.
from tests.test_external_models import fakes, gateway  # noqa: E402,F401


def openai_entity(fake: OpenAIServer, reference: str, name: str) -> dict:
    return {
        "name": name,
        "external_model": external(
            "openai", "openai_config", {"openai_api_base": f"{fake.url}/v1", "openai_api_key": reference}
        ),
    }


def llm_endpoint(
    api, user, fakes, *, ai_gateway: dict, entities: int = 1, routes=None, servers=None
) -> list[OpenAIServer]:  # type: ignore[no-untyped-def]
    if servers is None:
        servers = [OpenAIServer(KEY) for _ in range(entities)]
        fakes.extend(servers)
    reference = store_secret(user, "llm-keys", "openai", KEY)
    body = body_for("llm", *[openai_entity(f, reference, f"gpt-{i}") for i, f in enumerate(servers)], routes=routes)
    body["ai_gateway"] = ai_gateway
    create(api, body)
    return servers


def querier(django_user_model, name: str, groups: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    """A user with CAN_QUERY on `llm` (and in ``groups``); their token."""
    from endpoints_app.models import Endpoint

    person = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=person, role=Role.NONE)
    EndpointPermission.objects.create(
        endpoint=Endpoint.objects.get(name="llm"), user=person, level=PermissionLevel.CAN_QUERY
    )
    for group in groups:
        person.groups.add(Group.objects.get_or_create(name=group)[0])
    return create_token(user=person)[1]


def limit(**kwargs) -> dict:  # type: ignore[no-untyped-def]
    return {"renewal_period": "minute", **kwargs}


# --- rate limits ------------------------------------------------------------------------------------


def test_calls_per_user_are_limited_with_429_and_retry_after(gateway, fakes, api, user, django_user_model):
    llm_endpoint(api, user, fakes, ai_gateway={"rate_limits": [limit(calls=3, key="user")]})
    bob, carol = querier(django_user_model, "bob"), querier(django_user_model, "carol")
    statuses = [gateway.post("/serving-endpoints/llm/invocations", CHAT, bob) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    refused = statuses[-1]
    assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "3 calls per minute for each user" in refused.json()["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Each user has their own budget.
    assert gateway.post("/serving-endpoints/llm/invocations", CHAT, carol).status_code == 200


def test_a_group_limit_is_shared_by_its_members_only(gateway, fakes, api, user, django_user_model):
    llm_endpoint(api, user, fakes, ai_gateway={"rate_limits": [limit(calls=2, key="user_group", principal="interns")]})
    ann, ben = querier(django_user_model, "ann", ("interns",)), querier(django_user_model, "ben", ("interns",))
    outsider = querier(django_user_model, "olga")
    codes = [gateway.post("/serving-endpoints/llm/invocations", CHAT, t).status_code for t in (ann, ben, ann)]
    assert codes == [200, 200, 429]
    assert all(gateway.post("/serving-endpoints/llm/invocations", CHAT, outsider).status_code == 200 for _ in range(3))


def test_tokens_per_minute_stop_a_caller_once_spent(gateway, fakes, api, user, django_user_model):
    # Each answer of the fake costs 17 tokens: the budget of 30 admits two, then refuses.
    llm_endpoint(api, user, fakes, ai_gateway={"rate_limits": [limit(tokens=30, key="user")]})
    dan = querier(django_user_model, "dan")
    codes = []
    for _ in range(3):
        codes.append(gateway.post("/serving-endpoints/llm/invocations", CHAT, dan).status_code)
        time.sleep(0.2)  # the tokens are added just after each answer
    assert codes == [200, 200, 429]


@pytest.fixture
def two_web_processes(transactional_db, tmp_path, fakes):  # type: ignore[no-untyped-def]
    """Two real web processes (uvicorn, the production ASGI app) on the test database, and the one
    fake provider their egress policy allows (``urls, provider``)."""
    from django.db import connection

    provider = OpenAIServer(KEY)
    fakes.append(provider)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MODELFLEET_EGRESS_ALLOW": f"127.0.0.1:{provider.port}",
    }
    processes, urls = [], []
    for index in range(2):
        port = free_port()
        log = open(tmp_path / f"web-{index}.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "dashboard.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    for url in urls:
        while True:
            try:
                requests.get(url + "/.well-known/databricks-config", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, (tmp_path / "web-0.log").read_text()
                time.sleep(0.2)
    yield urls, provider
    for process in processes:
        process.terminate()
        process.wait(20)


def test_a_limit_holds_across_two_web_processes(two_web_processes, fakes, api, user, django_user_model):
    urls, provider = two_web_processes
    llm_endpoint(api, user, fakes, ai_gateway={"rate_limits": [limit(calls=6)]}, servers=[provider])
    token = querier(django_user_model, "eve")
    codes = []
    for i in range(10):  # alternate between the two processes
        url = urls[i % 2]
        response = requests.post(
            f"{url}/serving-endpoints/llm/invocations",
            json=CHAT,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        codes.append(response.status_code)
    assert codes.count(200) == 6 and codes.count(429) == 4, codes


# --- guardrails ---------------------------------------------------------------------------------------


def test_input_keywords_and_pii_are_blocked_before_the_provider_sees_them(gateway, fakes, api, user, token):
    rails = {"input": {"invalid_keywords": ["Project Falcon"], "pii": {"behavior": "BLOCK"}}}
    (fake,) = llm_endpoint(api, user, fakes, ai_gateway={"guardrails": rails})
    for text, needle in (("what is project falcon?", "project falcon"), ("mail a@b.io", "EMAIL_ADDRESS")):
        response = gateway.post(
            "/serving-endpoints/llm/invocations", {"messages": [{"role": "user", "content": text}]}, token
        )
        assert response.status_code == 400 and needle in response.json()["message"], response.text
        assert "a@b.io" not in response.text
    assert fake.requests == []  # nothing reached the provider


def test_input_pii_is_masked_before_it_is_sent(gateway, fakes, api, user, token):
    (fake,) = llm_endpoint(api, user, fakes, ai_gateway={"guardrails": {"input": {"pii": {"behavior": "MASK"}}}})
    text = "my card is 4111 1111 1111 1111 and my SSN 123-45-6789"
    response = gateway.post(
        "/serving-endpoints/llm/invocations", {"messages": [{"role": "user", "content": text}]}, token
    )
    assert response.status_code == 200
    assert fake.requests[-1].body["messages"][0]["content"] == "my card is <CREDIT_CARD> and my SSN <US_SSN>"


def test_output_is_masked_or_blocked_on_the_way_back(gateway, fakes, api, user, token):
    (fake,) = llm_endpoint(api, user, fakes, ai_gateway={"guardrails": {"output": {"pii": {"behavior": "MASK"}}}})
    fake.reply = "Write to jane@example.com"
    response = gateway.post("/serving-endpoints/llm/invocations", CHAT, token)
    assert response.json()["choices"][0]["message"]["content"] == "Write to <EMAIL_ADDRESS>"
    streamed = gateway.post("/serving-endpoints/llm/invocations", CHAT | {"stream": True}, token, stream=True)
    text = b"".join(streamed.iter_content(None)).decode()
    assert "jane@example.com" not in text and "data: [DONE]" in text


def test_output_keywords_block_the_answer(gateway, fakes, api, user, token):
    (fake,) = llm_endpoint(api, user, fakes, ai_gateway={"guardrails": {"output": {"invalid_keywords": ["hello"]}}})
    response = gateway.post("/serving-endpoints/llm/invocations", CHAT, token)
    assert response.status_code == 400 and "blocked keyword" in response.json()["message"]


# --- fallbacks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fallback_moves_to_the_next_entity_on_429_and_5xx(gateway, fakes, api, user, token, status):
    first, second = llm_endpoint(
        api,
        user,
        fakes,
        ai_gateway={"fallback_config": {"enabled": True}},
        entities=2,
        routes=[("gpt-0", 100), ("gpt-1", 0)],
    )
    first.fail_next(status, "try later")
    response = gateway.post("/serving-endpoints/llm/invocations", CHAT, token)
    assert response.status_code == 200 and response.headers["served-model-name"] == "gpt-1"
    assert len(first.requests) == 1 and len(second.requests) == 1


def test_without_fallback_or_on_a_400_the_error_is_answered(gateway, fakes, api, user, token):
    first, second = llm_endpoint(
        api,
        user,
        fakes,
        ai_gateway={"fallback_config": {"enabled": True}},
        entities=2,
        routes=[("gpt-0", 100), ("gpt-1", 0)],
    )
    first.fail_next(400, "bad request")
    assert gateway.post("/serving-endpoints/llm/invocations", CHAT, token).status_code == 400
    assert second.requests == []
    first.fail_next(500, "down")
    second.fail_next(503, "also down")
    last = gateway.post("/serving-endpoints/llm/invocations", CHAT, token)
    assert last.status_code == 503 and "also down" in last.json()["message"]  # the last error


# --- usage ------------------------------------------------------------------------------------------


def test_usage_tracking_counts_what_was_sent_per_user(gateway, fakes, api, user, django_user_model):
    llm_endpoint(api, user, fakes, ai_gateway={"usage_tracking_config": {"enabled": True}})
    fay, gus = querier(django_user_model, "fay"), querier(django_user_model, "gus")
    for token, times in ((fay, 3), (gus, 1)):
        for _ in range(times):
            assert gateway.post("/serving-endpoints/llm/invocations", CHAT, token).status_code == 200
    recorder.flush()
    rows = {r.user_name: (r.requests, r.input_tokens, r.output_tokens) for r in UsageRecord.objects.all()}
    assert rows == {"fay": (3, 36, 15), "gus": (1, 12, 5)}  # the fake answers 12 prompt + 5 completion tokens
    body = api.get("/api/2.0/modelfleet/serving-endpoints/llm/usage").json()
    assert body["totals"] == {"requests": 4, "input_tokens": 48, "output_tokens": 20}
