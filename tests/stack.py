"""The whole product as real processes, for end-to-end tests.

``modelfleet up --no-setup`` (the supervisor: web, worker, beat, runtime agent, and a private
Redis when REDIS_URL is not set) runs against the test database and the test model registry.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(settings_dict: dict) -> str:
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


@dataclass
class Stack:
    url: str
    token: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_stack(*, database: str, token: str, log_path: Path, extra_env: dict[str, str] | None = None) -> Stack:
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DATABASE_URL": database,
        "MODELFLEET_BIND": f"127.0.0.1:{port}",
        "MODELFLEET_REPLICA_START_ATTEMPTS": "2",
        "MODELFLEET_ROLLOUT_TIMEOUT_SECONDS": "180",
        # Poll every 2 s so tests see the pollers' results quickly.
        "MODELFLEET_POLL_METRICS_SECONDS": "2",
        "MODELFLEET_POLL_STATUS_SECONDS": "2",
        "MODELFLEET_POLL_LOGS_SECONDS": "2",
        # Scaling on a test's time scale.
        "MODELFLEET_SCALE_TO_ZERO_IDLE_SECONDS": "4",
        "MODELFLEET_AUTOSCALE_UP_DELAY_SECONDS": "2",
        "MODELFLEET_AUTOSCALE_DOWN_DELAY_SECONDS": "4",
        "MODELFLEET_GATEWAY_TIMEOUT_SECONDS": "6",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        **(extra_env or {}),
    }
    modelfleet = Path(sys.executable).parent / "modelfleet"
    out = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(
        [str(modelfleet), "up", "--no-setup"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stack exited with {process.returncode}:\n{log_path.read_text()[-5000:]}")
        try:
            if requests.get(url + "/.well-known/databricks-config", timeout=1).status_code == 200:
                return Stack(url=url, token=token, process=process, log_path=log_path)
        except requests.RequestException:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the stack did not answer within 90s:\n{log_path.read_text()[-5000:]}")
