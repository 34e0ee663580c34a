"""The gateway's upstream client against real sockets: reuse, stale connections, failure kinds."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from endpoints_app.gateway.upstream import UpstreamBroken, UpstreamPool, UpstreamTimeout, UpstreamUnreachable


async def serve(handler) -> tuple[asyncio.AbstractServer, str]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


def answer(body: bytes, status: int = 200) -> bytes:
    return (
        f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )


LOOP: dict[str, object] = {"factory": None}


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request):  # type: ignore[no-untyped-def]
    """Every test on asyncio's own loop and on uvloop, which the web process runs (uvicorn picks it)."""
    LOOP["factory"] = uvloop.new_event_loop if request.param == "uvloop" else None
    yield request.param
    LOOP["factory"] = None


def run(coro):  # type: ignore[no-untyped-def]
    factory = LOOP["factory"]
    if factory is None:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(coro)


def test_keep_alive_connections_are_reused():
    connections = []

    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        connections.append(writer)
        while True:
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answer(b'{"echo": ' + body + b"}"))
            await writer.drain()

    async def main() -> list:
        server, url = await serve(handler)
        pool = UpstreamPool()
        results = [await pool.post(url, "/invocations", b"%d" % i, "application/json", timeout=5) for i in range(5)]
        await pool.aclose()
        server.close()
        return results

    results = run(main())
    assert [r[2] for r in results] == [b'{"echo": %d}' % i for i in range(5)]
    assert results[0][0] == 200 and results[0][1] == "application/json"
    assert len(connections) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        writer.close()  # like a keep-alive timeout: closed after one answer

    async def main() -> list:
        server, url = await serve(handler)
        pool = UpstreamPool()
        results = []
        for _ in range(3):
            results.append(await pool.post(url, "/invocations", b"{}", "application/json", timeout=5))
            await asyncio.sleep(0.05)
        server.close()
        return results

    assert [r[0] for r in run(main())] == [200, 200, 200]


def test_a_refused_connection_is_unreachable():
    async def main() -> None:
        server, url = await serve(lambda r, w: None)
        server.close()
        await server.wait_closed()
        await UpstreamPool().post(url, "/invocations", b"{}", "application/json", timeout=5)

    with pytest.raises(UpstreamUnreachable):
        run(main())


def test_a_slow_replica_times_out():
    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        await asyncio.sleep(2)

    async def main() -> None:
        server, url = await serve(handler)
        try:
            await UpstreamPool().post(url, "/invocations", b"{}", "application/json", timeout=0.3)
        finally:
            server.close()

    with pytest.raises(UpstreamTimeout):
        run(main())


def test_an_answer_that_breaks_off_is_not_retryable():
    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await serve(handler)
        try:
            await UpstreamPool().post(url, "/invocations", b"{}", "application/json", timeout=5)
        finally:
            server.close()

    with pytest.raises(UpstreamBroken):
        run(main())


def test_chunked_answers_are_decoded():
    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
        )
        await writer.drain()

    async def main():  # type: ignore[no-untyped-def]
        server, url = await serve(handler)
        try:
            return await UpstreamPool().post(url, "/invocations", b"{}", "application/json", timeout=5)
        finally:
            server.close()

    assert run(main())[2] == b'{"a": 1}'


def test_a_large_answer_is_read_whole_past_the_read_pause():
    """More than the connection buffers unread (PAUSE_BYTES) pauses reading; asking for the rest resumes it."""
    big = b'{"x": "' + b"a" * (3 * 1024 * 1024) + b'"}'

    async def handler(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(answer(big))
        await writer.drain()
        await read_request(reader)  # the connection is kept: a second query on it
        writer.write(answer(b"{}"))
        await writer.drain()

    async def main() -> tuple:
        server, url = await serve(handler)
        pool = UpstreamPool()
        first = await pool.post(url, "/invocations", b"{}", "application/json", timeout=10)
        second = await pool.post(url, "/invocations", b"{}", "application/json", timeout=10)
        await pool.aclose()
        server.close()
        return first, second

    first, second = run(main())
    assert first[0] == 200 and first[2] == big
    assert second[2] == b"{}"
