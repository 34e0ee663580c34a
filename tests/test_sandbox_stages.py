"""The early sandbox stage reaches only the replica's own model, log and scratch folder (fast, no stack).

Threads a model server starts before its final stage (imports start some) and a warm standby
waiting for its assignment carry the early stage only, so it must not open other deployments'
logs or models either.  The agent's own plans are applied in a child process, as a model server
applies them, and the child tries its own files and everyone else's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from endpoints_app.runtime import sandbox
from endpoints_app.runtime.agent import _CHILD_ENV_ALLOWLIST, _REPLICA_FIXED_ENV, Agent, fill_standby_slot

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from endpoints_app.runtime import sandbox
sandbox.enter_early(sandbox.Plan.from_env(os.environ.pop(sandbox.PLAN_ENV)))
print("confined", flush=True)
targets = json.loads(sys.stdin.readline())  # sent once the test has done what the agent does at assignment

def attempt(action):
    try:
        return repr(action())[:60]
    except OSError as exc:
        return type(exc).__name__

def read(path):
    with open(path) as fh:
        return fh.read()

def append(path):
    with open(path, "a") as fh:
        return fh.write(" appended")

def create(folder):
    with open(os.path.join(folder, "new.txt"), "w") as fh:
        return fh.write("x")

print(json.dumps({
    **{f"read {name}": attempt(lambda p=path: read(p)) for name, path in targets["read"].items()},
    **{f"append {name}": attempt(lambda p=path: append(p)) for name, path in targets["append"].items()},
    **{f"create in {name}": attempt(lambda p=path: create(p)) for name, path in targets["create"].items()},
}))
"""


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    """An agent's sandbox side only (no Django, no processes): its runtime folder with two deployments."""
    runtime = tmp_path / "runtime"
    for deployment in ("1", "2"):
        model = runtime / "deployments" / deployment / "model"
        model.mkdir(parents=True)
        (model / "MLmodel").write_text(f"model {deployment}")
        (model.parent / "server.log").write_text(f"log {deployment}")
    (runtime / "standby.log").write_text("standby")
    for scratch in ("1-0", "2-0"):
        (runtime / "scratch" / scratch).mkdir(parents=True)
    agent = Agent.__new__(Agent)
    agent.runtime_dir = runtime
    agent.scratch_root = runtime / "scratch"
    agent.replica_user = ""
    return agent


def run_probe(plan: str, prepare: object, targets: dict) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", sandbox.PLAN_ENV: plan}
    with subprocess.Popen(
        [sys.executable, "-c", PROBE, str(REPO_ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "confined", child.stderr.read() if child.stderr else ""
        if callable(prepare):
            prepare()
        out, err = child.communicate(json.dumps(targets) + "\n", timeout=60)
    assert child.returncode == 0, err
    return json.loads(out)


def others(runtime: Path) -> dict[str, dict[str, str]]:
    """What belongs to deployment 2, the other tenant, and to the agent."""
    return {
        "read": {
            "other model": str(runtime / "deployments/2/model/MLmodel"),
            "other log": str(runtime / "deployments/2/server.log"),
            "standby log": str(runtime / "standby.log"),
        },
        "append": {
            "other model": str(runtime / "deployments/2/model/MLmodel"),
            "other log": str(runtime / "deployments/2/server.log"),
        },
        "create": {"other scratch": str(runtime / "scratch/2-0"), "deployments": str(runtime / "deployments/1")},
    }


pytestmark = pytest.mark.skipif(sandbox.landlock_abi() == 0, reason="needs Landlock")


def test_a_fresh_replica_reaches_its_own_model_log_and_scratch_only(agent: Agent) -> None:
    runtime = agent.runtime_dir
    own = runtime / "deployments" / "1"
    plan = agent._sandbox_plan(model=str(own / "model"), scratch=runtime / "scratch/1-0", log_file=own / "server.log")
    targets = others(runtime)
    targets["read"]["own model"] = str(own / "model/MLmodel")
    targets["append"]["own log"] = str(own / "server.log")
    targets["append"]["own model"] = str(own / "model/MLmodel")
    targets["create"]["own scratch"] = str(runtime / "scratch/1-0")

    seen = run_probe(plan, None, targets)

    assert seen == {
        "read other model": "PermissionError",
        "read other log": "PermissionError",
        "read standby log": "PermissionError",
        "append other model": "PermissionError",
        "append other log": "PermissionError",
        "create in other scratch": "PermissionError",
        "create in deployments": "PermissionError",
        "read own model": repr("model 1"),
        "append own log": "9",
        "append own model": "PermissionError",
        "create in own scratch": "1",
    }
    assert (runtime / "deployments/2/server.log").read_text() == "log 2"


def test_a_standby_reaches_only_its_slot_before_and_after_its_assignment(agent: Agent) -> None:
    runtime = agent.runtime_dir
    own = runtime / "deployments" / "1"
    slot = agent._new_standby_slot()
    plan = agent._sandbox_plan(model=str(slot / "model"), scratch=slot / "scratch", log_file=slot / "log")
    assigned: dict[str, str] = {}
    targets = others(runtime)
    # Deployment 1's files under their own names: the standby was confined before it knew them.
    targets["read"]["deployment 1's model"] = str(own / "model/MLmodel")
    targets["append"]["deployment 1's log"] = str(own / "server.log")
    targets["read"]["assigned model"] = str(slot / "model/MLmodel")
    targets["append"]["assigned log"] = str(slot / "log/server.log")
    targets["append"]["assigned model"] = str(slot / "model/MLmodel")
    targets["create"]["assigned scratch"] = str(slot / "scratch")

    seen = run_probe(plan, lambda: assigned.update(fill_standby_slot(slot, own / "model", own / "server.log")), targets)

    assert assigned == {
        "model_path": str(slot / "model"),
        "log_path": str(slot / "log/server.log"),
        "scratch_dir": str(slot / "scratch"),
    }
    assert seen == {
        "read other model": "PermissionError",
        "read other log": "PermissionError",
        "read standby log": "PermissionError",
        "append other model": "PermissionError",
        "append other log": "PermissionError",
        "create in other scratch": "PermissionError",
        "create in deployments": "PermissionError",
        "read deployment 1's model": "PermissionError",
        "append deployment 1's log": "PermissionError",
        "read assigned model": repr("model 1"),
        "append assigned log": "9",
        "append assigned model": "PermissionError",  # a hard link to the deployment's model: read only
        "create in assigned scratch": "1",
    }
    assert (own / "server.log").read_text() == "log 1 appended"  # the same file as the deployment's log
    assert (own / "model/MLmodel").read_text() == "model 1"


# --- the narrowed early stage still serves ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serves(port: int, credential: str, popen: subprocess.Popen, log: Path) -> dict:
    """Wait for /health, then predict once; the health answer."""
    headers = {"Authorization": f"Bearer {credential}"}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert popen.poll() is None, log.read_text()
        try:
            health = requests.get(f"http://127.0.0.1:{port}/health", headers=headers, timeout=2)
            if health.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError(f"no /health 200 in 90 s: {log.read_text()}")
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    answer = requests.post(
        f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": [row]}, headers=headers, timeout=30
    )
    assert answer.status_code == 200, (answer.text, log.read_text())
    assert len(answer.json()["predictions"]) == 1
    return health.json()


@pytest.fixture(scope="module")
def iris(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    from tests import model_fixtures

    return model_fixtures.save_iris_model(tmp_path_factory.mktemp("iris") / "model")


def _server_env(plan: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV_ALLOWLIST}
    return {**env, **_REPLICA_FIXED_ENV, "CUDA_VISIBLE_DEVICES": "", sandbox.PLAN_ENV: plan}


# Runs the model server as on a kernel whose Landlock stops at an older ABI (5: no signal scoping, 0: none).
OLDER_KERNEL = """
import runpy
from endpoints_app.runtime import sandbox
sandbox.landlock_abi = lambda: ABI
runpy.run_module("endpoints_app.runtime.model_server", run_name="__main__")
"""


@pytest.mark.parametrize("start", ["fresh", "standby", "fresh-abi5", "fresh-abi0"])
def test_a_replica_confined_to_its_own_files_from_the_start_serves(agent: Agent, iris: Path, start: str) -> None:
    runtime = agent.runtime_dir
    deployment = runtime / "deployments" / "3"
    model = deployment / "model"
    shutil.copytree(iris, model)
    log = deployment / "server.log"
    log.touch()
    port, credential = _free_port(), "c" * 43
    command = [sys.executable, "-m", "endpoints_app.runtime.model_server"]
    if start.startswith("fresh-abi"):  # an older kernel: seccomp, not Landlock, keeps signals in the replica
        command = [sys.executable, "-c", OLDER_KERNEL.replace("ABI", start.removeprefix("fresh-abi"))]
    if start.startswith("fresh"):
        scratch = runtime / "scratch" / "3-0"
        agent._prepare_replica_files(scratch, log)
        plan = agent._sandbox_plan(model=str(model), scratch=scratch, log_file=log)
        command += ["--model-path", str(model), "--port", str(port), "--scratch-dir", str(scratch)]
        env = {**_server_env(plan), "MODELFLEET_REPLICA_CREDENTIAL": credential}
        out = open(log, "ab")  # noqa: SIM115 - the child's stdout, closed below
        popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
    else:
        slot = agent._new_standby_slot()
        plan = agent._sandbox_plan(model=str(slot / "model"), scratch=slot / "scratch", log_file=slot / "log")
        out = open(runtime / "standby.log", "ab")  # noqa: SIM115 - the child's stdout, closed below
        popen = subprocess.Popen(
            [*command, "--standby"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_server_env(plan),
            cwd=REPO_ROOT,
        )
        assignment = {"host": "127.0.0.1", "port": port, "credential": credential, "env": {}}
        assignment.update(fill_standby_slot(slot, model, log))
        assert popen.stdin is not None
        popen.stdin.write((json.dumps(assignment) + "\n").encode())
        popen.stdin.close()
    try:
        health = _serves(port, credential, popen, log)
    finally:
        popen.terminate()
        code = popen.wait(30)
        out.close()
    assert code == 0  # a graceful stop on SIGTERM (uvicorn re-raises it to itself)
    if start == "fresh-abi5":
        assert health["isolation"] == "landlock-abi5+seccomp+signals-own-pid (lacks: no-scoping)"
        assert "lacks no-scoping: signals are confined by seccomp" in log.read_text()
    if start == "fresh-abi0":  # honest about it: files are not confined, the rest of the filter is on
        assert health["isolation"] == "seccomp+signals-own-pid (lacks: no-landlock)"
        assert "replica FILES ARE NOT CONFINED" in log.read_text()
        assert "seccomp still refuses outbound connections" in log.read_text()
        return
    assert health["isolation"].startswith("landlock-abi") and "seccomp" in health["isolation"]
    text = log.read_text()
    assert f"isolation: {health['isolation']}" in text
    assert "JOBLIB" not in text and "joblib will operate in serial mode" not in text  # no /dev/shm warning
    if start == "standby":
        assert "handed over by a standby process" in text


@pytest.mark.parametrize(
    ("abi", "expected"),
    [
        (0, ["offers no Landlock: replicas run UNSANDBOXED"]),
        (3, ["(ABI 3) lacks no-tcp-port-rules", "(ABI 3) lacks no-device-ioctl-rules", "(ABI 3) lacks no-scoping"]),
        (5, ["(ABI 5) lacks no-scoping: signals are confined by seccomp to the replica's own process"]),
        (7, []),
    ],
)
def test_the_agent_warns_about_what_an_older_kernel_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, abi: int, expected: list[str]
) -> None:
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: abi)
    agent = Agent.__new__(Agent)
    agent.data_dir = tmp_path / "data"
    agent.runtime_dir = agent.data_dir / "runtime"
    agent.scratch_root = agent.runtime_dir / "scratch"
    with caplog.at_level("WARNING", logger="modelfleet.runtime"):
        agent._choose_replica_user()
    warnings = [r.getMessage() for r in caplog.records if "Landlock" in r.getMessage()]
    assert [w for w in expected if not any(w in message for message in warnings)] == []
    assert len(warnings) == len(expected)
