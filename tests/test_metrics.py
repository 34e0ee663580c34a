"""Metrics: gateway counters in Redis, the metrics poll, counter resets, rollups, retention,
the Prometheus export and the chart series API."""

from __future__ import annotations

import socket
import time

import pytest

from endpoints_app.gateway.metrics import GatewayMetrics, forget, read_counters
from endpoints_app.models import Deployment, Endpoint, MetricChunk, MetricCursor, MetricPoint, Replica, ReplicaState
from endpoints_app.monitoring import metrics, store
from endpoints_app.monitoring.metrics import Interval, add_point, counter_delta, quantile
from tests.conftest import endpoint_body
from tests.model_fixtures import save_iris_model
from tests.test_api_endpoints import create, mark_ready
from tests.test_model_server import CREDENTIAL, start_server, wait_ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint(api, registered_models) -> Endpoint:
    create(api, endpoint_body("metered", (registered_models["iris"], "1")))
    mark_ready("metered")
    ep = Endpoint.objects.get(name="metered")
    forget(ep.id)
    yield ep
    forget(ep.id)


def observe(endpoint_id: str, entity: str | None, *statuses_latencies: tuple[int, float]) -> None:
    gm = GatewayMetrics()
    for status, latency in statuses_latencies:
        gm.observe(endpoint_id, entity, status, latency)
    gm.flush()


def point(ep: Endpoint, entity: str = "", resolution: int = 15) -> MetricPoint:
    return MetricPoint.objects.get(endpoint=ep, served_entity_name=entity, resolution=resolution)


def test_gateway_counters_reach_redis_per_entity(endpoint):
    observe(endpoint.id, "iris-1", (200, 3.0), (200, 7.0), (400, 1.5), (503, 30.0))
    observe(endpoint.id, None, (503, 0.5))
    counters = read_counters(endpoint.id)
    assert counters["iris-1"]["count"] == 4
    assert counters["iris-1"]["4xx"] == 1 and counters["iris-1"]["5xx"] == 1
    assert counters["iris-1"]["b5"] == 1 and counters["iris-1"]["b10"] == 1 and counters["iris-1"]["b2"] == 1
    assert counters["-"]["count"] == 1


def test_quantiles_interpolate_within_buckets():
    buckets = {"5": 50.0, "10": 50.0}
    assert quantile(buckets, 0.5) == pytest.approx(5.0)
    assert quantile(buckets, 0.75) == pytest.approx(7.5)
    assert quantile({"+Inf": 3.0}, 0.99) == 60000
    assert quantile({}, 0.5) is None


def test_a_counter_reset_gives_the_new_value_not_a_negative_delta():
    assert counter_delta({"count": 100.0, "5xx": 2.0}, {"count": 130.0, "5xx": 2.0}) == {"count": 30.0, "5xx": 0.0}
    assert counter_delta({"count": 100.0, "5xx": 2.0}, {"count": 7.0, "5xx": 1.0}) == {"count": 7.0, "5xx": 1.0}


def test_the_poll_stores_the_interval_counts_and_percentiles(endpoint):
    sent = [(200, 4.0)] * 90 + [(400, 2.0)] * 6 + [(500, 40.0)] * 4
    observe(endpoint.id, "iris-1", *sent)
    metrics.poll_metrics(endpoint)
    p = point(endpoint, "iris-1")
    assert (p.request_count, p.count_4xx, p.count_5xx) == (100, 6, 4)
    assert 2.0 < p.p50_ms <= 5.0  # 90% of requests took 4 ms
    assert 25.0 < p.p99_ms <= 50.0  # the slowest 4% took 40 ms
    assert point(endpoint).request_count == 100  # the endpoint as a whole

    # The next poll counts only what happened since.
    observe(endpoint.id, "iris-1", (200, 4.0), (200, 4.0))
    MetricPoint.objects.all().delete()
    metrics.poll_metrics(endpoint)
    assert point(endpoint, "iris-1").request_count == 2


def test_a_redis_restart_does_not_make_a_negative_or_spiking_rate(endpoint):
    observe(endpoint.id, "iris-1", *[(200, 3.0)] * 50)
    metrics.poll_metrics(endpoint)
    forget(endpoint.id)  # the counters start again from zero
    observe(endpoint.id, "iris-1", *[(200, 3.0)] * 3)
    MetricPoint.objects.all().delete()
    metrics.poll_metrics(endpoint)
    assert point(endpoint, "iris-1").request_count == 3
    assert MetricCursor.objects.get(endpoint=endpoint, served_entity_name="iris-1").counters["count"] == 3


def test_replica_gauges_come_from_a_live_model_server(endpoint, tmp_path):
    server = start_server(save_iris_model(tmp_path / "m"), tmp_path, name="iris-1")
    try:
        wait_ready(server)
        deployment = Deployment.objects.get(endpoint=endpoint)
        Replica.objects.create(
            deployment=deployment,
            agent_id="t",
            index=0,
            host="127.0.0.1",
            port=server.port,
            state=ReplicaState.READY,
            credential=CREDENTIAL,  # the server refuses the poller without it
        )
        metrics.poll_metrics(endpoint)
    finally:
        server.stop()
    p = point(endpoint, "iris-1")
    assert p.replicas == 1 and p.concurrency == 0
    assert p.mem_pct is not None and 0 < p.mem_pct < 100
    assert p.cpu_pct is not None and p.cpu_pct >= 0


def test_a_dead_replica_fails_the_poll_quickly_but_keeps_the_counts(endpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    Replica.objects.create(
        deployment=Deployment.objects.get(endpoint=endpoint),
        agent_id="t",
        index=0,
        host="127.0.0.1",
        port=dead_port,
        state=ReplicaState.READY,
    )
    observe(endpoint.id, "iris-1", (200, 3.0))
    started = time.monotonic()
    with pytest.raises(metrics.MetricsPollError, match="could not read metrics"):
        metrics.poll_metrics(endpoint)
    assert time.monotonic() - started < 5
    assert point(endpoint, "iris-1").request_count == 1


def test_rollup_keeps_totals_and_prune_applies_retention(endpoint):
    base = 1_800_000_000 // 3600 * 3600
    for i in range(8):  # two minutes of 15 s points
        add_point(
            endpoint.id,
            "",
            15,
            base + i * 15,
            Interval(request_count=10, count_5xx=1, buckets={"5": 10.0}, cpu=[10.0 * i]),
        )
    written = metrics.rollup(now=base + 5 * 60)
    assert written >= 2
    minutes = MetricPoint.objects.filter(endpoint=endpoint, resolution=60).order_by("ts")
    assert [m.request_count for m in minutes] == [40, 40]
    assert sum(m.count_5xx for m in minutes) == 8
    assert minutes[0].cpu_pct == pytest.approx(15.0)  # mean of 0, 10, 20, 30
    metrics.rollup(now=base + 5 * 60)  # idempotent: recomputed, not added twice
    assert sum(m.request_count for m in MetricPoint.objects.filter(resolution=60)) == 80
    metrics.rollup(now=base + 16 * 60)  # the first quarter hour closed: its 15 s chunk is packed
    metrics.rollup(now=base + 3600 + 60)  # the hour closed: its 1 min chunk and 1 h slot
    (hour,) = store.read_points(endpoint.id, resolution=3600, start=base, end=base + 3600)
    assert hour.request_count == 80 and hour.count_5xx == 8
    assert MetricChunk.objects.filter(endpoint=endpoint, resolution=3600).count() == 1
    # The closed 15 s and 1 min spans were packed: the reads still see them once the hot rows go.
    assert MetricChunk.objects.filter(endpoint=endpoint, resolution=15).count() == 1
    assert MetricChunk.objects.filter(endpoint=endpoint, resolution=60).count() == 1

    pruned = metrics.prune(now=base + 3 * 3600)  # past the hot window, within retention
    assert pruned == 10  # 8 hot 15 s points and 2 hot 1 min points
    assert [p.request_count for p in store.read_points(endpoint.id, resolution=60, start=base, end=base + 120)] == [
        40,
        40,
    ]
    assert len(store.read_points(endpoint.id, resolution=15, start=base, end=base + 120)) == 8
    metrics.prune(now=base + 49 * 3600)  # the 15 s chunk is past 48 h
    assert store.read_points(endpoint.id, resolution=15, start=base, end=base + 120) == []
    assert len(store.read_points(endpoint.id, resolution=60, start=base, end=base + 120)) == 2


def test_the_series_api_aggregates_in_sql(api, endpoint):
    now = int(time.time()) // 60 * 60
    for i in range(20):
        add_point(
            endpoint.id, "", 15, now - 300 + i * 15, Interval(request_count=15, count_5xx=3, buckets={"10": 15.0})
        )
    response = api.get(
        "/api/2.0/serving-endpoints/metered/metric-series".replace("serving-endpoints", "modelfleet/serving-endpoints"),
        {"metrics": "request_rate,error_5xx_rate,p50_ms", "start": (now - 300) * 1000, "end": now * 1000},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["resolution"] == 15
    rates = [v for _, v in body["series"]["request_rate"]]
    assert rates and all(r == pytest.approx(1.0) for r in rates)
    assert all(v == pytest.approx(0.2) for _, v in body["series"]["error_5xx_rate"])
    assert all(5 < v <= 10 for _, v in body["series"]["p50_ms"])


def test_the_series_api_picks_coarser_resolutions_for_long_ranges():
    now = 1_800_000_000
    assert metrics.choose_resolution(now - 3600, now, now) == 15
    assert metrics.choose_resolution(now - 3 * 86400, now, now) == 60
    assert metrics.choose_resolution(now - 14 * 86400, now, now) == 3600


@pytest.mark.parametrize(
    ("params", "needle"),
    [({"metrics": "bogus"}, "unknown metric"), ({"start": "x"}, "start"), ({"start": 2000, "end": 1000}, "before")],
)
def test_the_series_api_rejects_bad_parameters(api, endpoint, params, needle):
    response = api.get("/api/2.0/modelfleet/serving-endpoints/metered/metric-series", params)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE" and needle in response.json()["message"]


def test_metrics_apis_need_a_token_and_an_endpoint(api, anon):
    assert api.get("/api/2.0/serving-endpoints/nope/metrics").status_code == 404
    assert anon.get("/api/2.0/modelfleet/serving-endpoints/nope/metric-series").status_code == 401


def test_the_export_is_prometheus_text_with_databricks_names(api, endpoint):
    observe(endpoint.id, "iris-1", (200, 3.0), (200, 30.0), (500, 3.0))
    metrics.poll_metrics(endpoint)
    response = api.get("/api/2.0/serving-endpoints/metered/metrics", HTTP_ACCEPT="text/plain")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {
        (n, lbl.get("served_entity"), lbl.get("le")): v
        for n, lbl, v in metrics.parse_prometheus(response.content.decode())
    }
    assert samples[("request_count_total", "iris-1", None)] == 3
    assert samples[("request_5xx_count_total", "iris-1", None)] == 1
    assert samples[("request_latency_ms_bucket", "iris-1", "5")] == 2
    assert samples[("request_latency_ms_bucket", "iris-1", "+Inf")] == 3
    assert ("replicas", "iris-1", None) in samples

    om = api.get("/api/2.0/serving-endpoints/metered/metrics", HTTP_ACCEPT="application/openmetrics-text")
    text = om.content.decode()
    assert om["Content-Type"].startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF") and "# TYPE request_count counter" in text


def test_the_export_counts_cold_starts(api, endpoint):
    from datetime import timedelta

    from django.utils import timezone

    deployment = Deployment.objects.get(endpoint=endpoint)
    started = timezone.now() - timedelta(seconds=10)
    for index, ready_after in enumerate((2.5, 1.75)):
        replica = Replica.objects.create(
            deployment=deployment, agent_id="t", index=index, host="127.0.0.1", port=1, state=ReplicaState.READY
        )
        Replica.objects.filter(id=replica.id).update(
            started_at=started + timedelta(seconds=index), ready_at=started + timedelta(seconds=index + ready_after)
        )
    text = api.get("/api/2.0/serving-endpoints/metered/metrics").content.decode()
    samples = {(n, lbl.get("served_entity")): v for n, lbl, v in metrics.parse_prometheus(text)}
    assert samples[("cold_starts_total", "iris-1")] == 2
    assert samples[("cold_start_duration_seconds", "iris-1")] == pytest.approx(1.75)


def test_autoscaler_decisions_are_exported_and_listed(api, endpoint):
    from django.utils import timezone

    from endpoints_app.models import ScalingDecision

    deployment = Deployment.objects.get(endpoint=endpoint)
    Deployment.objects.filter(id=deployment.id).update(desired_replicas=3)
    ScalingDecision.objects.create(
        deployment=deployment, at=timezone.now(), from_replicas=1, to_replicas=3, reason="scale up: 9 in flight"
    )
    text = api.get("/api/2.0/serving-endpoints/metered/metrics").content.decode()
    samples = {(n, lbl.get("served_entity")): v for n, lbl, v in metrics.parse_prometheus(text)}
    assert samples[("replicas_target", "iris-1")] == 3
    assert samples[("scaling_decisions_total", "iris-1")] == 1
    body = api.get("/api/2.0/modelfleet/serving-endpoints/metered/scaling-decisions").json()
    assert body["decisions"][0]["reason"] == "scale up: 9 in flight" and body["decisions"][0]["to_replicas"] == 3
    assert api.get("/api/2.0/modelfleet/serving-endpoints/metered/scaling-decisions?limit=0").status_code == 400
