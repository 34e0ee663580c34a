"""The model server as a real process on loopback: protocol, errors, metrics, load failure, shutdown.

No Django and no database: each test starts ``python -m endpoints_app.runtime.model_server`` on
a free port with a tiny model from ``tests.model_fixtures`` and talks to it over HTTP.
"""

from __future__ import annotations

import ast
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
import requests

from tests.model_fixtures import (
    iris_frame,
    save_broken_model,
    save_constant_model,
    save_iris_model,
    save_slow_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
# The replica credential the servers of these tests demand (the agent makes one per replica).
CREDENTIAL = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {CREDENTIAL}"}


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it for a socket bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Make sure the process is gone, whatever state the test left it in."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(
    model_path: Path,
    log_dir: Path,
    *,
    name: str = "iris-1",
    replica_id: int = 0,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> ServerProcess:
    """Start a model server subprocess; its stdout/stderr go to a log file, as the agent does.

    It demands ``CREDENTIAL`` on every request, handed over in the environment as the agent does.
    """
    port = port or free_port()
    log_path = log_dir / f"{name}-{replica_id}-{port}.log"
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONPATH": str(REPO_ROOT),
        "MODELFLEET_REPLICA_CREDENTIAL": CREDENTIAL,
    }
    command = [
        sys.executable,
        "-m",
        "endpoints_app.runtime.model_server",
        "--model-path",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--name",
        name,
        "--replica-id",
        str(replica_id),
        *extra_args,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServerProcess(process=process, port=port, log_path=log_path)


def wait_ready(server: ServerProcess, timeout: float = READY_TIMEOUT_S) -> list[dict[str, Any]]:
    """Poll /health until 200; return every health document seen on the way."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"model server exited with {server.process.returncode}:\n{server.log()}")
        try:
            response = requests.get(f"{server.url}/health", headers=AUTH, timeout=2)
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        seen.append({"http_status": response.status_code, **response.json()})
        if response.status_code == 200:
            return seen
        time.sleep(0.05)
    pytest.fail(f"model server not ready after {timeout} s:\n{server.log()}")


def invoke(session: requests.Session, server: ServerProcess, body: Any) -> requests.Response:
    return session.post(f"{server.url}/invocations", json=body, timeout=30)


def metric_value(text: str, name: str) -> float:
    """The value of an unbucketed sample ``name{...} value`` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


@pytest.fixture(scope="module")
def iris_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_iris_model(tmp_path_factory.mktemp("models") / "iris")


@pytest.fixture(scope="module")
def iris_server(iris_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(iris_path, tmp_path_factory.mktemp("logs"), name="iris-1", replica_id=2)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.headers.update(AUTH)
        yield http


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    features, _ = iris_frame()
    return features.iloc[::10].reset_index(drop=True)  # 15 rows covering all three species


def _bodies(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "dataframe_split": {"dataframe_split": frame.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": frame.to_dict(orient="records")},
        "instances": {"instances": frame.to_dict(orient="records")},
        "inputs": {"inputs": frame.to_dict(orient="list")},
    }


@pytest.mark.parametrize("input_format", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_it_predicts_each_input_format_like_the_model_itself(
    iris_server: ServerProcess, iris_path: Path, sample: pd.DataFrame, session: requests.Session, input_format: str
) -> None:
    expected = mlflow.pyfunc.load_model(str(iris_path)).predict(sample).tolist()

    response = invoke(session, iris_server, _bodies(sample)[input_format])

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"predictions": expected}
    assert len(set(expected)) == 3  # the sample really exercises all classes


def test_it_reports_ready_health_with_identity(iris_server: ServerProcess, session: requests.Session) -> None:
    response = session.get(f"{iris_server.url}/health", timeout=5)

    assert response.status_code == 200
    document = response.json()
    assert {k: document[k] for k in ("status", "in_flight", "model", "replica", "pid")} == {
        "status": "ready",
        "in_flight": 0,
        "model": "iris-1",
        "replica": 2,
        "pid": iris_server.process.pid,
    }
    assert document["requests"] >= 0 and document["idle_seconds"] >= 0


def test_it_accepts_csv(iris_server: ServerProcess, sample: pd.DataFrame, session: requests.Session) -> None:
    response = session.post(
        f"{iris_server.url}/invocations",
        data=sample.head(2).to_csv(index=False),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [0, 0]}


def test_it_accepts_params_on_a_model_without_a_params_schema(
    iris_server: ServerProcess, sample: pd.DataFrame, session: requests.Session
) -> None:
    body = {"dataframe_records": sample.head(1).to_dict(orient="records"), "params": {"temperature": 0.5}}

    response = invoke(session, iris_server, body)

    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [0]}


def test_it_passes_params_to_the_model(tmp_path: Path, session: requests.Session) -> None:
    server = start_server(save_constant_model(tmp_path / "constant", "v1"), tmp_path, name="constant-1")
    try:
        wait_ready(server)
        default = invoke(session, server, {"dataframe_records": [{"x": 1}, {"x": 2}]})
        overridden = invoke(session, server, {"inputs": [1, 2, 3], "params": {"value": "v2"}})
    finally:
        server.stop()

    assert default.json() == {"predictions": ["v1", "v1"]}
    assert overridden.json() == {"predictions": ["v2", "v2", "v2"]}


def test_it_rejects_malformed_json(iris_server: ServerProcess, session: requests.Session) -> None:
    response = session.post(
        f"{iris_server.url}/invocations",
        data=b'{"dataframe_split": ',
        headers={"Content-Type": "application/json"},
        timeout=5,
    )

    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_REQUEST"


@pytest.mark.parametrize(
    "body",
    [{"foo": 1}, {"dataframe_records": [], "instances": []}, [1, 2, 3]],
    ids=["unknown-key", "two-keys", "json-list"],
)
def test_it_rejects_a_body_without_exactly_one_input_key(
    iris_server: ServerProcess, session: requests.Session, body: Any
) -> None:
    response = invoke(session, iris_server, body)

    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "exactly one of the keys" in response.json()["message"]


@pytest.mark.parametrize(
    ("record", "expected_fragments"),
    [
        (
            {"a": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
            ["schema", "missing inputs ['sepal_length']"],
        ),
        (
            {"sepal_length": "long", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
            ["signature", "sepal_length", "float64"],
        ),
    ],
    ids=["wrong-column", "wrong-type"],
)
def test_it_rejects_input_that_does_not_fit_the_schema(
    iris_server: ServerProcess, session: requests.Session, record: dict[str, Any], expected_fragments: list[str]
) -> None:
    response = invoke(session, iris_server, {"dataframe_records": [record] * 500})

    assert response.status_code == 400
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    for fragment in expected_fragments:
        assert fragment in error["message"]
    assert "Unexpected error" not in error["message"]
    assert len(error["message"]) <= 2000  # no dump of the 500 input rows


def test_it_rejects_a_body_over_16_mib(iris_server: ServerProcess, session: requests.Session) -> None:
    too_big = b" " * (16 * 1024 * 1024 + 1)

    with_length = session.post(f"{iris_server.url}/invocations", data=too_big, timeout=30)
    chunked = session.post(f"{iris_server.url}/invocations", data=iter([too_big[:1024], too_big[1024:]]), timeout=30)

    assert with_length.status_code == 413
    assert with_length.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    assert chunked.status_code == 413
    assert chunked.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"


def test_it_keeps_serving_after_bad_requests(
    iris_server: ServerProcess, sample: pd.DataFrame, session: requests.Session
) -> None:
    url = f"{iris_server.url}/invocations"
    bad_requests: list[tuple[bytes, str]] = [
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"null", "application/json"),
        (b'{"inputs": {"sepal_length": [[1, 2], {"x": null}]}}', "application/json"),
        (b'{"dataframe_split": {"columns": ["a"], "data": "not rows"}}', "application/json"),
        (b'{"dataframe_records": [{"sepal_length": 1}], "params": "not a dict"}', "application/json"),
        (b"sepal_length\nnot-a-number\n", "text/csv"),
        (b"{}", "application/xml"),
    ]
    statuses = [session.post(url, data=body, headers={"Content-Type": kind}, timeout=30) for body, kind in bad_requests]

    assert [r.status_code // 100 for r in statuses] == [4] * len(bad_requests)
    assert all("error_code" in r.json() for r in statuses)
    assert session.get(f"{iris_server.url}/health", timeout=5).status_code == 200
    good = invoke(session, iris_server, {"dataframe_records": sample.head(1).to_dict(orient="records")})
    assert good.json() == {"predictions": [0]}
    assert iris_server.process.poll() is None


def test_it_refuses_other_methods_and_paths(iris_server: ServerProcess, session: requests.Session) -> None:
    wrong_method = session.get(f"{iris_server.url}/invocations", timeout=5)
    unknown_path = session.post(f"{iris_server.url}/predict", json={}, timeout=5)

    assert wrong_method.status_code == 405
    assert wrong_method.json()["error_code"] == "METHOD_NOT_ALLOWED"
    assert wrong_method.headers["allow"] == "POST"
    assert unknown_path.status_code == 404
    assert unknown_path.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_metrics_count_the_requests_sent(
    iris_server: ServerProcess, sample: pd.DataFrame, session: requests.Session
) -> None:
    def scrape() -> str:
        response = session.get(f"{iris_server.url}/metrics", timeout=5)
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return response.text

    before = scrape()
    for _ in range(3):
        invoke(session, iris_server, {"dataframe_records": sample.head(1).to_dict(orient="records")})
    invoke(session, iris_server, {"foo": 1})
    session.get(f"{iris_server.url}/invocations", timeout=5)
    after = scrape()

    for name, sent in [
        ("request_count_total", 5),
        ("request_4xx_count_total", 2),
        ("request_5xx_count_total", 0),
        ("request_latency_ms_count", 5),
    ]:
        assert metric_value(after, name) - metric_value(before, name) == sent, name
    assert 'request_count_total{served_entity="iris-1",replica="2"}' in after
    assert 'request_latency_ms_bucket{served_entity="iris-1",replica="2",le="+Inf"}' in after
    assert metric_value(after, "in_flight_requests") == 0
    assert metric_value(after, "model_load_seconds") > 0


def test_it_answers_without_nagle_delay(iris_server: ServerProcess, session: requests.Session) -> None:
    # With Nagle's algorithm on, each response would wait ~40 ms for the client's delayed ACK.
    latencies = []
    for _ in range(30):
        started = time.perf_counter()
        session.get(f"{iris_server.url}/health", timeout=5)
        latencies.append(time.perf_counter() - started)

    assert statistics.median(latencies) < 0.020


def test_a_model_that_fails_to_load_exits_with_the_reason(tmp_path: Path) -> None:
    server = start_server(save_broken_model(tmp_path / "broken"), tmp_path, name="broken-1")
    try:
        returncode = server.process.wait(timeout=READY_TIMEOUT_S)
    finally:
        server.stop()

    assert returncode == 3
    assert "model load failed: RuntimeError: weights file is corrupt" in server.log()
    assert "Traceback (most recent call last)" in server.log()


def test_a_port_in_use_exits_with_4(tmp_path: Path) -> None:
    model_path = save_constant_model(tmp_path / "constant", "v1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = start_server(model_path, tmp_path, name="clash-1", port=taken.getsockname()[1])
        try:
            returncode = server.process.wait(timeout=READY_TIMEOUT_S)
        finally:
            server.stop()

    assert returncode == 4
    assert "address already in use" in server.log()


def test_it_reports_loading_then_on_sigterm_stops_accepting_but_finishes_the_request_in_flight(tmp_path: Path) -> None:
    server = start_server(save_slow_model(tmp_path / "slow", 2.0, load_seconds=2.0), tmp_path, name="slow-1")
    try:
        health_seen = wait_ready(server)
        result: dict[str, requests.Response] = {}

        def slow_request() -> None:
            result["response"] = requests.post(
                f"{server.url}/invocations", json={"inputs": [7, 8]}, headers=AUTH, timeout=30
            )

        request = threading.Thread(target=slow_request)
        request.start()
        in_flight = 0
        deadline = time.monotonic() + 10
        while in_flight == 0 and time.monotonic() < deadline:
            in_flight = requests.get(f"{server.url}/health", headers=AUTH, timeout=5).json()["in_flight"]
            time.sleep(0.01)

        server.process.send_signal(signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 1.5
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                time.sleep(0.02)
            except OSError:
                refused = True
        still_running = request.is_alive()
        request.join(timeout=30)
        returncode = server.process.wait(timeout=30)
    finally:
        server.stop()

    assert health_seen[0]["http_status"] == 503 and health_seen[0]["status"] == "loading"
    assert in_flight == 1
    assert refused and still_running  # new connections refused while the old request still ran
    assert result["response"].status_code == 200
    assert result["response"].json() == {"predictions": [2, 2]}
    assert returncode == 0
    assert "shutting down (SIGTERM)" in server.log()


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/invocations", {}),
        ("GET", "/health", {}),
        ("GET", "/metrics", {}),
        ("POST", "/invocations", {"Authorization": "Bearer not-the-credential"}),
        ("POST", "/invocations", {"Authorization": CREDENTIAL}),  # without the Bearer scheme
        ("GET", "/nowhere", {}),
    ],
)
def test_it_refuses_every_request_without_the_replica_credential(
    iris_server: ServerProcess, sample: pd.DataFrame, method: str, path: str, headers: dict[str, str]
) -> None:
    body = {"dataframe_split": sample.to_dict(orient="split")}
    response = requests.request(method, f"{iris_server.url}{path}", json=body, headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "predictions" not in response.text


def test_it_does_not_start_without_a_credential(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "MODELFLEET_REPLICA_CREDENTIAL"}
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "endpoints_app.runtime.model_server",
                "--model-path",
                str(save_constant_model(tmp_path / "m", "x")),
                "--port",
                str(free_port()),
            ],
            cwd=REPO_ROOT,
            env={**env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=120,
        ).returncode
    assert code == 2
    assert "no replica credential" in log_path.read_text()


# -- the package's shape -------------------------------------------------------------------------

PACKAGE = "endpoints_app.runtime.model_server"
# Each module may import only those before it (the order the package docstring gives); a new
# module must be placed here, or this test fails.
MODULE_ORDER = [
    "responses",
    "batchable",
    "compiled",
    "boosted",
    "frames",
    "fastpath",
    "served_model",
    "batching",
    "metrics",
    "workers",
    "streaming",
    "app",
    "server",
    "standby",
    "main",
    "__main__",
]


def _endpoints_app_imports(source: str) -> list[tuple[str, bool]]:
    """(imported module, whether inside a function) for every import from endpoints_app."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [f"{node.module}.{alias.name}" if node.module == PACKAGE else node.module for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.extend((name, in_function) for name in names if name.split(".")[0] == "endpoints_app")
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def test_the_model_server_modules_import_one_way_and_the_package_imports_nothing() -> None:
    folder = REPO_ROOT / "endpoints_app" / "runtime" / "model_server"
    assert {path.stem for path in folder.glob("*.py")} - {"__init__"} == set(MODULE_ORDER)

    # `python -m` runs __init__ before __main__ has confined the process: it must import nothing.
    init = ast.parse((folder / "__init__.py").read_text())
    assert not [node for node in ast.walk(init) if isinstance(node, ast.Import | ast.ImportFrom)]
    for position, module in enumerate(MODULE_ORDER):
        imports = _endpoints_app_imports((folder / f"{module}.py").read_text())
        ours = {name.removeprefix(PACKAGE + ".") for name, _ in imports if name.startswith(PACKAGE + ".")}
        assert ours <= set(MODULE_ORDER[:position]), module
        # A function-level import hides a cycle; only the entry point may import late.
        if module != "main":
            assert not [name for name, in_function in imports if in_function], module
