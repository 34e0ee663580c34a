"""Guardrails (keywords, PII block/mask) and rate-limit counters, below the gateway.

The gateway tests drive both through real queries; these pin the rules themselves, and that the
Redis counters hold when several processes take from the same budget at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os

import pytest
from django.conf import settings

from endpoints_app.gateway import guardrails, ratelimit
from endpoints_app.gateway.guardrails import Blocked, Guardrail


def chat(text: str) -> dict:
    return {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("mail me at jane.doe+x@example.co.uk today", "EMAIL_ADDRESS"),
        ("card 4111 1111 1111 1111 exp 12/29", "CREDIT_CARD"),
        ("ssn 123-45-6789", "US_SSN"),
        ("call +1 415-555-0132 now", "PHONE_NUMBER"),
        ("server at 10.20.30.40", "IP_ADDRESS"),
        ("pay to DE89 3704 0044 0532 0130 00", "IBAN_CODE"),
    ],
)
def test_it_finds_and_masks_personal_data(text, entity):
    assert [e for _, _, e in guardrails.find_pii(text)] == [entity]
    assert f"<{entity}>" in guardrails.mask_pii(text)


@pytest.mark.parametrize("text", ["order 4111 1111 1111 1112", "version 1.2.3.4000", "999.1.1.1", "call me maybe"])
def test_it_leaves_look_alikes_alone(text):
    assert guardrails.find_pii(text) == []


def test_masking_replaces_text_in_chat_messages_in_place():
    body = chat("I am bob@example.com and my SSN is 123-45-6789")
    guardrails.apply(Guardrail.from_config({"pii": {"behavior": "MASK"}}), body, direction="input")
    assert body["messages"][1]["content"] == "I am <EMAIL_ADDRESS> and my SSN is <US_SSN>"
    assert body["messages"][0]["content"] == "be brief"


def test_blocking_names_what_was_found_but_never_the_text():
    with pytest.raises(Blocked) as caught:
        guardrails.apply(Guardrail.from_config({"pii": {"behavior": "BLOCK"}}), chat("bob@example.com"), direction="input")
    assert "EMAIL_ADDRESS" in str(caught.value) and "bob@example.com" not in str(caught.value)


def test_invalid_keywords_block_whole_words_case_insensitively():
    rail = Guardrail.from_config({"invalid_keywords": ["Project Falcon", "secret"]})
    with pytest.raises(Blocked, match="project falcon"):
        guardrails.apply(rail, chat("tell me about project falcon"), direction="input")
    guardrails.apply(rail, chat("secretary of state"), direction="input")  # not the word "secret"


def test_output_guardrails_read_completions_choices_and_stream_deltas():
    rail = Guardrail.from_config({"pii": {"behavior": "MASK"}})
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "write to a@b.io"}}]}
    guardrails.apply(rail, response, direction="output")
    assert response["choices"][0]["message"]["content"] == "write to <EMAIL_ADDRESS>"
    chunk = {"choices": [{"index": 0, "delta": {"content": "a@b.io"}}]}
    guardrails.apply(rail, chunk, direction="output")
    assert chunk["choices"][0]["delta"]["content"] == "<EMAIL_ADDRESS>"
    completion = {"choices": [{"index": 0, "text": "ip 8.8.8.8"}]}
    guardrails.apply(rail, completion, direction="output")
    assert completion["choices"][0]["text"] == "ip <IP_ADDRESS>"


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"input": {"safety": True}}, "safety"),
        ({"input": {"valid_topics": ["finance"]}}, "valid_topics"),
        ({"input": {"pii": {"behavior": "SHRED"}}}, "pii.behavior"),
        ({"output": {"invalid_keywords": "x"}}, "invalid_keywords"),
        ({"sideways": {}}, "unknown fields"),
    ],
)
def test_guardrail_settings_that_cannot_be_honoured_are_refused(config, needle):
    with pytest.raises(ValueError, match=needle):
        guardrails.validate(config)


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ([{"calls": 5}], "renewal_period"),
        ([{"calls": 5, "renewal_period": "hour"}], "renewal_period"),
        ([{"renewal_period": "minute"}], "calls or tokens"),
        ([{"calls": -1, "renewal_period": "minute"}], "calls"),
        ([{"calls": 1, "renewal_period": "minute", "key": "service_principal"}], "service principals"),
        ([{"calls": 1, "renewal_period": "minute", "principal": "bob"}], "principal"),
    ],
)
def test_bad_rate_limits_are_refused_naming_the_field(limits, needle):
    with pytest.raises(ValueError, match=needle):
        ratelimit.validate(limits)


def test_counters_follow_the_limit_key():
    limits = ratelimit.parse(
        ratelimit.validate(
            [
                {"calls": 100, "renewal_period": "minute"},
                {"calls": 10, "renewal_period": "minute", "key": "user"},
                {"calls": 5, "renewal_period": "minute", "key": "user", "principal": "bob"},
                {"tokens": 1000, "renewal_period": "minute", "key": "user_group", "principal": "ds"},
                {"calls": 7, "renewal_period": "minute", "key": "user_group"},
            ]
        )
    )
    scopes = [c.scope for c in ratelimit.counters_for(limits, user_name="alice", groups=frozenset({"ds", "ops"}))]
    assert scopes == ["endpoint", "user:alice", "group:ds", "group:ds", "group:ops"]
    scopes = [c.scope for c in ratelimit.counters_for(limits, user_name="bob", groups=frozenset())]
    assert scopes == ["endpoint", "user:bob", "user:bob"]


def _limit(calls=None, tokens=None, key="endpoint"):  # type: ignore[no-untyped-def]
    return ratelimit.Limit(key=key, principal=None, calls=calls, tokens=tokens)


def test_calls_beyond_the_limit_are_refused_with_the_seconds_left_in_the_window():
    limiter = ratelimit.RateLimiter(settings.REDIS_URL)
    counters = [ratelimit.Counter("endpoint", _limit(calls=3))]
    endpoint = f"rl-{os.getpid()}-calls"
    now = 1_000_000 * 60 + 15.0  # 15 s into a window

    async def run() -> list[object]:
        results: list[object] = []
        for _ in range(5):
            try:
                await limiter.acquire(endpoint, counters, now=now)
                results.append("ok")
            except ratelimit.RateLimited as exc:
                results.append(exc.retry_after)
        await limiter.acquire(endpoint, counters, now=now + 60)  # the next window starts afresh
        return results

    results = asyncio.run(run())
    assert results[:3] == ["ok", "ok", "ok"]
    assert all(isinstance(r, int) and 1 <= r <= 60 for r in results[3:])


def test_token_limits_block_once_the_window_budget_is_spent():
    limiter = ratelimit.RateLimiter(settings.REDIS_URL)
    counters = [ratelimit.Counter("user:alice", _limit(tokens=100, key="user"))]
    endpoint = f"rl-{os.getpid()}-tokens"

    async def run() -> None:
        await limiter.acquire(endpoint, counters)
        await limiter.add_tokens(endpoint, counters, 60)
        await limiter.acquire(endpoint, counters)
        await limiter.add_tokens(endpoint, counters, 60)
        with pytest.raises(ratelimit.RateLimited, match="100 tokens per minute for each user"):
            await limiter.acquire(endpoint, counters)

    asyncio.run(run())


def _take(args: tuple[str, str, int]) -> int:
    url, endpoint, attempts = args
    limiter = ratelimit.RateLimiter(url)
    counters = [ratelimit.Counter("endpoint", _limit(calls=50))]

    async def run() -> int:
        taken = 0
        for _ in range(attempts):
            try:
                await limiter.acquire(endpoint, counters)
                taken += 1
            except ratelimit.RateLimited:
                pass
        return taken

    return asyncio.run(run())


def test_several_processes_share_one_budget():
    """Four processes race for 50 of their 160 calls: exactly 50 are granted, whatever the interleaving."""
    endpoint = f"rl-{os.getpid()}-shared"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        taken = pool.map(_take, [(settings.REDIS_URL, endpoint, 40)] * 4)
    assert sum(taken) == 50
