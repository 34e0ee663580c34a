"""The compact metric storage (monitoring.store): chunk format, tiers, downsampling, retention."""

from __future__ import annotations

import random

import pytest

from endpoints_app.gateway.metrics import BUCKET_LABELS, LATENCY_BUCKETS_MS
from endpoints_app.models import Endpoint, MetricChunk, MetricPoint
from endpoints_app.monitoring import metrics, store
from endpoints_app.monitoring.metrics import Interval, add_point
from endpoints_app.monitoring.store import StoredPoint

pytestmark = pytest.mark.django_db

BASE = 1_800_000_000 // 86400 * 86400  # a day boundary: every chunk span starts here


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint.objects.create(name="stored")


def stored(endpoint: Endpoint, ts: int, entity: str = "", resolution: int = 15, **values) -> StoredPoint:
    return StoredPoint(endpoint_id=endpoint.id, served_entity_name=entity, resolution=resolution, ts=ts, **values)


def test_a_chunk_round_trips_counts_exactly_and_gauges_within_a_millionth():
    values = {
        "request_count": 123456789.0,
        "count_5xx": 3.0,
        "p99_ms": 12.3456789,
        "cpu_pct": 0.1,
        "gpu_pct": None,
        "samples": 4.0,
    }
    data = store.encode_chunk(15, BASE, {"a": {BASE + 30: values}, "": {BASE: {"request_count": 1.0}}})
    decoded = store.decode_chunk(data, 15, BASE)
    assert set(decoded) == {"a", ""} and list(decoded["a"]) == [BASE + 30] and list(decoded[""]) == [BASE]
    point = decoded["a"][BASE + 30]
    assert point["request_count"] == 123456789.0 and point["count_5xx"] == 3.0 and point["samples"] == 4.0
    assert point["p99_ms"] == pytest.approx(12.3456789, rel=1e-6)
    assert point["cpu_pct"] == pytest.approx(0.1, rel=1e-6)
    assert point["gpu_pct"] is None and point["p50_ms"] is None


def test_the_endpoint_total_of_a_single_entity_endpoint_costs_almost_nothing():
    rng = random.Random(1)
    series = {
        BASE + i * 15: {
            "request_count": float(rng.randint(50, 150)),
            "latency_sum_ms": rng.uniform(500, 1500),
            "p50_ms": rng.uniform(5, 10),
            "p99_ms": rng.uniform(20, 80),
            "cpu_pct": rng.uniform(10, 60),
            "mem_pct": rng.uniform(30, 31),
            "replicas": 1.0,
            "samples": 1.0,
        }
        for i in range(60)
    }
    alone = len(store.encode_chunk(15, BASE, {"model-1": series}))
    both = len(store.encode_chunk(15, BASE, {"model-1": series, "": series}))
    assert both < alone + 200  # a reference per column, not a second copy
    assert (
        store.decode_chunk(store.encode_chunk(15, BASE, {"model-1": series, "": series}), 15, BASE)[""]
        == (store.decode_chunk(store.encode_chunk(15, BASE, {"model-1": series}), 15, BASE)["model-1"])
    )


def test_reads_cross_a_chunk_boundary_in_order(endpoint):
    span = 15 * store.CHUNK_SLOTS[15]
    points = [stored(endpoint, BASE + span - 30 + i * 15, request_count=float(i)) for i in range(4)]
    assert store.write_chunk_points(points) == 2
    assert MetricChunk.objects.filter(endpoint=endpoint, resolution=15).count() == 2
    read = store.read_points(endpoint.id, resolution=15, start=BASE, end=BASE + 2 * span)
    assert [(p.ts, p.request_count) for p in read] == [(p.ts, p.request_count) for p in points]
    middle = store.read_points(endpoint.id, resolution=15, start=BASE + span - 15, end=BASE + span + 15)
    assert [p.request_count for p in middle] == [1.0, 2.0]


def test_two_entities_share_a_chunk_and_read_apart(endpoint):
    store.write_chunk_points(
        [
            stored(endpoint, BASE, "a", request_count=3.0),
            stored(endpoint, BASE, "b", request_count=5.0),
            stored(endpoint, BASE, "", request_count=8.0),
            stored(endpoint, BASE + 15, "b", request_count=1.0),
        ]
    )
    assert MetricChunk.objects.filter(endpoint=endpoint).count() == 1
    read = store.read_points
    assert [p.request_count for p in read(endpoint.id, resolution=15, start=BASE, end=BASE + 60, entity="a")] == [3.0]
    assert [p.request_count for p in read(endpoint.id, resolution=15, start=BASE, end=BASE + 60, entity="b")] == [
        5.0,
        1.0,
    ]
    everything = read(endpoint.id, resolution=15, start=BASE, end=BASE + 60, entity=None)
    assert [(p.served_entity_name, p.ts) for p in everything] == [
        ("", BASE),
        ("a", BASE),
        ("b", BASE),
        ("b", BASE + 15),
    ]


def test_the_hot_point_wins_over_a_packed_one_and_both_tiers_are_read(endpoint):
    store.write_chunk_points(
        [stored(endpoint, BASE, request_count=1.0), stored(endpoint, BASE + 15, request_count=2.0)]
    )
    add_point(endpoint.id, "", 15, BASE + 15, Interval(request_count=7))
    add_point(endpoint.id, "", 15, BASE + 30, Interval(request_count=9))
    read = store.read_points(endpoint.id, resolution=15, start=BASE, end=BASE + 60)
    assert [p.request_count for p in read] == [1.0, 7.0, 9.0]


def _histogram(latencies: list[float]) -> dict[str, float]:
    buckets: dict[str, float] = {}
    for latency in latencies:
        index = next((i for i, upper in enumerate(LATENCY_BUCKETS_MS) if latency <= upper), len(LATENCY_BUCKETS_MS))
        label = BUCKET_LABELS[index]
        buckets[label] = buckets.get(label, 0.0) + 1
    return buckets


def _bounds(value: float) -> tuple[float, float]:
    """The histogram bucket a latency falls in: the error bound of a percentile read from it."""
    lower = 0.0
    for upper in LATENCY_BUCKETS_MS:
        if value <= upper:
            return lower, upper
        lower = upper
    return lower, float("inf")


def test_downsampling_keeps_counts_exact_and_percentiles_within_their_bucket(endpoint):
    rng = random.Random(7)
    every: list[float] = []
    start = BASE + 3600
    for i in range(240):  # one hour of 15 s intervals
        latencies = [rng.lognormvariate(3, 0.8) for _ in range(rng.randint(5, 40))]
        every += latencies
        add_point(
            endpoint.id,
            "model-1",
            15,
            start + i * 15,
            Interval(
                request_count=len(latencies),
                count_5xx=1,
                latency_sum_ms=sum(latencies),
                buckets=_histogram(latencies),
                cpu=[float(i % 50)],
            ),
        )
    for minute in range(1, 61):  # beat's minute-by-minute runs through the hour, then the next one
        metrics.rollup(now=start + minute * 60 + 5)
    metrics.rollup(now=start + 3600 + 65)
    minutes = store.read_points(endpoint.id, resolution=60, start=start, end=start + 3600, entity="model-1")
    assert len(minutes) == 60 and sum(p.request_count for p in minutes) == len(every)
    (hour,) = store.read_points(endpoint.id, resolution=3600, start=start, end=start + 3600, entity="model-1")
    assert hour.request_count == len(every) and hour.count_5xx == 240
    assert hour.latency_sum_ms == pytest.approx(sum(every), rel=1e-6)
    every.sort()
    for q, got in ((0.5, hour.p50_ms), (0.9, hour.p90_ms), (0.99, hour.p99_ms)):
        exact = every[int(q * len(every)) - 1]
        lower, upper = _bounds(exact)
        assert got is not None and lower <= got <= upper, (q, exact, got)
    # After the hot window only the chunks answer, with the same values.
    metrics.prune(now=start + 3600 + 3 * 3600)
    assert not MetricPoint.objects.exists()
    again = store.read_points(endpoint.id, resolution=60, start=start, end=start + 3600, entity="model-1")
    assert [p.request_count for p in again] == [p.request_count for p in minutes]
    assert len(store.read_points(endpoint.id, resolution=15, start=start, end=start + 3600, entity="model-1")) == 240


def test_retention_prunes_whole_chunks_past_each_resolution(endpoint, settings):
    settings.METRICS_RETENTION_HOURS = {15: 48.0, 60: 336.0, 3600: 2160.0}
    now = BASE + 100 * 86400
    store.write_chunk_points(
        [
            stored(endpoint, now - 49 * 3600 - 900, resolution=15),  # 15 s past 48 h
            stored(endpoint, now - 47 * 3600, resolution=15),
            stored(endpoint, now - 15 * 86400 - 3600, resolution=60),  # 1 min past 14 days
            stored(endpoint, now - 13 * 86400, resolution=60),
            stored(endpoint, now - 91 * 86400 - 86400, resolution=3600),  # 1 h past 90 days
            stored(endpoint, now - 89 * 86400, resolution=3600),
        ]
    )
    assert MetricChunk.objects.count() == 6
    assert store.prune(now) == 3
    assert sorted(MetricChunk.objects.values_list("resolution", flat=True)) == [15, 60, 3600]
    assert store.prune(now) == 0


def test_packing_is_done_once_per_closed_chunk(endpoint):
    for i in range(70):
        add_point(endpoint.id, "", 15, BASE + i * 15, Interval(request_count=1))
    assert store.pack(now=BASE + 14 * 60) == 0  # the first quarter hour has not closed
    assert store.pack(now=BASE + 16 * 60 + 1) == 1
    assert store.pack(now=BASE + 17 * 60) == 0
    (chunk,) = MetricChunk.objects.filter(resolution=15)
    assert chunk.start == BASE and len(store.decode_chunk(bytes(chunk.data), 15, BASE)[""]) == 60


def test_a_chunk_whose_packing_was_missed_is_packed_before_its_points_are_pruned(endpoint, settings):
    """Beat or the worker down past pack()'s minutes after a chunk closed: prune packs it late
    instead of deleting its only copy."""
    for i in range(60):
        add_point(endpoint.id, "", 15, BASE + i * 15, Interval(request_count=2))
    now = BASE + 3 * 3600  # pack()'s minutes for that quarter hour are long past
    assert store.pack(now=now) == 0
    store.prune(now=now)
    assert not MetricPoint.objects.filter(resolution=15).exists()
    (chunk,) = MetricChunk.objects.filter(resolution=15)
    decoded = store.decode_chunk(bytes(chunk.data), 15, BASE)[""]
    assert len(decoded) == 60 and all(values["request_count"] == 2 for values in decoded.values())


def test_chart_series_read_each_resolution_from_the_chunks(endpoint):
    now = BASE + 30 * 86400
    points = [stored(endpoint, now - 3600 + i * 15, request_count=15.0, p50_ms=4.0) for i in range(240)]
    points += [
        stored(endpoint, now - 3 * 86400 + i * 60, resolution=60, request_count=60.0, cpu_pct=50.0)
        for i in range(3 * 1440)
    ]
    points += [
        stored(endpoint, now - 14 * 86400 + i * 3600, resolution=3600, request_count=3600.0) for i in range(14 * 24)
    ]
    store.write_chunk_points(points)
    for span, resolution in ((3600, 15), (3 * 86400, 60), (14 * 86400, 3600)):
        body = metrics.series(endpoint, ["request_rate", "p50_ms", "cpu_pct"], start=now - span, end=now, now=now)
        assert body["resolution"] == resolution
        rates = [v for _, v in body["series"]["request_rate"]]
        assert len(rates) <= metrics.MAX_CHART_POINTS + 1 and all(r == pytest.approx(1.0) for r in rates)
    body = metrics.series(endpoint, ["p50_ms"], start=now - 3600, end=now, now=now)
    assert all(v == pytest.approx(4.0) for _, v in body["series"]["p50_ms"])


def test_the_migrations_frozen_encoder_writes_chunks_the_store_reads():
    """Migration 0023 packs existing points with its own copy of chunk format 1 (a migration must
    not import the app's code): what it writes must read back through the store as written."""
    import importlib

    migration = importlib.import_module("endpoints_app.migrations.0023_compact_metrics")
    rng = random.Random(3)
    series = {
        "": {BASE + 15 * i: {field: rng.random() * 100 for field in store.FIELDS} for i in range(0, 60, 2)},
        "b": {BASE + 45: {"request_count": 7.0, "p99_ms": None}},
    }
    data = migration.encode_chunk(15, BASE, series)
    assert data == store.encode_chunk(15, BASE, series)
    decoded = store.decode_chunk(data, 15, BASE)
    assert decoded["b"][BASE + 45]["request_count"] == 7.0 and decoded["b"][BASE + 45]["p99_ms"] is None
    for ts, values in series[""].items():
        assert decoded[""][ts]["request_count"] == values["request_count"]
        assert decoded[""][ts]["p50_ms"] == pytest.approx(values["p50_ms"], rel=1e-6)


def test_a_chart_that_ends_now_shows_the_interval_polled_this_second(endpoint):
    """The interval that starts at the chart's end is shown: a poll and a chart read in the same
    second, at an interval's start, used to find nothing."""
    add_point(endpoint.id, "", 15, BASE, Interval(request_count=30, count_5xx=3))
    chart = metrics.series(endpoint, ["error_5xx_rate"], start=BASE - 3600, end=BASE, now=BASE)
    assert [v for _, v in chart["series"]["error_5xx_rate"] if v] == [pytest.approx(3 / 15)]
