"""The remote poller (issue 16, part 2), against a real remote on loopback.

The remote is this same Modelfleet (pytest-django's ``live_server``, the real WSGI app), reached
with the databricks-sdk exactly as a Databricks workspace would be; its endpoints are this
database's local ones, and the poller's copies are rows of the workspace ``far`` beside them
(names are unique per workspace, so a copy and its original share a name). The end-to-end test
with a second, independent ``modelfleet up`` is tests/test_e2e_fleet.py.

Covered: one sweep lists, reads details of new and changed endpoints only, stores config
versions, served entities and tags, metrics as deltas of the remote's counters, health; an
endpoint gone from a successful list is marked gone, not deleted; an unreachable remote leaves
everything in place, marked stale, with the error and since when, then recovers; a 429 is
waited out for its Retry-After (not slept in the worker); a second task for the same workspace
claims nothing; the local API, the gateway's routes and every local lookup by name never see a
remote endpoint.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from endpoints_app import selectors
from endpoints_app.egress import parse_allow_list
from endpoints_app.errors import ResourceDoesNotExist
from endpoints_app.gateway import routing
from endpoints_app.gateway.metrics import GatewayMetrics
from endpoints_app.models import (
    ConfigVersion,
    Endpoint,
    EndpointTag,
    HealthChange,
    HealthStatus,
    MetricPoint,
    Role,
    ServedEntity,
    UserProfile,
    Workspace,
    WorkspaceState,
)
from endpoints_app.monitoring import remote as remote_polling
from endpoints_app.remote import transport
from endpoints_app.services import secrets as secret_services
from endpoints_app.services import workspaces as workspace_services
from endpoints_app.services.tokens import create_token

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(django_user_model):
    user = django_user_model.objects.create_user("root", "root@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def remote(live_server, settings, django_user_model) -> tuple[str, str]:
    """The live server as a workspace host (egress allowed for its port only) and a viewer's token there."""
    port = urlparse(live_server.url).port
    settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{port}")
    settings.REMOTE_POLL_SECONDS = 15.0
    secret_services._cache.clear()
    reader = django_user_model.objects.create_user("remote-reader", "reader@example.com", "pw-123456789")
    UserProfile.objects.create(user=reader, role=Role.VIEWER)
    return f"http://127.0.0.1:{port}", create_token(user=reader, comment="fleet")[1]


def local_endpoint(name: str, *, tags: dict[str, str] | None = None) -> Endpoint:
    """A local endpoint as rows (the remote's, in this test): one served entity, no deployment."""
    endpoint = Endpoint.objects.create(name=name)
    version = ConfigVersion.objects.create(
        endpoint=endpoint,
        version=1,
        traffic_config={"routes": [{"served_model_name": "clf-1", "traffic_percentage": 100}]},
    )
    ServedEntity.objects.create(
        config_version=version, position=0, name="clf-1", entity_name="main.default.clf", entity_version="1"
    )
    endpoint.active_config = version
    endpoint.save()
    for key, value in (tags or {}).items():
        EndpointTag.objects.create(endpoint=endpoint, key=key, value=value)
    return endpoint


def register(admin, host: str, token: str, name: str = "far") -> Workspace:
    return workspace_services.create_workspace(actor=admin, body={"name": name, "host": host, "token": token})


def sweep_now(workspace: Workspace) -> remote_polling.SweepResult:
    Workspace.objects.filter(pk=workspace.pk).update(next_poll_at=None)
    result = remote_polling.run_sweep(workspace.pk)
    assert result is not None
    return result


def observe(endpoint: Endpoint, entity: str, statuses: list[int], latency_ms: float = 12.0) -> None:
    counters = GatewayMetrics()
    for status in statuses:
        counters.observe(endpoint.id, entity, status, latency_ms)
    counters.stop()


def test_one_sweep_copies_the_remotes_endpoints_into_the_fleet(admin, remote):
    host, token = remote
    original = local_endpoint("alpha", tags={"team": "search"})
    workspace = register(admin, host, token)

    result = sweep_now(workspace)

    assert result.ok, result.message
    assert (result.endpoints, result.fetched) == (1, 1)
    copy = Endpoint.fleet.get(workspace=workspace, name="alpha")
    assert copy.id != original.id and copy.remote_id == original.id
    assert (copy.remote_state or {})["ready"] == "NOT_READY"
    assert copy.active_config is not None and copy.active_config.version == 1
    entity = copy.active_config.served_entities.get()
    assert (entity.name, entity.entity_name, entity.entity_version, entity.deployment_id) == (
        "clf-1",
        "main.default.clf",
        "1",
        None,
    )
    assert copy.active_config.traffic_config["routes"][0]["traffic_percentage"] == 100
    assert dict(copy.tags.values_list("key", "value")) == {"team": "search"}
    assert copy.health == HealthStatus.DOWN and "not ready" in copy.health_reason
    assert HealthChange.objects.filter(endpoint=copy, status=HealthStatus.DOWN).exists()
    workspace.refresh_from_db()
    assert workspace.state == WorkspaceState.OK and workspace.poll_failures == 0
    assert workspace.next_poll_at is not None and workspace.next_poll_at > timezone.now()
    assert workspace.last_sweep_ok_at is not None
    assert not remote_polling.is_stale(copy, workspace)

    # The local names and the local API see only the original.
    assert Endpoint.objects.filter(name="alpha").get().id == original.id
    assert selectors.endpoint_detail("alpha").id == original.id
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    listed = api.get("/api/2.0/serving-endpoints").json()["endpoints"]
    assert [e["id"] for e in listed] == [original.id]


def test_details_are_read_only_for_what_changed_and_metrics_are_deltas(admin, remote):
    host, token = remote
    original = local_endpoint("alpha")
    local_endpoint("beta")
    workspace = register(admin, host, token)
    observe(original, "clf-1", [200] * 5)
    assert sweep_now(workspace).fetched == 2

    # Nothing changed: no details read; the first export only set the cursor (no history as a spike).
    assert sweep_now(workspace).fetched == 0
    copy = Endpoint.fleet.get(workspace=workspace, name="alpha")
    assert (
        sum(MetricPoint.objects.filter(endpoint=copy, served_entity_name="").values_list("request_count", flat=True))
        == 0
    )

    observe(original, "clf-1", [200, 200, 200, 500], latency_ms=40.0)
    original.description = "changed"
    original.save()  # moves its last_updated_timestamp
    result = sweep_now(workspace)
    assert result.ok and result.fetched == 1
    copy.refresh_from_db()
    assert copy.description == "changed"
    points = MetricPoint.objects.filter(endpoint=copy, resolution=15)
    total = sum(p.request_count for p in points.filter(served_entity_name=""))
    errors = sum(p.count_5xx for p in points.filter(served_entity_name="clf-1"))
    assert (total, errors) == (4, 1)
    assert any(p.p50_ms for p in points.filter(served_entity_name="clf-1"))


def test_a_sweep_stores_in_parts_every_endpoints_metrics_and_reads_build_logs_only_when_due(admin, remote, monkeypatch):
    host, token = remote
    originals = [local_endpoint(f"ep-{i}") for i in range(5)]
    workspace = register(admin, host, token)
    for original in originals:
        observe(original, "clf-1", [200] * 3)
    monkeypatch.setattr(remote_polling, "STORE_BATCH", 2)  # three parts: 2, 2 and 1
    build_reads: list[str] = []
    real_fetch = remote_polling.iter_answers

    def counting(client, endpoints, deadline, *, build=None):  # type: ignore[no-untyped-def]
        build_reads.extend(e.name for e, _ in endpoints if build is None or e.id in build)
        return real_fetch(client, endpoints, deadline, build=build)

    monkeypatch.setattr(remote_polling, "iter_answers", counting)
    monkeypatch.setattr(remote_polling, "build_logs_due", lambda endpoint, *, now: False)
    assert sweep_now(workspace).fetched == 5
    assert sorted(build_reads) == [f"ep-{i}" for i in range(5)]  # new: details read, so build logs too

    for original in originals:
        observe(original, "clf-1", [200, 500])
    build_reads.clear()
    result = sweep_now(workspace)
    assert result.ok and result.fetched == 0 and build_reads == []  # unchanged, not their turn
    for i in range(5):
        copy = Endpoint.fleet.get(workspace=workspace, name=f"ep-{i}")
        points = MetricPoint.objects.filter(endpoint=copy, resolution=15, served_entity_name="")
        assert sum(p.request_count for p in points) == 2 and sum(p.count_5xx for p in points) == 1
        assert copy.remote_seen_at is not None and copy.health != HealthStatus.NOT_POLLED


def test_an_endpoint_gone_from_a_successful_list_is_marked_not_deleted(admin, remote):
    host, token = remote
    original = local_endpoint("alpha")
    workspace = register(admin, host, token)
    sweep_now(workspace)
    copy = Endpoint.fleet.get(workspace=workspace, name="alpha")

    original.delete()
    assert sweep_now(workspace).ok
    copy.refresh_from_db()
    assert copy.remote_gone_at is not None
    assert copy.health == HealthStatus.DOWN and "no longer" in copy.health_reason
    assert copy.active_config is not None  # its data stays

    local_endpoint("alpha")  # back (a new id on the remote)
    assert sweep_now(workspace).fetched == 1
    copy.refresh_from_db()
    assert copy.remote_gone_at is None


def test_an_unreachable_remote_keeps_everything_marked_stale_and_recovers(admin, remote, settings):
    host, token = remote
    local_endpoint("alpha")
    workspace = register(admin, host, token)
    sweep_now(workspace)
    copy = Endpoint.fleet.get(workspace=workspace, name="alpha")
    before = (copy.active_config_id, list(copy.tags.values_list("key")), copy.remote_seen_at)

    # The same remote, now on a port nothing listens on (allowed by the egress policy too).
    dead = transport_free_port()
    settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{urlparse(host).port},127.0.0.1:{dead}")
    Workspace.objects.filter(pk=workspace.pk).update(host=f"http://127.0.0.1:{dead}")
    started = time.monotonic()
    result = sweep_now(workspace)
    assert time.monotonic() - started < 8  # the poller's short retry budget, not the SDK's minutes
    assert not result.ok and "Cannot reach" in result.message
    workspace.refresh_from_db()
    assert workspace.state == WorkspaceState.ERROR and workspace.poll_failures == 1
    since = workspace.status_since
    assert since is not None
    copy = Endpoint.fleet.get(workspace=workspace, name="alpha")
    assert (copy.active_config_id, list(copy.tags.values_list("key")), copy.remote_seen_at) == before
    assert copy.remote_gone_at is None and remote_polling.is_stale(copy, workspace)
    # Backoff grows with the failures.
    assert workspace.next_poll_at is not None and (workspace.next_poll_at - timezone.now()).total_seconds() > 15

    assert not sweep_now(workspace).ok
    workspace.refresh_from_db()
    assert workspace.status_since == since and workspace.poll_failures == 2  # "unreachable since" holds

    Workspace.objects.filter(pk=workspace.pk).update(host=host)
    assert sweep_now(workspace).ok
    workspace.refresh_from_db()
    copy.refresh_from_db()
    assert workspace.state == WorkspaceState.OK and workspace.poll_failures == 0
    assert not remote_polling.is_stale(copy, workspace)


def test_a_token_the_remote_refuses_shows_as_such(admin, remote):
    host, token = remote
    local_endpoint("alpha")
    workspace = register(admin, host, token)
    sweep_now(workspace)
    from endpoints_app.models import AccessToken

    AccessToken.objects.all().delete()  # the remote revokes it
    result = sweep_now(workspace)
    assert not result.ok and "refused the token" in result.message and token not in result.message
    assert Endpoint.fleet.filter(workspace=workspace, name="alpha", remote_gone_at__isnull=True).exists()


class _TooMany(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _TooMany.calls.append(self.path)
        if self.path.startswith("/.well-known/"):
            self.send_response(404)
            self.end_headers()
            return
        body = b'{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}'
        self.send_response(429)
        self.send_header("Retry-After", "120")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_429_is_waited_out_for_its_retry_after(admin, remote, settings):
    host, token = remote
    workspace = register(admin, host, token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TooMany)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{port}")
        Workspace.objects.filter(pk=workspace.pk).update(host=f"http://127.0.0.1:{port}")
        _TooMany.calls.clear()
        started = time.monotonic()
        result = sweep_now(workspace)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert elapsed < 5  # not slept in the worker
    assert not result.ok and result.retry_after == 120 and "429" in result.message
    assert [c for c in _TooMany.calls if "serving-endpoints" in c] == ["/api/2.0/serving-endpoints"]  # asked once
    workspace.refresh_from_db()
    assert workspace.next_poll_at is not None
    wait = (workspace.next_poll_at - timezone.now()).total_seconds()
    assert 110 < wait <= 120
    assert remote_polling.due_workspaces() == []  # nothing asks it again before then
    assert remote_polling.run_sweep(workspace.pk) is None


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded() -> None:
    assert transport.retry_after_seconds("7") == 7
    assert transport.retry_after_seconds(None) == transport.DEFAULT_RETRY_AFTER_SECONDS
    assert transport.retry_after_seconds("soon") == transport.DEFAULT_RETRY_AFTER_SECONDS
    assert transport.retry_after_seconds("999999") == transport.MAX_RETRY_AFTER_SECONDS
    assert transport.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 60) == 60


def test_a_second_task_for_the_same_workspace_claims_nothing(admin, remote):
    host, token = remote
    workspace = register(admin, host, token)
    Workspace.objects.filter(pk=workspace.pk).update(next_poll_at=None)
    assert remote_polling.claim(workspace.pk) is not None
    assert remote_polling.claim(workspace.pk) is None


def test_log_text_is_read_into_new_lines_only() -> None:
    first = "2026-12-07 10:00:00 INFO a\n2026-12-07 10:00:01 INFO b\nTraceback line\n"
    lines, cursor = remote_polling.new_lines("orphan without a time\n" + first, None)
    assert [line.message for line in lines] == ["a", "b", "Traceback line"]
    again, same = remote_polling.new_lines(first, cursor)
    assert again == [] and same == cursor
    more, _ = remote_polling.new_lines(first + "2026-12-07 10:00:01 INFO c\n2026-12-07 10:00:02 ERROR d\n", cursor)
    assert [(line.message, line.level) for line in more] == [("c", "INFO"), ("d", "ERROR")]


def test_the_export_parser_reads_our_names_and_databricks_labels() -> None:
    text = (
        'request_count_total{endpoint="e",served_entity="a"} 10\n'
        'request_5xx_count_total{served_entity_name="a"} 2\n'
        'request_latency_ms_bucket{served_entity="a",le="10"} 4\n'
        'request_latency_ms_bucket{served_entity="a",le="+Inf"} 10\n'
        'request_latency_ms_sum{served_entity="a"} 300\n'
        'cpu_usage_percentage{served_entity="a"} 55\n'
        'request_count_total{served_entity="b"} NaN\n'
    )
    counters, gauges = remote_polling.parse_export(text)
    assert counters["a"]["count"] == 10 and counters["a"]["5xx"] == 2 and counters["a"]["sum"] == 300
    assert counters["a"]["b10"] == 4 and counters["a"]["b+Inf"] == 6
    assert gauges == {"a": {"cpu": 55}}
    assert "b" not in counters


def test_local_lookups_by_name_never_return_a_remote_endpoint(admin, remote):
    host, token = remote
    workspace = register(admin, host, token)
    Endpoint.fleet.create(workspace=workspace, name="only-remote")
    with pytest.raises(ResourceDoesNotExist):
        selectors.endpoint_detail("only-remote")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/2.0/serving-endpoints/only-remote").status_code == 404
    assert api.get("/api/2.0/serving-endpoints").json().get("endpoints", []) == []
    # The gateway has no route to it: queries are for local endpoints only.
    assert routing.load_route_table("only-remote").exists is False
    # A local endpoint of the same name may exist beside it, and is the one routed.
    local = local_endpoint("only-remote")
    assert Endpoint.fleet.filter(name="only-remote").count() == 2
    assert routing.load_route_table("only-remote").endpoint_id == local.id


def transport_free_port() -> int:
    from tests.stack import free_port

    return free_port()
