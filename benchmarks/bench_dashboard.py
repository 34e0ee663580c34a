"""Dashboard benchmark: the fleet list with 1,000 endpoints, timed server side.

Builds a fleet of endpoints in a fresh database (mixed states, one or two served entities, tags,
poll targets, an hour of 15 s metric points and their 1 min rollups), then renders the fleet
list through Django's test client, which runs the whole request (middleware, access rule,
queries, template) without a network hop. Reports the median and p95 of N renders and the number of SQL queries
per render, which must not depend on the fleet's size or the page size. Target: < 150 ms.

Runs on a fresh SQLite database in a temporary data dir, or on DATABASE_URL when it is set
(PostgreSQL; the database is created as `<name>_dashbench` and dropped after).
Usage: python benchmarks/bench_dashboard.py [--endpoints 1000] [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_MS = 150.0


def build_fleet(
    n: int, *, owner: Any, now: float | None = None, minutes_of_points: int = 60, prefix: str = "ep"
) -> list:
    """``n`` endpoints shaped like a real fleet, written in bulk. Used by the tests too.

    Every 7th endpoint serves two versions 80/20; every 10th is updating (a pending config),
    every 17th failed its last update, every 13th is scaled to zero, every 23rd is down (a failed
    deployment). Each has tags (env, team), metrics and status poll targets, and one 15 s metric
    point per interval for the last ``minutes_of_points`` minutes.
    """
    from django.utils import timezone

    from endpoints_app.models import (
        ConfigUpdate,
        ConfigVersion,
        Deployment,
        DeploymentState,
        Endpoint,
        EndpointTag,
        HealthStatus,
        MetricPoint,
        PollKind,
        PollTarget,
        ServedEntity,
    )
    from endpoints_app.monitoring.metrics import merge_points

    now = now if now is not None else time.time()
    rng = random.Random(n)
    moment = timezone.now()

    def health(i: int) -> str:
        if i % 23 == 0:
            return HealthStatus.DOWN
        if i % 13 == 0:
            return HealthStatus.SCALED_TO_ZERO
        return HealthStatus.DEGRADED if i % 11 == 0 else HealthStatus.HEALTHY

    def config_update(i: int) -> str:
        if i % 10 == 0:
            return ConfigUpdate.IN_PROGRESS
        return ConfigUpdate.UPDATE_FAILED if i % 17 == 0 else ConfigUpdate.NOT_UPDATING

    endpoints = Endpoint.objects.bulk_create(
        Endpoint(name=f"{prefix}-{i:04d}", creator=owner, health=health(i), config_update=config_update(i))
        for i in range(n)
    )
    versions: list[tuple[Endpoint, ConfigVersion, list[str]]] = []
    for i, e in enumerate(endpoints):
        names = ["model-1", "model-2"] if i % 7 == 0 else ["model-1"]
        routes = [
            {"served_model_name": m, "traffic_percentage": p}
            for m, p in zip(names, (80, 20) if len(names) == 2 else (100,), strict=True)
        ]
        versions.append((e, ConfigVersion(endpoint=e, version=1, traffic_config={"routes": routes}), names))
        if e.config_update != ConfigUpdate.NOT_UPDATING:
            pending_routes = [{"served_model_name": "model-2", "traffic_percentage": 100}]
            versions.append(
                (e, ConfigVersion(endpoint=e, version=2, traffic_config={"routes": pending_routes}), ["model-2"])
            )
    ConfigVersion.objects.bulk_create(v for _, v, _ in versions)
    deployments = []
    entities = []
    for i, (e, version, names) in enumerate(versions):
        for position, name in enumerate(names):
            failed = int(e.name.rsplit("-", 1)[1]) % 23 == 0 and version.version == 1
            dep = Deployment(
                endpoint=e,
                endpoint_name=e.name,
                served_entity_name=name,
                spec_hash=f"h{i}-{position}",
                spec={},
                model_name="main.default.model",
                model_version=name.rsplit("-", 1)[1],
                state=DeploymentState.FAILED if failed else DeploymentState.READY,
            )
            deployments.append(dep)
            entities.append(
                ServedEntity(
                    config_version=version,
                    position=position,
                    name=name,
                    entity_name="main.default.model",
                    entity_version=name.rsplit("-", 1)[1],
                    workload_size="Small",
                    deployment=dep,
                )
            )
    Deployment.objects.bulk_create(deployments)
    ServedEntity.objects.bulk_create(entities)
    for e, version, _ in versions:
        if version.version == 1:
            e.active_config = version
        else:
            e.pending_config = version
    Endpoint.objects.bulk_update(endpoints, ["active_config", "pending_config"], batch_size=500)
    EndpointTag.objects.bulk_create(
        [EndpointTag(endpoint=e, key="env", value="prod" if i % 3 == 0 else "staging") for i, e in enumerate(endpoints)]
        + [EndpointTag(endpoint=e, key="team", value=f"team-{i % 5}") for i, e in enumerate(endpoints)]
    )
    PollTarget.objects.bulk_create(
        PollTarget(endpoint=e, kind=kind, next_poll_at=moment, last_polled_at=moment, last_ok_at=moment)
        for e in endpoints
        for kind in (PollKind.METRICS, PollKind.STATUS)
    )
    first = int(now) // 15 * 15 - minutes_of_points * 60
    rolled_up_until = int(now) // 60 * 60  # the beat's rollup makes 1 min points of whole minutes
    batch: list[MetricPoint] = []
    for e in endpoints:
        busy = rng.uniform(0.1, 50)
        minutes: dict[int, list[MetricPoint]] = {}
        for k in range(minutes_of_points * 4):
            count = max(0.0, rng.gauss(busy, busy / 4)) * 15
            point = MetricPoint(
                endpoint=e,
                served_entity_name="",
                resolution=15,
                ts=first + k * 15,
                request_count=count,
                count_4xx=count * 0.02,
                count_5xx=count * rng.choice((0, 0, 0.01, 0.1)),
                p50_ms=rng.uniform(2, 5),
                p90_ms=rng.uniform(5, 20),
                p99_ms=rng.uniform(20, 80),
                cpu_pct=rng.uniform(0, 100),
                mem_pct=rng.uniform(0, 10),
                replicas=1,
            )
            batch.append(point)
            minutes.setdefault(point.ts // 60 * 60, []).append(point)
        batch.extend(
            MetricPoint(endpoint=e, served_entity_name="", resolution=60, ts=ts, **merge_points(points))
            for ts, points in minutes.items()
            if ts < rolled_up_until
        )
        if len(batch) >= 20_000:
            MetricPoint.objects.bulk_create(batch, batch_size=2000)
            batch = []
    MetricPoint.objects.bulk_create(batch, batch_size=2000)
    return endpoints


def setup_environment() -> Path:
    data_dir = Path(tempfile.mkdtemp(prefix="modelfleet-dashbench-"))
    os.environ["MODELFLEET_DATA_DIR"] = str(data_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        base, _, name = os.environ["DATABASE_URL"].rpartition("/")
        bench_name = f"{name}_dashbench"
        subprocess.run(["psql", f"{base}/postgres", "-qc", f"DROP DATABASE IF EXISTS {bench_name}"], check=True)
        subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {bench_name}"], check=True)
        os.environ["DATABASE_URL"] = f"{base}/{bench_name}"
    return data_dir


def time_page(client: Any, url: str, runs: int, headers: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(median ms, p95 ms, queries per render) of ``runs`` renders after one warm-up."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, headers=headers or {})
    assert response.status_code == 200, (url, response.status_code)
    query_count = len(queries)  # now: the next request clears the log
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url, headers=headers or {})
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    timings.sort()
    p95 = timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))]
    return statistics.median(timings), p95, query_count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=int(os.environ.get("BENCH_ENDPOINTS", "1000")))
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "30")))
    args = parser.parse_args()
    setup_environment()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from endpoints_app.models import Role, UserProfile

    setup_test_environment()  # the test client's 'testserver' host
    call_command("migrate", verbosity=0)
    owner = get_user_model().objects.create_superuser("bench-admin", "bench@example.com", "bench-password-1")
    viewer = get_user_model().objects.create_user("bench-viewer", "viewer@example.com", "bench-password-1")
    UserProfile.objects.create(user=viewer, role=Role.VIEWER)
    print(f"Dashboard benchmark: {args.endpoints} endpoints, database {connection.vendor}, {os.cpu_count()} CPUs")
    t0 = time.monotonic()
    build_fleet(args.endpoints, owner=owner)
    print(f"  fleet built in {time.monotonic() - t0:.1f}s (an hour of 15 s and 1 min metric points per endpoint)")

    # (label, user, url, headers, held to the target): the target is for the page as people get it
    # (50 rows); 200 rows per page shows how the cost grows with the page, not with the fleet.
    cases = [
        ("fleet list, admin, first page (50 rows)", owner, "/", None, True),
        ("fleet list, viewer, first page (50 rows)", viewer, "/", None, True),
        ("fleet list, page 10, sorted by requests/s", owner, "/?sort=-requests&page=10", None, True),
        ("fleet list, search + state + tag filters", owner, "/?q=ep-0&state=ready&tag=env%3Dprod", None, True),
        ("table refresh (htmx fragment)", owner, "/", {"HX-Request": "true", "HX-Target": "fleet-results"}, True),
        ("fleet list, 200 rows per page", owner, "/?per_page=200", None, False),
    ]
    from dashboard.heap import freeze_startup_objects

    freeze_startup_objects()  # as the web process does once loaded (dashboard/asgi.py)
    results = []
    for label, user, url, headers, held in cases:
        client = Client()
        client.force_login(user)
        results.append((label, held, *time_page(client, url, args.runs, headers)))

    print()
    print("| page | queries | median ms | p95 ms | target | result |")
    print("|---|---|---|---|---|---|")
    ok = True
    for label, held, median, p95, queries in results:
        if not held:
            print(f"| {label} | {queries} | {median:.1f} | {p95:.1f} | – | (for scale) |")
            continue
        passed = median < TARGET_MS
        ok &= passed
        print(
            f"| {label} | {queries} | {median:.1f} | {p95:.1f} | < {TARGET_MS:.0f} ms | {'PASS' if passed else 'FAIL'} |"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
