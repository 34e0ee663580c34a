"""The gateway's route-table cache: under steady traffic no query waits for the database.

A table is cached for ``GATEWAY_ROUTE_TTL_SECONDS``. Past that, a usable table answers for a little
longer (``STALE_GRACE_SECONDS``) while one reload runs in the background; queries that find a table
expired together share one reload instead of each reading the database (measured before: at c=8
about a tenth of the web process's time went to concurrent reloads of the same table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from endpoints_app.gateway import app as gateway_app
from tests.providers import OpenAIServer, allow_egress

KEY = "sk-live-route-cache-0123456789"
TTL = 0.5


@pytest.fixture
def provider() -> Iterator[OpenAIServer]:
    server = OpenAIServer(KEY)
    yield server
    server.stop()


@pytest.fixture
def gateway(api, provider, settings):  # type: ignore[no-untyped-def]
    from django.core.asgi import get_asgi_application

    settings.GATEWAY_ROUTE_TTL_SECONDS = TTL
    allow_egress(settings, provider)
    model = {
        "provider": "openai",
        "name": "gpt-4o",
        "task": "llm/v1/chat",
        "openai_config": {"openai_api_key_plaintext": KEY, "openai_api_base": f"{provider.url}/v1"},
    }
    response = api.post(
        "/api/2.0/serving-endpoints",
        {"name": "cached", "config": {"served_entities": [{"external_model": model}]}},
        format="json",
    )
    assert response.status_code == 200, response.content
    return gateway_app.mount(get_asgi_application())


def _query(app, token: str):  # type: ignore[no-untyped-def]
    from asgiref.testing import ApplicationCommunicator

    async def run() -> int:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/serving-endpoints/cached/invocations",
            "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")],
            "query_string": b"",
        }
        comm = ApplicationCommunicator(app, scope)
        await comm.send_input({"type": "http.request", "body": b'{"messages": [{"role": "user", "content": "Hi"}]}'})
        start = await comm.receive_output(timeout=10)
        await comm.receive_output(timeout=10)  # the body
        return int(start["status"])

    return run()


@pytest.mark.django_db(transaction=True)
def test_an_expired_table_answers_while_one_reload_runs_and_concurrent_misses_share_one(
    gateway, token, django_db_blocker
):
    async def scenario() -> None:
        assert await _query(gateway, token) == 200  # warm: token, rights and the route table cached
        loads = gateway.gateway.route_table_loads
        await asyncio.sleep(TTL + 0.05)  # expired, within the grace
        # The database is out of reach: queries still answer from the expired table at once, and
        # they start one reload between them (which fails here, and is logged).
        with django_db_blocker.block():
            statuses = await asyncio.gather(*(_query(gateway, token) for _ in range(20)))
            assert set(statuses) == {200}
            while gateway.gateway._loading:
                await asyncio.sleep(0.01)
        assert gateway.gateway.route_table_loads == loads + 1
        # Past the grace, queries wait for a fresh table; twenty at once share one reload.
        await asyncio.sleep(TTL + gateway_app.STALE_GRACE_SECONDS + 0.05)
        loads = gateway.gateway.route_table_loads
        statuses = await asyncio.gather(*(_query(gateway, token) for _ in range(20)))
        assert set(statuses) == {200}
        assert gateway.gateway.route_table_loads == loads + 1

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_table_past_the_grace_is_never_answered_from_the_cache(gateway, token, api, django_db_blocker):
    async def scenario() -> None:
        assert await _query(gateway, token) == 200
        await asyncio.sleep(TTL + gateway_app.STALE_GRACE_SECONDS + 0.05)
        # With the database out of reach, a query must now fail rather than answer from the old table.
        with django_db_blocker.block(), pytest.raises(RuntimeError, match="Database access not allowed"):
            await _query(gateway, token)

    asyncio.run(scenario())
