"""A small closed-loop HTTP/1.1 load generator (keep-alive, N concurrent connections).

Prints one JSON line: requests/s, p50/p99 latency in ms, errors. Written with raw asyncio
streams so the client costs little CPU next to the servers it measures on the same machine.
Usage: python benchmarks/loadgen.py URL BODY_FILE --concurrency 8 --seconds 5 [--token T]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from urllib.parse import urlparse


async def worker(
    host: str, port: int, request: bytes, start_at: float, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= start_at:  # the warm-up is not measured
                latencies.append((t1 - t0) * 1000)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def run(url: str, body: bytes, concurrency: int, seconds: float, token: str | None, warmup: float) -> dict:
    parsed = urlparse(url)
    headers = [
        f"POST {parsed.path} HTTP/1.1",
        f"Host: {parsed.hostname}:{parsed.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    await asyncio.gather(
        *(
            worker(parsed.hostname or "127.0.0.1", parsed.port or 80, request, start_at, stop_at, latencies, errors)
            for _ in range(concurrency)
        )
    )
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / seconds,
        "p50_ms": latencies[n // 2] if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] if n else None,
        "errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--token")
    args = parser.parse_args()
    with open(args.body_file, "rb") as fh:
        body = fh.read()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, body, args.concurrency, args.seconds, args.token, args.warmup))))


if __name__ == "__main__":
    main()
