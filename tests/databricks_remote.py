"""A small stateful remote workspace on loopback that answers the serving-endpoints API's write
calls as Databricks documents them (create, config, tags, AI gateway, delete) and records every
request, for the tests of remote changes (tests/test_remote_changes.py, tests/test_remote_contract.py).

It is not Modelfleet: its answers are Databricks' shapes (``config_version`` bumped by each config
update, ``pending_config`` absent once applied, tags as a list), and it refuses what Databricks
would refuse for these tests' purposes: a served entity named ``missing.*`` and a config with both
``served_entities`` and ``served_models`` (400 INVALID_PARAMETER_VALUE) and an unknown endpoint (404 RESOURCE_DOES_NOT_EXIST).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

BASE = "/api/2.0/serving-endpoints"


def endpoint(name: str, *, entities: tuple[str, ...] = ("clf-1",), version: int = 1) -> dict[str, Any]:
    served = [
        {
            "name": e,
            "entity_name": "prod.ml.clf",
            "entity_version": e.rsplit("-", 1)[-1],
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
            "state": {"deployment": "DEPLOYMENT_READY"},
        }
        for e in entities
    ]
    share = 100 // len(entities)
    routes = [{"served_model_name": e, "traffic_percentage": share} for e in entities]
    routes[0]["traffic_percentage"] += 100 - share * len(entities)
    return {
        "name": name,
        "id": f"id-{name}",
        "creator": "someone@example.com",
        "creation_timestamp": 1765000000000,
        "last_updated_timestamp": 1765000000000 + version,
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {"config_version": version, "served_entities": served, "traffic_config": {"routes": routes}},
        "tags": [],
    }


class RemoteState:
    def __init__(self) -> None:
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    state: RemoteState

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._answer(status, {"error_code": code, "message": message})

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.state.lock:
            self.state.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": raw,
                }
            )
            self._route(json.loads(raw) if raw else None)

    def _route(self, body: Any) -> None:
        path = urlsplit(self.path).path
        endpoints = self.state.endpoints
        if path == "/.well-known/databricks-config":
            return self._answer(404, {})
        if path == BASE and self.command == "GET":
            return self._answer(200, {"endpoints": [_summary(e) for e in endpoints.values()]})
        if path == BASE and self.command == "POST":
            if body["name"] in endpoints:
                return self._error(409, "RESOURCE_ALREADY_EXISTS", f"Endpoint {body['name']} already exists")
            if _refused(body.get("config") or {}):
                return self._error(400, "INVALID_PARAMETER_VALUE", "Model missing.model does not exist")
            created = endpoint(body["name"])
            created["config"] = {**copy.deepcopy(body["config"]), "config_version": 1}
            created["tags"] = body.get("tags") or []
            endpoints[body["name"]] = created
            return self._answer(200, created)
        parts = path[len(BASE) + 1 :].split("/") if path.startswith(BASE + "/") else []
        if not parts:
            return self._error(404, "NOT_FOUND", "no such path")
        name = unquote(parts[0])
        found = endpoints.get(name)
        if found is None:
            return self._error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint {name} does not exist")
        tail = parts[1:]
        if not tail and self.command == "GET":
            return self._answer(200, found)
        if not tail and self.command == "DELETE":
            del endpoints[name]
            return self._answer(200, {})
        if tail == ["config"] and self.command == "PUT":
            if _refused(body):
                return self._error(400, "INVALID_PARAMETER_VALUE", "Model missing.model does not exist")
            version = found["config"]["config_version"] + 1
            found["config"] = {**copy.deepcopy(body), "config_version": version}
            found["last_updated_timestamp"] += 1
            return self._answer(200, found)
        if tail == ["tags"] and self.command == "PATCH":
            tags = {t["key"]: t.get("value") for t in found["tags"]}
            for key in body.get("delete_tags") or []:
                tags.pop(key, None)
            tags.update({t["key"]: t.get("value") for t in body.get("add_tags") or []})
            found["tags"] = [{"key": k, "value": v} for k, v in sorted(tags.items())]
            found["last_updated_timestamp"] += 1
            return self._answer(200, {"tags": found["tags"]})
        if tail == ["ai-gateway"] and self.command == "PUT":
            found["ai_gateway"] = body
            found["last_updated_timestamp"] += 1
            return self._answer(200, body)
        return self._error(404, "NOT_FOUND", "no such path")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


def _summary(detail: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if k not in ("config", "pending_config")}


def _refused(config: dict[str, Any]) -> bool:
    if "served_entities" in config and "served_models" in config:  # Databricks: one or the other
        return True
    return any(str(e.get("entity_name", "")).startswith("missing.") for e in config.get("served_entities") or [])


@contextmanager
def serve() -> Iterator[tuple[str, RemoteState]]:
    """The remote at ``http://127.0.0.1:<port>`` and its state, for the duration of the block."""
    state = RemoteState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
