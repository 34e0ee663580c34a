"""The replica answers as `mlflow models serve` does: the same status and the same bytes.

Two models are served twice each, side by side on loopback, by `mlflow models serve
--env-manager local` (the real command, its own process tree) and by our model server:

* a scikit-learn ``Pipeline`` (one-hot on a string column, numbers passed through, a
  ``LogisticRegression``), whose plain requests take the scikit-learn fast path and the others
  the full MLflow path;
* a custom ``python_model`` pyfunc with per-row Python logic and a params schema, served by the
  full path only.  Its answer also reports what it was handed (each column's dtype, the index's
  type and values, the params), so any difference in the table the model sees, not only in the
  predictions, shows up in the bytes.

A corpus of requests is sent to both servers of a model: every table format
(``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``), with and without
``params``, CSV, one and many rows, columns in another order, extra columns, ints where floats
are declared, and bad requests (missing columns, wrong types, nulls, bad JSON, empty bodies,
wrong content types, unknown keys, several keys at once, shapes the parser refuses).

What must match:

* Every 200: the status and the body, byte for byte.
* Every refusal: the status.  The body is ours, on purpose (see ``assert_same_refusal``):
  ``{"error_code", "message"}`` like every Modelfleet API error, never MLflow's
  ``stack_trace`` (a server-side traceback is not the caller's business), and MLflow's
  message without its dump of the whole input table.  What stays is MLflow's reason, so the
  test checks that our message's reason is MLflow's.
* The documented exceptions in ``DIFFERENT_ON_PURPOSE``, each with its reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow.lightgbm
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from tests.test_model_server import AUTH, ServerProcess, free_port, start_server, wait_ready
from tests.test_model_server_batching import CITIES, tabular_frame

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 90.0

JSON = "application/json"
CSV = "text/csv"


# -- the models -----------------------------------------------------------------------------------


def save_pipeline_model(path: Path) -> Path:
    """One-hot on the city (an unknown city fails at predict time), the numbers scaled (so it
    trains in milliseconds), a LogisticRegression."""
    import sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features, labels = tabular_frame()
    encode = ColumnTransformer(
        [("city", OneHotEncoder(handle_unknown="error"), ["city"]), ("numbers", StandardScaler(), ["age", "income"])]
    )
    model = Pipeline([("encode", encode), ("classify", LogisticRegression())]).fit(features, labels)
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    return path


def save_lightgbm_model(path: Path) -> Path:
    """A LightGBM classifier (three classes) on the two number columns: its plain requests take
    the compiled booster fast path (boosted.py), the others MLflow's path."""
    import lightgbm

    features, labels = tabular_frame()
    features = features[["age", "income"]]
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(features, labels)
    mlflow.lightgbm.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels),
        pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
    )
    return path


def lightgbm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightgbm") is not None


# -- the custom pyfunc ----------------------------------------------------------------------------


class OfferModel(PythonModel):
    """Business rules, row by row, plus a report of exactly what the model was handed.

    Each output row: the offer for that customer (per-row Python logic, a ``threshold`` param),
    the input's dtypes, index type and the row's index label, so that the answer changes if the
    table given to the model differs in any way from the one MLflow builds.
    """

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """One dict per row; a city it does not know is an error (a bad request)."""
        threshold = (params or {}).get("threshold", 50.0)
        dtypes = ",".join(f"{name}:{dtype}" for name, dtype in model_input.dtypes.items())
        index_type = type(model_input.index).__name__
        answers = []
        for label, row in zip(model_input.index, model_input.itertuples(index=False), strict=True):
            if row.city not in CITIES:
                raise ValueError(f"unknown city {row.city!r}")
            if row.member and row.income > threshold:
                offer = "gold"
            elif row.age >= 65:
                offer = "senior"
            else:
                offer = f"{row.city}-{int(row.age) // 10 * 10}s"
            answers.append(
                {
                    "offer": offer,
                    "score": float(row.income) / 3,
                    "dtypes": dtypes,
                    "index": f"{index_type}:{label!r}",
                    "params": json.dumps(params, sort_keys=True),
                }
            )
        return pd.DataFrame(answers)


OFFER_SIGNATURE = ModelSignature(
    inputs=Schema(
        [ColSpec("string", "city"), ColSpec("long", "age"), ColSpec("double", "income"), ColSpec("boolean", "member")]
    ),
    params=ParamSchema([ParamSpec("threshold", "double", 50.0), ParamSpec("label", "string", "")]),
)


def save_offer_model(path: Path) -> Path:
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the servers cannot import this test module
    try:
        mlflow.pyfunc.save_model(
            str(path),
            python_model=OfferModel(),
            signature=OFFER_SIGNATURE,
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return path


# -- servers --------------------------------------------------------------------------------------


@dataclass
class MlflowServe:
    """`mlflow models serve` as started by someone following MLflow's docs, on loopback."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop its whole process group (the CLI runs uvicorn in a child process)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_mlflow_serve(model_path: Path, log_dir: Path) -> MlflowServe:
    port = free_port()
    log_path = log_dir / f"mlflow-serve-{model_path.name}-{port}.log"
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # It runs a bare `uvicorn`, which must be this virtual environment's.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [str(BIN / "mlflow"), "models", "serve", "-m", str(model_path), "-h", "127.0.0.1", "-p", str(port)]
    command += ["--env-manager", "local"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    return MlflowServe(process=process, port=port, log_path=log_path)


def wait_mlflow_ready(server: MlflowServe) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.process.returncode}:\n{server.log_path.read_text()}")
        try:
            if requests.get(f"{server.url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"mlflow models serve not ready after {READY_TIMEOUT_S} s:\n{server.log_path.read_text()}")


@dataclass
class Pair:
    """One model served by both servers."""

    ours: ServerProcess
    theirs: MlflowServe


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pair]]:
    """Both models, each served by both servers; all four start at once."""
    models = tmp_path_factory.mktemp("parity-models")
    logs = tmp_path_factory.mktemp("parity-logs")
    paths = {
        "pipeline": save_pipeline_model(models / "pipeline"),
        "offer": save_offer_model(models / "offer"),
    }
    if lightgbm_available():
        paths["lightgbm"] = save_lightgbm_model(models / "lightgbm")
    started: dict[str, Pair] = {}
    try:
        for key, path in paths.items():
            started[key] = Pair(start_server(path, logs, name=f"parity-{key}"), start_mlflow_serve(path, logs))
        for pair in started.values():
            wait_ready(pair.ours, timeout=READY_TIMEOUT_S)
            wait_mlflow_ready(pair.theirs)
        yield started
    finally:
        for pair in started.values():
            pair.ours.stop()
            pair.theirs.stop()


# -- the corpus -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    name: str
    body: bytes
    content_type: str | None = JSON


def _rows(rows: int, *, seed: int, member: bool) -> pd.DataFrame:
    frame, _ = tabular_frame(rows, seed=seed)
    frame["income"] = frame["income"].round(3)
    if member:
        frame["member"] = np.arange(rows) % 2 == 0
    return frame


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def table_requests(frame: pd.DataFrame, prefix: str) -> list[Request]:
    """The same rows in every table format the scoring protocol knows."""
    records = frame.to_dict(orient="records")
    split = frame.to_dict(orient="split")
    columns = {name: frame[name].tolist() for name in frame.columns}
    reordered = frame[list(reversed(frame.columns))]
    return [
        Request(f"{prefix} dataframe_split", _json({"dataframe_split": split})),
        Request(
            f"{prefix} dataframe_split, no index",
            _json({"dataframe_split": {k: split[k] for k in ("columns", "data")}}),
        ),
        Request(
            f"{prefix} dataframe_split, string index",
            _json({"dataframe_split": {**split, "index": [f"r{i}" for i in range(len(frame))]}}),
        ),
        Request(
            f"{prefix} dataframe_split, columns reversed", _json({"dataframe_split": reordered.to_dict(orient="split")})
        ),
        Request(f"{prefix} dataframe_records", _json({"dataframe_records": records})),
        Request(f"{prefix} instances", _json({"instances": records})),
        Request(f"{prefix} inputs as columns", _json({"inputs": columns})),
        Request(f"{prefix} inputs as records", _json({"inputs": records})),
        Request(f"{prefix} csv", frame.to_csv(index=False).encode(), CSV),
    ]


def corpus(*, member: bool) -> list[Request]:
    """Requests and bad requests for a model whose input is city, age, income (and member)."""
    one = _rows(1, seed=1, member=member)
    many = _rows(7, seed=2, member=member)
    hundred = _rows(100, seed=3, member=member)
    record = one.to_dict(orient="records")[0]
    records = many.to_dict(orient="records")
    good = [
        *table_requests(one, "1 row:"),
        *table_requests(many, "7 rows:"),
        Request("100 rows: dataframe_split", _json({"dataframe_split": hundred.to_dict(orient="split")})),
        Request("100 rows: dataframe_records", _json({"dataframe_records": hundred.to_dict(orient="records")})),
        Request("inputs as one record", _json({"inputs": record})),
        Request("params", _json({"dataframe_records": records, "params": {"threshold": 20.5}})),
        Request(
            "params, two",
            _json({"dataframe_split": many.to_dict(orient="split"), "params": {"threshold": 1, "label": "x"}}),
        ),
        Request("params, empty", _json({"instances": records, "params": {}})),
        Request("params, null", _json({"inputs": {k: [r[k] for r in records] for k in record}, "params": None})),
        Request("ints where floats are declared", _json({"dataframe_records": [{**r, "income": 40} for r in records]})),
        Request("extra column", _json({"dataframe_records": [{**r, "extra": 1} for r in records]})),
        Request("unknown key beside the input", _json({"dataframe_records": records, "comment": "hi"})),
        Request("charset=utf-8", _json({"dataframe_records": records}), "application/json; charset=utf-8"),
        Request("no content type", _json({"dataframe_records": records}), None),
        Request("unicode city", _json({"dataframe_records": [{**records[0], "city": "paris\u00e9"}]})),
    ]
    bad = [
        Request(
            "missing column",
            _json({"dataframe_records": [{k: v for k, v in r.items() if k != "age"} for r in records]}),
        ),
        Request("missing column, split", _json({"dataframe_split": {"columns": ["city"], "data": [["paris"]]}})),
        Request("string in a number column", _json({"dataframe_records": [{**records[0], "age": "old"}]})),
        Request("float in an integer column", _json({"dataframe_records": [{**records[0], "age": 30.5}]})),
        Request("null in a number column", _json({"dataframe_records": [{**records[0], "income": None}]})),
        Request("null city", _json({"dataframe_records": [{**records[0], "city": None}]})),
        Request("unknown city", _json({"dataframe_records": [{**records[0], "city": "atlantis"}]})),
        Request("bad JSON", b'{"dataframe_records": [{"city": '),
        Request("not UTF-8", b'{"dataframe_records": [{"city": "\xff"}]}'),
        Request("empty JSON body", b""),
        Request("empty CSV body", b"", CSV),
        Request("CSV header only", b"city,age,income\n", CSV),
        Request("CSV with a string for a number", b"city,age,income\nparis,old,3.5\n", CSV),
        Request("wrong content type", _json({"dataframe_records": records}), "text/plain"),
        Request("charset=latin-1", _json({"dataframe_records": records}), "application/json; charset=latin-1"),
        Request("unknown key only", _json({"foo": 1})),
        Request("several input keys", _json({"dataframe_records": records, "instances": records})),
        Request("params only", _json({"params": {"threshold": 1.0}})),
        Request("JSON list", _json(records)),
        Request("JSON string", _json("paris")),
        Request("JSON null", b"null"),
        Request("dataframe_records not a list", _json({"dataframe_records": record})),
        Request("dataframe_records of lists", _json({"dataframe_records": [[1, 2, 3]]})),
        Request("dataframe_records empty", _json({"dataframe_records": []})),
        Request("dataframe_split without data", _json({"dataframe_split": {"columns": ["city"]}})),
        Request("dataframe_split a list", _json({"dataframe_split": [1, 2]})),
        Request(
            "dataframe_split ragged", _json({"dataframe_split": {"columns": list(record), "data": [["paris", 1]]}})
        ),
        Request("instances empty", _json({"instances": []})),
        Request(
            "inputs of unequal lengths",
            _json({"inputs": {k: [v] * (2 if k == "age" else 1) for k, v in record.items()}}),
        ),
        Request("inputs a number", _json({"inputs": 3})),
        Request("params of the wrong type", _json({"dataframe_records": records, "params": {"threshold": "high"}})),
        Request("params not an object", _json({"dataframe_records": records, "params": [1]})),
    ]
    return good + bad


def booster_corpus() -> list[Request]:
    """Requests and bad requests for the LightGBM model, whose input is age and income."""
    one = _rows(1, seed=1, member=False)[["age", "income"]]
    many = _rows(7, seed=2, member=False)[["age", "income"]]
    hundred = _rows(100, seed=3, member=False)[["age", "income"]]
    record = one.to_dict(orient="records")[0]
    records = many.to_dict(orient="records")
    good = [
        *table_requests(one, "1 row:"),
        *table_requests(many, "7 rows:"),
        Request("100 rows: dataframe_split", _json({"dataframe_split": hundred.to_dict(orient="split")})),
        Request("100 rows: dataframe_records", _json({"dataframe_records": hundred.to_dict(orient="records")})),
        Request("inputs as one record", _json({"inputs": record})),
        Request("ints where floats are declared", _json({"dataframe_records": [{**r, "income": 40} for r in records]})),
        Request("NaN income", b'{"dataframe_records": [{"age": 30, "income": NaN}]}'),
        Request("huge numbers", _json({"dataframe_records": [{"age": 2**62, "income": 1e300}]})),
        Request("negative numbers", _json({"dataframe_records": [{"age": -3, "income": -2.5}]})),
        Request("extra column", _json({"dataframe_records": [{**r, "extra": 1} for r in records]})),
        Request("params", _json({"dataframe_records": records, "params": {"threshold": 1.0}})),
    ]
    bad = [
        Request("missing column", _json({"dataframe_records": [{"age": r["age"]} for r in records]})),
        Request("string in a number column", _json({"dataframe_records": [{**records[0], "age": "old"}]})),
        Request("float in an integer column", _json({"dataframe_records": [{**records[0], "age": 30.5}]})),
        Request("null in a number column", _json({"dataframe_records": [{**records[0], "income": None}]})),
        Request("bool in a number column", _json({"dataframe_records": [{**records[0], "income": True}]})),
        Request("bad JSON", b'{"dataframe_records": [{"age": '),
        Request("dataframe_records empty", _json({"dataframe_records": []})),
        Request("several input keys", _json({"dataframe_records": records, "instances": records})),
    ]
    return good + bad


def corpus_for(model: str) -> list[Request]:
    return booster_corpus() if model == "lightgbm" else corpus(member=model == "offer")


# -- comparing ------------------------------------------------------------------------------------

# Requests whose status differs from `mlflow models serve`'s on purpose: name -> why.
DIFFERENT_ON_PURPOSE: dict[str, str] = {
    "no content type": (
        "MLflow's server answers 500 Internal Server Error (it splits the missing header, None); "
        "we read a body without a Content-Type as JSON, since clients (curl -d, some SDKs) often "
        "leave it out, and answer it like the same body sent as application/json."
    ),
}
# Refusals whose message is our own words, not MLflow's reason: name -> why.
OWN_WORDS: dict[str, str] = {
    "not UTF-8": "MLflow quotes the repr of its UnicodeDecodeError; we say where the bad byte is.",
    "wrong content type": "MLflow answers text/plain here; every error of ours is a JSON error body.",
    "charset=latin-1": "MLflow answers text/plain here; every error of ours is a JSON error body.",
    **dict.fromkeys(
        ["unknown key only", "several input keys", "params only", "JSON list", "JSON string", "JSON null"],
        "MLflow lists only the keys it recognised (so '[]' for {'foo': 1}) and appends a note about "
        "MLflow 1.x; we say which keys, or what JSON type, the request sent.",
    ),
}
# How our messages start where MLflow's start otherwise: the reason after them is MLflow's.
# (MLflow's schema errors also quote the whole input table, twice; ours do not.)
OUR_PREFIXES = (
    "Failed to enforce the model's input schema ",
    "The model could not make a prediction for this input: ",
    "The request body is not valid JSON: ",
)


@dataclass(frozen=True)
class Exchange:
    model: str
    request: Request
    ours: requests.Response
    theirs: requests.Response


def _post(url: str, request: Request, headers: dict[str, str]) -> requests.Response:
    headers = dict(headers)
    if request.content_type is not None:
        headers["Content-Type"] = request.content_type
    # A new connection each time: uvicorn drops a keep-alive connection after a 500.
    return requests.post(f"{url}/invocations", data=request.body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def exchanges(pairs: dict[str, Pair]) -> list[Exchange]:
    """Every request of the corpus, sent to both servers of its model."""
    sent = []
    for model, pair in pairs.items():
        for request in corpus_for(model):
            ours = _post(pair.ours.url, request, AUTH)
            theirs = _post(pair.theirs.url, request, {})
            sent.append(Exchange(model, request, ours, theirs))
    return sent


def _describe(exchange: Exchange) -> str:
    return (
        f"{exchange.model}: {exchange.request.name}\n"
        f"  ours:   {exchange.ours.status_code} {exchange.ours.content[:400]!r}\n"
        f"  mlflow: {exchange.theirs.status_code} {exchange.theirs.content[:400]!r}"
    )


def _mlflow_reason_text(response: requests.Response) -> str:
    """MLflow's error message and its traceback (where a model's exception is quoted)."""
    error = response.json()
    return f"{error['message']}\n{error.get('stack_trace', '')}"


def test_the_corpus_has_answers_and_refusals_for_both_models(exchanges: list[Exchange]) -> None:
    for model in ("pipeline", "offer"):
        statuses = [e.theirs.status_code for e in exchanges if e.model == model]
        assert statuses.count(200) >= 20
        assert sum(400 <= status < 500 for status in statuses) >= 25
    # The custom pyfunc reports the table it was handed, so a difference in dtypes or index
    # (not only in predictions) changes the bytes compared.
    offer = next(e for e in exchanges if e.model == "offer" and e.request.name == "7 rows: dataframe_split")
    first = offer.ours.json()["predictions"][0]
    assert first["dtypes"] == "city:str,age:int64,income:float64,member:bool"
    assert first["index"] == "Index:0"


def test_our_servers_read_plain_tables_themselves(pairs: dict[str, Pair]) -> None:
    """So the corpus above exercises the tables the full path builds, not only MLflow's."""
    for pair in pairs.values():
        assert "full path: plain tables read in one pass (tables of " in pair.ours.log()


def test_every_accepted_request_gets_the_same_bytes(exchanges: list[Exchange]) -> None:
    differences = [
        _describe(e)
        for e in exchanges
        if e.theirs.status_code == 200
        and (
            e.ours.status_code != 200
            or e.ours.content != e.theirs.content
            or e.ours.headers["content-type"] != e.theirs.headers["content-type"]
        )
    ]
    assert not differences, "\n".join(differences)


def test_every_refused_request_gets_the_same_status_and_mlflows_reason(exchanges: list[Exchange]) -> None:
    differences = []
    for e in exchanges:
        if e.theirs.status_code == 200 or e.request.name in DIFFERENT_ON_PURPOSE:
            continue
        error = e.ours.json() if e.ours.headers.get("content-type") == JSON else None
        if e.ours.status_code != e.theirs.status_code or error is None or set(error) != {"error_code", "message"}:
            differences.append(_describe(e))
        elif e.request.name not in OWN_WORDS:
            reason = error["message"]
            for prefix in OUR_PREFIXES:
                reason = reason.removeprefix(prefix)
            if reason.removesuffix("...") not in _mlflow_reason_text(e.theirs):
                differences.append(f"{_describe(e)}\n  (our reason is not MLflow's: {reason!r})")
    assert not differences, "\n".join(differences)


def test_what_differs_on_purpose_still_differs_as_documented(exchanges: list[Exchange]) -> None:
    """If MLflow ever answers these as we do, the exception above is no longer needed."""
    for e in exchanges:
        if e.request.name == "no content type":
            assert (e.ours.status_code, e.theirs.status_code) == (200, 500)
            assert e.ours.content == next(
                x.ours.content for x in exchanges if x.model == e.model and x.request.name == "charset=utf-8"
            )


# -- in process: the tables the full path builds itself -------------------------------------------

# Signatures for the table reader, and the JSON values each column type may be sent: mostly
# values MLflow keeps or converts by numpy's rule, and some it converts by its own rules or
# refuses (which the reader must leave to MLflow).
SCHEMAS = {
    "offer": OFFER_SIGNATURE.inputs,
    "one string": Schema([ColSpec("string", "text")]),
    "narrow numbers": Schema([ColSpec("float", "f"), ColSpec("integer", "i"), ColSpec("double", "d")]),
}
GOOD_VALUES: dict[str, list[Any]] = {
    "string": ["paris", "lyon", "", "caf\u00e9", "a b", "x" * 40, "\u4e2d\u6587", "nul\x00", "in\x00side"],
    "long": [0, 1, -7, 42, 2**40, -(2**62)],
    "integer": [0, 3, -5, 2**30],
    "double": [0.0, 1.5, -2.25, 1e300, 40, 2**62, 2**70, float("nan"), float("inf")],
    "float": [0.5, -1.25, 3.4e38, 1e-45],
    "boolean": [True, False],
}
ODD_VALUES: dict[str, list[Any]] = {
    "string": [3, None, True, ["a"]],
    "long": [1.0, 2.5, True, "3", None, 2**64, [1]],
    "integer": [2**31, 1.0, False, "4", None],
    "double": [True, "1.5", None, {"a": 1}],
    "float": [1, True, "0.5", None, 1e40],
    "boolean": [0, 1, "true", None],
}


def _value(rng: np.random.Generator, kind: str) -> Any:
    pool = ODD_VALUES[kind] if rng.random() < 0.04 else GOOD_VALUES[kind]
    return pool[int(rng.integers(len(pool)))]


def _payloads(schema: Schema, rng: np.random.Generator, count: int) -> Iterator[dict[str, Any]]:
    """Request bodies in every shape the reader knows, a few with odd values, columns or keys."""
    names = schema.input_names()
    kinds = [spec.type.name for spec in schema.inputs]
    for position in range(count):
        size = [1, 1, 2, 3, 7, 20][position % 6]
        records = [{name: _value(rng, kind) for name, kind in zip(names, kinds, strict=True)} for _ in range(size)]
        if rng.random() < 0.05:
            del records[0][names[0]]
        elif rng.random() < 0.05:
            records[-1]["extra"] = 1
        columns = list(names)
        if rng.random() < 0.5:
            rng.shuffle(columns)
        shape = position % 9
        body: dict[str, Any]
        if shape == 0:
            body = {"dataframe_records": records}
        elif shape == 1:
            body = {"instances": records}
        elif shape == 2:
            body = {"inputs": records}
        elif shape == 3:
            body = {"inputs": {name: [record.get(name) for record in records] for name in columns}}
        elif shape == 4:
            body = {"inputs": records[0]}
        else:
            split: dict[str, Any] = {"columns": columns, "data": [[r.get(c) for c in columns] for r in records]}
            if shape == 6:
                split["index"] = list(range(10, 10 + size))
            elif shape == 7:
                split["index"] = [f"row{i}" for i in range(size)]
            elif shape == 8:
                split["index"] = [1] * size  # repeated labels: left to MLflow
            body = {"dataframe_split": split}
        if rng.random() < 0.2:
            body["params"] = {"threshold": 1.0}
        elif rng.random() < 0.03:
            body["comment"] = "a key MLflow ignores"
        # As a client sends it: NaN travels as JSON's NaN extension, which Python reads back.
        yield json.loads(json.dumps(body))


def _mlflow_table(payload: dict[str, Any], model: Any) -> Any:
    """What MLflow's scoring server parses and PyFuncModel.predict enforces: the model's input."""
    from mlflow.pyfunc import _validate_prediction_input
    from mlflow.pyfunc.scoring_server import _parse_json_data

    schema = model.metadata.get_input_schema()
    parsed = _parse_json_data(payload, model.metadata, schema)
    table, _ = _validate_prediction_input(parsed.data, None, schema, None, model.loader_module)
    return table


class _Echo(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """The table itself."""
        return model_input


@pytest.mark.parametrize("schema_name", list(SCHEMAS))
def test_plain_tables_are_the_tables_mlflow_hands_the_model(schema_name: str, tmp_path: Path) -> None:
    from endpoints_app.runtime.model_server.frames import layout
    from endpoints_app.runtime.model_server.served_model import PlainTables

    mlflow.pyfunc.save_model(
        str(tmp_path / "echo"), python_model=_Echo(), signature=ModelSignature(SCHEMAS[schema_name])
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "echo"))
    tables, note = PlainTables.for_model(model)
    assert tables is not None, note
    assert tables.frames is not None, note  # tables without an index are built from their blocks
    read = 0
    for payload in _payloads(SCHEMAS[schema_name], np.random.default_rng(7), count=240):
        ours = tables.read(payload)
        try:
            theirs = _mlflow_table(payload, model)
        except Exception:
            assert ours is None, payload  # never a table where MLflow refuses the request
            continue
        if ours is None:
            continue
        read += 1
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True, check_index_type=True, check_column_type=True)
        assert type(ours.index) is type(theirs.index), payload
        assert ours.dtypes.to_dict() == theirs.dtypes.to_dict(), payload
        # The same blocks too (frames.py builds them itself): which columns share one, in order.
        assert layout(ours) == layout(theirs), payload
    assert read >= 100  # most of the corpus is plain tables; the rest went to MLflow


def test_the_lightgbm_model_takes_the_compiled_booster_path(pairs: dict[str, Pair]) -> None:
    """So the LightGBM corpus above compares the compiled booster's answers with MLflow's."""
    if "lightgbm" not in pairs:
        pytest.skip("lightgbm is not installed")
    assert "fast path: LightGBM booster.predict on the request's columns (compiled)" in pairs["lightgbm"].ours.log()


def test_the_custom_pyfunc_not_declared_row_wise_keeps_the_full_path(pairs: dict[str, Pair]) -> None:
    """The offer model is not declared row-wise: its corpus exercises the full path's tables."""
    assert "not declared row-wise: each request takes the full path" in pairs["offer"].ours.log()
    # Its tables built from their blocks and predicted without PyFuncModel.predict's inspection
    # (frames.py, served_model.DirectPythonModel): the corpus compares both with MLflow's answers.
    assert "tables built from their blocks, predicted by the python_model's predict directly" in (
        pairs["offer"].ours.log()
    )
