"""Batching on every path: concurrent requests to a model that predicts row by row share one
predict call, and nobody can tell from the answers.

Which models batch is decided in-process (batchable.decide_batching); everything else runs
real model servers on loopback.  Each model is served twice, batched (its default) and with
``MODELFLEET_BATCHABLE=false``, which is the unbatched server of before; the same corpus of
concurrent requests, bad ones among them, must get the same status and the same bytes from both,
while the batched one's /metrics shows that requests really shared calls.  The custom pyfuncs
append the row count of every predict call to a file, so tests see each call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from endpoints_app.runtime.model_server.batchable import Batching, BatchingSettingError, decide_batching
from endpoints_app.runtime.model_server.responses import RequestError
from endpoints_app.runtime.model_server.served_model import ServedModel
from tests.test_model_server import AUTH, CREDENTIAL, REPO_ROOT, ServerProcess, free_port, metric_value, wait_ready

CALLS_FILE_ENV = "MODELFLEET_TEST_CALLS_FILE"
CITIES = ["paris", "lyon", "nantes", "lille"]
# Client threads firing a corpus at once: enough that requests overlap on two cores.
CLIENTS = 16

Body = dict[str, Any]


# -- models --------------------------------------------------------------------------------------


class RowModel(PythonModel):
    """Per-row Python logic: for each row, its id, ``x * 2`` and the ``tag`` param; refuses a
    negative x.  Appends each call's row count to the file named by $MODELFLEET_TEST_CALLS_FILE,
    and sleeps ``delay`` seconds per call, so that concurrent requests find it busy."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """One output row per input row, as a DataFrame (split back with iloc when batched)."""
        calls_file = os.environ.get("MODELFLEET_TEST_CALLS_FILE")
        if calls_file:
            with open(calls_file, "a") as calls:
                calls.write(f"{len(model_input)}\n")
        time.sleep(self.delay)
        if (model_input["x"] < 0).any():
            raise ValueError("x must not be negative")
        tag = (params or {}).get("tag", "")
        return pd.DataFrame({"id": model_input["id"], "doubled": model_input["x"] * 2, "tag": tag})


class CountModel(PythonModel):
    """Answers one number for the whole input, its row count: not one answer per row."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """The row count, whatever the rows."""
        return {"rows": len(model_input)}


class ShoutModel(PythonModel):
    """A pyfunc in MLflow 3's style: its type hints are its signature (a list of strings)."""

    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """Each string in capitals."""
        return [text.upper() for text in model_input]


ROW_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "id"), ColSpec("double", "x")]),
    params=ParamSchema([ParamSpec("tag", "string", "")]),
)


@contextmanager
def _pickled_by_value() -> Iterator[None]:
    """The server process cannot import this test module: pickle its classes by value."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def save_row_model(path: Path, *, declared: bool | None, delay: float = 0.05) -> Path:
    metadata = None if declared is None else {"modelfleet": {"batchable": declared}}
    with _pickled_by_value():
        mlflow.pyfunc.save_model(
            str(path),
            python_model=RowModel(delay),
            signature=ROW_SIGNATURE,
            metadata=metadata,
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        )
    return path


def save_count_model(path: Path) -> Path:
    with _pickled_by_value():
        mlflow.pyfunc.save_model(
            str(path),
            python_model=CountModel(),
            metadata={"modelfleet": {"batchable": True}},
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        )
    return path


def save_shout_model(path: Path) -> Path:
    with _pickled_by_value():
        mlflow.pyfunc.save_model(
            str(path),
            python_model=ShoutModel(),
            metadata={"modelfleet": {"batchable": True}},
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        )
    return path


def tabular_frame(rows: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A typical table: a string column, an integer and a float."""
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "city": pd.Series(rng.choice(CITIES, rows), dtype=str),
            "age": rng.integers(18, 80, rows).astype(np.int64),
            "income": rng.normal(50, 15, rows),
        }
    )
    score = (features["age"] - 45) / 10 + (features["income"] - 50) / 15 + (features["city"] == "paris")
    labels = pd.Series(pd.cut(score, 3, labels=False).astype(int), name="label")
    return features, labels


def save_pipeline_model(path: Path, *, signature: bool, function_step: bool = False) -> Path:
    """The model people really serve: one-hot on a string column, numbers passed through, a
    LogisticRegression.  Unknown cities are an error at predict time (a bad request)."""
    import sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    features, labels = tabular_frame()
    steps: list[tuple[str, Any]] = [
        (
            "encode",
            ColumnTransformer([("city", OneHotEncoder(handle_unknown="error"), ["city"])], remainder="passthrough"),
        ),
        ("classify", LogisticRegression(max_iter=5000)),
    ]
    if function_step:
        steps.insert(1, ("scale", FunctionTransformer(np.asarray)))
    model = Pipeline(steps).fit(features, labels)
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels) if signature else None,
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        skops_trusted_types=["numpy.asarray"] if function_step else None,
    )
    return path


def save_lightgbm_model(path: Path) -> Path:
    """A LightGBM booster answering probabilities: float outputs, compared bit for bit."""
    lightgbm = pytest.importorskip("lightgbm")
    import mlflow.lightgbm

    features, labels = tabular_frame()
    numeric = features[["age", "income"]].astype(np.float64)
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 8},
        lightgbm.Dataset(numeric, label=(labels > 0).astype(int)),
        num_boost_round=20,
    )
    mlflow.lightgbm.save_model(
        booster,
        str(path),
        signature=infer_signature(numeric, labels.astype(np.float64)),
        pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
    )
    return path


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Replica:
    server: ServerProcess
    calls_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    def calls(self) -> list[int]:
        """The row count of each predict call of a RowModel, in order."""
        if not self.calls_file.exists():
            return []
        return [int(line) for line in self.calls_file.read_text().split()]

    def metrics(self) -> tuple[float, float]:
        """(batch_count_total, batched_request_count_total) from /metrics."""
        text = requests.get(f"{self.url}/metrics", headers=AUTH, timeout=10).text
        return metric_value(text, "batch_count_total"), metric_value(text, "batched_request_count_total")


def _start(model_path: Path, log_dir: Path, name: str, env: dict[str, str]) -> Replica:
    port = free_port()
    log_path = log_dir / f"{name}-{port}.log"
    calls_file = log_dir / f"{name}-{port}.calls"
    process_env = {
        **{key: value for key, value in os.environ.items() if key != "MODELFLEET_BATCHABLE"},
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONPATH": str(REPO_ROOT),
        "MODELFLEET_REPLICA_CREDENTIAL": CREDENTIAL,
        CALLS_FILE_ENV: str(calls_file),
        **env,
    }
    command = [
        sys.executable,
        "-m",
        "endpoints_app.runtime.model_server",
        "--model-path",
        str(model_path),
        "--port",
        str(port),
        "--name",
        name,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=process_env, stdout=log_file, stderr=subprocess.STDOUT)
    return Replica(ServerProcess(process=process, port=port, log_path=log_path), calls_file)


@contextmanager
def serving(model_path: Path, log_dir: Path, name: str, **envs: dict[str, str]) -> Iterator[dict[str, Replica]]:
    """Start one server per keyword (its extra environment), all at once; stop them after."""
    replicas = {key: _start(model_path, log_dir, f"{name}-{key}", env) for key, env in envs.items()}
    try:
        for replica in replicas.values():
            wait_ready(replica.server)
        yield replicas
    finally:
        for replica in replicas.values():
            replica.server.stop()


BATCHED: dict[str, str] = {}
UNBATCHED = {"MODELFLEET_BATCHABLE": "false"}


def fire(url: str, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    """Send the bodies from CLIENTS threads at once (a keep-alive connection each); (status,
    body) of each answer, in the corpus's order."""
    local = threading.local()
    sessions: list[requests.Session] = []

    def call(body: bytes) -> tuple[int, bytes]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(AUTH)
            sessions.append(local.session)
        response = local.session.post(f"{url}/invocations", data=body, timeout=60)
        return response.status_code, response.content

    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            return list(pool.map(call, bodies))
    finally:
        for session in sessions:
            session.close()


# -- corpora -------------------------------------------------------------------------------------


def _formats(rows: list[dict[str, Any]], position: int) -> Body:
    """The same rows in each of the scoring protocol's table formats, in turn."""
    columns = list(rows[0])
    kind = position % 5
    if kind == 0:
        return {"dataframe_split": {"columns": columns, "data": [[row[c] for c in columns] for row in rows]}}
    if kind == 1:
        return {"dataframe_records": rows}
    if kind == 2:
        return {"instances": rows}
    if kind == 3:
        return {"inputs": rows}
    return {"inputs": {c: [row[c] for row in rows] for c in columns}}


SIZES = [1, 1, 2, 3, 1, 7, 1, 20]


def tabular_corpus(seed: int, count: int = 64, *, numeric_only: bool = False) -> list[bytes]:
    """Requests to the tabular models, a few bad ones among them (an unknown city, a missing
    column, a string for a number)."""
    rng = np.random.default_rng(seed)
    bodies = []
    for position in range(count):
        rows = [
            {"city": str(rng.choice(CITIES)), "age": int(rng.integers(18, 80)), "income": round(rng.normal(50, 15), 3)}
            for _ in range(SIZES[position % len(SIZES)])
        ]
        if position % 13 == 5 and not numeric_only:
            rows[-1]["city"] = "atlantis"
        elif position % 13 == 9:
            del rows[0]["age"]
        elif position % 13 == 11:
            rows[0]["income"] = "plenty"
        if numeric_only:
            rows = [{key: value for key, value in row.items() if key != "city"} for row in rows]
        bodies.append(json.dumps(_formats(rows, position)).encode())
    return bodies


def row_corpus(seed: int, count: int = 48) -> list[bytes]:
    """Requests to RowModel: ids to check the order by, some with a ``tag`` param, a few bad
    (a negative x fails in the model, a string x fails the schema)."""
    rng = np.random.default_rng(seed)
    bodies = []
    next_id = 0
    for position in range(count):
        rows = []
        for _ in range(SIZES[position % len(SIZES)]):
            rows.append({"id": next_id, "x": round(float(rng.uniform(0, 10)), 2)})
            next_id += 1
        if position % 11 == 4:
            rows[-1]["x"] = -1.0
        elif position % 11 == 8:
            rows[0]["x"] = "ten"
        body = _formats(rows, position)
        if position % 3 == 0:
            body["params"] = {"tag": f"t{position % 2}"}
        bodies.append(json.dumps(body).encode())
    return bodies


def table_rows(body: bytes) -> list[dict[str, Any]]:
    """A request's rows as records, whichever table format it was sent in."""
    request = json.loads(body)
    table = next(value for key, value in request.items() if key != "params")
    if isinstance(table, list):
        return table
    if "data" in table:
        return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]


def assert_same_answers(batched: list[tuple[int, bytes]], unbatched: list[tuple[int, bytes]], bodies: list[bytes]):
    for got, expected, body in zip(batched, unbatched, bodies, strict=True):
        assert got == expected, body[:300]


# -- which models batch, in-process --------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching-models")


@pytest.fixture(scope="module")
def pipeline_path(models_dir: Path) -> Path:
    return save_pipeline_model(models_dir / "pipeline", signature=True)


@pytest.fixture(scope="module")
def pipeline_nosig_path(models_dir: Path) -> Path:
    return save_pipeline_model(models_dir / "pipeline-nosig", signature=False)


@pytest.fixture(scope="module")
def row_declared_path(models_dir: Path) -> Path:
    return save_row_model(models_dir / "row-declared", declared=True)


@pytest.fixture(scope="module")
def row_plain_path(models_dir: Path) -> Path:
    return save_row_model(models_dir / "row-plain", declared=None)


def _decide(path: Path, environ: dict[str, str] | None = None) -> Batching:
    return decide_batching(mlflow.pyfunc.load_model(str(path)), environ or {})


def test_scikit_learn_pipelines_with_string_columns_batch(pipeline_path: Path, pipeline_nosig_path: Path) -> None:
    assert _decide(pipeline_path) == Batching(True, "a scikit-learn model predicts row by row")
    assert _decide(pipeline_nosig_path).enabled


def test_a_function_transformer_keeps_a_pipeline_unbatched(models_dir: Path) -> None:
    path = save_pipeline_model(models_dir / "with-function", signature=True, function_step=True)

    assert _decide(path) == Batching(False, "FunctionTransformer runs user code on the whole table")


def test_lightgbm_batches(models_dir: Path) -> None:
    assert _decide(save_lightgbm_model(models_dir / "lgbm-decide")) == Batching(
        True, "a LightGBM model predicts row by row"
    )


def test_a_custom_pyfunc_batches_only_when_its_author_declares_it(
    row_plain_path: Path, row_declared_path: Path, models_dir: Path
) -> None:
    plain = _decide(row_plain_path)
    assert not plain.enabled
    assert "not known to predict row by row" in plain.reason and "MODELFLEET_BATCHABLE=true" in plain.reason
    assert _decide(row_declared_path) == Batching(True, "the model's metadata says modelfleet.batchable: true")
    assert not _decide(save_row_model(models_dir / "row-refused", declared=False)).enabled


def test_the_served_entitys_setting_has_the_last_word(pipeline_path: Path, row_plain_path: Path) -> None:
    assert _decide(pipeline_path, {"MODELFLEET_BATCHABLE": "false"}) == Batching(
        False, "MODELFLEET_BATCHABLE=false in the served entity's environment"
    )
    assert _decide(row_plain_path, {"MODELFLEET_BATCHABLE": "True"}).enabled


@pytest.mark.parametrize("value", ["yes", "0", "on"])
def test_a_setting_that_is_not_true_or_false_is_an_error(pipeline_path: Path, value: str) -> None:
    with pytest.raises(BatchingSettingError, match="MODELFLEET_BATCHABLE must be true or false"):
        _decide(pipeline_path, {"MODELFLEET_BATCHABLE": value})


def test_a_metadata_flag_that_is_not_a_boolean_is_an_error(models_dir: Path) -> None:
    path = save_row_model(models_dir / "row-bad-flag", declared=None)
    (path / "MLmodel").write_text((path / "MLmodel").read_text() + "metadata:\n  modelfleet:\n    batchable: 'yes'\n")

    with pytest.raises(BatchingSettingError, match="modelfleet.batchable must be true or false"):
        _decide(path)


# -- the full path's batches, in-process ---------------------------------------------------------


def _parsed(served: ServedModel, body: bytes) -> Any:
    request = served.parse_json(body)
    assert served.prepare_batch(request)
    return request


def test_a_batch_answers_each_request_with_the_bytes_it_gets_alone(row_declared_path: Path) -> None:
    served = ServedModel(mlflow.pyfunc.load_model(str(row_declared_path)), environ={})
    bodies = [body for body in row_corpus(seed=3, count=30) if b'"params"' not in body and b"ten" not in body]
    requests_ = [_parsed(served, body) for body in bodies]

    answers = served.predict_batch(requests_)

    for body, answer in zip(bodies, answers, strict=True):
        try:
            alone: bytes | str = served.predict_json(body)
        except RequestError as exc:
            alone = exc.message
        assert (answer.message if isinstance(answer, RequestError) else answer) == alone, body


def test_a_type_hinted_pyfunc_batches_its_lists_and_a_bad_item_fails_alone(models_dir: Path) -> None:
    served = ServedModel(mlflow.pyfunc.load_model(str(save_shout_model(models_dir / "shout"))), environ={})
    bodies = [json.dumps({"inputs": texts}).encode() for texts in (["a", "b"], [1], ["c"])]

    answers = served.predict_batch([_parsed(served, body) for body in bodies])

    assert answers[0] == b'{"predictions": ["A", "B"]}' and answers[2] == b'{"predictions": ["C"]}'
    assert isinstance(answers[1], RequestError)
    with pytest.raises(RequestError) as alone:
        served.predict_json(bodies[1])
    assert answers[1].message == alone.value.message


def test_a_model_whose_output_is_not_one_answer_per_row_stops_batching(models_dir: Path) -> None:
    served = ServedModel(mlflow.pyfunc.load_model(str(save_count_model(models_dir / "count"))), environ={})
    bodies = [json.dumps({"dataframe_records": [{"a": i}] * (i + 1)}).encode() for i in range(3)]

    answers = served.predict_batch([_parsed(served, body) for body in bodies])

    assert answers == [
        b'{"predictions": {"rows": 1}}',
        b'{"predictions": {"rows": 2}}',
        b'{"predictions": {"rows": 3}}',
    ]
    assert served.batching == Batching(False, "its output was not one answer per input row")
    assert not served.may_batch(served.parse_json(bodies[0]))


# -- over HTTP -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching-logs")


@pytest.fixture(scope="module")
def row_servers(row_declared_path: Path, logs_dir: Path) -> Iterator[dict[str, Replica]]:
    with serving(row_declared_path, logs_dir, "row", batched=BATCHED, unbatched=UNBATCHED) as replicas:
        yield replicas


def test_concurrent_requests_to_a_declared_pyfunc_share_calls_and_get_their_own_rows_back(
    row_servers: dict[str, Replica],
) -> None:
    bodies = row_corpus(seed=1)
    batched, unbatched = row_servers["batched"], row_servers["unbatched"]
    before = len(batched.calls())

    answers = fire(batched.url, bodies)
    alone = fire(unbatched.url, bodies)

    assert_same_answers(answers, alone, bodies)
    for body, (status, content) in zip(bodies, answers, strict=True):
        if status == 200:  # each request gets its own ids, in order, and its own tag
            predictions = json.loads(content)["predictions"]
            assert [p["id"] for p in predictions] == [row["id"] for row in table_rows(body)]
            assert {p["tag"] for p in predictions} == {json.loads(body).get("params", {}).get("tag", "")}
    calls = batched.calls()[before:]
    assert max(calls) > max(SIZES)  # some call held rows of several requests
    batches, batched_requests = batched.metrics()
    assert batches >= 1 and batched_requests >= 2
    assert "batching: on (the model's metadata says modelfleet.batchable: true)" in batched.server.log()


def test_a_bad_request_among_good_ones_fails_alone_with_its_own_400(row_servers: dict[str, Replica]) -> None:
    good = [{"dataframe_records": [{"id": i, "x": 1.5}]} for i in range(10)]
    negative = {"dataframe_records": [{"id": 100, "x": 2.0}, {"id": 101, "x": -3.0}]}
    bodies = [json.dumps(body).encode() for body in [*good[:5], negative, *good[5:]]]

    answers = fire(row_servers["batched"].url, bodies)

    assert [status for status, _ in answers] == [200] * 5 + [400] + [200] * 5
    assert json.loads(answers[5][1]) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "The model could not make a prediction for this input: ValueError: x must not be negative",
    }
    assert [json.loads(content)["predictions"][0]["id"] for status, content in answers if status == 200] == list(
        range(10)
    )


def test_csv_requests_share_calls_too(row_servers: dict[str, Replica]) -> None:
    batched, unbatched = row_servers["batched"], row_servers["unbatched"]
    bodies = [("id,x\n" + "".join(f"{i * 10 + j},{j}.5\n" for j in range(1 + i % 3))).encode() for i in range(24)]
    batches_before, _ = batched.metrics()

    def fire_csv(url: str) -> list[tuple[int, bytes]]:
        def call(body: bytes) -> tuple[int, bytes]:
            headers = {**AUTH, "Content-Type": "text/csv"}
            response = requests.post(f"{url}/invocations", data=body, headers=headers, timeout=60)
            return response.status_code, response.content

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            return list(pool.map(call, bodies))

    answers = fire_csv(batched.url)

    assert answers == fire_csv(unbatched.url)
    assert {status for status, _ in answers} == {200}
    assert batched.metrics()[0] > batches_before


def test_the_setting_turns_batching_off(row_servers: dict[str, Replica]) -> None:
    unbatched = row_servers["unbatched"]
    bodies = row_corpus(seed=2)
    before = len(unbatched.calls())

    fire(unbatched.url, bodies)

    # One call per request, except those the schema refuses before any call.
    assert sorted(unbatched.calls()[before:]) == sorted(len(table_rows(body)) for body in bodies if b"ten" not in body)
    assert unbatched.metrics() == (0, 0)
    assert "batching: off (MODELFLEET_BATCHABLE=false in the served entity's environment)" in unbatched.server.log()


def test_a_pyfunc_that_does_not_declare_it_is_never_batched(row_plain_path: Path, logs_dir: Path) -> None:
    bodies = row_corpus(seed=4)

    with serving(row_plain_path, logs_dir, "row-plain", batched=BATCHED) as replicas:
        replica = replicas["batched"]
        fire(replica.url, bodies)
        assert sorted(replica.calls()) == sorted(len(table_rows(body)) for body in bodies if b"ten" not in body)
        assert replica.metrics() == (0, 0)
        assert "batching: off (a mlflow.pyfunc.model model is not known to predict row by row" in replica.server.log()


def test_a_lone_request_is_predicted_at_once_on_its_own(row_servers: dict[str, Replica]) -> None:
    replica = row_servers["batched"]
    before = len(replica.calls())
    metrics_before = replica.metrics()

    with requests.Session() as session:
        session.headers.update(AUTH)
        for size in (1, 3, 2):
            rows = [{"id": i, "x": 1.0} for i in range(size)]
            started = time.perf_counter()
            response = session.post(f"{replica.url}/invocations", json={"dataframe_records": rows}, timeout=30)
            assert response.status_code == 200
            assert time.perf_counter() - started < 2.0  # the model's 50 ms, not a batching window

    assert replica.calls()[before:] == [1, 3, 2]
    assert replica.metrics() == metrics_before


@pytest.mark.parametrize("model", ["pipeline", "pipeline-nosig"])
def test_a_scikit_learn_pipeline_shares_calls_and_answers_as_unbatched(
    model: str, pipeline_path: Path, pipeline_nosig_path: Path, logs_dir: Path
) -> None:
    path = {"pipeline": pipeline_path, "pipeline-nosig": pipeline_nosig_path}[model]
    bodies = tabular_corpus(seed=5) * 3

    with serving(path, logs_dir, model, batched=BATCHED, unbatched=UNBATCHED) as replicas:
        answers = fire(replicas["batched"].url, bodies)
        alone = fire(replicas["unbatched"].url, bodies)
        batches, batched_requests = replicas["batched"].metrics()
        unbatched_metrics = replicas["unbatched"].metrics()

    assert_same_answers(answers, alone, bodies)
    assert {status for status, _ in answers} == {200, 400}
    assert batches >= 1 and batched_requests >= 2
    assert unbatched_metrics == (0, 0)


def test_lightgbm_shares_calls_and_answers_as_unbatched_bit_for_bit(logs_dir: Path, models_dir: Path) -> None:
    path = save_lightgbm_model(models_dir / "lgbm")
    bodies = tabular_corpus(seed=6, numeric_only=True) * 3

    with serving(path, logs_dir, "lgbm", batched=BATCHED, unbatched=UNBATCHED) as replicas:
        answers = fire(replicas["batched"].url, bodies)
        alone = fire(replicas["unbatched"].url, bodies)
        batches, _ = replicas["batched"].metrics()
        log = replicas["batched"].server.log()

    assert_same_answers(answers, alone, bodies)
    assert {status for status, _ in answers} == {200, 400}
    assert batches >= 1
    assert "batching: on (a LightGBM model predicts row by row)" in log


def test_a_bad_setting_fails_the_load_saying_why(row_declared_path: Path, logs_dir: Path) -> None:
    replica = _start(row_declared_path, logs_dir, "row-bad-setting", {"MODELFLEET_BATCHABLE": "maybe"})
    try:
        code = replica.server.process.wait(timeout=120)
    finally:
        replica.server.stop()

    assert code == 3
    assert "model load failed: BatchingSettingError: MODELFLEET_BATCHABLE must be true or false, not 'maybe'" in (
        replica.server.log()
    )
