"""The ray backend's overhead next to the local backend (issue #18): same models, same machine, one run.

Two Modelfleet stacks, one after the other, each serving the same models through its gateway
with one replica per model:
  local  ``MODELFLEET_BACKEND=local`` (the default): replicas are model servers on this host,
  ray    ``MODELFLEET_BACKEND=ray`` on a three-node Ray cluster on this machine
         (tests/ray_cluster.py: a head and two workers, each in its own network namespace on a
         private bridge, the nodes as the unprivileged ``mfray`` user). The gateway still routes
         to the replicas directly (over the bridge), without Ray in the request path.
Models: the iris demo model and the one-hot pipeline of model_shapes.py. Measured for each:
  * requests/s, p50 and p99 through the gateway (wrk, 1 thread pinned to the last CPU), 1-row
    ``dataframe_records`` bodies at concurrency 1 and 8, a 1 s warm-up then ``--seconds``;
  * replica start: a new endpoint's POST until its state is READY (after the stack has settled,
    so the local standby server and the Ray nodes' warm spares are in place);
  * wake from zero: a scale-to-zero endpoint (iris) idle for 2 s, then one query (median).
The local stack runs (and stops) before the Ray cluster starts, so the local numbers are those
of a machine without Ray; the ray numbers include the cluster's own idle work (its CPU use while
idle is printed too). Every namespace and node process is removed at the end, also on failure.

Each stack runs in a child process of this script (``--side``): Django's settings are read once
per process, and each stack has its own data directory.

Needs root (network namespaces, the ``mfray`` user): otherwise it prints a skip line and exits 0.
Usage: python benchmarks/bench_ray.py [--seconds 3] [--wakes 3] [--models iris,pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import wrk  # noqa: E402
from tests import ray_cluster  # noqa: E402

SIDES = ("local", "ray")
CONCURRENCIES = (1, 8)
# Each Ray worker offers 1 CPU and 4 GB: at this scale a replica (or a warm spare) asks 0.2 CPU and
# 819 MB, so each worker holds four and the three endpoints always fit beside the spares.
RAY_RESOURCE_SCALE = "0.05"
SETTLE_SECONDS = 5.0  # after start: the local standby server / the Ray warm spares get ready
WAKE_IDLE_SECONDS = "2"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` below tears its part down."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# --- one side: a stack on one backend, measured (runs in a child process) ----------------------


def _wait_ready(base: str, auth: dict[str, str], name: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = requests.get(f"{base}/api/2.0/serving-endpoints/{name}", headers=auth, timeout=10).json()["state"]
        if state["ready"] == "READY" and state["config_update"] != "IN_PROGRESS":
            return
        if state["config_update"] == "UPDATE_FAILED":
            raise RuntimeError(f"{name}: the update failed")
        time.sleep(0.1)
    raise RuntimeError(f"{name} not READY within {seconds:.0f}s")


def run_side(side: str, ray_address: str, models: list[str], seconds: float, wakes: int, out: Path) -> None:
    """Start a stack on ``side``'s backend, serve the models, measure, write the results to ``out``."""
    from benchmarks import model_shapes
    from benchmarks.bench_models import iris_sample
    from benchmarks.common import DEMO, start_stack

    wrk_path = wrk.ensure_wrk()
    extra = {"MODELFLEET_BACKEND": side, "MODELFLEET_SCALE_TO_ZERO_IDLE_SECONDS": WAKE_IDLE_SECONDS}
    if side == "ray":
        extra.update(
            MODELFLEET_RAY_ADDRESS=ray_address,
            MODELFLEET_RAY_RESOURCE_SCALE=RAY_RESOURCE_SCALE,
            MODELFLEET_AUTOSCALE_UP_DELAY_SECONDS="600",  # one replica each, as on the local side
        )
    else:
        extra["MODELFLEET_AUTOSCALE_UP_DELAY_SECONDS"] = "600"
    folder = Path(tempfile.mkdtemp(prefix="modelfleet-bench-ray-"))
    started = time.monotonic()
    stack = start_stack(**extra)
    ok = False
    try:
        from endpoints_app import registry
        from endpoints_app.models import Replica, ReplicaState, RuntimeHost

        stack_seconds = time.monotonic() - started
        deadline = time.monotonic() + 120
        while not RuntimeHost.objects.exists():  # the runtime is up and has reported its host(s)
            if time.monotonic() > deadline:
                raise RuntimeError("the runtime reported no host within 120 s")
            time.sleep(0.2)
        registered = {"iris": DEMO}
        samples = {"iris": iris_sample()}
        if "pipeline" in models:
            samples["pipeline"] = model_shapes.save_pipeline(folder / "pipeline")
            registry.register_model_dir(folder / "pipeline", "main.default.bench_pipeline")
            registered["pipeline"] = "main.default.bench_pipeline"
        time.sleep(SETTLE_SECONDS)

        def create(name: str, entity: str, stz: bool) -> float:
            body = {
                "name": name,
                "config": {
                    "served_entities": [
                        {
                            "entity_name": entity,
                            "entity_version": "1",
                            "workload_size": "Small",
                            "scale_to_zero_enabled": stz,
                        }
                    ]
                },
            }
            t0 = time.monotonic()
            created = requests.post(
                f"{stack.base}/api/2.0/serving-endpoints", json=body, headers=stack.auth, timeout=30
            )
            if created.status_code != 200:
                raise RuntimeError(f"creating {name}: HTTP {created.status_code} {created.text[:300]}")
            _wait_ready(stack.base, stack.auth, name)
            return time.monotonic() - t0

        result: dict = {"side": side, "stack_seconds": stack_seconds, "start": {}, "cells": {}, "hosts": {}}
        for key in models:
            result["start"][key] = create(f"bench-{key}", registered[key], False)
            replica = Replica.objects.get(deployment__endpoint__name=f"bench-{key}", state=ReplicaState.READY)
            result["hosts"][key] = replica.host
            print(f"  {side:<5} {key:<9} replica start {result['start'][key]:6.2f} s on {replica.host}", flush=True)
        for key in models:
            body = folder / f"{key}.json"
            body.write_text(json.dumps({"dataframe_records": samples[key].head(1).to_dict(orient="records")}))
            url = f"{stack.base}/serving-endpoints/bench-{key}/invocations"
            check = requests.post(
                url, data=body.read_bytes(), headers={**stack.auth, "Content-Type": "application/json"}, timeout=60
            )
            if check.status_code != 200:
                raise RuntimeError(f"bench-{key}: HTTP {check.status_code} {check.text[:300]}")
            result.setdefault("predictions", {})[key] = check.json().get("predictions")
            for c in CONCURRENCIES:
                r = wrk.run(wrk_path, url, body, concurrency=c, seconds=seconds, token=stack.token)
                result["cells"][f"{key}|{c}"] = r.as_dict()
                print(
                    f"  {side:<5} {key:<9} c={c:<2} {r.rps:8,.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
                    f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}",
                    flush=True,
                )
        colds = []
        if wakes:
            create("bench-zero", DEMO, True)
            for _ in range(wakes):
                took, status = stack.timed_wake_up("bench-zero")
                if status != 200:
                    raise RuntimeError(f"a wake-up query answered HTTP {status}")
                colds.append(took)
            print(f"  {side:<5} wake from zero: {', '.join(f'{c:.2f}' for c in colds)} s", flush=True)
        result["wakes"] = colds
        if side == "ray":
            result["niceness"] = model_server_niceness()
            print(f"  ray   nice values of the model servers on the nodes: {result['niceness']}", flush=True)
        out.write_text(json.dumps(result))
        ok = True
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if ok:
            shutil.rmtree(stack.data_dir, ignore_errors=True)
        else:
            print(f"bench_ray: {side} stack's log kept in {stack.data_dir / 'stack.log'}", file=sys.stderr)


# --- the parent: the Ray cluster, both sides, the table -----------------------------------------


def _child(side: str, ray_address: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, __file__, "--side", side, "--out", str(out), "--seconds", str(args.seconds)]
    command += ["--wakes", str(args.wakes), "--models", args.models, "--ray-address", ray_address]
    process = subprocess.Popen(command)
    try:
        code = process.wait(timeout=600)  # minutes on a loaded machine (setup, cold imports)
    finally:
        if process.poll() is None:  # interrupted, or over time: the child stops its stack on SIGTERM
            process.terminate()
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if code != 0:
        raise RuntimeError(f"the {side} side failed (exit {code})")
    return json.loads(out.read_text())


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (and their reaped children), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def cluster_idle_cpu(cluster: ray_cluster.RayCluster, seconds: float = 3.0) -> float:
    """The cluster's CPU use while nothing is served, as a share of one core."""
    pids = [pid for node in cluster.nodes for pid in node.pids()]
    before = _cpu_seconds(pids)
    time.sleep(seconds)
    return (_cpu_seconds(pids) - before) / seconds


def busy_cluster() -> str | None:
    """Why not to start here: another Ray cluster of tests/ray_cluster.py is running (its names are fixed)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        netns = line.split()[0] if line.split() else ""
        if netns.startswith("mfray-"):
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            if pids:
                return f"another Ray test cluster is running here (namespace {netns}, {len(pids)} processes)"
    return None


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def model_server_niceness() -> dict[str, list[int]]:
    """The nice values of the model servers running on the Ray nodes, per node namespace."""
    found: dict[str, list[int]] = {}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for netns in (n for n in listed if n.startswith("mfray-")):
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if b"endpoints_app.runtime.model_server" in cmdline:
                found.setdefault(netns, []).append(int(stat[16]))  # field 19 of stat: nice
    return found


def stop_cluster(cluster: ray_cluster.RayCluster) -> list[str]:
    """Stop every node and check that nothing the cluster started is left: what is left, if anything."""
    pids = {pid for node in cluster.nodes for pid in node.pids()}
    cluster.stop()
    left = []
    deadline = time.monotonic() + 10  # killed ones may linger a moment as zombies until reaped
    while (alive := [pid for pid in sorted(pids) if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        left.append(f"process {pid}")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for node in cluster.nodes:
        if node.netns in namespaces:
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
            left.append(f"namespace {node.netns}")
    if subprocess.run(["ip", "link", "show", ray_cluster.BRIDGE], capture_output=True).returncode == 0:
        subprocess.run(["ip", "link", "del", ray_cluster.BRIDGE], capture_output=True)
        left.append(f"bridge {ray_cluster.BRIDGE}")
    if cluster.root.exists():
        shutil.rmtree(cluster.root, ignore_errors=True)
        left.append(str(cluster.root))
    return left


def fmt(r: dict) -> tuple[str, str, str]:
    errors = f" ({r['errors']} errors)" if r["errors"] else ""
    return f"{r['rps']:,.0f}{errors}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"


def report(
    results: dict[str, dict], models: list[str], args: argparse.Namespace, loads: list[str], idle: float
) -> None:
    local, ray = results["local"], results["ray"]
    print()
    print(
        f"Ray backend vs local backend: {os.cpu_count()} CPUs, one machine, one replica per model (Small), "
        f"through the gateway; wrk (1 thread, pinned), {args.seconds:g} s per cell after a 1 s warm-up, 1-row "
        f"dataframe_records bodies; load average {loads[0]} at start, {loads[1]} at end. Ray: a head and two "
        f"1-CPU workers in network namespaces on this machine; its idle CPU use {idle * 100:.0f} % of a core."
    )
    print()
    print("| model | c | backend | requests/s | p50 ms | p99 ms | ray overhead |")
    print("|---|---|---|---|---|---|---|")
    for key in models:
        for c in CONCURRENCIES:
            lo, ra = local["cells"][f"{key}|{c}"], ray["cells"][f"{key}|{c}"]
            rps_change = (ra["rps"] / lo["rps"] - 1) * 100 if lo["rps"] else float("nan")
            overhead = (
                f"{ra['p50_ms'] - lo['p50_ms']:+.2f} ms p50, {ra['p99_ms'] - lo['p99_ms']:+.2f} ms p99, "
                f"{rps_change:+.0f} % req/s"
            )
            print(f"| {key} | {c} | local | {' | '.join(fmt(lo))} | |")
            print(f"| {key} | {c} | ray | {' | '.join(fmt(ra))} | {overhead} |")
    print()
    print("| start | local | ray | ray overhead |")
    print("|---|---|---|---|")
    for key in models:
        lo, ra = local["start"][key], ray["start"][key]
        print(f"| {key}: replica start (create → READY) | {lo:.2f} s | {ra:.2f} s | {ra - lo:+.2f} s |")
    if local["wakes"] and ray["wakes"]:
        lo, ra = statistics.median(local["wakes"]), statistics.median(ray["wakes"])
        print(f"| iris: wake from zero, median of {len(local['wakes'])} | {lo:.2f} s | {ra:.2f} s | {ra - lo:+.2f} s |")
    print(
        f"| stack start (`modelfleet setup` + `up`) | {local['stack_seconds']:.1f} s | {ray['stack_seconds']:.1f} s "
        f"(cluster start not included) | |"
    )
    print()
    print("Replicas: " + "; ".join(f"{k}: local on {local['hosts'][k]}, ray on {ray['hosts'][k]}" for k in models))
    if ray.get("niceness"):
        print(
            f"Nice values of the model servers on the Ray nodes: {ray['niceness']} (local replicas keep the "
            f"stack's, {os.nice(0)} here; Ray starts its workers at RAY_worker_niceness)"
        )
    same = all(local["predictions"][k] == ray["predictions"][k] for k in models)
    print(f"Same predictions on both backends: {'yes' if same else 'NO'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--wakes", type=int, default=3, help="wake-from-zero measurements per backend (default 3)")
    parser.add_argument("--models", default="iris,pipeline", help="iris, pipeline or both (default both)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # the child processes
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ray-address", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "iris" not in models or set(models) - {"iris", "pipeline"}:
        parser.error("--models: iris, optionally with pipeline")
    _exit_on_sigterm()
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", RAY_USAGE_STATS_ENABLED="0")
    if args.side:
        run_side(args.side, args.ray_address, models, args.seconds, args.wakes, args.out)
        return 0

    why_not = ray_cluster.available() or busy_cluster()
    if why_not:
        print(f"bench_ray: skipped: {why_not}", flush=True)
        return 0
    try:
        wrk.ensure_wrk()
    except wrk.WrkUnavailable as exc:
        print(f"bench_ray: {exc}", file=sys.stderr)
        return 2
    loads = [load_average()]
    print(f"bench_ray: load average at start {loads[0]}", flush=True)
    began = time.monotonic()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        results["local"] = _child("local", "", args, Path(tmp) / "local.json")
        t0 = time.monotonic()
        cluster = ray_cluster.start()
        print(f"bench_ray: Ray cluster started in {time.monotonic() - t0:.1f} s", flush=True)
        left: list[str] = []
        idle = 0.0
        try:
            idle = cluster_idle_cpu(cluster)
            results["ray"] = _child("ray", cluster.client_address, args, Path(tmp) / "ray.json")
        finally:
            left = stop_cluster(cluster)
            if left:
                print(f"bench_ray: left after the cluster stopped, removed: {', '.join(left)}", file=sys.stderr)
    loads.append(load_average())
    report(results, models, args, loads, idle)
    print(f"\nbench_ray: {time.monotonic() - began:.0f} s in all; Ray cluster torn down: {'yes' if not left else 'no'}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
