"""Start and stop the test OpenID provider (``python -m tests.oidc_provider``) from a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.stack import free_port


@dataclass
class Provider:
    url: str
    client_id: str
    client_secret: str
    process: subprocess.Popen
    log_path: Path

    @property
    def issuer(self) -> str:
        return f"{self.url}/o"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_provider(
    directory: Path, *, redirect_uri: str, users: list[str], post_logout_redirect_uri: str = ""
) -> Provider:
    """``users``: NAME:PASSWORD:GROUP,GROUP each. Returns once discovery answers."""
    port = free_port()
    client_id, client_secret = "modelfleet-test", "provider-client-secret-0123456789"
    root = Path(__file__).resolve().parent.parent.parent
    log_path = directory / "provider.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    argv = [sys.executable, "-m", "tests.oidc_provider", "--port", str(port), "--dir", str(directory)]
    argv += ["--client-id", client_id, "--client-secret", client_secret, "--redirect-uri", redirect_uri]
    argv += ["--post-logout-redirect-uri", post_logout_redirect_uri]
    for user in users:
        argv += ["--user", user]
    out = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    provider = Provider(f"http://127.0.0.1:{port}", client_id, client_secret, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the OpenID provider exited with {process.returncode}:\n{provider.log()[-5000:]}")
        try:
            if requests.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                return provider
        except requests.RequestException:
            pass
        time.sleep(0.2)
    provider.stop()
    raise RuntimeError(f"the OpenID provider did not answer within 60 s:\n{provider.log()[-5000:]}")
