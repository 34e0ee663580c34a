"""A client that goes away in the middle of a streamed answer: the gateway stops reading the
provider's stream and closes its connection to the provider, and still counts the query.

The provider is ``TricklingOpenAIServer`` (tests.providers) on 127.0.0.1: an OpenAI chat stream of
50 chunks, one every 0.2 s (10 s in all), that records when its client closed the connection. The
client is a plain ``http.client`` connection, closed after two chunks.
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlparse

import pytest

from endpoints_app.gateway.metrics import read_counters
from endpoints_app.models import Endpoint
from tests import test_external_models as shared
from tests.providers import TricklingOpenAIServer

CHAT, KEY = shared.CHAT, shared.KEY
body_for, create, external, store_secret, events_of = (
    shared.body_for,
    shared.create,
    shared.external,
    shared.store_secret,
    shared._events,
)
gateway, fakes = shared.gateway, shared.fakes


def trickling_endpoint(api, user, fakes, **options) -> TricklingOpenAIServer:  # type: ignore[no-untyped-def]
    fake = TricklingOpenAIServer(KEY, **options)
    fakes.append(fake)
    config = {"openai_api_base": f"{fake.url}/v1", "openai_api_key": store_secret(user, "keys", "openai", KEY)}
    create(api, body_for("slow", {"external_model": external("openai", "openai_config", config)}))
    return fake


def open_stream(gateway_url: str, token: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    address = urlparse(gateway_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request(
        "POST",
        "/serving-endpoints/slow/invocations",
        body=json.dumps(CHAT | {"stream": True}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    return connection, response


def wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.django_db(transaction=True)
def test_a_client_that_goes_away_mid_stream_closes_the_providers_stream(gateway, fakes, api, user, token):
    fake = trickling_endpoint(api, user, fakes)
    connection, response = open_stream(gateway.url, token)

    # 1. Read two chunks as they come, then hang up.
    chunks = []
    while len(chunks) < 2:
        line = response.readline().decode().strip()
        if line.startswith("data: "):
            chunks.append(json.loads(line[len("data: ") :]))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Tick"}
    assert chunks[1]["choices"][0]["delta"] == {"content": " 1"}
    hung_up = time.monotonic()
    response.close()
    connection.close()

    # 2. The provider sees its connection closed within a second, long before its 10 s stream ends.
    assert wait_for(lambda: fake.closed_at is not None, 3.0), "the gateway kept reading the provider's stream"
    assert fake.closed_at - hung_up < 1.0
    assert not fake.finished and fake.sent < 10

    # 3. The query is still counted, as answered (the status line was sent).
    endpoint_id = Endpoint.objects.get(name="slow").id

    def counted() -> bool:
        gateway.app.gateway.metrics.flush()
        return read_counters(endpoint_id).get("gpt-4o", {}).get("count") == 1.0

    assert wait_for(counted, 3.0)
    counters = read_counters(endpoint_id)["gpt-4o"]
    assert "5xx" not in counters and "4xx" not in counters


@pytest.mark.django_db(transaction=True)
def test_a_client_that_stays_gets_the_whole_stream(gateway, fakes, api, user, token):
    # The same relay, read to the end: every chunk, then [DONE], and the provider finished its stream.
    fake = trickling_endpoint(api, user, fakes, chunks=5, interval=0.05)
    response = gateway.post("/serving-endpoints/slow/invocations", CHAT | {"stream": True}, token, stream=True)
    events = events_of(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Tick 1 2 3 4"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert wait_for(lambda: fake.finished, 3.0) and fake.closed_at is None
