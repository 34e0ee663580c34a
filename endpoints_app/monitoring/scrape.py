"""Replicas' /metrics read all at once from one thread (issue 16 part 6).

A metrics batch reads one small /metrics answer from each of its replicas. Through urllib3 in a
thread pool each read cost ~350-600 us of worker CPU (connection pool, ``http.client`` and its
header parsing, the future, a thread switch), most of a metrics poll's CPU. Here every read is a
plain non-blocking socket in one ``selectors`` loop: connect, send one prepared
``GET <path>/metrics HTTP/1.1`` with ``Connection: close``, read the answer; ~60-100 us each.

Only plain ``http://`` URLs are read here; anything else (``https://``) is left to the caller's
client. The answer is read as HTTP/1.1: a status line, headers, then a body delimited by
``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the connection. Each read has its
own deadline (``timeout`` from its connect) and an answer larger than ``MAX_BYTES`` is refused.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

MAX_BYTES = 4 * 1024 * 1024  # a /metrics answer larger than this is refused


class ScrapeError(Exception):
    """The replica's answer could not be read, or was not a success."""


def plain_http(url: str) -> bool:
    """Whether ``url`` is one ``fetch_many`` reads (``http://host[:port][/path]``)."""
    return url.startswith("http://")


def _request(url: str, path: str, headers: dict[str, str]) -> tuple[tuple[str, int], bytes]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ScrapeError(f"not a plain http URL: {url}")
    port = parts.port or 80
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    lines = [
        f"GET {parts.path.rstrip('/')}{path} HTTP/1.1",
        f"Host: {host_header}:{port}",
        "Accept-Encoding: identity",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return (host, port), ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Read:
    __slots__ = ("index", "sock", "out", "data", "deadline", "connected")

    def __init__(self, index: int, sock: socket.socket, out: bytes, deadline: float) -> None:
        self.index, self.sock, self.out, self.deadline = index, sock, out, deadline
        self.data = bytearray()
        self.connected = False


def fetch_many(
    targets: Sequence[tuple[str, dict[str, str]]],
    *,
    path: str = "/metrics",
    timeout: float,
    concurrency: int = 64,
) -> list[bytes | Exception]:
    """GET ``<url><path>`` of each ``(url, headers)``, at most ``concurrency`` at a time: the body
    of each success (status < 400), or the exception that says why there is none, in order."""
    results: list[bytes | Exception | None] = [None] * len(targets)
    addresses: dict[tuple[str, int], tuple[socket.AddressFamily, Any] | Exception] = {}
    selector = selectors.DefaultSelector()
    active: dict[int, _Read] = {}
    pending = list(range(len(targets)))
    pending.reverse()

    def finish(read: _Read, result: bytes | Exception) -> None:
        selector.unregister(read.sock)
        read.sock.close()
        del active[read.index]
        results[read.index] = result

    def start(index: int) -> None:
        url, headers = targets[index]
        try:
            address, out = _request(url, path, headers)
            if address not in addresses:
                try:
                    info = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0]
                    addresses[address] = (info[0], info[4])
                except OSError as exc:
                    addresses[address] = exc
            resolved = addresses[address]
            if isinstance(resolved, Exception):
                raise resolved
            family, sockaddr = resolved
            sock = socket.socket(family, socket.SOCK_STREAM)
        except Exception as exc:
            results[index] = exc
            return
        sock.setblocking(False)
        read = _Read(index, sock, out, time.monotonic() + timeout)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            results[index] = ConnectionRefusedError(code, f"connect to {url}: {errno.errorcode.get(code, code)}")
            return
        active[index] = read
        selector.register(sock, selectors.EVENT_WRITE, read)

    try:
        while pending or active:
            while pending and len(active) < concurrency:
                start(pending.pop())
            if not active:
                continue
            now = time.monotonic()
            wait = max(0.0, min(r.deadline for r in active.values()) - now)
            for key, _ in selector.select(wait):
                read: _Read = key.data
                try:
                    if not read.connected:
                        code = read.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if code:
                            raise ConnectionRefusedError(code, f"connect: {errno.errorcode.get(code, code)}")
                        read.connected = True
                    if read.out:
                        sent = read.sock.send(read.out)
                        read.out = read.out[sent:]
                        if not read.out:
                            selector.modify(read.sock, selectors.EVENT_READ, read)
                        continue
                    chunk = read.sock.recv(65536)
                    if chunk:
                        read.data += chunk
                        if len(read.data) > MAX_BYTES:
                            raise ScrapeError(f"answer larger than {MAX_BYTES} bytes")
                    body = parse_response(bytes(read.data), complete=not chunk)
                    if body is not None:
                        finish(read, body)
                except (BlockingIOError, InterruptedError):
                    continue  # a spurious wake-up: the selector reports it again when ready
                except Exception as exc:  # this replica's: the others go on
                    finish(read, exc)
            now = time.monotonic()
            for read in [r for r in active.values() if r.deadline <= now]:
                finish(read, TimeoutError(f"no answer in {timeout:g} s"))
    finally:
        for read in list(active.values()):
            finish(read, ScrapeError("not read"))
        selector.close()
    return [r if r is not None else ScrapeError("not read") for r in results]


def parse_response(data: bytes, *, complete: bool) -> bytes | None:
    """The body of an HTTP/1.x answer read so far; None while more is to come. ``complete``: the
    connection ended (a body without a length ends there). Raises ``ScrapeError`` for an answer
    that is not a success (status >= 400) or not HTTP."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if complete:
            raise ScrapeError("the connection closed before a whole answer" if data else "empty answer")
        return None
    head = data[:end].decode("latin-1").split("\r\n")
    status = head[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
        raise ScrapeError(f"not an HTTP answer: {head[0][:100]!r}")
    code = int(status[1])
    if code >= 400:
        raise ScrapeError(f"{code} from the replica")
    if code < 200 or code in (204, 304):
        if 100 <= code < 200:
            raise ScrapeError(f"unexpected {code} answer")
        return b""
    length: int | None = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise ScrapeError(f"bad Content-Length {value.strip()!r}") from None
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    body = data[end + 4 :]
    if chunked:
        return _dechunk(body, complete=complete)
    if length is not None:
        if len(body) >= length:
            return body[:length]
        if complete:
            raise ScrapeError(f"the connection closed after {len(body)} of {length} bytes")
        return None
    return body if complete else None


def _dechunk(body: bytes, *, complete: bool) -> bytes | None:
    out = bytearray()
    i = 0
    while True:
        eol = body.find(b"\r\n", i)
        if eol < 0:
            break
        size_text = body[i:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ScrapeError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            return bytes(out)  # trailers, if any, are not needed
        start = eol + 2
        if len(body) < start + size + 2:
            break
        out += body[start : start + size]
        i = start + size + 2
    if complete:
        raise ScrapeError("the connection closed inside a chunked answer")
    return None
