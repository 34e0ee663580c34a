"""Warm standby: a model server process that has imported everything heavy and waits to be told
which replica it becomes.

The runtime agent keeps one, ``python -m endpoints_app.runtime.model_server --standby``, which
imports up front what a fresh process spends its first seconds on (STANDBY_IMPORTS), then waits
for one line of JSON on stdin naming the replica it becomes (STANDBY_KEYS): from that line to
/health 200 takes ~30 ms for a small model instead of ~3.5 s, most of it importing MLflow,
scikit-learn and skops.  The line is turned into the command-line arguments a fresh replica
would have had, so main.py parses both the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass

# The JSON object a standby process reads from stdin: the key, and the command-line option it
# stands for (None: handled by the standby itself).  model_path and port are required.
STANDBY_KEYS: dict[str, str | None] = {
    "model_path": "--model-path",
    "host": "--host",
    "port": "--port",
    "name": "--name",
    "replica_id": "--replica-id",
    "threads": "--threads",
    "max_batch_rows": "--max-batch-rows",
    "scratch_dir": "--scratch-dir",
    "credential": None,  # the replica's credential (not an option: never on a command line)
    "log_path": None,  # fds 1 and 2 are reopened on this file (append), as the agent does for a fresh start
    "env": None,  # applied to os.environ before the model loads
}
# What a fresh process spends its first seconds importing; the standby does it before it is
# needed.  skops.io alone takes ~0.9 s (it imports every scikit-learn estimator), and MLflow
# 3.x saves scikit-learn models with skops by default.  Optional ones may be missing.
STANDBY_IMPORTS = (
    "mlflow.sklearn",
    "mlflow.pyfunc.loaders",
    "sklearn",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.preprocessing",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.tree",
    "skops.io",
    "cloudpickle",
    "psutil",
    "httptools",
    "uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
)


@dataclass(frozen=True)
class Assignment:
    """What a standby was told: the command line it stands for, and what never goes on one."""

    argv: list[str]
    env_keys: list[str]  # names of the environment variables applied, for the log
    credential: str


def preload() -> None:
    """Import what a fresh replica would, so that an assignment starts serving at once."""
    for module in STANDBY_IMPORTS:
        try:
            importlib.import_module(module)
        except Exception:  # missing or broken: the replica imports it itself, or fails as it would fresh
            pass
    # load_model compares the model's requirements with what is installed, through a map of
    # every installed distribution's modules that MLflow builds once per process (~0.7 s).
    try:
        # Imported here, inside the try: a private MLflow helper that a new MLflow may not have.
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()
    except Exception:  # a private MLflow helper: without it the first load is just slower
        pass


def wait_for_assignment(defaults: argparse.Namespace) -> Assignment | None:
    """Standby mode: block until one line of JSON arrives on stdin, then become that replica.

    Returns the assignment, whose argv keeps the standby's own --threads and --max-batch-rows
    unless the line names others, or None when stdin closes without a line (the agent no longer
    needs this standby).  Raises SystemExit(2) for a line that is not a valid assignment
    (reported in the replica's log when it names one, else on the standby's own stderr).  The
    line's env only reaches what reads the environment from now on: settings that MLflow or a
    library read at import are fixed.
    """
    line = sys.stdin.readline()
    if not line.strip():
        return None
    try:
        assignment = json.loads(line)
    except ValueError as exc:
        print(f"standby: the assignment is not JSON: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from exc
    if not isinstance(assignment, dict):
        print("standby: the assignment must be a JSON object", file=sys.stderr, flush=True)
        raise SystemExit(2)
    log_path = assignment.get("log_path")
    if log_path:
        _redirect_output(str(log_path))
    # stdin is done with; the agent may close its end whenever it likes.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    unknown = sorted(set(assignment) - set(STANDBY_KEYS))
    env = assignment.get("env") or {}
    if unknown or not isinstance(env, dict):
        problem = f"unknown keys {unknown}" if unknown else "env must be an object"
        print(f"standby: bad assignment: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    os.environ.update({str(key): str(value) for key, value in env.items()})
    argv = [
        "--threads",
        str(defaults.threads),
        "--max-batch-rows",
        str(defaults.max_batch_rows),
    ]
    for key, option in STANDBY_KEYS.items():
        if option is not None and assignment.get(key) is not None:
            argv += [option, str(assignment[key])]
    return Assignment(
        argv=argv, env_keys=sorted(str(key) for key in env), credential=str(assignment.get("credential") or "")
    )


def _redirect_output(log_path: str) -> None:
    """Point file descriptors 1 and 2 at the replica's log, so that everything written from now
    on (our logging, uvicorn, MLflow, the model, C libraries) lands there."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
