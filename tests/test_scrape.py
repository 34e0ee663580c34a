"""Replicas' /metrics read from one selectors loop (monitoring.scrape, issue 16 part 6)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from endpoints_app.monitoring import scrape
from endpoints_app.monitoring.scrape import ScrapeError, fetch_many, parse_response


class RawServer:
    """A TCP server that reads a request's head and answers with ``answer(request)`` (raw
    bytes, sent in two parts), then closes; ``None``: never answers."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        self.requests.append(data)
        out = self.answer(data)
        if out is None:
            self.held.append(conn)  # never answered
            return
        half = len(out) // 2
        conn.sendall(out[:half])
        time.sleep(0.01)
        conn.sendall(out[half:])
        conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[bytes], bytes | None]], RawServer]]:
    servers: list[RawServer] = []

    def make(answer: Callable[[bytes], bytes | None]) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


BODY = b'cpu_usage_percentage{replica="0"} 12.5\n'


def sized(body: bytes = BODY, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_sized_answer_is_read_and_the_request_carries_path_and_headers(serve):
    server = serve(lambda request: sized())
    assert fetch_many([(server.url + "/base/", {"Authorization": "Bearer s3cret"})], timeout=2) == [BODY]
    request = server.requests[0].decode()
    assert request.startswith("GET /base/metrics HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in request
    assert "Authorization: Bearer s3cret\r\n" in request and "Connection: close\r\n" in request


def test_chunked_and_close_delimited_answers_are_read(serve):
    chunked = serve(
        lambda request: (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"a;x=1\r\n"
            + BODY[:10]
            + b"\r\n"
            + f"{len(BODY) - 10:x}\r\n".encode()
            + BODY[10:]
            + b"\r\n0\r\n\r\n"
        )
    )
    delimited = serve(lambda request: b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
    assert fetch_many([(chunked.url, {}), (delimited.url, {})], timeout=2) == [BODY, BODY]


def test_each_failure_is_its_own_and_the_order_is_kept(serve):
    ok = serve(lambda request: sized())
    refused = serve(lambda request: sized(b"no", "401 Unauthorized"))
    silent = serve(lambda request: None)
    short = serve(lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    garbage = serve(lambda request: b"SSH-2.0-OpenSSH\r\n\r\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    results = fetch_many(
        [
            (ok.url, {}),
            (refused.url, {}),
            (silent.url, {}),
            (dead, {}),
            (short.url, {}),
            (garbage.url, {}),
            (ok.url, {}),
        ],
        timeout=0.5,
    )
    assert time.monotonic() - started < 2
    assert results[0] == BODY and results[6] == BODY
    assert isinstance(results[1], ScrapeError) and "401" in str(results[1])
    assert isinstance(results[2], TimeoutError)
    assert isinstance(results[3], ConnectionRefusedError)
    assert isinstance(results[4], ScrapeError) and "3 of 100" in str(results[4])
    assert isinstance(results[5], ScrapeError) and "not an HTTP answer" in str(results[5])


def test_many_reads_at_once_each_get_their_answer(serve):
    server = serve(lambda request: sized(request.split(b"\r\n")[0]))
    targets: list[tuple[str, dict[str, str]]] = [(f"{server.url}/r{i}", {}) for i in range(300)]
    results = fetch_many(targets, timeout=5, concurrency=16)
    assert results == [f"GET /r{i}/metrics HTTP/1.1".encode() for i in range(300)]


def test_an_oversized_answer_is_refused(serve, monkeypatch):
    monkeypatch.setattr(scrape, "MAX_BYTES", 1000)
    server = serve(lambda request: sized(b"x" * 5000))
    [result] = fetch_many([(server.url, {})], timeout=2)
    assert isinstance(result, ScrapeError) and "larger than 1000" in str(result)


def test_only_plain_http_is_read_here():
    assert scrape.plain_http("http://10.0.0.1:8080")
    assert not scrape.plain_http("https://10.0.0.1:8443")
    [result] = fetch_many([("ftp://x", {})], timeout=1)
    assert isinstance(result, ScrapeError)


def test_parse_response_waits_for_the_whole_body():
    answer = sized()
    assert parse_response(answer[:10], complete=False) is None
    assert parse_response(answer[:-3], complete=False) is None
    assert parse_response(answer, complete=False) == BODY
    assert parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", complete=False) == b""
    with pytest.raises(ScrapeError, match="closed before"):
        parse_response(b"HTTP/1.1 200", complete=True)
