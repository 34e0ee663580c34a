"""Replicas of a root agent run as ``nobody``: the data directory's layout keeps them out by permissions too.

test_sandbox.py drives the real stack; on this kind of host the venv's Python lives under /root, out of
``nobody``'s reach, so the agent falls back to root without capabilities there.  This module checks the
``nobody`` path itself with the system Python (the sandbox module needs only the standard library):
the agent's DATA_DIR layout plus the early sandbox stage, as a model server would enter it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoints_app.runtime import sandbox
from endpoints_app.runtime.agent import close_data_dir_to_others

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"

PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from endpoints_app.runtime import sandbox
data, model, scratch = sys.argv[2:5]
isolation = sandbox.enter_early(sandbox.Plan(
    read=[os.path.join(data, "runtime", "deployments")], write=[os.path.join(data, "runtime", "scratch")],
    user="nobody"))

def attempt(action):
    try:
        return repr(action())[:80]
    except OSError as exc:
        return type(exc).__name__

def write():
    with open(os.path.join(scratch, "out.txt"), "w") as fh:
        return fh.write("x")

print(json.dumps({
    "isolation": isolation.describe(),
    "uid": os.getuid(),
    "secrets_key": attempt(lambda: open(os.path.join(data, "secrets_key")).read()),
    "database": attempt(lambda: open(os.path.join(data, "modelfleet.sqlite3")).read()),
    "list data dir": attempt(lambda: os.listdir(data)),
    "standby log": attempt(lambda: open(os.path.join(data, "runtime", "standby.log")).read()),
    "model": attempt(lambda: open(model).read()),
    "scratch": attempt(write),
    "back to root": attempt(lambda: os.setuid(0)),
}))
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A DATA_DIR laid out as the agent leaves it when replicas run as nobody."""
    root = Path(tempfile.mkdtemp(prefix="modelfleet-sandbox-"))  # 0700, like a fresh data dir
    (root / "secrets_key").write_text("fernet key")
    (root / "modelfleet.sqlite3").write_text("database")
    runtime = root / "runtime"
    model = runtime / "deployments" / "1" / "model"
    model.mkdir(parents=True)
    (model / "MLmodel").write_text("the model")
    (runtime / "standby.log").write_text("standby output")
    scratch = runtime / "scratch" / "1-0"
    scratch.mkdir(parents=True)
    uid, gid = sandbox.replica_ids()
    os.chown(scratch, uid, gid)
    close_data_dir_to_others(root, runtime, runtime / "scratch")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to nobody needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="needs the system Python")
def test_a_replica_dropped_to_nobody_reaches_only_its_model_and_scratch(data_dir: Path) -> None:
    model = data_dir / "runtime" / "deployments" / "1" / "model" / "MLmodel"
    scratch = data_dir / "runtime" / "scratch" / "1-0"
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", PROBE, str(REPO_ROOT), str(data_dir), str(model), str(scratch)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["uid"] == 65534
    assert seen["isolation"].endswith("user-nobody") and seen["isolation"].startswith("landlock-abi")
    assert seen["secrets_key"] == seen["database"] == seen["list data dir"] == "PermissionError"
    assert seen["standby log"] == "PermissionError"
    assert seen["model"] == repr("the model")
    assert seen["scratch"] == "1"
    assert seen["back to root"] == "PermissionError"
    assert oct(data_dir.stat().st_mode & 0o777) == "0o711"
    assert (data_dir / "secrets_key").stat().st_mode & 0o077 == 0


def test_a_user_that_cannot_enter_the_python_installation_is_detected(data_dir: Path) -> None:
    data_dir.chmod(0o755)
    closed = data_dir / "home"
    closed.mkdir(mode=0o700)
    (closed / "python").mkdir()
    uid, gid = sandbox.replica_ids()
    if os.geteuid() == uid:
        pytest.skip("runs as the replica user itself")
    assert sandbox.reachable_by(uid, gid, [str(closed / "python")]) == str(closed)
    closed.chmod(0o711)
    assert sandbox.reachable_by(uid, gid, [str(closed / "python")]) is None
