"""Shared by the benchmarks: a private Modelfleet stack (`modelfleet setup` + `modelfleet up`)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROW = [5.1, 3.5, 1.4, 0.2]
DEMO = "main.default.demo_classifier"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_busy_idle() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, idle


def wait_quiet(*, busy_below: float = 0.15, window: float = 1.0, seconds: float = 60) -> float:
    """Wait until the machine's CPUs were busy less than ``busy_below`` of the time over one
    ``window`` (servers just started finish importing, warm standbys finish loading), at most
    ``seconds``; the busy share of the last window. Without /proc/stat, return at once."""
    if not Path("/proc/stat").exists():
        return float("nan")
    deadline = time.monotonic() + seconds
    share = 1.0
    while time.monotonic() < deadline:
        busy0, idle0 = _cpu_busy_idle()
        time.sleep(window)
        busy1, idle1 = _cpu_busy_idle()
        total = (busy1 - busy0) + (idle1 - idle0)
        share = (busy1 - busy0) / total if total else 0.0
        if share < busy_below:
            break
    return share


def wait_http(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f}s")


@dataclass
class Stack:
    base: str
    token: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def create(self, name: str, *entities: dict, routes: list | None = None) -> None:
        config: dict = {"served_entities": list(entities)}
        if routes:
            config["traffic_config"] = {"routes": routes}
        requests.post(
            f"{self.base}/api/2.0/serving-endpoints",
            json={"name": name, "config": config},
            headers=self.auth,
            timeout=30,
        ).raise_for_status()
        self.wait_not_updating(name)

    def update(self, name: str, *entities: dict, routes: list | None = None) -> str:
        config: dict = {"served_entities": list(entities)}
        if routes:
            config["traffic_config"] = {"routes": routes}
        requests.put(
            f"{self.base}/api/2.0/serving-endpoints/{name}/config", json=config, headers=self.auth, timeout=30
        ).raise_for_status()
        return self.wait_not_updating(name)

    def wait_not_updating(self, name: str, seconds: float = 180) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            state = requests.get(f"{self.base}/api/2.0/serving-endpoints/{name}", headers=self.auth, timeout=10).json()[
                "state"
            ]
            if state["config_update"] != "IN_PROGRESS":
                return state["config_update"]
            time.sleep(0.3)
        raise RuntimeError(f"{name} still updating after {seconds:.0f}s")

    def query(self, name: str, session: requests.Session | None = None, timeout: float = 90) -> requests.Response:
        return (session or requests).post(
            f"{self.base}/serving-endpoints/{name}/invocations",
            headers=self.auth,
            timeout=timeout,
            json={"dataframe_split": {"columns": COLUMNS, "data": [ROW]}},
        )

    def wait_scaled_to_zero(self, name: str, seconds: float = 60) -> None:
        """Until the endpoint's (only) deployment has stopped every replica for lack of traffic."""
        from endpoints_app.models import Deployment, Replica, ReplicaState

        deployment = Deployment.objects.get(endpoint__name=name, stopped_at__isnull=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            deployment.refresh_from_db()
            ready = Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).exists()
            if deployment.desired_replicas == 0 and not ready:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not scale to zero within {seconds:.0f}s")

    def timed_wake_up(self, name: str) -> tuple[float, int]:
        """Scale-to-zero, then one query: (seconds it took, its status)."""
        self.wait_scaled_to_zero(name)
        started = time.perf_counter()
        status = self.query(name).status_code
        return time.perf_counter() - started, status

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def entity(version: str = "1", *, size: str = "Small", stz: bool = False) -> dict:
    return {"entity_name": DEMO, "entity_version": version, "workload_size": size, "scale_to_zero_enabled": stz}


def start_stack(**extra_env: str) -> Stack:
    """A fresh stack on SQLite and an embedded Redis in a temporary data dir (setup included)."""
    data_dir = Path(tempfile.mkdtemp(prefix="modelfleet-bench-"))
    port = free_port()
    token = "mf-bench-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI")}
    env.update(
        MODELFLEET_DATA_DIR=str(data_dir),
        MODELFLEET_BIND=f"127.0.0.1:{port}",
        MODELFLEET_BOOTSTRAP_TOKEN=token,
        MODELFLEET_CONFIG_FILE=str(data_dir / "cfg"),
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        **extra_env,
    )
    os.environ.update(env)
    for key in ("DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    subprocess.run([str(BIN / "modelfleet"), "setup"], env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        [str(BIN / "modelfleet"), "up", "--no-setup"],
        env=env,
        stdout=open(data_dir / "stack.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/.well-known/databricks-config")
    import django

    django.setup()
    return Stack(base=base, token=token, data_dir=data_dir, env=env, process=process)
