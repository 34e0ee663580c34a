"""The model server's streamed answers (model_server/streaming.py), against real model-server
processes on loopback: ``"stream": true`` runs the model's ``predict_stream`` and answers with
server-sent events; errors before the first chunk are plain 4xx answers, errors after it a last
error event; a client that goes away stops the stream."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import chat_models
from tests.chat_models import WORDS
from tests.test_model_server import AUTH, ServerProcess, start_server, wait_ready

HI = [{"role": "user", "content": "Hi"}]


def served(model, tmp_path_factory, name: str) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp(name)
    server = start_server(chat_models.save(base / "model", model), base, name=name)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    yield from served(chat_models.WordsChatModel(), tmp_path_factory, "chat-1")


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """Streams two words, then raises; (a second copy streams nothing before raising: see test)."""
    yield from served(chat_models.WordsStreamer(fail_after=2), tmp_path_factory, "failing-1")


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """100 words, one every 0.1 s."""
    yield from served(chat_models.WordsStreamer(delay=0.1), tmp_path_factory, "slow-1")


def post(server: ServerProcess, body: dict, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(f"{server.url}/invocations", json=body, headers=AUTH, timeout=30, **kwargs)


def events(response: requests.Response) -> list[str]:
    lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[len("data: ") :] for line in lines]


def test_a_chat_model_streams_openai_chunks_then_done(chat_server):
    response = post(chat_server, {"messages": HI, "stream": True}, stream=True)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert "content-length" not in response.headers
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * len(WORDS)
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == WORDS


def test_stream_false_or_missing_answers_one_json_body(chat_server):
    for body in ({"messages": HI}, {"messages": HI, "stream": False}):
        response = post(chat_server, body)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json()["choices"][0]["message"]["content"].startswith(chat_models.ANSWER)


def test_a_body_that_does_not_fit_gets_its_400_before_any_event(chat_server):
    response = post(chat_server, {"messages": "not a list", "stream": True})

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_an_error_mid_stream_ends_it_with_an_error_event_and_no_done(failing_server):
    response = post(failing_server, {"inputs": ["x"], "stream": True}, stream=True)

    assert response.status_code == 200
    payloads = [json.loads(p) for p in events(response)]
    assert payloads[:2] == [{"word": "Hello", "index": 0}, {"word": " from", "index": 1}]
    assert payloads[2]["error_code"] == "INTERNAL_ERROR"
    assert "the stream ran dry" in payloads[2]["message"]
    assert len(payloads) == 3
    # The server is fine after it.
    assert post(failing_server, {"inputs": ["x"]}).json() == {"predictions": [chat_models.ANSWER]}


def test_a_model_that_fails_before_its_first_chunk_gets_a_plain_error(tmp_path_factory):
    for server in served(chat_models.WordsStreamer(fail_after=0), tmp_path_factory, "fails-at-once-1"):
        response = post(server, {"inputs": ["x"], "stream": True})
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert "the stream ran dry" in response.json()["message"]


def test_a_client_that_hangs_up_stops_the_stream(slow_server):
    connection = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=10)
    body = json.dumps({"inputs": ["x"], "stream": True})
    connection.request("POST", "/invocations", body, {**AUTH, "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the first word's event
    connection.close()  # after about 0.1 s of a 10 s stream

    # The server stops the model's stream: nothing is in flight a moment later.
    deadline = time.monotonic() + 3
    health: dict = {}
    while time.monotonic() < deadline:
        health = requests.get(f"{slow_server.url}/health", headers=AUTH, timeout=5).json()
        if health["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert health["in_flight"] == 0  # the whole stream takes 10 s
    metrics = requests.get(f"{slow_server.url}/metrics", headers=AUTH, timeout=5).text
    assert 'request_4xx_count_total{served_entity="slow-1",replica="0"} 1' in metrics  # counted as 499


def test_a_model_without_predict_stream_says_so(tmp_path_factory):
    from tests.model_fixtures import save_constant_model

    base: Path = tmp_path_factory.mktemp("constant")
    server = start_server(save_constant_model(base / "model", "a"), base, name="constant-1")
    try:
        wait_ready(server)
        response = post(server, {"inputs": [[1]], "stream": True})
        assert response.status_code == 400
        assert response.json() == {
            "error_code": "BAD_REQUEST",
            "message": 'This model does not stream (its pyfunc model has no predict_stream); send the request '
            'without "stream".',
        }
        assert post(server, {"inputs": [[1]], "stream": False}).json() == {"predictions": ["a"]}
    finally:
        server.stop()


# --- the gateway's side: UpstreamPool.stream against a real model server ---------------------------


def upstream_events(server: ServerProcess, body: dict, *, take: int | None = None) -> tuple[list[bytes], int]:
    """The events the gateway's upstream client reads from the server (all, or the first
    ``take`` and then it stops), and how many connections its pool keeps afterwards."""
    from endpoints_app.gateway.upstream import UpstreamPool, UpstreamStream
    from endpoints_app.runtime.credentials import ReplicaTarget

    target = ReplicaTarget(server.url, AUTH["Authorization"].removeprefix("Bearer "))

    async def main() -> tuple[list[bytes], int]:
        pool = UpstreamPool()
        answer = await pool.stream(target, "/invocations", json.dumps(body).encode(), "application/json", timeout=5)
        assert isinstance(answer, UpstreamStream), answer
        seen: list[bytes] = []
        async for event in answer.events():
            seen.append(event)
            if take is not None and len(seen) == take:
                break
        await answer.aclose()
        kept = sum(len(idle) for idle in pool._idle.values())
        await pool.aclose()
        return seen, kept

    return asyncio.run(main())


def test_the_gateways_upstream_client_reads_a_stream_event_by_event_and_reuses_the_connection(chat_server):
    seen, kept = upstream_events(chat_server, {"messages": HI, "stream": True})

    assert seen[-1] == b"data: [DONE]\n\n"
    assert [json.loads(e[len(b"data: ") :])["choices"][0]["delta"]["content"] for e in seen[:-1]] == WORDS
    assert kept == 1  # read to its end: the connection goes back to the pool


def test_the_gateways_upstream_client_that_stops_reading_stops_the_model(slow_server):
    seen, kept = upstream_events(slow_server, {"inputs": ["x"], "stream": True}, take=2)

    assert len(seen) == 2
    assert kept == 0  # closed, not pooled
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if requests.get(f"{slow_server.url}/health", headers=AUTH, timeout=5).json()["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert requests.get(f"{slow_server.url}/health", headers=AUTH, timeout=5).json()["in_flight"] == 0


def test_the_gateways_upstream_client_reads_a_refusal_whole(chat_server):
    from endpoints_app.gateway.upstream import UpstreamPool, UpstreamStream
    from endpoints_app.runtime.credentials import ReplicaTarget

    target = ReplicaTarget(chat_server.url, AUTH["Authorization"].removeprefix("Bearer "))
    body = json.dumps({"messages": "nope", "stream": True}).encode()
    answer = asyncio.run(UpstreamPool().stream(target, "/invocations", body, "application/json", timeout=5))
    assert not isinstance(answer, UpstreamStream)
    status, content_type, refusal = answer
    assert (status, content_type) == (400, "application/json")
    assert json.loads(refusal)["error_code"] == "INVALID_PARAMETER_VALUE"
