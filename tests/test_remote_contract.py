"""Contract: every request the remote poller sends has a shape the databricks-sdk itself sends.

A remote Modelfleet might accept requests a Databricks workspace would not. So here the remote is
a small loopback server answering as Databricks documents it (field names such as
``served_entity_name`` in the metrics export, ``served_entities`` with ``state``), which records
every request; each one must match a call of the SDK's own ``ServingEndpointsAPI``, read from the
SDK's source with ``ast`` (method, path template, ``Accept`` header, no body where the SDK sends
none, no query parameter it does not send), and carry the workspace's token and no other
credential. A request the SDK would not make gets a 404 from the server and fails the test.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from databricks.sdk.service import serving

from endpoints_app.egress import parse_allow_list
from endpoints_app.models import Endpoint, HealthStatus, LogLine, MetricPoint, Role, UserProfile, WorkspaceState
from endpoints_app.monitoring import remote as remote_polling
from endpoints_app.services import secrets as secret_services
from endpoints_app.services import workspaces as workspace_services

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "dapi" + "0123456789abcdef" * 2


@dataclass(frozen=True)
class Shape:
    name: str  # the SDK method
    method: str
    path: re.Pattern[str]
    accept: str
    body: bool
    query: frozenset[str]


def sdk_shapes() -> list[Shape]:
    """Every ``self._api.do(...)`` call of the SDK's ServingEndpointsAPI, as request shapes."""
    tree = ast.parse(inspect.getsource(serving.ServingEndpointsAPI))
    shapes = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        accept = ""
        for node in ast.walk(function):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "Accept" and isinstance(value, ast.Constant):
                        accept = str(value.value)
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "do"):
                continue
            method, path = node.args[0], node.args[1]
            assert isinstance(method, ast.Constant)
            if isinstance(path, ast.Constant):
                pattern = re.escape(str(path.value))
            else:
                assert isinstance(path, ast.JoinedStr)
                pattern = "".join(
                    re.escape(str(part.value)) if isinstance(part, ast.Constant) else "[^/]+" for part in path.values
                )
            keywords = {k.arg for k in node.keywords}
            shapes.append(
                Shape(
                    name=function.name,
                    method=str(method.value),
                    path=re.compile(pattern + "$"),
                    accept=accept,
                    body="body" in keywords,
                    query=frozenset(_query_keys(function)) if "query" in keywords else frozenset(),
                )
            )
    return shapes


def _query_keys(function: ast.FunctionDef) -> set[str]:
    keys: set[str] = set()
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "query"
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(str(node.slice.value))
    return keys


# --- a remote that answers as Databricks documents it ------------------------------------------------

ENDPOINT = {
    "name": "churn",
    "id": "0f3c1a2b3c4d",
    "creator": "someone@example.com",
    "creation_timestamp": 1765000000000,
    "last_updated_timestamp": 1765000100000,
    "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
    "task": "llm/v1/chat",
    "tags": [{"key": "team", "value": "growth"}],
}
DETAIL = {
    **ENDPOINT,
    "config": {
        "config_version": 7,
        "served_entities": [
            {
                "name": "churn-3",
                "entity_name": "prod.ml.churn",
                "entity_version": "3",
                "workload_size": "Small",
                "workload_type": "CPU",
                "scale_to_zero_enabled": False,
                "state": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""},
            }
        ],
        "traffic_config": {"routes": [{"served_model_name": "churn-3", "traffic_percentage": 100}]},
    },
    "permission_level": "CAN_VIEW",
    "route_optimized": False,
}
METRICS = (
    "# HELP request_count_total Number of requests\n"
    "# TYPE request_count_total counter\n"
    'request_count_total{{served_entity_name="churn-3"}} {count}\n'
    'request_5xx_count_total{{served_entity_name="churn-3"}} 0\n'
    'cpu_usage_percentage{{served_entity_name="churn-3"}} 41.5\n'
)
LOGS = "2026-12-07T10:00:00Z INFO model loaded\n2026-12-07T10:00:01Z WARNING slow start\n"


class DatabricksLike(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    count = 10

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._record()
        path = urlsplit(self.path).path
        routes: dict[str, tuple[str, bytes]] = {
            "/api/2.0/serving-endpoints": ("application/json", json.dumps({"endpoints": [ENDPOINT]}).encode()),
            "/api/2.0/serving-endpoints/churn": ("application/json", json.dumps(DETAIL).encode()),
            "/api/2.0/serving-endpoints/churn/metrics": (
                "text/plain; version=0.0.4",
                METRICS.format(count=DatabricksLike.count).encode(),
            ),
            "/api/2.0/serving-endpoints/churn/served-models/churn-3/logs": (
                "application/json",
                json.dumps({"logs": LOGS}).encode(),
            ),
            "/api/2.0/serving-endpoints/churn/served-models/churn-3/build-logs": (
                "application/json",
                json.dumps({"logs": "2026-12-07T09:59:00Z built\n"}).encode(),
            ),
        }
        if path not in routes:
            self._answer(404, "application/json", b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "no"}')
            return
        self._answer(200, *routes[path])

    def do_POST(self) -> None:  # noqa: N802
        self._record()
        self._answer(404, "application/json", b'{"error_code": "NOT_FOUND", "message": "no"}')

    do_PUT = do_PATCH = do_DELETE = do_POST  # noqa: N815

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        DatabricksLike.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": self.rfile.read(length) if length else b"",
            }
        )

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def databricks_like(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), DatabricksLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{port}")
    secret_services._cache.clear()
    DatabricksLike.requests = []
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_every_request_the_poller_sends_is_one_the_sdk_sends(databricks_like, django_user_model):
    admin = django_user_model.objects.create_user("root", "root@example.com", "pw-123456789")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    workspace = workspace_services.create_workspace(
        actor=admin, body={"name": "dbx", "host": databricks_like, "token": TOKEN}
    )
    checked = len(DatabricksLike.requests)  # the registration's check listed once
    for count in (10, 25):  # two sweeps: the second turns the counters into a delta
        DatabricksLike.count = count
        workspace.refresh_from_db()
        type(workspace).objects.filter(pk=workspace.pk).update(next_poll_at=None)
        result = remote_polling.run_sweep(workspace.pk)
        assert result is not None and result.ok, result and result.message

    shapes = sdk_shapes()
    assert {s.name for s in shapes} >= {"list", "get", "export_metrics", "logs", "build_logs"}
    used = set()
    for request in DatabricksLike.requests:
        url = urlsplit(request["path"])
        headers = request["headers"]
        if url.path == "/.well-known/databricks-config":  # the SDK's own host discovery
            continue
        assert headers.get("authorization") == f"Bearer {TOKEN}", request
        assert "modelfleet/" in headers.get("user-agent", ""), request
        matching = [s for s in shapes if s.method == request["method"] and s.path.match(url.path)]
        assert matching, f"no SDK call sends {request['method']} {url.path}"
        shape = matching[0]
        assert headers.get("accept") == shape.accept, (shape.name, headers.get("accept"))
        assert not request["body"] or shape.body, (shape.name, request["body"])
        keys = {pair.split("=", 1)[0] for pair in url.query.split("&") if pair}
        assert keys <= shape.query, (shape.name, keys)
        used.add(shape.name)
    assert used == {"list", "get", "export_metrics", "logs", "build_logs"}
    # One list per sweep; details only for the new endpoint (the second sweep saw no change).
    swept = [r["path"] for r in DatabricksLike.requests[checked:]]
    assert swept.count("/api/2.0/serving-endpoints") == 2
    assert swept.count("/api/2.0/serving-endpoints/churn") == 1

    # And what Databricks answered landed where local endpoints' data does.
    copy = Endpoint.fleet.get(workspace=workspace, name="churn")
    assert copy.remote_id == "0f3c1a2b3c4d" and copy.active_config is not None
    assert copy.active_config.version == 7 and copy.health == HealthStatus.HEALTHY
    entity = copy.active_config.served_entities.get()
    assert (entity.entity_name, entity.entity_version, entity.extra["state"]["deployment"]) == (
        "prod.ml.churn",
        "3",
        "DEPLOYMENT_READY",
    )
    points = MetricPoint.objects.filter(endpoint=copy, served_entity_name="churn-3", resolution=15)
    assert sum(p.request_count for p in points) == 15 and any(p.cpu_pct == 41.5 for p in points)
    assert sorted(LogLine.objects.filter(endpoint=copy).values_list("kind", "message")) == [
        ("build", "built"),
        ("server", "model loaded"),
        ("server", "slow start"),
    ]
    workspace.refresh_from_db()
    assert workspace.state == WorkspaceState.OK


def test_every_write_a_remote_change_sends_is_one_the_sdk_sends(settings, django_user_model):
    """Issue 16 part 4: create, config (traffic split), tags, AI gateway and delete on a remote
    endpoint, and the reads around them (the base config_version, the copy refreshed after), each
    one a request of the SDK's own shape, with a JSON body exactly where the SDK sends one."""
    from endpoints_app.models import Workspace
    from endpoints_app.services import remote_changes
    from tests import databricks_remote

    with databricks_remote.serve() as (url, state):
        settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{url.rsplit(':', 1)[1]}")
        secret_services._cache.clear()
        state.endpoints["churn"] = databricks_remote.endpoint("churn")
        admin = django_user_model.objects.create_user("root", "root@example.com", "pw-123456789")
        UserProfile.objects.create(user=admin, role=Role.ADMIN)
        workspace = workspace_services.create_workspace(actor=admin, body={"name": "dbx", "host": url, "token": TOKEN})
        assert isinstance(workspace, Workspace)
        assert remote_polling.run_sweep(workspace.pk) is not None
        config = {
            "served_entities": [
                {"name": "a", "entity_name": "prod.ml.clf", "entity_version": "1", "workload_size": "Small"},
                {"name": "b", "entity_name": "prod.ml.clf", "entity_version": "2", "workload_size": "Small"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "a", "traffic_percentage": 80},
                    {"served_model_name": "b", "traffic_percentage": 20},
                ]
            },
        }
        common = {"actor": admin, "workspace": workspace}
        remote_changes.create_remote_endpoint(body={"name": "fresh", "config": config}, **common).applied()
        remote_changes.update_remote_config(name="churn", body=config, **common).applied()
        remote_changes.patch_remote_tags(
            name="churn", body={"add_tags": [{"key": "team", "value": "ml"}], "delete_tags": ["old"]}, **common
        ).applied()
        remote_changes.put_remote_ai_gateway(
            name="churn", body={"usage_tracking_config": {"enabled": True}}, **common
        ).applied()
        remote_changes.delete_remote_endpoint(name="fresh", **common).applied()
        requests = list(state.requests)

    shapes = sdk_shapes()
    used = set()
    for request in requests:
        url_parts = urlsplit(request["path"])
        if url_parts.path == "/.well-known/databricks-config":
            continue
        headers = request["headers"]
        assert headers.get("authorization") == f"Bearer {TOKEN}", request
        matching = [s for s in shapes if s.method == request["method"] and s.path.match(url_parts.path)]
        assert matching, f"no SDK call sends {request['method']} {url_parts.path}"
        shape = matching[0]
        # The SDK sets no Accept for delete: requests' default goes, as here.
        assert headers.get("accept") == (shape.accept or "*/*"), (shape.name, headers.get("accept"))
        if request["body"]:
            assert shape.body, (shape.name, request["body"])
            assert headers.get("content-type") == "application/json"
            json.loads(request["body"])
        used.add(shape.name)
    assert {"create", "update_config", "patch", "put_ai_gateway", "delete", "get"} <= used
    sent = {r["method"] + " " + urlsplit(r["path"]).path: json.loads(r["body"] or b"null") for r in requests}
    assert sent["PUT /api/2.0/serving-endpoints/churn/config"]["traffic_config"] == config["traffic_config"]
    assert sent["PATCH /api/2.0/serving-endpoints/churn/tags"] == {
        "add_tags": [{"key": "team", "value": "ml"}],
        "delete_tags": ["old"],
    }
    assert sent["POST /api/2.0/serving-endpoints"]["name"] == "fresh"
    assert sent["DELETE /api/2.0/serving-endpoints/fresh"] is None
