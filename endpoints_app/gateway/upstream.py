"""The gateway's HTTP/1.1 client to model-server replicas: pooled keep-alive connections.

A general-purpose client (httpx) costs a few milliseconds per request on this hardware; the
gateway needs one thing only — POST a body to a replica on the local network and read the
answer — so it speaks HTTP/1.1 itself over asyncio streams, keeping idle connections per replica.

Failures are classified for the caller's retry rule:
- ``UpstreamUnreachable``: nothing reached the model (connection refused, or the connection was
  reset before any response byte) — safe to retry on another replica;
- ``UpstreamTimeout``: the replica did not answer in time;
- ``UpstreamBroken``: the answer started but broke off — not retried (the model may have run).
A pooled connection the replica closed while idle is replaced transparently.

``stream`` asks the same and hands back a replica's server-sent events as they come (a model
answering ``"stream": true``, model_server/streaming.py): one event at a time, each within the
timeout of the one before; the connection returns to the pool once the stream is read to its end
and is closed when the reader stops early (so the model stops producing).

Every request carries the replica's credential (``ReplicaTarget``): model servers refuse
requests without it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from urllib.parse import urlparse

from endpoints_app.observability import tracing
from endpoints_app.runtime.credentials import ReplicaTarget, authorization

IDLE_SECONDS = 4.0  # below uvicorn's 5 s keep-alive: never reuse a connection the server is closing
MAX_IDLE_PER_REPLICA = 256
MAX_HEADER_BYTES = 64 * 1024
# Unread bytes past which a connection stops reading until its reader asks for more.
PAUSE_BYTES = 2 * MAX_HEADER_BYTES
HEAD_CACHE_SIZE = 4096
# One server-sent event of a replica's stream (a chunk of a model's answer, as JSON) at most.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class UpstreamError(Exception):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamBroken(UpstreamError):
    pass


class _Conn(asyncio.Protocol):
    """One keep-alive connection to a replica, read as asyncio's StreamReader reads
    (``readuntil``, ``readexactly``, ``read``, with its exceptions) without its layers of calls
    per read: the query path's share of the gateway's CPU per query (~20 µs less on this
    hardware). Reading pauses while more than ``PAUSE_BYTES`` wait unread (a replica streaming
    faster than its caller reads is held back, not buffered without bound)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._paused = False
        # The loop time by which the answer being read must have come (TimeoutError past it);
        # None: no bound (a stream's events are bounded one by one by their reader).
        self.deadline: float | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is no asyncio.Transport subclass)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the connection's user ---
    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    async def _more(self, partial_for: int | None) -> None:
        """Wait for more bytes; at the end of the connection raise what StreamReader would."""
        if self._eof:
            if self._error is not None:
                raise self._error
            partial = bytes(self._buffer)
            self._buffer.clear()
            raise asyncio.IncompleteReadError(partial, partial_for)
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer on the wait itself, not asyncio.timeout around the exchange: no task
        # cancellation to undo, one timer per wait (usually one per query).
        expiry = loop.call_at(self.deadline, _expire, waiter) if self.deadline is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if expiry is not None:
                expiry.cancel()

    async def readuntil(self, separator: bytes) -> bytes:
        start = 0
        while True:
            found = self._buffer.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise asyncio.LimitOverrunError("separator not found within the limit", len(self._buffer))
            start = max(0, len(self._buffer) - len(separator) + 1)
            await self._more(None)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._more(n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read(self) -> bytes:
        """Everything up to the end of the connection."""
        try:
            while True:
                await self._more(None)
        except asyncio.IncompleteReadError as end:
            return end.partial


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamPool:
    def __init__(self, *, connect_timeout: float = 2.0) -> None:
        self.connect_timeout = connect_timeout
        self._idle: defaultdict[ReplicaTarget | str, list[_Conn]] = defaultdict(list)
        self._heads: dict[tuple[ReplicaTarget | str, str, str], tuple[str, int, bytes]] = {}

    async def post(
        self, base_url: ReplicaTarget | str, path: str, body: bytes, content_type: str, *, timeout: float
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of ``POST base_url + path``, with the replica's credential
        when ``base_url`` is a ReplicaTarget (a plain URL is for servers that need none)."""
        answer = await self._request(base_url, path, body, content_type, timeout=timeout, stream=False)
        assert not isinstance(answer, UpstreamStream)
        return answer

    async def stream(
        self, base_url: ReplicaTarget | str, path: str, body: bytes, content_type: str, *, timeout: float
    ) -> tuple[int, str, bytes] | UpstreamStream:
        """As ``post``, but a 200 answer of server-sent events comes back as an ``UpstreamStream``
        as soon as its headers are read; any other answer is read whole, as ``post`` reads it.
        ``timeout`` bounds the wait for the headers, then the wait for each event."""
        return await self._request(base_url, path, body, content_type, timeout=timeout, stream=True)

    async def _request(
        self,
        base_url: ReplicaTarget | str,
        path: str,
        body: bytes,
        content_type: str,
        *,
        timeout: float,
        stream: bool,
    ) -> tuple[int, str, bytes] | UpstreamStream:
        host, port, head = self._head(base_url, path, content_type)
        if not tracing.enabled():  # the common case: no span, nothing added
            return await self._send(base_url, host, port, head + b"%d\r\n\r\n" % len(body) + body, timeout, stream)
        with tracing.replica_call(host, port, path) as call:
            request = head[: -len(b"Content-Length: ")] + call.headers.encode("latin-1")
            request += b"Content-Length: %d\r\n\r\n" % len(body) + body
            answer = await self._send(base_url, host, port, request, timeout, stream)
            call.status(200 if isinstance(answer, UpstreamStream) else answer[0])
            return answer

    def _head(self, base_url: ReplicaTarget | str, path: str, content_type: str) -> tuple[str, int, bytes]:
        """(host, port, the request's head up to the Content-Length value) for a target, path and
        content type: made once, not per query (at most a few per replica; forgotten wholesale
        past HEAD_CACHE_SIZE, replicas come and go)."""
        key = (base_url, path, content_type)
        cached = self._heads.get(key)
        if cached is None:
            host, port = _host_port(str(base_url))
            auth = (
                f"Authorization: {authorization(base_url.credential)}\r\n"
                if isinstance(base_url, ReplicaTarget)
                else ""
            )
            head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n{auth}"
            if len(self._heads) >= HEAD_CACHE_SIZE:
                self._heads.clear()
            cached = self._heads[key] = (host, port, (head + "Content-Length: ").encode("latin-1"))
        return cached

    async def _send(
        self, base_url: ReplicaTarget | str, host: str, port: int, request: bytes, timeout: float, stream: bool
    ) -> tuple[int, str, bytes] | UpstreamStream:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            conn, reused = self._idle_conn(base_url), True
            if conn is None:
                conn, reused = await self._connect(host, port), False
            conn.deadline = deadline
            try:
                return await self._exchange(base_url, conn, request, stream=stream, timeout=timeout)
            except _StaleConnection:
                conn.close()
                if reused:
                    continue  # the replica closed this idle connection: try a fresh one
                raise UpstreamUnreachable("the replica closed the connection before answering") from None
            except TimeoutError:
                conn.close()
                raise UpstreamTimeout(f"no answer within {timeout:g} s") from None
            except UpstreamError:
                conn.close()
                raise
            except (ConnectionError, OSError) as exc:
                conn.close()
                raise UpstreamBroken(f"the connection broke while answering: {exc}") from None
            finally:
                conn.deadline = None

    def _idle_conn(self, base_url: ReplicaTarget | str) -> _Conn | None:
        """A kept connection to the replica that is still open, if there is one."""
        idle = self._idle.get(base_url)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_SECONDS and not conn.at_eof():
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Conn:
        try:
            transport, conn = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(_Conn, host, port), self.connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            raise UpstreamUnreachable(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _exchange(
        self, base_url: ReplicaTarget | str, conn: _Conn, request: bytes, *, stream: bool = False, timeout: float = 0
    ) -> tuple[int, str, bytes] | UpstreamStream:
        try:
            conn.write(request)
            head = await conn.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from None
            raise UpstreamBroken("the replica's answer broke off in its headers") from None
        except (ConnectionResetError, BrokenPipeError):
            raise _StaleConnection from None
        except asyncio.LimitOverrunError:
            raise UpstreamBroken("the replica's response headers are too large") from None
        status, content_type, length, chunked, close = _parse_head(head)
        if stream and status == 200 and chunked and content_type.lower().startswith("text/event-stream"):
            return UpstreamStream(self, base_url, conn, timeout=timeout, close=close)
        try:
            if chunked:
                body = await _read_chunked(conn)
            elif length is not None:
                body = await conn.readexactly(length)
            else:
                body = await conn.read()
                close = True
        except asyncio.IncompleteReadError:
            raise UpstreamBroken("the replica's answer broke off in its body") from None
        self._release(base_url, conn, close=close)
        return status, content_type, body

    def _release(self, base_url: ReplicaTarget | str, conn: _Conn, *, close: bool) -> None:
        """Keep a connection whose answer was read to its end for the next request (or close it)."""
        if close:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle = self._idle[base_url]
        if len(idle) < MAX_IDLE_PER_REPLICA:
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


class UpstreamStream:
    """A replica's answer of server-sent events, its headers read: ``events`` yields each event
    (``data: ...`` and its blank line) as it arrives. ``aclose`` before the end closes the
    connection; read to the end, the connection goes back to the pool.

    Raises (from ``events``): UpstreamTimeout when the next event takes longer than the timeout,
    UpstreamBroken when the answer breaks off or is not chunked server-sent events.
    """

    def __init__(
        self, pool: UpstreamPool, base_url: ReplicaTarget | str, conn: _Conn, *, timeout: float, close: bool
    ) -> None:
        self._pool, self._base_url, self._conn = pool, base_url, conn
        self._timeout, self._close = timeout, close
        self._finished = False
        self._closed = False

    async def events(self) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(_read_one_chunk(self._conn), self._timeout)
                except TimeoutError:
                    raise UpstreamTimeout(f"no event within {self._timeout:g} s") from None
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError, OSError):
                    raise UpstreamBroken("the replica's stream broke off") from None
                if chunk is None:
                    break
                buffer += chunk
                while True:
                    event, separator, rest = buffer.partition(b"\n\n")
                    if not separator:
                        break
                    buffer = rest
                    yield event + separator
                if len(buffer) > MAX_EVENT_BYTES:
                    raise UpstreamBroken(f"an event of the replica's stream is larger than {MAX_EVENT_BYTES} bytes")
            self._finished = True
            if buffer.strip():
                yield buffer + b"\n\n"
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._finished:
            self._pool._release(self._base_url, self._conn, close=self._close)
        else:
            self._conn.close()  # the replica sees the client go and stops the model's stream


class _StaleConnection(Exception):
    """Nothing came back on this connection: not one response byte."""


def _host_port(base_url: str) -> tuple[str, int]:
    parsed = urlparse(base_url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80


def _parse_head(head: bytes) -> tuple[int, str, int | None, bool, bool]:
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise UpstreamBroken(f"not an HTTP response: {lines[0][:80]!r}") from None
    content_type, length, chunked, close = "application/json", None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"content-type":
            content_type = value.strip().decode("latin-1")
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    return status, content_type, length, chunked, close


async def _read_one_chunk(reader: _Conn) -> bytes | None:
    """The next chunk of a chunked body; None after the last one (and its trailer) was read."""
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0].strip(), 16)
    if size == 0:
        await reader.readuntil(b"\r\n")
        return None
    if size > MAX_EVENT_BYTES:
        raise ValueError("chunk too large")
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


async def _read_chunked(reader: _Conn) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
