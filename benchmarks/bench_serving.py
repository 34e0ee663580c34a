"""Serving benchmarks (issue: workload sizes, autoscaling, scale-to-zero, speed against MLflow).

Measured side by side in one run, on the demo model and this machine:
  (a) a query through Modelfleet's gateway (`modelfleet up`: web + gateway, model server replica),
  (b) the same model server replica directly,
  (c) `mlflow models serve` with its default settings, on the same model files;
at concurrency 1, 8 and 32 with 1-row and 100-row payloads; plus the cold start from zero
(median of 5) and the gateway's added latency (a − b).
Usage: python benchmarks/bench_serving.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import BIN, COLUMNS, ROW, free_port, start_stack, wait_http  # noqa: E402

PY = sys.executable


def loadgen(url: str, body_file: Path, concurrency: int, seconds: float, token: str | None = None) -> dict:
    cmd = [
        PY,
        str(ROOT / "benchmarks" / "loadgen.py"),
        url,
        str(body_file),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
    ]
    if token:
        cmd += ["--token", token]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()

    stack = start_stack(MODELFLEET_SCALE_TO_ZERO_IDLE_SECONDS="2")
    data_dir, token, base, env = stack.data_dir, stack.token, stack.base, stack.env
    mlflow_proc = None
    try:
        from endpoints_app import registry
        from endpoints_app.models import Replica, ReplicaState

        auth = stack.auth
        for name, stz in (("bench", False), ("bench-zero", True)):
            body = {
                "name": name,
                "config": {
                    "served_entities": [
                        {
                            "entity_name": "main.default.demo_classifier",
                            "entity_version": "1",
                            "workload_size": "Small",
                            "scale_to_zero_enabled": stz,
                        }
                    ]
                },
            }
            requests.post(base + "/api/2.0/serving-endpoints", json=body, headers=auth, timeout=30).raise_for_status()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [
                requests.get(f"{base}/api/2.0/serving-endpoints/{n}", headers=auth, timeout=10).json()["state"]
                for n in ("bench", "bench-zero")
            ]
            if all(s["ready"] == "READY" for s in states):
                break
            time.sleep(0.5)
        replica = Replica.objects.get(deployment__endpoint__name="bench", state=ReplicaState.READY)
        direct = f"http://{replica.host}:{replica.port}/invocations"
        gateway = f"{base}/serving-endpoints/bench/invocations"

        mlflow_port = free_port()
        source = registry.get_model_version("main.default.demo_classifier", "1").source
        mlflow_proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", source, "-p", str(mlflow_port), "--env-manager", "local"],
            env=env,
            stdout=open(data_dir / "mlflow.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{mlflow_port}/ping")
        mlflow_url = f"http://127.0.0.1:{mlflow_port}/invocations"

        bodies = {}
        for rows in (1, 100):
            path = data_dir / f"body-{rows}.json"
            path.write_text(json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [ROW] * rows}}))
            bodies[rows] = path
        results = {}
        for label, url, tok in (
            ("(a) gateway", gateway, token),
            ("(b) model server", direct, replica.credential),  # replicas answer only with their credential
            ("(c) mlflow serve", mlflow_url, None),
        ):
            for rows in (1, 100):
                for concurrency in (1, 8, 32):
                    results[(label, rows, concurrency)] = loadgen(url, bodies[rows], concurrency, args.seconds, tok)
                    r = results[(label, rows, concurrency)]
                    print(
                        f"  {label:<17} rows={rows:<3} c={concurrency:<2} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                        f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}",
                        flush=True,
                    )

        # Cold start: the scale-to-zero endpoint idles 2 s, then one query wakes it (5 times).
        colds = []
        for _ in range(5):
            seconds, status = stack.timed_wake_up("bench-zero")
            assert status == 200
            colds.append(seconds)
    finally:
        if mlflow_proc is not None:
            os.killpg(mlflow_proc.pid, signal.SIGTERM)
        stack.stop()

    print()
    print(
        f"Serving benchmark, demo model (scikit-learn LogisticRegression), {os.cpu_count()} CPUs, {args.seconds:g} s per cell"
    )
    print()
    print("| target | rows | concurrency | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for (label, rows, concurrency), r in results.items():
        print(
            f"| {label} | {rows} | {concurrency} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
        )
    a8 = results[("(a) gateway", 1, 8)]["rps"]
    c8 = results[("(c) mlflow serve", 1, 8)]["rps"]
    overhead = results[("(a) gateway", 1, 1)]["p50_ms"] - results[("(b) model server", 1, 1)]["p50_ms"]
    cold = statistics.median(colds)
    print()
    print("| check | measured | target | result |")
    print("|---|---|---|---|")
    print(
        f"| gateway vs mlflow serve, concurrency 8, 1 row | {a8 / c8:.1f}× ({a8:.0f} vs {c8:.0f} req/s) | ≥ 5× | {'PASS' if a8 >= 5 * c8 else 'FAIL'} |"
    )
    print(
        f"| gateway p50 overhead (a − b), concurrency 1, 1 row | {overhead:.2f} ms | < 1 ms | {'PASS' if overhead < 1 else 'FAIL'} |"
    )
    print(
        f"| cold start from zero, median of 5 | {cold:.2f} s ({', '.join(f'{c:.2f}' for c in colds)}) | < 3 s | {'PASS' if cold < 3 else 'FAIL'} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
