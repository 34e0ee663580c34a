"""Serving benchmark on real model shapes, against `mlflow models serve` (issue #13).

Measured side by side in one run, on this machine, for each model (model_shapes.py):
  iris      the demo model (scikit-learn LogisticRegression, four numeric columns),
  pipeline  ColumnTransformer (one-hot on a string column, numbers passed through) →
            LogisticRegression,
  pyfunc    a custom ``python_model`` whose ``predict`` applies rules row by row in Python,
  pyfunc_rowwise  the same model, declared row-wise by its author (so Modelfleet may batch it),
  lightgbm  a 100-tree LightGBM classifier (skipped, with a note, when lightgbm is missing);
each through four paths:
  gateway   Modelfleet's gateway (`modelfleet up`: web + gateway, one model server replica),
  replica   the same replica directly, with its credential,
  mlflow    `mlflow models serve --env-manager local` with its defaults (one uvicorn worker),
  mlflow-2w `mlflow models serve` at its best tuning on this 2-core machine: ``--workers 2``
            (one per core; more workers only queue on the same cores), uvicorn's uvloop loop
            and httptools parser named explicitly (``UVICORN_LOOP``, ``UVICORN_HTTP``; its
            "auto" picks the same when installed, as here) and its per-request access log off
            (``UVICORN_ACCESS_LOG=false``).  `mlflow models serve` runs a bare ``uvicorn
            mlflow.pyfunc.scoring_server.app:app``, which reads these UVICORN_* settings;
            `--workers` is its only own tuning flag (``MLFLOW_MODELS_WORKERS``).
with 1-row and 100-row ``dataframe_records`` bodies at concurrency 1, 8 and 32.

The load comes from wrk (C, one thread pinned to one CPU, see wrk.py), installed from Debian's
package when missing, so the client's CPU use stays a small fraction of one core instead of the
Python client's near-equal share.  Before measuring, every path's answers to both bodies are
compared with `mlflow models serve`'s.  Each cell runs a 1 s warm-up, then ``--seconds``.

Targets (issue #13) are printed with PASS/FAIL.  "No model slower than today at c=1" needs an
earlier run's numbers: ``--json FILE`` writes this run's, ``--baseline FILE`` compares the
gateway's c=1 requests/s per model and body with them (within 5 %; one run scatters more than
that on the 2-core machine, see BASELINE_TOLERANCE).  Without ``--baseline`` the recorded baseline (DEFAULT_BASELINE: the product before
issue #13's speed work, measured on the 2-core machine it names) is used only on a machine of
the same description (CPU model and count); elsewhere that target is not judged, since another
machine's requests/s say nothing about this code.  To record a baseline on another machine, run
the earlier product with ``--product`` (see docs/benchmarks.md).

Usage: python benchmarks/bench_models.py [--seconds 5] [--quick] [--models iris,pipeline]
       [--concurrency 1,8,32] [--paths gateway,replica] [--product DIR]
       [--json out.json] [--baseline earlier.json]
``--quick``: 3 s per cell, 1-row bodies at concurrency 1 and 8 only (a smoke run).
``--concurrency``: only these concurrencies (default 1,8,32; with --quick 1,8).
``--paths``: only these paths (default all four); without mlflow's paths no ``mlflow models
serve`` is started and the answers are compared between the paths measured.
``--product DIR``: serve the Modelfleet tree in DIR (e.g. a git worktree of an earlier commit)
instead of this checkout: DIR goes first on this process's sys.path and on the stack's
PYTHONPATH (the stack's processes also start in their tree's root), and the run stops if
``endpoints_app`` is imported from anywhere else.  The benchmark's own code (models, wrk, the
stack's start) stays this checkout's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import model_shapes, wrk  # noqa: E402
from benchmarks.common import BIN, COLUMNS, DEMO, Stack, free_port, start_stack, wait_http, wait_quiet  # noqa: E402

PATHS = ("gateway", "replica", "mlflow", "mlflow-2w")
PATH_TITLES = {
    "gateway": "gateway",
    "replica": "replica direct",
    "mlflow": "mlflow serve (default)",
    "mlflow-2w": "mlflow serve (2 workers)",
}
# A c=1 cell within this much of the baseline is "not slower".  One run of one c=1 cell on the
# 2-core machine scatters about -14 % to +15 % around its median (docs/benchmarks.md), so a single
# run's verdict for a model near 1.0x (iris) is not conclusive: compare several runs.
BASELINE_TOLERANCE = 0.05
# The product as issue #13 found it (commit 5c4d284), c=1 cells on the 2-core machine the file
# names; used without --baseline only on a machine of the same description (machine_id()).
DEFAULT_BASELINE = ROOT / "benchmarks" / "baselines" / "issue13-c1.json"
PRODUCT_PATHS = ("endpoints_app", "dashboard")  # what --product serves


def machine_id() -> dict[str, object]:
    """What a baseline's numbers depend on beyond the code: the CPU model and how many CPUs."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpus": os.cpu_count()}


def git_commit(tree: Path, *paths: str) -> str:
    """The tree's commit, marked "(modified)" when ``paths`` differ from it."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "--", *paths],
        capture_output=True,
        text=True,
    )
    commit = done.stdout.strip() or "unknown"
    return commit + (" (modified)" if dirty.stdout.strip() else "")


def use_product(product: Path) -> None:
    """Serve the Modelfleet tree in ``product``: first on sys.path here and on the stack's PYTHONPATH."""
    if "endpoints_app" in sys.modules:
        raise SystemExit("bench: endpoints_app was imported before --product took effect")
    sys.path.insert(0, str(product))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(product), os.environ.get("PYTHONPATH")) if p)
    import endpoints_app

    where = Path(endpoints_app.__file__).resolve()
    if not where.is_relative_to(product):
        raise SystemExit(f"bench: endpoints_app comes from {where}, not from {product}")
    print(f"bench: serving the product in {product} (commit {git_commit(product, *PRODUCT_PATHS)})", flush=True)


def default_baseline() -> tuple[dict | None, str]:
    """The recorded baseline when this machine is the one it was recorded on: (cells, why)."""
    if not DEFAULT_BASELINE.exists():
        return None, "no baseline recorded"
    recorded = json.loads(DEFAULT_BASELINE.read_text())
    here = machine_id()
    if recorded.get("machine") != here:
        return None, (
            f"{DEFAULT_BASELINE.relative_to(ROOT)} was recorded on another machine "
            f"({recorded.get('machine')}; this one: {here}): not judged"
        )
    dates = recorded.get("date") or ["?"]
    dates = dates if isinstance(dates, list) else [dates]
    return recorded["cells"], (
        f"{DEFAULT_BASELINE.relative_to(ROOT)}: commit {recorded.get('commit', '?')[:7]}, measured "
        f"{dates[0]} to {dates[-1]} on a machine described as this one ({here['cpus']} × {here['cpu_model']}); "
        "machine-specific numbers, meaningful only on that machine and about as quiet"
    )


@dataclass(frozen=True)
class Model:
    key: str
    title: str
    registered_name: str
    sample: pd.DataFrame  # the rows bodies are cut from

    def body(self, rows: int) -> bytes:
        records = self.sample.head(rows).to_dict(orient="records")
        return json.dumps({"dataframe_records": records}).encode()


def iris_sample() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    iris = load_iris()
    frame = pd.DataFrame(iris.data, columns=COLUMNS)
    return frame.sample(n=100, random_state=0).reset_index(drop=True)


BUILDERS: dict[str, tuple[str, Callable[[Path], pd.DataFrame]]] = {
    "pipeline": ("Pipeline: one-hot(string) + numbers → LogisticRegression", model_shapes.save_pipeline),
    "pyfunc": ("custom python_model, rules per row in Python", model_shapes.save_pyfunc),
    "pyfunc_rowwise": (
        "the same python_model, declared row-wise by its author (metadata modelfleet.batchable: true)",
        functools.partial(model_shapes.save_pyfunc, rowwise=True),
    ),
    "lightgbm": ("LightGBM classifier, 100 trees", model_shapes.save_lightgbm),
}


def build_models(keys: list[str], folder: Path) -> tuple[list[Model], dict[str, Path]]:
    """The models to measure and, for those built here, their model directories."""
    models: list[Model] = []
    dirs: dict[str, Path] = {}
    for key in keys:
        if key == "iris":
            models.append(Model("iris", "iris LogisticRegression (demo model)", DEMO, iris_sample()))
            continue
        if key == "lightgbm" and not model_shapes.lightgbm_available():
            print("bench: lightgbm is not installed (pip install -e '.[dev]'); skipping the LightGBM model", flush=True)
            continue
        title, save = BUILDERS[key]
        dirs[key] = folder / key
        models.append(Model(key, title, f"main.default.bench_{key}", save(dirs[key])))
    return models, dirs


@contextmanager
def mlflow_serve(source: str, *, tuned: bool, env: dict[str, str], log: Path) -> Iterator[str]:
    """`mlflow models serve` on ``source`` (default or best-tuned), yielding its invocations URL."""
    port = free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", source, "-h", "127.0.0.1", "-p", str(port)]
    command += ["--env-manager", "local"]
    serve_env = dict(env, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")  # it runs a bare `uvicorn`
    serve_env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    if tuned:
        command += ["--workers", "2"]
        serve_env.update(UVICORN_LOOP="uvloop", UVICORN_HTTP="httptools", UVICORN_ACCESS_LOG="false")
    process = subprocess.Popen(
        command,
        env=serve_env,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping")
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def serve_on_stack(stack: Stack, models: list[Model], dirs: dict[str, Path]) -> dict[str, tuple[str, str, str]]:
    """Register and serve every model; per model: (gateway URL, replica URL, replica credential)."""
    from endpoints_app import registry
    from endpoints_app.models import Replica, ReplicaState

    for model in models:
        if model.key in dirs:
            registry.register_model_dir(dirs[model.key], model.registered_name)
    urls = {}
    for model in models:
        name = f"bench-{model.key}"
        entity = {
            "entity_name": model.registered_name,
            "entity_version": "1",
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
        }
        stack.create(name, entity)
        replica = Replica.objects.get(deployment__endpoint__name=name, state=ReplicaState.READY)
        urls[model.key] = (
            f"{stack.base}/serving-endpoints/{name}/invocations",
            f"http://{replica.host}:{replica.port}/invocations",
            replica.credential,
        )
    return urls


def same_answers(targets: dict[str, tuple[str, str | None]], bodies: dict[int, Path]) -> list[str]:
    """Every path's answer to every body, compared with `mlflow models serve`'s: the differences."""
    problems = []
    for rows, body in bodies.items():
        answers = {}
        for path, (url, token) in targets.items():
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = requests.post(url, data=body.read_bytes(), headers=headers, timeout=60)
            if response.status_code != 200:
                problems.append(f"{path}, {rows} rows: HTTP {response.status_code} {response.text[:200]}")
                continue
            answers[path] = response.json().get("predictions")
        reference = "mlflow" if "mlflow" in targets else next(iter(targets))
        for path, answer in answers.items():
            if reference in answers and answer != answers[reference]:
                problems.append(f"{path}, {rows} rows: predictions differ from {reference}'s")
    return problems


def fmt_cell(r: dict | None) -> str:
    if r is None:
        return "–"
    cell = f"{r['rps']:,.0f} · {r['p50_ms']:.2f} / {r['p99_ms']:.2f}"
    return cell + (f" ({r['errors']} errors)" if r["errors"] else "")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def judge(
    results: dict[tuple[str, str, int, int], dict], models: list[Model], rows_set: list[int], baseline: dict | None
) -> list[tuple[str, str, str, bool | None]]:
    """The targets of issue #13 as (check, measured, target, passed; None where not judged)."""
    checks: list[tuple[str, str, str, bool | None]] = []

    def get(model: str, path: str, rows: int, c: int) -> dict | None:
        return results.get((model, path, rows, c))

    gw, ml = get("pipeline", "gateway", 1, 8), get("pipeline", "mlflow", 1, 8)
    if gw and ml:
        checks.append(
            (
                "pipeline, gateway, c=8, 1 row",
                f"{gw['rps']:,.0f} req/s, {ratio(gw['rps'], ml['rps']):.1f}× mlflow default ({ml['rps']:,.0f})",
                "≥ 2,500 req/s and ≥ 15×",
                gw["rps"] >= 2500 and gw["rps"] >= 15 * ml["rps"] and not gw["errors"],
            )
        )
    for model in models:
        for rows in rows_set:
            gw, ml, tuned = (get(model.key, p, rows, 8) for p in ("gateway", "mlflow", "mlflow-2w"))
            if not (gw and ml and tuned):
                continue
            checks.append(
                (
                    f"{model.key}, gateway, c=8, {rows} row{'s' if rows > 1 else ''}",
                    f"{ratio(gw['rps'], ml['rps']):.1f}× mlflow default, {ratio(gw['rps'], tuned['rps']):.1f}× "
                    f"mlflow 2 workers ({gw['rps']:,.0f} vs {ml['rps']:,.0f} / {tuned['rps']:,.0f})",
                    "≥ 5×, > 1×",
                    gw["rps"] >= 5 * ml["rps"] and gw["rps"] > tuned["rps"] and not gw["errors"],
                )
            )
    for model in models:
        gw, direct = get(model.key, "gateway", 1, 1), get(model.key, "replica", 1, 1)
        if gw and direct:
            overhead = gw["p50_ms"] - direct["p50_ms"]
            checks.append(
                (
                    f"{model.key}, gateway p50 overhead over replica, c=1, 1 row",
                    f"{overhead:.2f} ms ({gw['p50_ms']:.2f} − {direct['p50_ms']:.2f})",
                    "< 0.3 ms",
                    overhead < 0.3,
                )
            )
    for model in models:
        for rows in rows_set:
            gw = get(model.key, "gateway", rows, 1)
            if gw is None:
                continue
            label = f"{model.key}, gateway, c=1, {rows} row{'s' if rows > 1 else ''}, vs baseline"
            before = (baseline or {}).get(f"{model.key}|gateway|{rows}|1")
            if before is None:
                checks.append((label, f"{gw['rps']:,.0f} req/s, no baseline", "not slower", None))
                continue
            checks.append(
                (
                    label,
                    f"{gw['rps']:,.0f} vs {before['rps']:,.0f} req/s ({ratio(gw['rps'], before['rps']):.2f}×)",
                    f"≥ {1 - BASELINE_TOLERANCE:.2f}×",
                    gw["rps"] >= (1 - BASELINE_TOLERANCE) * before["rps"],
                )
            )
    return checks


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 s per cell, 1 row, concurrency 1 and 8")
    parser.add_argument(
        "--models", default="iris,pipeline,pyfunc,pyfunc_rowwise,lightgbm", help="comma-separated subset"
    )
    parser.add_argument("--json", type=Path, help="write this run's cells here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help=f"an earlier run's --json, for the c=1 'not slower' target (default: {DEFAULT_BASELINE.relative_to(ROOT)} "
        "on the machine it was recorded on)",
    )
    parser.add_argument("--concurrency", help="comma-separated concurrencies (default 1,8,32; --quick 1,8)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--product", type=Path, help="serve the Modelfleet tree in this directory instead")
    args = parser.parse_args()
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = set(keys) - {"iris", *BUILDERS}
    if unknown:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or set(paths) - set(PATHS):
        parser.error(f"--paths: a subset of {','.join(PATHS)}")
    seconds = 3.0 if args.quick else args.seconds
    rows_set = [1] if args.quick else [1, 100]
    concurrencies = [1, 8] if args.quick else [1, 8, 32]
    if args.concurrency:
        try:
            concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
        except ValueError:
            parser.error("--concurrency: comma-separated integers")
    product = args.product.resolve() if args.product else None
    if product is not None:
        use_product(product)
    if args.baseline:
        baseline, baseline_note = json.loads(args.baseline.read_text())["cells"], str(args.baseline)
    else:
        baseline, baseline_note = default_baseline()
    print(f"bench: c=1 baseline: {baseline_note}", flush=True)

    try:
        wrk_path = wrk.ensure_wrk()
    except wrk.WrkUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="modelfleet-bench-models-"))
    models, dirs = build_models(keys, folder)
    started_load = load_average()
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"bench: load average at start {started_load}", flush=True)

    stack = start_stack()
    results: dict[tuple[str, str, int, int], dict] = {}
    problems: list[str] = []
    try:
        from endpoints_app import registry

        served = serve_on_stack(stack, models, dirs)
        for model in models:
            bodies = {}
            for rows in rows_set:
                bodies[rows] = folder / f"{model.key}-{rows}.json"
                bodies[rows].write_bytes(model.body(rows))
            gateway, direct, credential = served[model.key]
            source = registry.get_model_version(model.registered_name, "1").source
            with ExitStack() as servers:
                ml = ml2 = ""
                if "mlflow" in paths:
                    log = stack.data_dir / f"mlflow-{model.key}.log"
                    ml = servers.enter_context(mlflow_serve(source, tuned=False, env=stack.env, log=log))
                if "mlflow-2w" in paths:
                    log = stack.data_dir / f"mlflow2-{model.key}.log"
                    ml2 = servers.enter_context(mlflow_serve(source, tuned=True, env=stack.env, log=log))
                targets = {
                    "gateway": (gateway, stack.token),
                    "replica": (direct, credential),  # replicas answer only with their credential
                    "mlflow": (ml, None),
                    "mlflow-2w": (ml2, None),
                }
                targets = {p: targets[p] for p in PATHS if p in paths}
                problems += [f"{model.key}: {p}" for p in same_answers(targets, bodies)]
                # Servers that just started (mlflow's workers, the stack's warm standbys) still
                # import for seconds after they first answer: measure once the machine is quiet.
                busy = wait_quiet()
                print(f"  {model.key}: machine {busy:.0%} busy when measuring starts", flush=True)
                for path, (url, token) in targets.items():
                    for rows in rows_set:
                        for c in concurrencies:
                            r = wrk.run(wrk_path, url, bodies[rows], concurrency=c, seconds=seconds, token=token)
                            results[(model.key, path, rows, c)] = r.as_dict()
                            print(
                                f"  {model.key:<9} {path:<9} rows={rows:<3} c={c:<2} {r.rps:8,.0f} req/s  "
                                f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  errors {r.errors}",
                                flush=True,
                            )
    finally:
        stack.stop()
    ended_load = load_average()

    print()
    print(
        f"Model serving benchmark: {os.cpu_count()} CPUs, wrk (1 thread, pinned), {seconds:g} s per cell after "
        f"a 1 s warm-up, dataframe_records bodies; load average {started_load} at start, {ended_load} at end."
    )
    print("Each cell: requests/s · p50 / p99 ms.")
    print()
    shown = [p for p in PATHS if p in paths]
    print("| model | rows | c | " + " | ".join(PATH_TITLES[p] for p in shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for model in models:
        for rows in rows_set:
            for c in concurrencies:
                cells = " | ".join(fmt_cell(results.get((model.key, p, rows, c))) for p in shown)
                print(f"| {model.key} | {rows} | {c} | {cells} |")
    print()
    for model in models:
        print(f"- {model.key}: {model.title}")
    checks = judge(results, models, rows_set, baseline)
    compared = "mlflow serve" if "mlflow" in paths else "each other (mlflow serve not run)"
    if problems:
        checks.insert(0, (f"answers identical to {compared}", "; ".join(problems), "identical", False))
    else:
        checks.insert(0, (f"answers identical to {compared}", "all paths, all bodies", "identical", True))
    print()
    print(f"c=1 baseline: {baseline_note}")
    print()
    print("| target | measured | goal | result |")
    print("|---|---|---|---|")
    for check, measured, goal, passed in checks:
        verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        print(f"| {check} | {measured} | {goal} | {verdict} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "commit": git_commit(product or ROOT, *PRODUCT_PATHS),
                    "product": str(product or ROOT),
                    "bench_commit": git_commit(ROOT, "benchmarks"),
                    "date": started_at,
                    "machine": machine_id(),
                    "seconds": seconds,
                    "cpus": os.cpu_count(),
                    "load_average": [started_load, ended_load],
                    "cells": {f"{m}|{p}|{rows}|{c}": r for (m, p, rows, c), r in results.items()},
                },
                indent=1,
            )
        )
    return 0 if all(passed is not False for *_, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
