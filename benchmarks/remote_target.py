"""A lightweight remote workspace for benchmarks: the serving-endpoints API's read calls for many
endpoints, as a Databricks workspace answers them, from one asyncio process.

``python benchmarks/remote_target.py PORT COUNT PREFIX`` serves ``COUNT`` single-entity endpoints
named ``PREFIX-00000`` … with:

- ``GET /api/2.0/serving-endpoints``: the list (name, id, state, timestamps, config summary);
- ``GET /api/2.0/serving-endpoints/{name}``: the details;
- ``GET /api/2.0/serving-endpoints/{name}/metrics``: Prometheus text whose cumulative counters
  grow every 15 s, so each sweep stores a non-empty interval;
- ``GET …/served-models/{entity}/logs`` and ``…/build-logs``: ``{"logs": …}`` with one new server
  line per 15 s.

What the poller sends is not checked here (``tests/test_remote_contract.py`` checks it against the
SDK); answers are made from templates so that the remote costs little of the machine's CPU.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from urllib.parse import unquote

BASE = "/api/2.0/serving-endpoints"
ENTITY = "m-1"


def detail(name: str) -> dict[str, object]:
    return {
        "name": name,
        "id": f"id-{name}",
        "creator": "bench@example.com",
        "creation_timestamp": 1765000000000,
        "last_updated_timestamp": 1765000000001,
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {
            "config_version": 1,
            "served_entities": [
                {
                    "name": ENTITY,
                    "entity_name": "prod.ml.clf",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                    "state": {"deployment": "DEPLOYMENT_READY"},
                }
            ],
            "traffic_config": {"routes": [{"served_model_name": ENTITY, "traffic_percentage": 100}]},
        },
        "tags": [{"key": "team", "value": "bench"}],
    }


def metrics_text(tick: int) -> bytes:
    count = tick * 20
    return (
        f'request_count_total{{served_entity="{ENTITY}"}} {count}\n'
        f'request_4xx_count_total{{served_entity="{ENTITY}"}} {tick}\n'
        f'request_5xx_count_total{{served_entity="{ENTITY}"}} {tick // 4}\n'
        f'request_latency_ms_sum{{served_entity="{ENTITY}"}} {count * 12.5}\n'
        f'request_latency_ms_bucket{{served_entity="{ENTITY}",le="10"}} {count // 2}\n'
        f'request_latency_ms_bucket{{served_entity="{ENTITY}",le="50"}} {count - tick}\n'
        f'request_latency_ms_bucket{{served_entity="{ENTITY}",le="+Inf"}} {count}\n'
        f'cpu_usage_percentage{{served_entity="{ENTITY}"}} 31.5\n'
        f'mem_usage_percentage{{served_entity="{ENTITY}"}} 44.0\n'
        f'provisioned_concurrent_requests_total{{served_entity="{ENTITY}"}} 1\n'
    ).encode()


def server_log(tick: int) -> bytes:
    lines = []
    for back in range(3, -1, -1):  # the last four intervals' lines: each poll finds one new
        at = datetime.fromtimestamp((tick - back) * 15, UTC)
        lines.append(f"{at:%Y-%m-%d %H:%M:%S},000 INFO [{ENTITY} replica 0] served {tick - back}\n")
    return json.dumps({"logs": "".join(lines)}).encode()


BUILD_LOG = json.dumps(
    {"logs": "2026-11-27 04:44:30 copying model\n2026-11-27 04:44:31 building environment\n2026-11-27 04:44:34 done\n"}
).encode()


class Remote:
    def __init__(self, count: int, prefix: str) -> None:
        self.names = [f"{prefix}-{i:05d}" for i in range(count)]
        self.known = set(self.names)
        self.details = {name: json.dumps(detail(name)).encode() for name in self.names}
        summaries = []
        for name in self.names:
            d = detail(name)
            summaries.append(
                {
                    **{k: d[k] for k in ("name", "id", "creator", "creation_timestamp", "last_updated_timestamp")},
                    **{k: d[k] for k in ("state", "tags")},
                    "config": {"served_entities": [{"name": ENTITY, "entity_name": "prod.ml.clf"}]},
                }
            )
        self.listing = json.dumps({"endpoints": summaries}).encode()
        self.tick = -1
        self.metrics = b""
        self.logs = b""

    def refresh(self) -> None:
        tick = int(time.time() // 15)
        if tick != self.tick:
            self.tick, self.metrics, self.logs = tick, metrics_text(tick), server_log(tick)

    def answer(self, path: str) -> tuple[int, bytes, bytes]:
        self.refresh()
        if path == BASE:
            return 200, b"application/json", self.listing
        if not path.startswith(BASE + "/"):
            return 404, b"application/json", b'{"error_code":"ENDPOINT_NOT_FOUND","message":"no such path"}'
        name, _, rest = path[len(BASE) + 1 :].partition("/")
        name = unquote(name)
        if name not in self.known:
            return 404, b"application/json", b'{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no such endpoint"}'
        if not rest:
            return 200, b"application/json", self.details[name]
        if rest == "metrics":
            return 200, b"text/plain; version=0.0.4", self.metrics
        if rest.endswith("/build-logs"):
            return 200, b"application/json", BUILD_LOG
        if rest.endswith("/logs"):
            return 200, b"application/json", self.logs
        return 404, b"application/json", b'{"error_code":"ENDPOINT_NOT_FOUND","message":"no such path"}'


class Connection(asyncio.Protocol):
    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
            status, content_type, body = self.remote.answer(target.split("?", 1)[0])
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (status, b"OK" if status == 200 else b"Not Found", content_type, len(body), body)
            )


async def main(port: int, count: int, prefix: str) -> None:
    remote = Remote(count, prefix)
    server = await asyncio.get_running_loop().create_server(lambda: Connection(remote), "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
