"""Operations: /healthz, /readyz, the fleet-wide /metrics, the Grafana dashboard, JSON logs and
request ids (endpoints_app.api.operations, monitoring.prometheus, observability).

The unit tests use the real database and Redis of the test run; the end-to-end ones start
`modelfleet up` with JSON logs and a metrics token, and read what a load balancer, Prometheus and
a log shipper would.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from endpoints_app.api import operations
from endpoints_app.gateway.metrics import GatewayMetrics, forget
from endpoints_app.models import Endpoint
from endpoints_app.monitoring import prometheus
from endpoints_app.observability import logformat, processes, requestid
from endpoints_app.services.endpoints import create_endpoint
from tests.conftest import endpoint_body

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana" / "modelfleet.json"
METRICS_TOKEN = "scrape-token-0123456789abcdef"


# --- request ids and log lines -----------------------------------------------------------------


def test_a_sane_caller_request_id_is_kept_and_anything_else_replaced():
    assert requestid.accept("4bf92f3577b34da6a3ce929d0e0e4736") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert requestid.accept("lb-1:abc/def=") == "lb-1:abc/def="
    for hostile in ("", "two words", "line\nbreak", "x" * 129, 'quote"', "ünïcode"):
        replaced = requestid.accept(hostile)
        assert replaced != hostile and re.fullmatch(r"[0-9a-f]{32}", replaced)


def _run_asgi(app, headers: list[tuple[bytes, bytes]]) -> dict:
    from asgiref.testing import ApplicationCommunicator

    async def go() -> dict:
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": headers, "query_string": b""}
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(5)
        await communicator.receive_output(5)
        return start

    return asyncio.run(go())


def test_every_answer_and_every_log_line_written_meanwhile_carry_the_request_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(requestid.RequestIdFilter())
    handler.setFormatter(logformat.JsonFormatter())
    log = logging.getLogger("tests.ops.requestid")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    seen_by_app = []

    async def app(scope, receive, send):
        seen_by_app.append(dict(scope["headers"]).get(b"x-request-id"))
        log.info("handling\nacross two lines")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"spoofed")]})
        await send({"type": "http.response.body", "body": b"ok"})

    try:
        given = _run_asgi(requestid.RequestIdMiddleware(app), [(b"x-request-id", b"caller-id-1")])
        generated = _run_asgi(requestid.RequestIdMiddleware(app), [(b"x-request-id", b"bad id\r")])
        log.info("outside any request")
    finally:
        log.removeHandler(handler)

    assert dict(given["headers"])[b"x-request-id"] == b"caller-id-1"  # the app's own header replaced
    new_id = dict(generated["headers"])[b"x-request-id"].decode()
    assert re.fullmatch(r"[0-9a-f]{32}", new_id)
    assert seen_by_app == [b"caller-id-1", new_id.encode()]  # downstream (and the replica) sees the id used
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # the two-line message stays one line
    entries = [json.loads(line) for line in lines]
    assert [e["request_id"] for e in entries] == ["caller-id-1", new_id, None]
    assert entries[0]["message"] == "handling\nacross two lines" and entries[0]["level"] == "INFO"
    assert {"ts", "logger", "process", "pid"} <= set(entries[0])


def test_the_text_format_names_the_request_id_too():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "Not Found: /nope", None, None)
    requestid.RequestIdFilter().filter(record)
    assert logging.Formatter(logformat.TEXT_FORMAT).format(record).endswith("WARNING x [-]: Not Found: /nope")


def test_an_unknown_log_format_stops_start_up():
    import subprocess
    import sys

    env = {"MODELFLEET_LOG_FORMAT": "xml", "DJANGO_SETTINGS_MODULE": "dashboard.settings", "PATH": "/usr/bin:/bin"}
    env["MODELFLEET_DATA_DIR"] = str(settings.DATA_DIR)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode != 0 and "MODELFLEET_LOG_FORMAT must be 'text' or 'json'" in result.stderr


# --- /metrics: who may scrape ------------------------------------------------------------------


def test_metrics_are_for_loopback_by_default_and_for_the_token_holder(settings):
    settings.METRICS_TOKEN = None
    assert operations.metrics_refusal("127.0.0.1", None) is None
    assert operations.metrics_refusal("::1", None) is None
    assert operations.metrics_refusal("10.1.2.3", None)[:2] == (403, "PERMISSION_DENIED")
    settings.METRICS_TOKEN = METRICS_TOKEN
    assert operations.metrics_refusal("10.1.2.3", f"Bearer {METRICS_TOKEN}") is None
    assert operations.metrics_refusal("10.1.2.3", "Bearer wrong")[:2] == (401, "UNAUTHENTICATED")
    assert operations.metrics_refusal("10.1.2.3", None)[:2] == (401, "UNAUTHENTICATED")
    assert operations.metrics_refusal("127.0.0.1", "Bearer wrong")[:2] == (401, "UNAUTHENTICATED")
    import ipaddress

    settings.METRICS_ALLOW = [ipaddress.ip_network("10.1.0.0/16")]
    assert operations.metrics_refusal("10.1.2.3", None) is None
    assert operations.metrics_refusal("127.0.0.1", None)[:2] == (401, "UNAUTHENTICATED")


# --- /readyz -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ready_when_database_redis_and_registry_answer(registered_models):
    ready, checks = operations.readiness()
    assert checks == {"database": "ok", "redis": "ok", "registry": "ok"} and ready


@pytest.mark.django_db
def test_not_ready_names_each_check_that_failed(settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path / 'no-redis.sock'}"
    settings.MLFLOW_TRACKING_URI = f"sqlite:///{tmp_path / 'missing.sqlite3'}"
    ready, checks = operations.readiness()
    assert not ready
    assert checks["database"] == "ok"
    assert checks["redis"].startswith("ConnectionError")
    assert "does not exist" in checks["registry"]
    assert not (tmp_path / "missing.sqlite3").exists()  # the probe created nothing


# --- /metrics: what it says ----------------------------------------------------------------------


def _families(body: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _samples(families: dict, name: str) -> dict[tuple, float]:
    out = {}
    for family in families.values():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def two_endpoints(registered_models, user):
    endpoints = [
        create_endpoint(actor=user, body=endpoint_body(name, (registered_models["iris"], "1"))).applied()
        for name in ("m-a", "m-b")
    ]
    yield endpoints
    for endpoint in endpoints:
        forget(endpoint.id)


@pytest.mark.django_db
def test_fleet_metrics_serve_each_endpoints_gateway_counters_under_databricks_names(two_endpoints):
    a, b = two_endpoints
    gateway = GatewayMetrics()
    gateway.observe(a.id, "iris-1", 200, 12.0)
    gateway.observe(a.id, "iris-1", 503, 40.0)
    gateway.observe(b.id, None, 404, 1.0)
    gateway.flush()

    families = _families(prometheus.render())
    assert _samples(families, "request_count_total")[(("endpoint", "m-a"), ("served_entity", "iris-1"))] == 2
    assert _samples(families, "request_5xx_count_total")[(("endpoint", "m-a"), ("served_entity", "iris-1"))] == 1
    assert _samples(families, "request_4xx_count_total")[(("endpoint", "m-b"), ("served_entity", ""))] == 1
    buckets = _samples(families, "request_latency_ms_bucket")
    assert buckets[(("endpoint", "m-a"), ("le", "25"), ("served_entity", "iris-1"))] == 1
    assert buckets[(("endpoint", "m-a"), ("le", "+Inf"), ("served_entity", "iris-1"))] == 2
    assert _samples(families, "request_latency_ms_sum")[(("endpoint", "m-a"), ("served_entity", "iris-1"))] == 52
    health = _samples(families, "modelfleet_endpoint_health")
    assert health[(("endpoint", "m-a"), ("health", Endpoint.objects.get(id=a.id).health))] == 1
    assert _samples(families, "modelfleet_endpoints")[()] == 2

    openmetrics = prometheus.render(openmetrics=True).decode()
    assert openmetrics.rstrip().endswith("# EOF") and "# TYPE request_count counter" in openmetrics


@pytest.mark.django_db
def test_a_scrape_costs_the_same_queries_for_one_endpoint_or_many(
    registered_models, user, django_assert_max_num_queries
):
    create_endpoint(actor=user, body=endpoint_body("q-0", (registered_models["iris"], "1")))
    with django_assert_max_num_queries(prometheus.QUERY_BUDGET):
        prometheus.render()
    for i in range(1, 6):
        create_endpoint(actor=user, body=endpoint_body(f"q-{i}", (registered_models["iris"], "1")))
    with django_assert_max_num_queries(prometheus.QUERY_BUDGET):
        families = _families(prometheus.render())
    health = _samples(families, "modelfleet_endpoint_health")
    assert {dict(labels)["endpoint"] for labels in health} == {f"q-{i}" for i in range(6)}


def test_a_process_heartbeat_shows_as_up_and_a_stale_one_as_down():
    beat = processes.Heartbeat("worker", include_children=True)
    beat.beat()
    from endpoints_app.redis_client import get_redis

    stale_key = f"{processes.KEY_PREFIX}agent:gone-host:4242"
    get_redis().hset(
        stale_key,
        mapping={
            "cpu_seconds": "1.5",
            "resident_memory_bytes": "1000",
            "open_fds": "3",
            "threads": "1",
            "start_time_seconds": "1.0",
            "beat_at": repr(time.time() - 600),
        },
    )
    try:
        up = _samples(_families(prometheus.render_processes()), "modelfleet_process_up")
    finally:
        get_redis().delete(beat.key, stale_key)
    instance = beat.key.split(":", 3)[3]
    assert up[(("instance", instance), ("role", "worker"))] == 1
    assert up[(("instance", "gone-host:4242"), ("role", "agent"))] == 0


# --- the Grafana dashboard -----------------------------------------------------------------------

PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "clamp_min", "le", "without", "avg", "max", "min",
    "count", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
}  # fmt: skip


def exported_series_names() -> set[str]:
    """Every sample name the collector can write: counters as <name>_total, histograms' three series."""
    names = set()
    families = [*prometheus.FleetCollector().collect(), *prometheus.ProcessCollector().collect()]
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


@pytest.mark.django_db
def test_the_grafana_dashboard_queries_only_metrics_we_export():
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    exported = exported_series_names()
    used = set()
    for expr in exprs:
        # Label matchers, ranges, strings, groupings (by (endpoint)) and numbers are not metric names.
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
        bare = re.sub(r"(?<![A-Za-z_:])\d+(?:\.\d+)?(?:e[-+]?\d+)?", " ", bare)
        used |= {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if w not in PROMQL_WORDS}
    assert used and used <= exported, sorted(used - exported)
    # The Databricks names a Databricks user's dashboards already query, and every process role.
    assert {"request_count_total", "request_5xx_count_total", "request_latency_ms_bucket"} <= used
    assert {"cpu_usage_percentage", "mem_usage_percentage", "provisioned_concurrent_requests_total"} <= used
    assert {"modelfleet_process_up", "modelfleet_process_cpu_seconds_total"} <= used
    variable = dashboard["templating"]["list"][1]
    assert re.search(r"label_values\((\w+), endpoint\)", variable["definition"]).group(1) in exported


# --- the packaging side of operations: compose waits on readiness --------------------------------


def test_compose_starts_each_service_when_what_it_needs_is_ready():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["valkey"]["image"].startswith("valkey/valkey:") and "redis" not in services
    assert "@valkey:6379" in compose["x-modelfleet"]["environment"]["REDIS_URL"]
    for name in ("postgres", "valkey", "web", "worker"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["web"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "valkey": {"condition": "service_healthy"},
    }
    for name in ("worker", "beat", "runtime"):
        assert services[name]["depends_on"] == {"web": {"condition": "service_healthy"}}, name
    for service in services.values():  # nothing waits on a service merely "started"
        for dependency in (service.get("depends_on") or {}).values():
            assert dependency["condition"] == "service_healthy"


def test_the_image_installs_from_the_lockfile_binds_all_interfaces_and_checks_its_health():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY package.json package-lock.json" in dockerfile and "RUN npm ci" in dockerfile
    assert "npm install" not in dockerfile
    assert "MODELFLEET_BIND=0.0.0.0:8000" in dockerfile
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", dockerfile, re.M)
    assert "collectstatic_if_changed" in dockerfile


# --- the live stack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def json_stack(django_db_setup, django_db_blocker, registered_models, tmp_path_factory):
    """`modelfleet up` with JSON log lines and a metrics token."""
    from django.db import connection

    from tests.stack import database_url, start_stack

    with django_db_blocker.unblock():
        db = database_url(connection.settings_dict)
    running = start_stack(
        database=db,
        token="",
        log_path=tmp_path_factory.mktemp("ops-stack") / "stack.log",
        extra_env={"MODELFLEET_LOG_FORMAT": "json", "MODELFLEET_METRICS_TOKEN": METRICS_TOKEN},
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.e2e
@pytest.mark.django_db  # the stack runs on the test database, which exists only when a test asks for it
def test_health_and_readiness_answer_probes_by_any_host_name(json_stack):
    for host in (None, "10.0.0.7:8000", "modelfleet-web"):
        headers = {"Host": host} if host else {}
        health = requests.get(f"{json_stack.url}/healthz", headers=headers, timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = requests.get(f"{json_stack.url}/readyz", headers=headers, timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok", "registry": "ok"}}
    refused = requests.post(f"{json_stack.url}/healthz", timeout=10)
    assert refused.status_code == 405 and refused.json()["error_code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.e2e
@pytest.mark.django_db  # the stack runs on the test database, which exists only when a test asks for it
def test_the_live_metrics_need_the_token_from_afar_and_show_every_process(json_stack):
    # Loopback is allowed by default, but a wrong token is refused wherever it comes from.
    wrong = requests.get(f"{json_stack.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "UNAUTHENTICATED"
    deadline = time.monotonic() + 60
    while True:
        scrape = requests.get(
            f"{json_stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        )
        assert scrape.status_code == 200, json_stack.log()[-3000:]
        assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
        up = _samples(_families(scrape.content), "modelfleet_process_up")
        roles = {dict(labels)["role"] for labels, value in up.items() if value == 1}
        if roles >= {"web", "worker", "beat", "agent"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert roles >= {"web", "worker", "beat", "agent"}, up
    memory = _samples(_families(scrape.content), "modelfleet_process_resident_memory_bytes")
    assert all(value > 10_000_000 for value in memory.values())  # real processes, tens of MB each


@pytest.mark.e2e
@pytest.mark.django_db  # the stack runs on the test database, which exists only when a test asks for it
def test_every_answer_has_a_request_id_and_every_log_line_is_json(json_stack):
    given = requests.get(f"{json_stack.url}/no-such-page", headers={"X-Request-Id": "trace-e2e-42"}, timeout=10)
    assert given.status_code == 404 and given.headers["X-Request-Id"] == "trace-e2e-42"
    api = requests.get(f"{json_stack.url}/api/2.0/serving-endpoints", headers={"X-Request-Id": "bad id"}, timeout=10)
    assert api.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", api.headers["X-Request-Id"])
    health = requests.get(f"{json_stack.url}/healthz", timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", health.headers["X-Request-Id"])

    deadline = time.monotonic() + 10
    while "trace-e2e-42" not in json_stack.log() and time.monotonic() < deadline:
        time.sleep(0.3)
    lines = [line for line in json_stack.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, from every process, is one JSON object
    assert all({"ts", "level", "logger", "message", "process"} <= set(e) for e in entries)
    processes_seen = {e["process"] for e in entries}
    assert processes_seen >= {"supervisor", "web", "worker", "beat"} and processes_seen & {"agent", "runtime"}
    not_found = [e for e in entries if e["request_id"] == "trace-e2e-42"]
    assert not_found and "Not Found: /no-such-page" in not_found[0]["message"], not_found


# --- OpenTelemetry: gateway -> replica, only with an OTLP endpoint ---------------------------------


class _Collector:
    """An OTLP/HTTP trace receiver on loopback: what the exporter sends, decoded."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = self.spans = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _gateway_call_to_replica(app_wrapper) -> tuple[dict, list[bytes]]:
    """A request through the middlewares to an app that calls a replica with the gateway's pool."""
    from endpoints_app.gateway.upstream import UpstreamPool

    replica_heads: list[bytes] = []

    async def go() -> dict:
        async def replica(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            replica_heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(replica, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool()

        async def gateway(scope, receive, send):
            status, _, body = await pool.post(
                f"http://127.0.0.1:{port}", "/invocations", b"{}", "application/json", timeout=5
            )
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": body})

        from asgiref.testing import ApplicationCommunicator

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/serving-endpoints/churn/invocations",
            "query_string": b"",
            "headers": [
                (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                (b"x-request-id", b"rid-trace-1"),
            ],
        }
        communicator = ApplicationCommunicator(app_wrapper(gateway), scope)
        await communicator.send_input({"type": "http.request", "body": b"{}"})
        start = await communicator.receive_output(10)
        await communicator.receive_output(10)
        await pool.aclose()
        server.close()
        return start

    return asyncio.run(go()), replica_heads


def test_without_an_otlp_endpoint_nothing_is_traced_or_sent(monkeypatch):
    from endpoints_app.observability import tracing

    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup("modelfleet") is False and not tracing.enabled()
    start, heads = _gateway_call_to_replica(lambda app: requestid.RequestIdMiddleware(tracing.TracingMiddleware(app)))
    assert start["status"] == 200
    assert b"traceparent" not in heads[0].lower()


def test_with_an_otlp_endpoint_the_request_and_its_replica_call_are_one_trace(monkeypatch):
    from endpoints_app.observability import tracing

    collector = _Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    try:
        assert tracing.setup("modelfleet-test")
        start, heads = _gateway_call_to_replica(
            lambda app: requestid.RequestIdMiddleware(tracing.TracingMiddleware(app))
        )
    finally:
        tracing.shutdown()  # exports what is pending, and tracing is off again for the other tests
        collector.close()
    assert start["status"] == 200
    server = next(s for s in collector.spans if s.name == "POST /serving-endpoints/{name}/invocations")
    client = next(s for s in collector.spans if s.name == "POST replica")
    assert server.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"  # the caller's trace continues
    assert server.parent_span_id.hex() == "b7ad6b7169203331"
    assert client.trace_id == server.trace_id and client.parent_span_id == server.span_id
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["modelfleet.endpoint"].string_value == "churn"
    assert attributes["modelfleet.request_id"].string_value == "rid-trace-1"
    assert attributes["http.response.status_code"].int_value == 200
    # The replica was told which span called it.
    traceparent = re.search(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-01", heads[0], re.I)
    assert traceparent and traceparent.group(1).decode() == client.trace_id.hex()
    assert traceparent.group(2).decode() == client.span_id.hex()
