"""wrk, the C load generator, for benchmarks where the client must not steal the server's CPU.

A Python client spends about as much CPU per request as the servers it measures, so on a
2-core machine it caps what it can see.  wrk (epoll, C) runs here with one thread (``-t1``),
which costs a small part of one core even at several thousand requests/s, and is pinned to the
last CPU with ``taskset`` so it never migrates between cores mid-run.  The servers are not
pinned: every server measured shares the machine with the same client on the same terms.

Each run is driven by a small Lua script written to a temporary folder: it sets the method,
the headers (``Authorization: Bearer …`` when a token is given) and the body read from a file,
and its ``done`` hook prints one JSON line with the exact counts and latency percentiles (in
microseconds, from wrk's own histogram), which is what ``run`` parses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# `done` runs once after the run with wrk's summary and latency histogram (microseconds).
LUA_TEMPLATE = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local f = assert(io.open({body_path}, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"non2xx\\": %d, \\"socket_errors\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


class WrkUnavailable(RuntimeError):
    """wrk is not on PATH and Debian's package could not be installed."""


@dataclass(frozen=True)
class Result:
    """One measured cell: throughput, latency, and every request that did not answer 2xx."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus connect/read/write errors and timeouts

    def as_dict(self) -> dict[str, float | int]:
        return {"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors}


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's ``wrk`` package first when it is missing.

    Like ``make browser`` does for chromium: as root, or through sudo, ``apt-get install``, and
    ``apt-get update`` once if the package lists are stale.  Anything else is a clear failure.
    """
    found = shutil.which("wrk")
    if found:
        return found
    print("bench: wrk is not on PATH; installing Debian's wrk package", flush=True)
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise WrkUnavailable("wrk is missing and installing it needs root or sudo: run `apt-get install -y wrk`")
        prefix = ["sudo", "-n"]
    if not shutil.which("apt-get"):
        raise WrkUnavailable("wrk is missing and this system has no apt-get: install wrk (https://github.com/wg/wrk)")
    install = [*prefix, "apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True)
        done = subprocess.run(install, capture_output=True, text=True)
        if done.returncode != 0:
            raise WrkUnavailable(f"could not install wrk with apt-get: {done.stderr.strip()[-500:]}")
    found = shutil.which("wrk")
    if not found:
        raise WrkUnavailable("apt-get installed wrk but it is not on PATH")
    return found


def _client_cpu() -> list[str]:
    """``taskset -c N`` for the last CPU this process may use, or nothing where taskset is absent."""
    taskset = shutil.which("taskset")
    cpus = sorted(os.sched_getaffinity(0))
    if not taskset or len(cpus) < 2:
        return []
    return [taskset, "-c", str(cpus[-1])]


def run(
    wrk: str,
    url: str,
    body_path: Path,
    *,
    concurrency: int,
    seconds: float,
    token: str | None = None,
    warmup: float = 1.0,
) -> Result:
    """Drive ``url`` with ``concurrency`` keep-alive connections for ``seconds``, after a warm-up
    run of ``warmup`` seconds whose numbers are thrown away (first requests, lazy imports)."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
        script.write_text(LUA_TEMPLATE.format(auth=auth, body_path=json.dumps(str(body_path))))

        def once(duration: float) -> dict[str, int]:
            command = [
                *_client_cpu(),
                wrk,
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
            for line in done.stdout.splitlines():
                if line.startswith("WRK_JSON "):
                    return json.loads(line[len("WRK_JSON ") :])
            raise RuntimeError(f"wrk gave no summary for {url}: {done.stdout[-500:]} {done.stderr[-500:]}")

        if warmup > 0:
            once(warmup)
        raw = once(seconds)
    return Result(
        requests=raw["requests"],
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=raw["non2xx"] + raw["socket_errors"],
    )
