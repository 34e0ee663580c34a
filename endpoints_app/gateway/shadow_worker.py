"""The shadow-traffic worker: a process of the web process's own that sends mirrored queries to
shadows' replicas (``gateway.shadow``), so their cost never lands on the gateway's interpreter.

``python -m endpoints_app.gateway.shadow_worker --queue-size N --queue-bytes B --concurrency C
--timeout S``: reads job frames on stdin until it closes, records each mirror in the gateway's
shared counters (Redis, ``gateway.metrics``), and exits once what it holds is sent and recorded.
It needs only the settings (REDIS_URL), not Django's apps: the parent's environment names them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from endpoints_app.gateway.metrics import GatewayMetrics
from endpoints_app.gateway.shadow import MirrorWorker

log = logging.getLogger(__name__)


async def serve(args: argparse.Namespace, metrics: GatewayMetrics) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    worker = MirrorWorker(
        metrics,
        queue_size=args.queue_size,
        queue_bytes=args.queue_bytes,
        concurrency=args.concurrency,
        timeout=args.timeout,
    )
    await worker.run(reader)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shadow_worker")
    parser.add_argument("--queue-size", type=int, default=1000)
    parser.add_argument("--queue-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=297.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    logging.basicConfig(level=logging.WARNING, format="shadow-worker %(levelname)s %(name)s: %(message)s")
    metrics = GatewayMetrics()
    try:
        import uvloop  # as fast as the gateway's own loop (uvicorn uses it when installed)
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None:
            uvloop.run(serve(args, metrics))
        else:  # pragma: no cover
            asyncio.run(serve(args, metrics))
    except KeyboardInterrupt:
        pass
    finally:
        metrics.stop()  # flush what was counted
    return 0


if __name__ == "__main__":
    sys.exit(main())
