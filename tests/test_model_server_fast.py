"""The model server's scikit-learn fast path, micro-batching and warm standby mode.

The fast path must be invisible to callers: for every request it takes, the answer is the same
bytes the full MLflow path gives, and every request it does not take (other shapes, other value
types, params, bad input) gets the full path's answer or error.  Equivalence is checked
in-process on many random bodies (fast path against full path of the same loaded model), and
over HTTP against MLflow's own scoring server code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pytest
import requests
from mlflow.pyfunc.scoring_server import invocations as mlflow_invocations

from endpoints_app.runtime.model_server.responses import RequestError
from endpoints_app.runtime.model_server.served_model import ServedModel
from tests.model_fixtures import (
    IRIS_COLUMNS,
    TYPED_COLORS,
    save_constant_model,
    save_iris_model,
    save_iris_regression_model,
    save_typed_model,
)
from tests.test_model_server import (
    AUTH,
    CREDENTIAL,
    READY_TIMEOUT_S,
    REPO_ROOT,
    ServerProcess,
    free_port,
    invoke,
    start_server,
    wait_ready,
)

# The server silences this sklearn warning on purpose (see SklearnFastPath.for_model); pytest
# restores the warning filters around each test, so the in-process fast path would raise it.
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")

FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs_records", "inputs_columns"]
# A replica sets these for its own process; keep them from leaking into the rest of the suite.
_SERVER_ENV_FLAGS = ("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")

Row = dict[str, Any]


@pytest.fixture(scope="module")
def serving_environment() -> Iterator[None]:
    """The flags a replica sets for itself (model_server/__main__.py), for the in-process comparisons."""
    saved = {name: os.environ.get(name) for name in _SERVER_ENV_FLAGS}
    os.environ.update(dict.fromkeys(_SERVER_ENV_FLAGS, "true"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def iris_path(models_dir: Path) -> Path:
    return save_iris_model(models_dir / "iris")


@pytest.fixture(scope="module")
def served_iris(serving_environment: None, iris_path: Path) -> Any:
    return ServedModel(mlflow.pyfunc.load_model(str(iris_path)))


@pytest.fixture(scope="module")
def served_regression(serving_environment: None, models_dir: Path) -> Any:
    return ServedModel(mlflow.pyfunc.load_model(str(save_iris_regression_model(models_dir / "reg"))))


@pytest.fixture(scope="module")
def served_typed(serving_environment: None, models_dir: Path) -> Any:
    return ServedModel(mlflow.pyfunc.load_model(str(save_typed_model(models_dir / "typed"))))


@pytest.fixture(scope="module")
def iris_server(iris_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(iris_path, tmp_path_factory.mktemp("logs"), name="iris-fast")
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


# -- random inputs -------------------------------------------------------------------------------


def _iris_value(rng: np.random.Generator) -> float | int:
    """A number as a client might send it: floats of any precision, whole numbers, big ints."""
    kind = rng.integers(0, 10)
    if kind == 0:
        return int(rng.integers(0, 9))
    if kind == 1:
        return int(rng.choice([2**53 + 1, 2**60, -(2**40), 10**18]))
    if kind == 2:
        return float(rng.choice([1e-300, -0.0, 123456.789e10, 0.1 + 0.2]))
    return round(float(rng.uniform(0, 8)), int(rng.integers(0, 12)))


def _iris_rows(rng: np.random.Generator, count: int) -> list[Row]:
    return [{name: _iris_value(rng) for name in IRIS_COLUMNS} for _ in range(count)]


def _typed_rows(rng: np.random.Generator, count: int) -> list[Row]:
    return [
        {
            "x_double": _iris_value(rng) - 4,
            "x_float": float(rng.normal(0, 1)),  # ints in a float32 column take the full path
            "x_long": int(rng.integers(-(2**40), 2**40)) if rng.random() < 0.2 else int(rng.integers(-50, 50)),
            "x_int": int(rng.integers(-(2**31), 2**31)) if rng.random() < 0.2 else int(rng.integers(0, 10)),
            "flag": bool(rng.integers(0, 2)),
            "color": str(rng.choice([*TYPED_COLORS, "purple", ""])),  # unknown colours too
        }
        for _ in range(count)
    ]


def _body(rows: list[Row], input_format: str, rng: np.random.Generator) -> dict[str, Any]:
    columns = list(rows[0])
    if input_format == "dataframe_split":
        if rng.random() < 0.3:
            columns = [columns[i] for i in rng.permutation(len(columns))]
        split: dict[str, Any] = {"columns": columns, "data": [[row[c] for c in columns] for row in rows]}
        if rng.random() < 0.3:
            split["index"] = [int(i) * 3 for i in range(len(rows))]
        return {"dataframe_split": split}
    if input_format == "dataframe_records":
        return {"dataframe_records": rows}
    if input_format == "instances":
        return {"instances": rows}
    if input_format == "inputs_records":
        return {"inputs": rows}
    return {"inputs": {c: [row[c] for row in rows] for c in columns}}


def _random_bodies(
    make_rows: Callable[[np.random.Generator, int], list[Row]], input_format: str, count: int, seed: int
) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = [1, 1, 2, 3, 7, 100]
    return [json.dumps(_body(make_rows(rng, sizes[i % len(sizes)]), input_format, rng)).encode() for i in range(count)]


def _fast_answer(served: Any, body: bytes) -> bytes | None:
    payload, item = served.read_fast(body)
    assert item is not None, f"the fast path declined {body[:200]!r}"
    return served.fast.predict_batch([item])[0]


def _assert_close(batched: bytes, alone: bytes) -> None:
    """Same shape and values up to the last bits: a row predicted in a batch goes through BLAS's
    matrix-matrix kernel, alone through matrix-vector, and their sums round differently."""
    got, expected = json.loads(batched)["predictions"], json.loads(alone)["predictions"]
    assert np.shape(got) == np.shape(expected)
    for a, b in zip(np.ravel(got), np.ravel(expected), strict=True):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (a, b)


# -- the fast path, in-process -------------------------------------------------------------------


def test_it_picks_numpy_arrays_for_a_plain_estimator_and_dataframes_for_a_column_transformer(
    served_iris: Any, served_regression: Any, served_typed: Any
) -> None:
    assert served_iris.fast.as_array and served_iris.fast.row_independent
    assert served_regression.fast.as_array
    assert not served_typed.fast.as_array and served_typed.fast.row_independent
    assert served_typed.fast_note == (
        "Pipeline.predict_proba on DataFrames (not compiled: a passed-through column is not a number column), batched"
    )


@pytest.mark.parametrize("input_format", FORMATS)
@pytest.mark.parametrize("model", ["iris", "regression", "typed"])
def test_fast_answers_are_the_full_paths_bytes_for_random_inputs(
    served_iris: Any, served_regression: Any, served_typed: Any, model: str, input_format: str
) -> None:
    served, make_rows = {
        "iris": (served_iris, _iris_rows),
        "regression": (served_regression, _iris_rows),
        "typed": (served_typed, _typed_rows),
    }[model]

    for body in _random_bodies(make_rows, input_format, count=60, seed=len(model) * 100 + FORMATS.index(input_format)):
        assert _fast_answer(served, body) == served.predict_json(body), body[:300]


@pytest.mark.parametrize("model", ["iris", "regression", "typed"])
def test_a_batch_answers_each_request_as_if_alone(
    served_iris: Any, served_regression: Any, served_typed: Any, model: str
) -> None:
    served, make_rows = {
        "iris": (served_iris, _iris_rows),
        "regression": (served_regression, _iris_rows),
        "typed": (served_typed, _typed_rows),
    }[model]
    bodies = [body for i, f in enumerate(FORMATS) for body in _random_bodies(make_rows, f, count=6, seed=i)]

    batched = served.fast.predict_batch([served.read_fast(body)[1] for body in bodies])

    for body, answer in zip(bodies, batched, strict=True):
        alone = served.predict_json(body)
        if model == "iris":
            assert answer == alone  # class labels: exactly the same
        else:
            _assert_close(answer, alone)


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_records": [{"sepal_length": True, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]},
        {"dataframe_records": [{"sepal_length": "5.1", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]},
        {"dataframe_records": [{"sepal_length": None, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]},
        {"dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}]},
        {
            "dataframe_records": [
                {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, "x": 1}
            ]
        },
        {"dataframe_records": [{"a": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]},
        {
            "dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}],
            "params": {"k": 1},
        },
        {
            "dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}],
            "extra": 1,
        },
        {"dataframe_records": []},
        {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4]]}},
        {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, [0.2]]]}},
        {"dataframe_split": {"data": [[5.1, 3.5, 1.4, 0.2]]}},
        {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]], "index": [0, 1]}},
        {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]], "dtype": "x"}},
        {"dataframe_split": {"columns": [*IRIS_COLUMNS[:3], "sepal_length"], "data": [[5.1, 3.5, 1.4, 0.2]]}},
        {"inputs": {"sepal_length": [5.1, 4.9], "sepal_width": [3.5], "petal_length": [1.4], "petal_width": [0.2]}},
        {"inputs": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}},
        {"inputs": [5.1, 3.5, 1.4, 0.2]},
        {"instances": [[5.1, 3.5, 1.4, 0.2]]},
    ],
    ids=[
        "bool",
        "numeric-string",
        "null",
        "missing-column",
        "extra-column",
        "unknown-column",
        "params",
        "extra-key",
        "no-rows",
        "short-row",
        "nested-value",
        "split-without-columns",
        "index-length",
        "split-extra-key",
        "repeated-column",
        "ragged-columns",
        "scalar-columns",
        "bare-list",
        "instances-as-lists",
    ],
)
def test_it_leaves_anything_else_to_the_full_path(served_iris: Any, payload: dict[str, Any]) -> None:
    assert served_iris.read_fast(json.dumps(payload).encode()) == (payload, None)


@pytest.mark.parametrize(
    "change",
    [{"x_float": 1}, {"x_long": 1.5}, {"x_int": 2**31}, {"flag": 1}, {"color": 7}],
    ids=["int-in-float32", "float-in-long", "int32-overflow", "int-as-bool", "number-as-string"],
)
def test_it_leaves_values_mlflow_converts_its_own_way_to_the_full_path(
    served_typed: Any, change: dict[str, Any]
) -> None:
    row = {**_typed_rows(np.random.default_rng(0), 1)[0], **change}

    assert served_typed.read_fast(json.dumps({"dataframe_records": [row]}).encode())[1] is None


def test_one_bad_request_in_a_batch_fails_alone(served_iris: Any) -> None:
    good = [json.dumps({"dataframe_records": rows}).encode() for rows in _iris_rows_batches()]
    # Valid JSON numbers, so the fast path takes it; sklearn refuses NaN at predict time.
    bad = json.dumps({"dataframe_records": [{name: float("nan") for name in IRIS_COLUMNS}]}).encode()
    bodies = [good[0], bad, *good[1:]]

    answers = served_iris.fast.predict_batch([served_iris.read_fast(body)[1] for body in bodies])

    assert answers[1] is None  # for the full path, which raises MLflow's error for it
    assert [answers[0], *answers[2:]] == [served_iris.predict_json(body) for body in good]


def _iris_rows_batches() -> list[list[Row]]:
    rng = np.random.default_rng(7)
    return [_iris_rows(rng, size) for size in (1, 3, 1, 100)]


# -- over HTTP -----------------------------------------------------------------------------------


def test_the_server_logs_which_fast_path_it_uses(iris_server: ServerProcess) -> None:
    assert "fast path: LogisticRegression.predict on numpy arrays, batched" in iris_server.log()


@pytest.mark.parametrize("input_format", FORMATS)
def test_the_server_answers_as_mlflow_scoring_server_does(
    iris_server: ServerProcess, iris_path: Path, session: requests.Session, input_format: str
) -> None:
    model = mlflow.pyfunc.load_model(str(iris_path))
    schema = model.metadata.get_input_schema()

    for body in _random_bodies(_iris_rows, input_format, count=20, seed=99):
        expected = mlflow_invocations(body.decode(), "application/json", model, schema)
        response = session.post(f"{iris_server.url}/invocations", data=body, timeout=30)

        assert response.status_code == 200, response.text
        assert response.content == expected.response.encode()


@pytest.mark.parametrize(
    "rows",
    [
        [{"sepal_length": "long", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}],
        [{"a": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}],
        [{name: float("nan") for name in IRIS_COLUMNS}],
    ],
    ids=["wrong-type", "missing-column", "nan-fails-in-predict"],
)
def test_bad_input_gets_the_full_paths_error(
    iris_server: ServerProcess, served_iris: Any, session: requests.Session, rows: list[Row]
) -> None:
    body = json.dumps({"dataframe_records": rows}).encode()
    with pytest.raises(RequestError) as expected:
        served_iris.predict_json(body)

    response = session.post(f"{iris_server.url}/invocations", data=body, timeout=30)

    assert response.status_code == 400
    assert response.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": expected.value.message}


def test_concurrent_requests_with_one_bad_among_them_fail_only_the_bad_one(
    iris_server: ServerProcess, served_iris: Any
) -> None:
    bodies = [json.dumps({"dataframe_records": rows}).encode() for rows in _iris_rows_batches() * 6]
    bad_at = 9
    bodies[bad_at] = json.dumps({"dataframe_records": [{name: float("nan") for name in IRIS_COLUMNS}]}).encode()
    results: list[requests.Response | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def call(position: int) -> None:
        with requests.Session() as http:
            http.headers.update(AUTH)
            http.post(f"{iris_server.url}/health", timeout=30)  # connect before the barrier
            start.wait(timeout=30)
            results[position] = http.post(f"{iris_server.url}/invocations", data=bodies[position], timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = [r.status_code if r is not None else None for r in results]
    assert statuses == [400 if i == bad_at else 200 for i in range(len(bodies))]
    for position, response in enumerate(results):
        if position != bad_at:
            assert response is not None and response.content == served_iris.predict_json(bodies[position])
    assert "contains NaN" in results[bad_at].json()["message"]  # type: ignore[union-attr]
    health = requests.get(f"{iris_server.url}/health", headers=AUTH, timeout=5).json()
    assert health["in_flight"] == 0


def test_a_model_without_a_fast_path_is_served_by_the_full_path(tmp_path: Path, session: requests.Session) -> None:
    server = start_server(save_constant_model(tmp_path / "constant", "v1"), tmp_path, name="constant-fast")
    try:
        wait_ready(server)
        response = invoke(session, server, {"dataframe_records": [{"x": 1}, {"x": 2}]})
    finally:
        server.stop()

    assert response.json() == {"predictions": ["v1", "v1"]}
    assert "no fast path: not a scikit-learn model" in server.log()


# -- warm standby --------------------------------------------------------------------------------


def _start_standby(log_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    standby_log = log_dir / "standby.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with standby_log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "endpoints_app.runtime.model_server", "--standby"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, standby_log


def test_a_standby_serves_the_model_it_is_handed_and_logs_to_its_log_path(
    iris_path: Path, served_iris: Any, tmp_path: Path, session: requests.Session
) -> None:
    process, standby_log = _start_standby(tmp_path)
    port = free_port()
    log_path = tmp_path / "replica.log"
    assignment = {
        "model_path": str(iris_path),
        "host": "127.0.0.1",
        "port": port,
        "name": "iris-standby",
        "replica_id": 3,
        "log_path": str(log_path),
        "credential": CREDENTIAL,
        "env": {"MODELFLEET_TEST_MARKER": "set-by-assignment"},
    }
    server = ServerProcess(process=process, port=port, log_path=log_path)
    try:
        assert process.stdin is not None
        process.stdin.write((json.dumps(assignment) + "\n").encode())
        process.stdin.close()
        wait_ready(server, timeout=READY_TIMEOUT_S)
        health = session.get(f"{server.url}/health", timeout=5).json()
        body = json.dumps({"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[6.3, 3.3, 6.0, 2.5]]}}).encode()
        response = session.post(f"{server.url}/invocations", data=body, timeout=30)
    finally:
        server.stop()

    assert {k: health[k] for k in ("status", "model", "replica", "pid")} == {
        "status": "ready",
        "model": "iris-standby",
        "replica": 3,
        "pid": process.pid,
    }
    assert response.content == served_iris.predict_json(body) == b'{"predictions": [2]}'
    replica_log = log_path.read_text()
    assert "[iris-standby replica 3] starting: model" in replica_log
    assert "model loaded in" in replica_log and "shutting down (SIGTERM)" in replica_log
    assert "environment from the assignment: MODELFLEET_TEST_MARKER" in replica_log
    assert "starting: model" not in standby_log.read_text()
    assert process.returncode == 0


def test_a_standby_whose_stdin_closes_exits_quietly(tmp_path: Path) -> None:
    process, standby_log = _start_standby(tmp_path)
    assert process.stdin is not None
    process.stdin.close()

    returncode = process.wait(timeout=READY_TIMEOUT_S)

    assert returncode == 0
    assert standby_log.read_text() == ""


def test_a_standby_given_a_bad_assignment_exits_with_2_and_says_why_in_the_replica_log(
    iris_path: Path, tmp_path: Path
) -> None:
    process, _ = _start_standby(tmp_path)
    log_path = tmp_path / "replica.log"
    assert process.stdin is not None
    process.stdin.write((json.dumps({"model_path": str(iris_path), "log_path": str(log_path)}) + "\n").encode())
    process.stdin.close()

    returncode = process.wait(timeout=READY_TIMEOUT_S)

    assert returncode == 2
    assert "--model-path and --port are required" in log_path.read_text()
