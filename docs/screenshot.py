"""Makes docs/img/fleet-list.png, the README's picture of the fleet list.

Starts a real stack (``modelfleet setup`` and ``modelfleet up`` in a temporary data dir, SQLite and
the embedded Valkey, bound to a free loopback port), builds a small demo fleet through the
Databricks SDK, sends it real queries, then signs in as the admin with Playwright and Debian's
Chromium and saves the fleet list. The data dir is removed afterwards.

The demo fleet, all on the demo classifier that setup registers or an external model:

- ``churn-classifier``: versions 1 and 2 at 80/20, real traffic;
- ``fraud-scorer``: version 2, real traffic, then an update to a GPU workload that this host cannot
  run, so it shows "Ready (Update failed)" while the old config keeps serving;
- ``iris-canary``: scale to zero, left idle until it has scaled to zero;
- ``support-assistant``: an external chat model (an OpenAI-compatible URL on loopback that is never
  called; the key is stored in the managed secret scope).

A sparkline covers the last hour and a stack this script starts has lived a few minutes, so the
hour before its first real query is backfilled with synthetic metric points (demo data, smooth
curves with noise, written straight into the database); the last minute or so is the stack's own
polling of real traffic.

Chromium runs headless with no background networking or component updates: nothing leaves
loopback. Usage: ``.venv/bin/python docs/screenshot.py [--out docs/img/fleet-list.png]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("MODELFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update", "--no-sandbox"]
DEMO_MODEL = "main.default.demo_classifier"
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# Requests per second of each endpoint over the backfilled hour: (base, swing, phase in radians).
SHAPES = {
    "churn-classifier": (24.0, 9.0, 0.0),
    "fraud-scorer": (7.0, 3.0, 2.0),
    "iris-canary": (3.0, 2.5, 4.0),  # fades out in the last quarter of the hour
    "support-assistant": (1.6, 1.0, 1.0),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"screenshot: {message}", flush=True)


def stack_env(data_dir: Path, port: int, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "DATABRICKS_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "MODELFLEET_DATA_DIR": str(data_dir),
            "MODELFLEET_CONFIG_FILE": str(data_dir / "modelfleetcfg"),
            "MODELFLEET_BIND": f"127.0.0.1:{port}",
            "MODELFLEET_BOOTSTRAP_TOKEN": token,
            "MODELFLEET_EGRESS_ALLOW": "127.0.0.1:9",
            "MODELFLEET_POLL_METRICS_SECONDS": "2",
            "MODELFLEET_POLL_STATUS_SECONDS": "2",
            "MODELFLEET_POLL_LOGS_SECONDS": "5",
            "MODELFLEET_SCALE_TO_ZERO_IDLE_SECONDS": "15",
            "MODELFLEET_REPLICA_START_ATTEMPTS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
    )
    return env


def wait_until(check, what: str, timeout: float = 180.0, every: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def build_fleet(url: str, token: str) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import (
        EndpointCoreConfigInput,
        EndpointTag,
        Route,
        ServedEntityInput,
        ServingModelWorkloadType,
        TrafficConfig,
    )

    w = WorkspaceClient(host=url, token=token)

    def entity(version: str, **kw) -> ServedEntityInput:  # type: ignore[no-untyped-def]
        defaults = {"workload_size": "Small", "scale_to_zero_enabled": False}
        return ServedEntityInput(entity_name=DEMO_MODEL, entity_version=version, **{**defaults, **kw})

    def tags(**pairs: str) -> list[EndpointTag]:
        return [EndpointTag(key=k, value=v) for k, v in pairs.items()]

    log("creating churn-classifier (80/20), fraud-scorer, iris-canary, support-assistant")
    w.serving_endpoints.create(
        name="churn-classifier",
        config=EndpointCoreConfigInput(
            name="churn-classifier",
            served_entities=[entity("1"), entity("2")],
            traffic_config=TrafficConfig(
                routes=[
                    Route(served_model_name="demo_classifier-1", traffic_percentage=80),
                    Route(served_model_name="demo_classifier-2", traffic_percentage=20),
                ]
            ),
        ),
        tags=tags(env="prod", team="growth"),
    )
    w.serving_endpoints.create(
        name="fraud-scorer",
        config=EndpointCoreConfigInput(name="fraud-scorer", served_entities=[entity("2")]),
        tags=tags(env="prod", team="risk"),
    )
    w.serving_endpoints.create(
        name="iris-canary",
        config=EndpointCoreConfigInput(name="iris-canary", served_entities=[entity("1", scale_to_zero_enabled=True)]),
        tags=tags(env="staging", team="growth"),
    )
    # The external model goes through the raw API: the body is Databricks' JSON, as a script would send it.
    external = {
        "name": "support-assistant",
        "config": {
            "served_entities": [
                {
                    "name": "assistant",
                    "external_model": {
                        "provider": "custom",
                        "name": "support-llm",
                        "task": "llm/v1/chat",
                        "custom_provider_config": {
                            "custom_provider_url": "http://127.0.0.1:9/v1",
                            "bearer_token_auth": {"token_plaintext": secrets.token_urlsafe(16)},
                        },
                    },
                }
            ]
        },
        "tags": [{"key": "env", "value": "prod"}, {"key": "team", "value": "support"}],
    }
    answer = requests.post(
        f"{url}/api/2.0/serving-endpoints", json=external, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    answer.raise_for_status()

    for name in ("churn-classifier", "fraud-scorer", "iris-canary"):
        w.serving_endpoints.wait_get_serving_endpoint_not_updating(name)
        log(f"{name} is ready")
    # An update this host cannot run: no GPUs here, so the rollout fails and the old config serves on.
    w.serving_endpoints.update_config(
        name="fraud-scorer", served_entities=[entity("2", workload_type=ServingModelWorkloadType.GPU_SMALL)]
    )


def backfill(names: list[str], until: int) -> None:
    """Synthetic 15 s points and their 1 min rollups for the hour before ``until`` (demo data)."""
    from endpoints_app.models import Endpoint, MetricPoint
    from endpoints_app.monitoring.metrics import merge_points

    rng = random.Random(14)
    first = (until - 3600) // 60 * 60
    rolled_until = until // 60 * 60
    rows: list[MetricPoint] = []
    for endpoint in Endpoint.objects.filter(name__in=names):
        base, swing, phase = SHAPES[endpoint.name]
        taken = set(
            MetricPoint.objects.filter(endpoint=endpoint, served_entity_name="", resolution=15).values_list(
                "ts", flat=True
            )
        )
        minutes: dict[int, list[MetricPoint]] = {}
        for ts in range(first, until, 15):
            if ts in taken:
                continue
            x = (ts - first) / 3600
            rate = base + swing * math.sin(2 * math.pi * x * 1.5 + phase) + rng.gauss(0, base / 12)
            if endpoint.name == "iris-canary":
                rate *= max(0.0, min(1.0, (0.8 - x) * 5))  # traffic stops about 12 minutes ago
            count = max(0.0, rate) * 15
            point = MetricPoint(
                endpoint=endpoint,
                served_entity_name="",
                resolution=15,
                ts=ts,
                request_count=count,
                count_4xx=round(count * rng.choice((0, 0, 0.002, 0.01))),
                count_5xx=round(count * rng.choice((0, 0, 0, 0.001))),
                p50_ms=rng.uniform(1.5, 2.5) if count else None,
                p90_ms=rng.uniform(3, 5) if count else None,
                p99_ms=rng.uniform(6, 14) if count else None,
                cpu_pct=min(95.0, 4 + rate * rng.uniform(1.2, 1.6)),
                mem_pct=rng.uniform(2.5, 3.5),
                replicas=1.0,
            )
            rows.append(point)
            minutes.setdefault(ts // 60 * 60, []).append(point)
        rows += [
            MetricPoint(endpoint=endpoint, served_entity_name="", resolution=60, ts=ts, **merge_points(points))
            for ts, points in minutes.items()
            if ts < rolled_until
        ]
    MetricPoint.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
    log(f"backfilled {len(rows)} metric points for the hour before the first query")


def send_traffic(url: str, token: str, seconds: float) -> int:
    """Paced queries from a few threads: churn-classifier ~24/s, fraud-scorer ~7/s."""
    stop = time.monotonic() + seconds
    sent = [0]
    lock = threading.Lock()

    def client(name: str, per_second: float) -> None:
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {token}"})
        pause = 1 / per_second
        while time.monotonic() < stop:
            started = time.monotonic()
            session.post(f"{url}/serving-endpoints/{name}/invocations", json={"inputs": [ROW]}, timeout=30)
            with lock:
                sent[0] += 1
            time.sleep(max(0.0, pause - (time.monotonic() - started)))

    threads = [
        threading.Thread(target=client, args=args)
        for args in (("churn-classifier", 12.0), ("churn-classifier", 12.0), ("fraud-scorer", 7.0))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


def shoot(url: str, password: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1680, "height": 720}, device_scale_factor=1)
        page.goto(f"{url}/accounts/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/accounts/login/" not in u)
        page.goto(f"{url}/?sort=-requests")
        page.wait_for_load_state("networkidle")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "fleet-list.png")
    parser.add_argument("--traffic-seconds", type=float, default=40.0)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does)", file=sys.stderr)
        return 1

    data_dir = Path(tempfile.mkdtemp(prefix="modelfleet-screenshot-"))
    port, token = free_port(), "mf-" + secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    env = stack_env(data_dir, port, token)
    os.environ.update(env)  # this process reads the same database for the backfill
    for key in ("DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    modelfleet = str(Path(sys.executable).parent / "modelfleet")
    stack = None
    try:
        log(f"setting up in {data_dir}")
        setup = subprocess.run([modelfleet, "setup"], env=env, capture_output=True, text=True, timeout=600)
        if setup.returncode != 0:
            print(setup.stdout, setup.stderr, file=sys.stderr)
            return 1
        found = re.search(r"password: (\S+)", setup.stdout + setup.stderr)
        if not found:
            print("setup printed no admin password:\n" + setup.stdout + setup.stderr, file=sys.stderr)
            return 1
        password = found.group(1)

        stack_log = open(data_dir / "stack.log", "wb")  # noqa: SIM115 - closed with the process
        stack = subprocess.Popen(
            [modelfleet, "up", "--no-setup"],
            env=env,
            stdout=stack_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def answering() -> bool:
            if stack is not None and stack.poll() is not None:
                raise RuntimeError((data_dir / "stack.log").read_text(errors="replace")[-5000:])
            try:
                return requests.get(f"{url}/.well-known/databricks-config", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answering, "the stack answering", timeout=120, every=0.5)
        log(f"stack up at {url}")

        import django

        django.setup()
        build_fleet(url, token)
        backfill(list(SHAPES), until=int(time.time()) // 15 * 15 - 15)
        log(f"sending real queries for {args.traffic_seconds:.0f}s")
        log(f"{send_traffic(url, token, args.traffic_seconds)} queries sent")

        from endpoints_app.models import Endpoint, HealthStatus

        wait_until(
            lambda: Endpoint.objects.filter(name="iris-canary", health=HealthStatus.SCALED_TO_ZERO).exists(),
            "iris-canary scaled to zero",
            timeout=120,
        )
        wait_until(
            lambda: Endpoint.objects.filter(name="fraud-scorer", config_update="UPDATE_FAILED").exists(),
            "fraud-scorer's update failed",
            timeout=180,
        )
        time.sleep(5)  # one more poll of every endpoint
        shoot(url, password, args.out)
        log(f"saved {args.out}")
        return 0
    finally:
        if stack is not None and stack.poll() is None:
            stack.send_signal(signal.SIGTERM)
            try:
                stack.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
