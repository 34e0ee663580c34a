# ruff: noqa: F811  (the fakes fixture is imported from test_external_models)
"""Hostile input costs little: linear-time PII detection off the event loop, body size limits
before anything reads the body, capped concurrency and wake-up waiters, name lengths, bounded
caches and nested JSON.

The HTTP tests drive the production ASGI stack (``http_limits.limit_bodies`` around the gateway
and Django, as ``dashboard.asgi`` builds it) in uvicorn on loopback; external models are fake
OpenAI servers on loopback, and the scale-from-zero test uses a real deployment row that has no
replica yet (the runtime agent is not running, so the wake-up is held as long as the test needs).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import requests
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from endpoints_app.gateway import app as gateway_app
from endpoints_app.gateway import guardrails, jsonbody
from endpoints_app.gateway.lru import LRU
from endpoints_app.models import Endpoint
from tests import pii_reference
from tests.conftest import endpoint_body, fuzz_examples
from tests.providers import allow_egress
from tests.test_ai_gateway_enforcement import llm_endpoint
from tests.test_api_endpoints import mark_ready
from tests.test_external_models import (
    CHAT,
    KEY,
    Gateway,
    body_for,
    create,
    external,
    fakes,  # noqa: F401  (a fixture)
    serve_in_thread,
    store_secret,
)

MB = 1024 * 1024

# Shapes that made (or could make) a backtracking pattern re-read the text from every start, or that
# are full of candidates for several patterns at once.
ADVERSARIAL = {
    "a.a.a.": "a." * (MB // 2),
    "digits": "1" * MB,
    "digit-dash": "1-" * (MB // 2),
    "digit-space": "1 " * (MB // 2),
    "at-signs": "@" * MB,
    "a@a@": "a@" * (MB // 2),
    ".a@": ".a@" * (MB // 3),
    "x@a.a.a.": "x@" + "a." * (MB // 2),
    "dots": "." * MB,
    "dashes": "-" * MB,
    "IBAN-ish": "AB12 " * (MB // 5),
    "phone-ish": "(12)" * (MB // 4),
    "parens": "(" * MB,
    "dotted-digits": ".1.. -1." * (MB // 8),
    "chained-addresses": "a@b.com." * (MB // 8),
    "ssn-ish": "000-00-0000 " * (MB // 12),
    "bad-addresses": "999.1.1.1 " * (MB // 10),
    "arabic-digits": "\u0661-" * (MB // 2),
}


# --- PII detection: linear, whole text, same findings --------------------------------------------


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_each_pattern_reads_a_megabyte_of_adversarial_text_in_linear_time(shape):
    # The quadratic e-mail pattern took 2.2 s on 32 KB of "a.a."; 1 MB would take about an hour.
    text = ADVERSARIAL[shape]
    classes = guardrails._classes(text)
    for entity, scan in zip(guardrails.PII_ENTITIES, guardrails.PII_SCANS, strict=True):
        started = time.process_time()
        scan(text, classes)
        assert time.process_time() - started < 0.5, f"{entity} on {shape}"
    rail = guardrails.Guardrail.from_config({"pii": {"behavior": "BLOCK"}})
    started = time.process_time()
    rail.check(text)
    assert time.process_time() - started < 1.0, shape  # benchmarks/bench_hostile_input.py: < 0.1 s on a quiet machine


def test_a_text_full_of_findings_is_checked_in_linear_time():
    # 131 072 addresses: testing each finding against every earlier one would be quadratic.
    text = "1.1.1.1 " * (MB // 8)
    started = time.process_time()
    found = guardrails.find_pii(text)
    assert time.process_time() - started < 3.0
    assert len(found) == MB // 8 and {entity for _, _, entity in found} == {"IP_ADDRESS"}


def test_personal_data_after_a_megabyte_of_padding_is_still_found():
    rail = guardrails.Guardrail.from_config({"pii": {"behavior": "MASK"}})
    reason, masked = rail.check("a." * (MB // 2) + " write to jane@example.com")
    assert reason is None and masked.endswith(" write to <EMAIL_ADDRESS>")
    blocker = guardrails.Guardrail.from_config({"pii": {"behavior": "BLOCK"}})
    assert "EMAIL_ADDRESS" in blocker.check("1-" * (MB // 2) + " jane@example.com")[0]
    assert "CREDIT_CARD" in blocker.check("1" * MB + " 4111 1111 1111 1111")[0]


def test_the_guardrail_workers_reuse_the_memory_their_temporaries_free():
    # A check of 1 MB makes dozens of megabyte-sized temporaries; mapped afresh each time, their
    # page faults were half its cost. In a worker, 16 rounds of six 4 MiB arrays fault in the first
    # round's pages (6,144), not 16 times that.
    faults = guardrails._workers().submit(pii_reference.page_faults_of_temporaries).result(timeout=60)
    assert faults < 3 * 6 * 1024
    # Where freed memory goes back to the kernel (glibc's default, a plain process), each array faults anew.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as plain:
        assert plain.submit(pii_reference.page_faults_of_temporaries).result(timeout=60) > 5 * 6 * 1024


EMAIL_ALPHABET = "ab1Z_.+-@ é\n"


EMAIL_PIECES = ["a@b.com.", "x@y.co", "-x@c.de", "@", ".", "-", "+", "a", "1", "bc", "com", "é", " ", "@."]


@hypothesis_settings(max_examples=fuzz_examples(3000), deadline=None)
@given(
    st.text(alphabet=EMAIL_ALPHABET, max_size=40) | st.lists(st.sampled_from(EMAIL_PIECES), max_size=30).map("".join)
)
def test_the_linear_email_finder_matches_the_reference_pattern_exactly(text):
    reference = [m.span() for m in re.finditer(guardrails.EMAIL_REGEX, text)]
    starts, ends = guardrails._scan_emails(text, guardrails._classes(text))
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == reference


DIGIT_GROUPS = st.lists(
    st.sampled_from(["4111 1111 1111 1111", "123-45-6789", "000-12-3456", "666-", "900-", "-00-", "-0000", "1-", "1 "])
    | st.text(alphabet="019 -a_.\u0661\u0669", max_size=4),
    max_size=40,
).map("".join)


def _luhn(digits: str) -> bool:
    total = sum(int(c) if i % 2 == 0 else sum(divmod(2 * int(c), 10)) for i, c in enumerate(reversed(digits)))
    return total % 10 == 0


@hypothesis_settings(max_examples=fuzz_examples(3000), deadline=None)
@given(DIGIT_GROUPS | st.text(alphabet="0129 -a\u0661", max_size=120))
def test_the_card_and_ssn_scanners_match_the_reference_patterns_exactly(text):
    # Read without re (numbered digits, a fixed shape): same matches as finditer, a card only if Luhn-valid.
    cards = [m.span() for m in re.finditer(guardrails.CARD_REGEX, text) if _luhn(re.sub(r"\D", "", m.group()))]
    ssns = [m.span() for m in re.finditer(guardrails.SSN_REGEX, text)]
    classes = guardrails._classes(text)
    for scan, reference in ((guardrails._scan_cards, cards), (guardrails._scan_ssns, ssns)):
        starts, ends = scan(text, classes)
        assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == reference


@pytest.mark.parametrize("pattern", guardrails.BOUNDED_PATTERNS, ids=lambda pattern: pattern.entity)
def test_each_rewritten_pattern_reads_no_further_than_the_scan_allows(pattern):
    # A chunk is scanned up to REACH past the last match start it keeps: nothing a match reads may lie
    # further (its longest match, and up to two characters of look-ahead after it).
    from re import _parser  # the widths re itself computes

    for source in (pattern.original, pattern.regex.pattern):
        assert _parser.parse(source).getwidth()[1] + 2 < guardrails.REACH


@hypothesis_settings(max_examples=fuzz_examples(1500), deadline=None)
@given(
    st.sampled_from(guardrails.BOUNDED_PATTERNS),
    st.text(alphabet="0129 -.()+AZa_\u0661", max_size=60),
    st.integers(0, 5),
)
def test_each_rewritten_pattern_matches_as_the_original_from_every_position(pattern, text, pos):
    original = re.compile(pattern.original)
    assert [m.span() for m in pattern.regex.finditer(text, pos)] == [m.span() for m in original.finditer(text, pos)]


PIECES = [
    "john.doe@example.com",
    "x@y.co",
    "4111 1111 1111 1111",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "10.0.0.1",
    "+1 415-555-0100",
    "(415) 555 0100",
    "hello",
    " ",
    ".",
    "-",
    "@",
    "1",
    "\n",
]


@hypothesis_settings(max_examples=fuzz_examples(2000), deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_findings_and_masks_are_unchanged_for_ordinary_text(pieces):
    text = "".join(pieces)
    assert guardrails.find_pii(text) == pii_reference.find_pii(text)
    assert guardrails.mask_pii(text) == pii_reference.mask_pii(text)


# --- bounded caches and JSON -----------------------------------------------------------------------


def test_the_lru_keeps_at_most_its_size_and_drops_the_least_recently_used():
    cache: LRU[str, int] = LRU(3)
    for key in "abc":
        cache[key] = ord(key)
    assert cache.get("a") == ord("a")  # a is now the most recently used
    cache["d"] = 4
    assert len(cache) == 3 and "b" not in cache and "a" in cache
    for index in range(1000):
        cache[f"flood-{index}"] = index
    assert len(cache) == 3


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 900 + b"1" + b"}" * 900, b"[" * 65 + b"]" * 65],
    ids=["100k-deep", "900-deep", "65-deep"],
)
def test_json_nested_past_the_limit_is_refused_with_a_value_error(body):
    with pytest.raises(jsonbody.TooDeep):
        jsonbody.loads(body)


def test_wide_json_within_the_limit_parses():
    assert jsonbody.loads(b"[" * 64 + b"]" * 64) is not None
    assert len(jsonbody.loads(json.dumps([[1]] * 10_000))) == 10_000


# --- the ASGI stack in uvicorn ---------------------------------------------------------------------


@pytest.fixture
def web(transactional_db) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    """The production ASGI stack (body limits around the gateway and Django) in uvicorn on a thread."""
    from django.core.asgi import get_asgi_application

    from endpoints_app.http_limits import limit_bodies

    with serve_in_thread(limit_bodies(gateway_app.mount(get_asgi_application()))) as served:
        yield served


def chunked(*chunks: bytes) -> bytes:
    """Chunks in HTTP/1.1 chunked encoding, without the closing zero-size chunk."""
    return b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for chunk in chunks)


def raw_request(url: str, head: str, body: bytes = b"", *, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send the request line and headers in ``head``, then ``body`` (which may be only the start of
    what the headers announce), and read one answer. Sending no more than the server reads before
    it answers keeps the answer from being lost to a reset connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        header_block, rest = data.split(b"\r\n\r\n", 1)
        lines = header_block.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:length]


def test_a_dashboard_request_is_answered_while_a_big_guarded_query_is_checked(web, fakes, api, user, token):
    (fake,) = llm_endpoint(api, user, fakes, ai_gateway={"guardrails": {"input": {"pii": {"behavior": "BLOCK"}}}})
    # 8 MB of shapes that stress each pattern, with an address at the very end: seconds of checking.
    padding = "".join(text[: MB // 2] for text in ADVERSARIAL.values())
    big = {"messages": [{"role": "user", "content": padding + " jane@example.com"}]}
    with ThreadPoolExecutor(1) as pool:
        big_query = pool.submit(web.post, "/serving-endpoints/llm/invocations", big, token)
        latencies = []
        while not big_query.done():
            started = time.perf_counter()
            answer = requests.get(web.url + "/.well-known/databricks-config", timeout=30)
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 200
            time.sleep(0.05)
        refused = big_query.result()
    assert refused.status_code == 400 and "EMAIL_ADDRESS" in refused.json()["message"], refused.text
    assert fake.requests == []
    # The small requests kept being answered while the big one was read, parsed and checked.
    assert len(latencies) >= 5, latencies
    assert max(latencies) < 1.5, latencies  # checked on the loop, each would wait the whole check (seconds)


# --- body size limits -----------------------------------------------------------------------------


def test_an_oversized_api_body_is_refused_before_the_view_runs(web, token):
    body = json.dumps({"name": "big", "config": {"served_entities": []}, "pad": "x" * MB}).encode()
    head = (
        "POST /api/2.0/serving-endpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    # Only the headers go out: the 413 comes without the body being read.
    status, headers, answer = raw_request(web.url, head)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(answer) == {
        "error_code": "RESOURCE_LIMIT_EXCEEDED",
        "message": "The request body is larger than 1 MiB, the limit for this API",
    }
    assert not Endpoint.objects.exists()


def test_a_chunked_body_past_the_limit_is_refused_as_it_arrives(web, token):
    head = (
        "POST /api/2.0/serving-endpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    )
    # No Content-Length: 1 MiB and a little more arrives, and the rest would follow.
    body = chunked(b'{"name": "big", "pad": "', *[b"x" * 64 * 1024] * 17)
    status, _headers, answer = raw_request(web.url, head, body)
    assert status == 413, answer
    assert json.loads(answer)["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    assert not Endpoint.objects.exists()


def test_query_bodies_have_their_own_limit_with_and_without_content_length(web, token, settings):
    settings.MAX_QUERY_BYTES = 64 * 1024
    head = (
        "POST /serving-endpoints/llm/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    )
    status, _headers, answer = raw_request(web.url, head + f"Content-Length: {65 * 1024}\r\n")
    assert status == 413 and json.loads(answer) == {
        "error_code": "RESOURCE_LIMIT_EXCEEDED",
        "message": "The request body is larger than 64 KiB, the limit for a query",
    }
    body = chunked(b'{"model": "llm", "pad": "', *[b"x" * 8192] * 9)  # counted once authenticated
    status, _headers, answer = raw_request(web.url, head + "Transfer-Encoding: chunked\r\n", body)
    assert status == 413 and json.loads(answer)["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    # Under the limit, the same route is served as before (here: no such endpoint).
    assert web.post("/serving-endpoints/llm/invocations", CHAT, token).status_code == 404


def test_a_query_is_authenticated_before_its_body_is_read(web):
    # Headers and the first chunk only, no token: the 401 comes while the body is still unsent.
    head = (
        "POST /serving-endpoints/llm/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    )
    status, _headers, answer = raw_request(web.url, head, b'4\r\n{"a"\r\n', timeout=5)
    assert status == 401 and json.loads(answer)["error_code"] == "UNAUTHENTICATED"


def test_a_caller_without_can_query_is_refused_before_the_body_is_read(web, fakes, api, user, django_user_model):
    # A signed-in user with no right on the endpoint must not make the gateway hold a 16 MiB body.
    from endpoints_app.models import Role, UserProfile
    from endpoints_app.services.tokens import create_token

    llm_endpoint(api, user, fakes, ai_gateway={})
    outsider = django_user_model.objects.create_user("olga", "olga@example.com", "pw-olga-123456")
    UserProfile.objects.create(user=outsider, role=Role.NONE)
    head = (
        "POST /serving-endpoints/llm/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {create_token(user=outsider, comment='t')[1]}\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    )
    status, _headers, answer = raw_request(web.url, head, b'4\r\n{"a"\r\n', timeout=5)
    assert status in (403, 404) and json.loads(answer)["error_code"] in ("PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST")


def test_a_model_upload_may_be_larger_than_the_api_limit(web, token):
    archive = b"\x1f\x8b" + b"\0" * (2 * MB)  # past 1 MiB; not a valid archive, so the view says so
    response = requests.post(
        web.url + "/api/2.0/modelfleet/registered-models/upload?name=big",
        data=archive,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert "gzipped tar" in response.json()["message"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_only_a_post_to_the_upload_path_gets_the_upload_limit(web, method):
    # Another method would be a 405, but Django spools the whole body first: it gets the API's 1 MiB.
    head = (
        f"{method} /api/2.0/modelfleet/registered-models/upload?name=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/gzip\r\nContent-Length: {500 * MB}\r\n"
    )
    status, _headers, answer = raw_request(web.url, head, timeout=5)
    assert status == 413 and json.loads(answer)["error_code"] == "RESOURCE_LIMIT_EXCEEDED"


@pytest.mark.parametrize("who", ["no-token", "bad-token", "viewer"])
def test_a_model_upload_is_refused_before_its_body_is_read(web, django_user_model, who):
    # Only the headers and a first chunk are sent: the refusal comes while the body is still unsent,
    # so nobody without the right to register models makes the server spool up to 2 GiB.
    from endpoints_app.models import Role, UserProfile
    from endpoints_app.services.tokens import create_token

    auth = ""
    if who == "bad-token":
        auth = "Authorization: Bearer dapi-not-a-token\r\n"
    elif who == "viewer":
        viewer = django_user_model.objects.create_user("victor", "victor@example.com", "pw-victor-123")
        UserProfile.objects.create(user=viewer, role=Role.VIEWER)
        auth = f"Authorization: Bearer {create_token(user=viewer, comment='t')[1]}\r\n"
    head = (
        "POST /api/2.0/modelfleet/registered-models/upload?name=x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{auth}Transfer-Encoding: chunked\r\nContent-Type: application/gzip\r\n"
    )
    status, _headers, answer = raw_request(web.url, head, b"2\r\n\x1f\x8b\r\n", timeout=5)
    expected = {"no-token": 401, "bad-token": 401, "viewer": 403}[who]
    assert status == expected, answer
    assert json.loads(answer)["error_code"] == ("PERMISSION_DENIED" if who == "viewer" else "UNAUTHENTICATED")


@pytest.mark.parametrize(
    "lengths", [[b"12abc"], [b"10", b"99999999"], [b"9" * 30]], ids=["not-a-number", "conflicting", "huge"]
)
def test_a_malformed_content_length_is_refused_before_the_application_runs(transactional_db, lengths):
    # Straight through the ASGI app: an HTTP server may refuse these itself, another may not.
    from asgiref.testing import ApplicationCommunicator
    from django.core.asgi import get_asgi_application

    from endpoints_app.http_limits import limit_bodies

    async def post() -> tuple[int, dict]:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/2.0/serving-endpoints",
            "headers": [(b"content-length", value) for value in lengths],
            "query_string": b"",
        }
        comm = ApplicationCommunicator(limit_bodies(gateway_app.mount(get_asgi_application())), scope)
        start = await comm.receive_output(timeout=10)  # answered before any body was sent
        body = await comm.receive_output(timeout=10)
        return start["status"], json.loads(body["body"])

    status, error = asyncio.run(post())
    expected = 413 if lengths == [b"9" * 30] else 400
    assert status == expected and error["error_code"] in {"BAD_REQUEST", "RESOURCE_LIMIT_EXCEEDED"}


# --- concurrency and wake-up waiters ---------------------------------------------------------------


@pytest.fixture
def sleeping(api, registered_models, settings) -> str:
    """An endpoint whose only deployment is up but has no replica yet: a query waits for it."""
    settings.SCALE_FROM_ZERO_WAIT_SECONDS = 4.0
    create(api, endpoint_body("sleepy", (registered_models["iris"], "1")))
    mark_ready("sleepy")
    return "/serving-endpoints/sleepy/invocations"


def hold_one(web: Gateway, path: str, token: str) -> tuple[ThreadPoolExecutor, object]:
    """Start one query that waits for the wake-up; return once the gateway holds it."""
    pool = ThreadPoolExecutor(1)
    held = pool.submit(web.post, path, {"inputs": [[1, 2, 3, 4]]}, token)
    deadline = time.monotonic() + 10
    while web.app.gateway._wake_waiters == 0:
        assert time.monotonic() < deadline and not held.done(), held.result() if held.done() else "not held"
        time.sleep(0.02)
    return pool, held


def test_queries_past_the_in_flight_cap_get_429_with_retry_after(web, sleeping, token, settings):
    settings.GATEWAY_MAX_INFLIGHT = 1
    pool, held = hold_one(web, sleeping, token)
    with pool:
        refused = web.post("/serving-endpoints/other/invocations", CHAT, token)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert refused.headers["retry-after"] == "1"
        assert held.result().status_code == 503  # the wake-up never comes: the held query times out
    assert web.post("/serving-endpoints/other/invocations", CHAT, token).status_code == 404  # capacity is back


def test_queries_past_the_wake_waiter_cap_get_503_with_retry_after(web, sleeping, token, settings):
    settings.GATEWAY_MAX_WAKE_WAITERS = 1
    pool, held = hold_one(web, sleeping, token)
    with pool:
        started = time.monotonic()
        refused = web.post(sleeping, {"inputs": [[1, 2, 3, 4]]}, token)
        assert time.monotonic() - started < 2.0  # refused at once, not held until the wait ends
        assert refused.status_code == 503 and refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "waiting for wake-ups" in refused.json()["message"]
        assert refused.headers["retry-after"] == "5"
        held.result()
    assert web.app.gateway._wake_waiters == 0


# --- names and caches ------------------------------------------------------------------------------


def test_names_over_63_characters_are_refused_by_the_api(db, api, registered_models):
    for name in ("n" * 64, "iris\n"):
        response = api.post(
            "/api/2.0/serving-endpoints", endpoint_body(name, (registered_models["iris"], "1")), format="json"
        )
        assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE", name
    body = endpoint_body("ok", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["name"] = "e" * 64
    response = api.post("/api/2.0/serving-endpoints", body, format="json")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "longer than 63 characters" in response.json()["message"]
    assert (
        api.post(
            "/api/2.0/serving-endpoints", endpoint_body("n" * 63, (registered_models["iris"], "1")), format="json"
        ).status_code
        == 200
    )


def test_the_gateway_refuses_long_or_malformed_names_before_any_lookup(web, token):
    for path, body in (
        (f"/serving-endpoints/{'n' * 64}/invocations", CHAT),
        (f"/serving-endpoints/llm/served-models/{'m' * 64}/invocations", CHAT),
        ("/serving-endpoints/chat/completions", {**CHAT, "model": "m" * MB}),
        ("/serving-endpoints/chat/completions", {**CHAT, "model": "../llm"}),
    ):
        response = web.post(path, body, token)
        assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE", path
        assert len(response.content) < 500  # the name is not echoed back at length
    assert len(web.app.gateway._tables) == 0


def test_a_flood_of_unknown_names_and_tokens_keeps_the_caches_bounded(web, token):
    gateway = web.app.gateway
    gateway._tables.maxsize = 20  # the production bound is 2048; the flood here is small to be quick
    gateway._tokens.maxsize = 5
    with requests.Session() as session:
        for index in range(60):
            name = f"unknown-{index}-{random.randrange(10**9)}"
            answer = session.post(
                f"{web.url}/serving-endpoints/{name}/invocations",
                json=CHAT,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 404
        assert len(gateway._tables) == 20
        for index in range(12):  # made-up tokens (401, or 429 once failures are throttled)
            made_up = session.post(
                f"{web.url}/serving-endpoints/llm/invocations",
                json=CHAT,
                headers={"Authorization": f"Bearer dapi{index}"},
            )
            assert made_up.status_code in (401, 429)
        assert len(gateway._tokens) <= 5
        gateway._tokens.clear()
        huge = session.post(
            f"{web.url}/serving-endpoints/llm/invocations", json=CHAT, headers={"Authorization": "Bearer " + "t" * 8000}
        )
        assert huge.status_code in (401, 429) and len(gateway._tokens) == 0  # refused without a cache entry


# --- nested JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_in_a_query_is_a_400(web, fakes, api, user, token, depth):
    llm_endpoint(api, user, fakes, ai_gateway={"guardrails": {"input": {"pii": {"behavior": "MASK"}}}})
    nested = "[" * depth + "]" * depth
    for path, body in (
        ("/serving-endpoints/chat/completions", f'{{"model": "llm", "messages": {nested}}}'),
        ("/serving-endpoints/llm/invocations", f'{{"messages": {nested}}}'),
    ):
        response = requests.post(web.url + path, data=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 400, (path, response.text[:300])
        assert response.json()["error_code"] == "MALFORMED_REQUEST"
        assert "nests deeper than 64 levels" in response.json()["message"]


class NestedAnswerServer:
    """An OpenAI-style server on loopback whose every answer nests 100 000 levels deep."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        depth = 100_000
        answer = b'{"choices": ' + b"[" * depth + b"]" * depth + b"}"

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_provider_answer_nested_past_recursion_is_a_502_not_a_500(web, api, user, token, settings):
    nested = NestedAnswerServer()
    allow_egress(settings, nested)  # type: ignore[arg-type]  # it has the port the policy needs
    try:
        reference = store_secret(user, "llm-keys", "openai", KEY)
        entity = {
            "name": "gpt",
            "external_model": external(
                "openai", "openai_config", {"openai_api_base": f"{nested.url}/v1", "openai_api_key": reference}
            ),
        }
        create(api, body_for("llm", entity))
        response = web.post("/serving-endpoints/llm/invocations", CHAT, token)
        assert response.status_code == 502 and response.json()["error_code"] == "BAD_GATEWAY", response.text[:300]
    finally:
        nested.stop()


# --- keyword guardrails ----------------------------------------------------------------------------


def test_a_thousand_keywords_cost_little_more_than_ten():
    # As a plain alternation, each position of the text tried every keyword: 1 MB took 2.5 s.
    rng = random.Random(7)
    keywords = ["".join(rng.choice("bcdfgjkmpqvxz") for _ in range(8)) for _ in range(1000)]
    rail = guardrails.Guardrail.from_config({"invalid_keywords": keywords})
    text = "hello world " * (MB // 12)
    started = time.process_time()
    assert rail.check(text)[0] is None
    assert time.process_time() - started < 1.0
    assert "blocked keyword" in rail.check(text + keywords[500].upper())[0]


# Case pairs re's IGNORECASE treats specially (İ, ı, ſ, ß/ẞ, Kelvin sign, final sigma, µ/μ), word
# characters, non-word ones (ASCII and not) and a lone surrogate.
KEYWORD_ALPHABET = "abAB -ßẞİiıſs.ΣσςΜµμk\u212a_1—\ud800"


def reference_keyword_search(keywords, text):
    """What the guardrail did before (a regex alternation, longest first): the semantics to keep."""
    alternatives = "|".join(re.escape(k.strip()) for k in sorted(keywords, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE).search(text)


@hypothesis_settings(max_examples=fuzz_examples(3000), deadline=None)
@given(
    st.lists(st.text(alphabet=KEYWORD_ALPHABET, min_size=1, max_size=4).filter(str.strip), min_size=1, max_size=5),
    st.text(alphabet=KEYWORD_ALPHABET + "xyz", max_size=20),
)
def test_the_keyword_automaton_finds_what_the_regex_alternation_found(keywords, text):
    reference = reference_keyword_search(keywords, text)
    rail = guardrails.Guardrail.from_config({"invalid_keywords": keywords})
    assert rail._keywords.search(text) == (reference and reference.span())
    reason = rail.check(text)[0]
    assert reason == (reference and f"it contains the blocked keyword '{reference.group(0)}'")


def test_every_character_folds_as_re_ignorecase_compares_it():
    # The automaton compares folded characters where re compared by its own rules (simple lower case
    # plus the groups of re._casefix). Every code point is checked against each one either rule puts
    # with it, and folding must keep it a word character or not (the marks depend on that).
    import _sre
    from collections import defaultdict
    from re._casefix import _EXTRA_CASES

    everything = "".join(map(chr, range(0x110000)))
    folded = guardrails._fold(everything)
    assert len(folded) == len(everything)
    word = re.compile(r"\w")
    assert [c for c, f in zip(everything, folded, strict=True) if bool(word.match(c)) != bool(word.match(f))] == []
    by_fold, by_lower = defaultdict(set), defaultdict(set)
    for code, fold in enumerate(folded):
        by_fold[fold].add(code)
        by_lower[_sre.unicode_tolower(code)].add(code)
    differ = set()
    for code in range(0x110000):
        lower = _sre.unicode_tolower(code)
        kin = by_fold[folded[code]] | by_lower[lower]
        for other in _EXTRA_CASES.get(lower, ()):
            kin |= by_lower[other]
        if len(kin) == 1:
            continue  # re can match it with itself only, and nothing else folds to it
        pattern = re.compile(re.escape(chr(code)), re.IGNORECASE)
        for other in kin:
            if bool(pattern.fullmatch(chr(other))) != (folded[code] == folded[other]):
                differ.add(frozenset((code, other)))
    # The one exception, by design: U+0345 (a combining mark, not a word character), which re also
    # equates with the word character "ι", matches only itself.
    iota = {0x399, 0x3B9, 0x1FBE}
    assert differ == {frozenset((0x345, other)) for other in iota}


def keyword_check_seconds(keywords, text):
    rail = guardrails.Guardrail.from_config({"invalid_keywords": keywords})
    started = time.process_time()
    reason = rail.check(text)[0]
    return time.process_time() - started, reason


@pytest.mark.parametrize(("size", "bound"), [(64 * 1024, 0.25), (MB, 2.0)])
def test_keywords_repeating_one_another_cost_linear_time(size, bound):
    # The reviewer's case. As a regex trie each "a" re-read up to 200 characters: 1.05 s for 64 KB
    # (checked on the event loop) and 23.6 s for 1 MiB (holding a guardrail worker).
    keywords = ["a-" * i for i in range(1, 101)]
    took, reason = keyword_check_seconds(keywords, "a-" * (size // 2))
    assert reason == f"it contains the blocked keyword '{'a-' * 100}'"  # the last 200 characters
    assert took < bound
    took, reason = keyword_check_seconds(keywords, "a-" * (size // 2) + "a")  # no keyword is followed by a non-word
    assert reason is None and took < bound


def test_a_thousand_keywords_sharing_a_long_prefix_cost_linear_time():
    rng = random.Random(3)
    prefix = "a-" * 95
    keywords = [prefix + "".join(rng.choice("ab-") for _ in range(10)) for _ in range(1000)]
    text = (prefix + "a ") * (MB // (len(prefix) + 2))  # every prefix read to its end, no keyword
    took, reason = keyword_check_seconds(keywords, text)
    assert reason is None and took < 2.0
    took, reason = keyword_check_seconds(keywords, text + keywords[700].upper())
    assert reason == f"it contains the blocked keyword '{keywords[700].upper()}'" and took < 2.0


def test_a_thousand_keywords_of_200_characters_cost_linear_time():
    rng = random.Random(5)
    alphabet = "ab-. é—ßK"
    keywords = ["".join(rng.choice(alphabet) for _ in range(199)) + "z" for _ in range(1000)]
    started = time.process_time()
    rail = guardrails.Guardrail.from_config({"invalid_keywords": keywords})
    assert time.process_time() - started < 5.0  # the automaton is built once per keyword list and process
    # A text made of keywords' first 150 characters: the automaton is deep in a keyword all along.
    text = " ".join(rng.choice(keywords)[:150] for _ in range(MB // 151))
    started = time.process_time()
    assert rail.check(text)[0] is None
    assert rail.check(text + " " + keywords[123])[0] == f"it contains the blocked keyword '{keywords[123]}'"
    assert time.process_time() - started < 4.0


@pytest.mark.parametrize("char", ["—", "\U0001f600"])
def test_a_flood_of_wide_non_word_characters_costs_linear_time(char):
    # Each non-word character is marked (the costliest step, most of all outside Latin-1).
    keywords = ["a-" * i for i in range(1, 101)] + [char * 3 + "x"]
    took, reason = keyword_check_seconds(keywords, char * MB)
    assert reason is None and took < 3.0
    took, reason = keyword_check_seconds(keywords, char * MB + " a-a-")
    assert reason == "it contains the blocked keyword 'a-a-'" and took < 3.0


def test_a_text_full_of_keywords_is_answered_at_the_first():
    took, reason = keyword_check_seconds(["a", "a a"], "a " * (MB // 2))
    assert reason == "it contains the blocked keyword 'a a'" and took < 0.5


@pytest.mark.parametrize("pad", ["x ", "é—"])
@pytest.mark.parametrize("offset", [-500, -250, -199, -198, -100, -1, 0, 1, 150])
def test_a_keyword_across_the_first_chunk_is_found_as_the_regex_finds_it(pad, offset):
    # The matcher reads the text in chunks (FIRST_CHUNK characters first). Here the first match
    # starts that far from the first chunk's end: "a" fits in it, while the longest keyword starting
    # there ("a-a-…-a", 199 characters) may reach past it, and that one must win.
    keywords = ["a"] + ["a-" * i + "a" for i in range(1, 100)] + ["a-a-b", "—"]
    text = pad * ((guardrails.KeywordMatcher.FIRST_CHUNK + offset) // 2) + "a-" * 150 + " tail"
    reference = reference_keyword_search(keywords, text)
    assert reference.group(0) == "a-" * 99 + "a"
    assert guardrails.keyword_matcher(tuple(keywords)).search(text) == reference.span()


@hypothesis_settings(max_examples=fuzz_examples(3000), deadline=None)
@given(
    st.lists(st.text(alphabet=KEYWORD_ALPHABET, min_size=1, max_size=4).filter(str.strip), min_size=1, max_size=5),
    st.text(alphabet=KEYWORD_ALPHABET + "xyz", max_size=30),
    st.integers(min_value=1, max_value=8),
)
def test_keywords_in_chunks_of_any_size_are_found_as_the_regex_finds_them(keywords, text, chunk):
    # Chunks of a few characters, so that keywords straddle their ends and their overlaps.
    matcher = guardrails.KeywordMatcher(tuple(k.strip() for k in keywords))
    matcher.FIRST_CHUNK = chunk
    reference = reference_keyword_search(keywords, text)
    assert matcher.search(text) == (reference and reference.span())


def test_a_guardrail_sent_to_a_worker_process_blocks_the_same_keywords():
    rail = guardrails.Guardrail.from_config({"invalid_keywords": ["a-" * i for i in range(1, 101)] + ["Falcon"]})
    copy = pickle.loads(pickle.dumps(rail))
    assert copy._keywords.search("x a-a- y") == rail._keywords.search("x a-a- y") == (2, 6)
    body = {"input": "a-" * (MB // 2) + "a project falcon"}
    try:
        with pytest.raises(guardrails.Blocked, match="blocked keyword 'falcon'"):
            asyncio.run(guardrails.apply_off_loop(rail, body, direction="input"))
    finally:
        guardrails.shutdown_workers()


def test_keyword_lists_are_bounded_at_validation():
    with pytest.raises(ValueError, match="at most 1000 keywords of at most 200 characters"):
        guardrails.validate({"input": {"invalid_keywords": ["x" * 201]}})
    with pytest.raises(ValueError, match="at most 1000 keywords"):
        guardrails.validate({"input": {"invalid_keywords": [f"k{i}" for i in range(1001)]}})
