"""The 15 s → 1 min rollup is incremental (issue 16 part 6): each run merges only the minutes that
closed and were not rolled up yet, and ends with what a full recompute of the window gives."""

from __future__ import annotations

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from endpoints_app.models import Endpoint, MetricPoint
from endpoints_app.monitoring import store
from endpoints_app.monitoring.metrics import Interval, add_point

pytestmark = pytest.mark.django_db

BASE = 1_800_000_000 // 86400 * 86400 + 7200


def minute_rows() -> list[tuple]:
    return list(
        MetricPoint.objects.filter(resolution=60)
        .order_by("endpoint_id", "served_entity_name", "ts")
        .values_list(
            "endpoint_id",
            "served_entity_name",
            "ts",
            "request_count",
            "count_5xx",
            "latency_buckets",
            "samples",
            "cpu_pct",
            "p99_ms",
        )
    )


def fill(endpoints: list[Endpoint], start: int, end: int, rng: random.Random) -> None:
    for ts in range(start, end, 15):
        for endpoint in endpoints:
            for entity in ("", "m-1"):
                count = rng.randint(0, 30)
                add_point(
                    endpoint.id,
                    entity,
                    15,
                    ts,
                    Interval(
                        request_count=count,
                        count_5xx=rng.randint(0, 2),
                        buckets={"5": float(count // 2), "25": float(count - count // 2)},
                        cpu=[rng.uniform(0, 100)],
                    ),
                )


def test_beats_minute_runs_give_what_a_full_recompute_gives():
    rng = random.Random(7)
    endpoints = [Endpoint.objects.create(name=f"roll-{i}") for i in range(3)]
    # Polls write each 15 s interval as it comes; beat rolls up every minute at :05.
    for minute in range(12):
        fill(endpoints, BASE + minute * 60, BASE + (minute + 1) * 60, rng)
        store.rollup(now=BASE + (minute + 1) * 60 + 5)
    store.rollup(now=BASE + 12 * 60 + 65)
    incremental = minute_rows()
    assert len({r[2] for r in incremental}) == 12
    # The old rollup: every 1 min point of the window recomputed from the 15 s points.
    MetricPoint.objects.filter(resolution=60).delete()
    store._rollup_hot(15, 60, start=BASE, end=BASE + 12 * 60)
    assert incremental == minute_rows()


def test_a_run_reads_only_the_minutes_not_rolled_up_yet():
    rng = random.Random(8)
    endpoint = Endpoint.objects.create(name="roll-once")
    fill([endpoint], BASE, BASE + 5 * 60, rng)
    assert store.rollup(now=BASE + 5 * 60 + 40) == 10  # five minutes, two series
    with CaptureQueriesContext(connection) as again:
        assert store.rollup(now=BASE + 5 * 60 + 50) == 0  # nothing closed since: nothing recomputed
    assert not [q for q in again.captured_queries if "DELETE" in q["sql"] or "INSERT" in q["sql"]]
    fill([endpoint], BASE + 5 * 60, BASE + 6 * 60, rng)
    assert store.rollup(now=BASE + 6 * 60 + 40) == 2  # the one minute that closed
    assert MetricPoint.objects.filter(resolution=60).count() == 12


def test_a_minute_is_rolled_up_only_after_its_grace():
    endpoint = Endpoint.objects.create(name="roll-grace")
    add_point(endpoint.id, "", 15, BASE + 45, Interval(request_count=3))
    store.rollup(now=BASE + 60 + store.ROLLUP_GRACE_SECONDS - 1)
    assert not MetricPoint.objects.filter(resolution=60).exists()
    add_point(endpoint.id, "", 15, BASE + 45, Interval(request_count=2))  # a poll that ended late
    store.rollup(now=BASE + 60 + store.ROLLUP_GRACE_SECONDS)
    assert MetricPoint.objects.get(resolution=60).request_count == 5


def test_a_missed_run_catches_up_within_the_lookback():
    rng = random.Random(9)
    endpoint = Endpoint.objects.create(name="roll-late")
    fill([endpoint], BASE, BASE + 4 * 60, rng)
    store.rollup(now=BASE + 2 * 60 + 40)  # minutes 0 and 1
    # Beat was down for five minutes: the next run rolls up minutes 2 and 3 (and the empty ones).
    store.rollup(now=BASE + 9 * 60 + 40)
    assert sorted(MetricPoint.objects.filter(resolution=60, served_entity_name="").values_list("ts", flat=True)) == [
        BASE + m * 60 for m in range(4)
    ]
