"""The model server: one OS process that loads one MLflow pyfunc model and serves it on loopback.

The runtime agent starts one of these per replica::

    python -m endpoints_app.runtime.model_server --model-path PATH --host 127.0.0.1 --port N \
        [--name SERVED_ENTITY_NAME] [--replica-id K] [--threads T] [--max-batch-rows R]

and redirects its stdout/stderr to the replica's log file, so everything worth knowing about
the replica (start-up, load time, failures, shutdown) is logged to stderr.  Or it keeps one
warm standby, ``python -m endpoints_app.runtime.model_server --standby``, which imports
everything heavy up front and then waits for one line of JSON on stdin naming the replica it
becomes (see STANDBY_KEYS): from that line to /health 200 takes ~30 ms for a small model
instead of ~3.5 s, most of it importing MLflow, scikit-learn and skops.

Routes:

* ``POST /invocations`` -- the MLflow / Databricks scoring protocol (``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``, optional ``params``; ``text/csv`` too),
  parsed by MLflow's own scoring-server helpers so answers match ``mlflow models serve``.
  Answers ``{"predictions": ...}``; every error is ``{"error_code": ..., "message": ...}``.
* ``GET /health`` -- 200 ``{"status": "ready", "in_flight": N, "requests": N, "idle_seconds": S,
  "model": ..., "replica": K,
  "pid": P}`` once the model is loaded, 503 with ``"status": "loading"`` before that.
  ``in_flight`` lets the agent drain a replica before stopping it.
* ``GET /metrics`` -- Prometheus text exposition, written by hand (no extra dependency).

Design choices, each for a reason:

* The HTTP layer is a bare ASGI callable on uvicorn: no framework sits between the socket and
  the model, which keeps per-request overhead to parsing, one thread hop and the model itself.
* The port opens before the model is loaded (the load runs in a background thread), so the
  agent can tell "process up, still loading" (503 on /health) from "process dead", and a port
  clash fails in a second rather than after a long load.  A load failure exits with code 3.
* Parsing, prediction and serialisation all run in a worker thread, so a slow or large
  request never stalls /health, /metrics or other connections on the event loop.
* Except on the scikit-learn fast path (SklearnFastPath): MLflow's parsing and schema
  enforcement cost ~1.5 ms of a ~2 ms request, so plain-table requests to a scikit-learn
  model whose signature is named scalar columns are checked and converted here, and only when
  MLflow would build exactly the same table; everything else, errors included, still goes
  through MLflow.  Fast-path requests that arrive together share one predict call (Batcher),
  on the event loop itself while that is known to take under a millisecond.  Measured on two
  cores for the iris demo model: ~2,500 requests/s at concurrency 1 and ~7,500 at
  concurrency 8, against ~400 and ~300 through MLflow's path.
* SIGTERM/SIGINT trigger uvicorn's graceful shutdown: stop accepting, let in-flight requests
  finish (up to 30 s), then exit 0.

Every route answers only requests that carry the replica's credential (``Authorization: Bearer
<credential>``), which the runtime agent generates per replica and hands over in the environment
(``MODELFLEET_REPLICA_CREDENTIAL``) or in a standby's assignment, never on the command line; the
gateway, the agent and the metrics poller send it.  Without one the server does not start.

Exit codes: 0 after a stop signal (or a standby whose stdin closed), 2 for bad arguments, a
bad standby assignment or no credential, 3 when the model fails to load (the log's first error
line says ``model load failed: <Type>: <message>``), 4 when the port cannot be bound, 5 when the
sandbox the agent asked for could not be set up.
"""

from __future__ import annotations

import os

# Nothing in this process may phone home; these must be set before mlflow is first imported.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
# Same flag `mlflow models serve` sets: some flavours behave differently when serving.
os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"

import sys  # noqa: E402

# Confine the process before any import starts a thread (see runtime/sandbox.py): the runtime
# agent passes the plan in the environment; run by hand, nothing is confined.
from endpoints_app.runtime import sandbox  # noqa: E402  (standard library only)

try:
    sandbox.enter_from_environment()
except (sandbox.SandboxError, OSError, KeyError, ValueError) as _exc:
    print(f"sandbox: could not confine the replica: {_exc}", file=sys.stderr, flush=True)
    os._exit(5)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import bisect  # noqa: E402
import hmac  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import operator  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from io import StringIO  # noqa: E402
from itertools import chain  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import uvicorn  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.pyfunc import PyFuncModel  # noqa: E402
from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, _parse_json_data, parse_csv_input  # noqa: E402
from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input  # noqa: E402
from mlflow.types import ColSpec, DataType  # noqa: E402
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj  # noqa: E402

logger = logging.getLogger("endpoints_app.runtime.model_server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
# Error messages quote MLflow and model exceptions, which can embed the whole input; cap them.
MAX_MESSAGE_CHARS = 2000
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DEFAULT_MAX_BATCH_ROWS = 256
# Fast-path bodies up to this size are decoded on the event loop (a 100-row iris body is 3.5 KB,
# ~50 µs); bigger ones in a worker thread, so that one huge body cannot stall the loop.
INLINE_PARSE_MAX_BYTES = 64 * 1024
# A batch known to predict faster than this runs on the event loop instead of a thread.
INLINE_PREDICT_BUDGET_S = 0.001
EXIT_LOAD_FAILED = 3
# uvicorn exits with 3 too when it cannot bind; a distinct code tells the agent "pick another
# port" apart from "the model is broken".
EXIT_LISTEN_FAILED = 4
GRACEFUL_SHUTDOWN_SECONDS = 30
# Longer than the gateway's pooled-connection idle expiry, so the server never closes a
# keep-alive connection at the instant the client reuses it.
KEEP_ALIVE_SECONDS = 65

JSON_HEADERS = [(b"content-type", b"application/json")]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Where a fresh replica finds its credential; removed from the environment once read.
CREDENTIAL_ENV = "MODELFLEET_REPLICA_CREDENTIAL"
UNAUTHORIZED_HEADERS = [(b"www-authenticate", b'Bearer realm="modelfleet-replica"')]
# ServedModel.read_fast's payload for a body that is not JSON (None is JSON's null).
NOT_JSON = object()
INPUT_KEYS_HELP = (
    "The request body must be a JSON object with exactly one of the keys "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs', and optionally 'params'."
)

# MLflow's schema-enforcement message starts by quoting the whole input DataFrame; the schema
# and the reason that follow it are what the caller needs.
_SCHEMA_DATA_DUMP = re.compile(r"^Failed to enforce schema of data '.*?' with schema '", re.DOTALL)


class RequestError(Exception):
    """A request the server refuses; carried to the response as ``{"error_code", "message"}``."""

    def __init__(
        self, status: int, error_code: str, message: str, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers


def method_not_allowed(method: str, path: str, allowed: str) -> RequestError:
    return RequestError(
        405,
        "METHOD_NOT_ALLOWED",
        f"{method} is not allowed on {path}; use {allowed}.",
        headers=[(b"allow", allowed.encode())],
    )


class _ClientGone(Exception):
    """The client disconnected before its request body arrived; there is no one to answer."""


def client_message(message: str) -> str:
    """Make an MLflow/model exception message fit to return to the caller.

    Drops MLflow's dump of the input data, caps the length, and rewrites the one phrase
    ("Unexpected error") that makes the Databricks SDK retry a failed call for five minutes.
    """
    message = _SCHEMA_DATA_DUMP.sub("Failed to enforce the model's input schema '", message, count=1)
    message = message.replace("Unexpected error", "unexpected error")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message


def error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": message}).encode()


# The fast path serves these predict functions of a scikit-learn model; each answers every row
# on its own, which is what lets requests share one call.  ("score" needs labels and is not.)
FAST_PREDICT_FNS = frozenset({"predict", "predict_proba", "predict_log_proba", "predict_joint_log_proba"})
# Per MLflow column type: the dtype that MLflow's parsing and schema enforcement hand the model
# (None: strings, left to pandas' own inference, as MLflow does), and the JSON value types the
# fast path converts itself.  MLflow converts other values by rules of its own (a bool or "1.5"
# in a number column, null, an int in a float32 column), so those requests take the full path.
_FAST_COLUMN_TYPES: dict[DataType, tuple[np.dtype | None, frozenset[type]]] = {
    DataType.double: (np.dtype(np.float64), frozenset({float, int})),
    DataType.float: (np.dtype(np.float32), frozenset({float})),
    DataType.long: (np.dtype(np.int64), frozenset({int})),
    DataType.integer: (np.dtype(np.int32), frozenset({int})),
    DataType.boolean: (np.dtype(np.bool_), frozenset({bool})),
    DataType.string: (None, frozenset({str})),
}
_INDEX_TYPES = frozenset({int, str, float})
_SPLIT_KEYS = frozenset({"columns", "data", "index"})
# Estimator classes for which a numpy array is not the same input as MLflow's DataFrame: column
# selection by name, and arbitrary user functions (which may also mix rows).
_NAME_DEPENDENT_ESTIMATORS = frozenset({"ColumnTransformer", "FunctionTransformer"})
_ROW_DEPENDENT_ESTIMATORS = frozenset({"FunctionTransformer"})
# sklearn warns on every call when an estimator fitted on a DataFrame is given an array; the
# fast path does that on purpose (same values, same column order, several times faster).
_FEATURE_NAMES_WARNING = "X does not have valid feature names"


class FastInput:
    """One request's rows, checked and converted: an (n, k) array, or one sequence per column."""

    __slots__ = ("data", "rows")

    def __init__(self, rows: int, data: Any) -> None:
        self.rows = rows
        self.data = data


class SklearnFastPath:
    """Answer plain-table requests to a scikit-learn model without MLflow's parsing and schema
    enforcement, which cost ~1.5 ms of a ~2 ms request.

    Built only for a model whose signature is named, required scalar columns and no params.
    `read` takes a request only when MLflow would build exactly the same table from it (same
    columns, order, dtypes and values); for anything else it returns None and the full MLflow
    path answers, errors included.  `predict_batch` predicts one or several such requests with
    one call and serialises each answer exactly as the full path does.
    """

    def __init__(
        self,
        *,
        predict: Callable[[Any], Any],
        names: list[str],
        dtypes: list[np.dtype | None],
        accepts: list[frozenset[type]],
        as_array: bool,
        row_independent: bool,
    ) -> None:
        self.predict = predict
        self.names = names
        self.dtypes = dtypes
        self.accepts = accepts
        # An (n, k) array for the model rather than a DataFrame: one dtype for every column, and
        # an estimator that reads columns by position (see `for_model`).
        self.as_array = as_array
        self.array_dtype = dtypes[0] if as_array else None
        self.array_accepts = accepts[0] if as_array else frozenset()
        # Whether several requests may share one predict call.
        self.row_independent = row_independent
        self._name_set = frozenset(names)
        self._width = len(names)
        # Record -> tuple of values in signature order, in C.
        if len(names) == 1:
            only = names[0]
            self._values_of: Callable[[dict[str, Any]], tuple[Any, ...]] = lambda record: (record[only],)
        else:
            self._values_of = operator.itemgetter(*names)

    @classmethod
    def for_model(cls, model: PyFuncModel) -> tuple[SklearnFastPath | None, str]:
        """The fast path for this model, or None and the reason it has none."""
        metadata = model.metadata
        pyfunc_conf = metadata.flavors.get("python_function", {})
        if "sklearn" not in metadata.flavors or pyfunc_conf.get("loader_module") != "mlflow.sklearn":
            return None, "not a scikit-learn model"
        if metadata._is_signature_from_type_hint() or metadata._is_type_hint_from_example():
            return None, "its signature comes from type hints"
        if metadata.get_params_schema() is not None:
            return None, "its signature has params"
        schema = metadata.get_input_schema()
        if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
            return None, "its input signature is not a table of named columns"
        dtypes: list[np.dtype | None] = []
        accepts: list[frozenset[type]] = []
        for spec in schema.inputs:
            if not (isinstance(spec, ColSpec) and spec.required and spec.type in _FAST_COLUMN_TYPES):
                return None, f"input column {spec.name!r} is not a required scalar column"
            dtype, types = _FAST_COLUMN_TYPES[spec.type]
            dtypes.append(dtype)
            accepts.append(types)
        names = schema.input_names()
        if len(set(names)) != len(names):
            return None, "its signature repeats a column name"
        predict_fn = pyfunc_conf.get("predict_fn", "predict")
        if predict_fn not in FAST_PREDICT_FNS:
            return None, f"its pyfunc predict function is {predict_fn}"
        estimator = model.get_raw_model()
        predict = getattr(estimator, predict_fn, None)
        if not callable(predict):
            return None, f"the estimator has no {predict_fn}"
        classes = _estimator_classes(estimator)
        sklearn_only = all(module.startswith("sklearn.") for module, _ in classes)
        class_names = {name for _, name in classes}
        row_independent = sklearn_only and not class_names & _ROW_DEPENDENT_ESTIMATORS
        fitted_names = getattr(estimator, "feature_names_in_", None)
        as_array = (
            row_independent
            and not class_names & _NAME_DEPENDENT_ESTIMATORS
            and len(set(dtypes)) == 1
            and dtypes[0] is not None
            # Fitted on a DataFrame: sklearn then checks names and order, so the array must be
            # in the same order (otherwise the DataFrame gets sklearn's own error).
            and (fitted_names is None or list(fitted_names) == names)
        )
        if as_array and fitted_names is not None:
            warnings.filterwarnings("ignore", message=_FEATURE_NAMES_WARNING, category=UserWarning)
        fast = cls(
            predict=predict,
            names=names,
            dtypes=dtypes,
            accepts=accepts,
            as_array=as_array,
            row_independent=row_independent,
        )
        how = "numpy arrays" if as_array else "DataFrames"
        batching = "batched" if row_independent else "one request per call (not only scikit-learn's own estimators)"
        return fast, f"{type(estimator).__name__}.{predict_fn} on {how}, {batching}"

    def read(self, payload: dict[str, Any]) -> FastInput | None:
        """Check and convert a decoded request body; None when the full path must answer it."""
        if len(payload) != 1:
            return None  # params, or keys MLflow would ignore or refuse
        ((key, value),) = payload.items()
        try:
            if key == "dataframe_split":
                return self._read_split(value)
            if key in ("dataframe_records", "instances") or (key == "inputs" and type(value) is list):
                return self._read_records(value)
            if key == "inputs" and type(value) is dict:
                return self._read_column_lists(value)
        except (TypeError, ValueError, KeyError, OverflowError):
            pass  # shapes or values MLflow would refuse or convert by its own rules
        return None

    def _read_split(self, split: Any) -> FastInput | None:
        if type(split) is not dict or not split.keys() <= _SPLIT_KEYS:
            return None
        columns = split["columns"]  # a KeyError (no columns or no data) is for the full path
        data = split["data"]
        if type(data) is not list or not data or set(map(type, data)) != {list}:
            return None
        if set(map(len, data)) != {self._width}:
            return None
        if "index" in split:
            index = split["index"]
            if index is not None and (
                type(index) is not list or len(index) != len(data) or not set(map(type, index)) <= _INDEX_TYPES
            ):
                return None
        if columns == self.names:
            return self._from_rows(data)
        # Columns in another order: a permutation of the signature's, or the full path.
        if type(columns) is not list or len(columns) != self._width or set(columns) != self._name_set:
            return None
        order = [columns.index(name) for name in self.names]
        if self.as_array:
            converted = self._from_rows(data)
            if converted is not None:
                converted.data = converted.data[:, order]
            return converted
        by_column = list(zip(*data, strict=True))
        return self._from_columns(len(data), [by_column[position] for position in order])

    def _read_records(self, records: Any) -> FastInput | None:
        if type(records) is not list or not records or set(map(type, records)) != {dict}:
            return None
        if set(map(len, records)) != {self._width}:
            return None  # same length and every name present (KeyError) means the same keys
        return self._from_rows(list(map(self._values_of, records)))

    def _read_column_lists(self, columns: dict[str, Any]) -> FastInput | None:
        if len(columns) != self._width:
            return None
        values = [columns[name] for name in self.names]
        if set(map(type, values)) != {list}:
            return None
        lengths = set(map(len, values))
        if len(lengths) != 1 or 0 in lengths:
            return None
        rows = lengths.pop()
        if self.as_array:
            if not set(map(type, chain.from_iterable(values))) <= self.array_accepts:
                return None
            return FastInput(rows, np.array(values, dtype=self.array_dtype).T)
        return self._from_columns(rows, values)

    def _from_rows(self, rows: list[Any]) -> FastInput | None:
        """Rows of equal length, values in the request's column order."""
        if self.as_array:
            if not set(map(type, chain.from_iterable(rows))) <= self.array_accepts:
                return None
            return FastInput(len(rows), np.array(rows, dtype=self.array_dtype))
        return self._from_columns(len(rows), list(zip(*rows, strict=True)))

    def _from_columns(self, rows: int, columns: list[Sequence[Any]]) -> FastInput | None:
        converted: list[Any] = []
        for values, dtype, accepts in zip(columns, self.dtypes, self.accepts, strict=True):
            if not set(map(type, values)) <= accepts:
                return None
            converted.append(list(values) if dtype is None else np.array(values, dtype=dtype))
        return FastInput(rows, converted)

    def predict_batch(self, inputs: list[FastInput]) -> list[bytes | None]:
        """Predict several requests with one call and split the answer by their row counts.

        Returns each request's response body, or None for a request the full MLflow path must
        answer: the prediction raised (so the caller gets MLflow's message for it) or the model
        returned something other than one array row per input row.  When the call for a whole
        batch raises, each request is predicted alone, so one bad request fails only itself.
        """
        try:
            predictions = self.predict(self._model_input(inputs))
        except Exception:
            if len(inputs) == 1:
                return [None]
            return [self.predict_batch([one])[0] for one in inputs]
        total = sum(one.rows for one in inputs)
        if not isinstance(predictions, np.ndarray) or predictions.ndim == 0 or len(predictions) != total:
            if len(inputs) == 1:
                return [None]
            return [self.predict_batch([one])[0] for one in inputs]
        answers: list[bytes | None] = []
        start = 0
        for one in inputs:
            try:
                answers.append(ServedModel.to_json(predictions[start : start + one.rows], wrap=True))
            except RequestError:
                answers.append(None)  # the full path logs and reports it
            start += one.rows
        return answers

    def _model_input(self, inputs: list[FastInput]) -> Any:
        if self.as_array:
            data = inputs[0].data if len(inputs) == 1 else np.concatenate([one.data for one in inputs])
            # Column-major, like the array sklearn makes of MLflow's DataFrame: a matrix-vector
            # product (LinearRegression.predict) sums in another order, and rounds differently,
            # for a row-major array.
            return np.asfortranarray(data)
        columns: dict[str, Any] = {}
        for position, (name, dtype) in enumerate(zip(self.names, self.dtypes, strict=True)):
            parts = [one.data[position] for one in inputs]
            if dtype is None:
                columns[name] = parts[0] if len(parts) == 1 else list(chain.from_iterable(parts))
            else:
                columns[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return pd.DataFrame(columns)


def _estimator_classes(estimator: Any) -> set[tuple[str, str]]:
    """(module, class name) of the estimator and of every estimator nested in its parameters
    (pipeline steps, column transformers, ensembles' members)."""
    found = {(type(estimator).__module__, type(estimator).__name__)}
    try:
        params = estimator.get_params(deep=True)
    except Exception:
        return found | {("", "unknown")}
    for value in params.values():
        if hasattr(value, "fit"):
            found.add((type(value).__module__, type(value).__name__))
    return found


class ServedModel:
    """A loaded pyfunc model plus what can be worked out once instead of on every request."""

    def __init__(self, model: PyFuncModel) -> None:
        self.model = model
        self.metadata = model.metadata
        self.input_schema = model.metadata.get_input_schema()
        self.has_params_schema = model.metadata.get_params_schema() is not None
        self.accepts_params = "params" in inspect.signature(model.predict).parameters
        self._warned_params_ignored = False
        try:
            self.fast, self.fast_note = SklearnFastPath.for_model(model)
        except Exception as exc:  # an unusual estimator: serve it, just not faster
            self.fast, self.fast_note = None, f"{type(exc).__name__}: {exc}"

    def read_fast(self, body: bytes) -> tuple[Any, FastInput | None]:
        """Decode a JSON body for the fast path: (payload, its rows), or (payload, None) when
        the full path must answer; the payload is NOT_JSON when the body does not decode."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the decoder's recursion limit
            return NOT_JSON, None  # predict_json reports it
        if self.fast is None or type(payload) is not dict:
            return payload, None
        return payload, self.fast.read(payload)

    def predict_json(self, body: bytes) -> bytes:
        """Answer one JSON request body; runs in a worker thread.

        Raises:
            RequestError: the body is not JSON (MALFORMED_REQUEST) or does not fit the
                protocol, the schema or the model (INVALID_PARAMETER_VALUE).
        """
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid JSON: {exc}") from exc
        except RecursionError:  # e.g. 100 000 "[": the decoder recurses once per level
            raise RequestError(400, "MALFORMED_REQUEST", "The request body's JSON is nested too deeply") from None
        return self.predict_payload(payload)

    def predict_payload(self, payload: Any) -> bytes:
        """Answer one decoded JSON request body through MLflow's parsing and the pyfunc model."""
        if not isinstance(payload, dict):
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", f"{INPUT_KEYS_HELP} Got a JSON {type(payload).__name__}."
            )
        if not is_unified_llm_input(payload) and sum(key in SUPPORTED_FORMATS for key in payload) != 1:
            # MLflow's own message lists only the recognised keys (so "[]" for {"foo": 1}) and
            # appends a long note about MLflow 1.x; say what was actually sent instead.  Other
            # keys beside one input key stay allowed (and ignored), as in MLflow.
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", client_message(f"{INPUT_KEYS_HELP} Got keys: {list(payload)}.")
            )
        try:
            # Given a dict, MLflow's parser skips its own json.loads: the body is decoded once.
            parsed = _parse_json_data(payload, self.metadata, self.input_schema)
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        except Exception as exc:
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", client_message(f"Could not read the model input: {exc}")
            ) from exc
        params = parsed.params
        if params and not self.has_params_schema:
            # MLflow would ignore them too, but with a warning on every request; warn once.
            if not self._warned_params_ignored:
                self._warned_params_ignored = True
                logger.warning("ignoring request params: the model's signature defines no params schema")
            params = None
        predictions = self._predict(parsed.data, params)
        if parsed.is_unified_llm_input:
            # Chat/completions/embeddings bodies get the model output unwrapped, as MLflow does.
            return self.to_json(predictions, wrap=False)
        return self.to_json(predictions, wrap=True)

    def predict_csv(self, body: bytes) -> bytes:
        """Answer one ``text/csv`` request body (a DataFrame with a header row)."""
        try:
            frame = parse_csv_input(StringIO(body.decode("utf-8")), schema=self.input_schema)
        except UnicodeDecodeError as exc:
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid UTF-8: {exc}") from exc
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        return self.to_json(self._predict(frame, None), wrap=True)

    def _predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        try:
            if self.accepts_params:
                return self.model.predict(data, params=params)
            return self.model.predict(data)
        except MlflowException as exc:
            # Schema enforcement and params validation: the caller's input does not fit.
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        except Exception as exc:
            # The model's own code raised.  Mostly that means input it cannot handle, which is
            # how `mlflow models serve` treats it too (a 400), but keep the traceback in the
            # replica's log for whoever has to debug the model.
            logger.warning("predict raised %s: %s", type(exc).__name__, exc, exc_info=True)
            raise RequestError(
                400,
                "INVALID_PARAMETER_VALUE",
                client_message(f"The model could not make a prediction for this input: {type(exc).__name__}: {exc}"),
            ) from exc

    @staticmethod
    def to_json(predictions: Any, *, wrap: bool) -> bytes:
        # Same conversion as mlflow's predictions_to_json, but json.dumps rather than
        # json.dump: only the one-shot path uses the C encoder, several times faster.
        jsonable = _get_jsonable_obj(predictions, pandas_orient="records")
        document = {"predictions": jsonable} if wrap else jsonable
        try:
            return json.dumps(document, cls=NumpyEncoder).encode()
        except (TypeError, ValueError) as exc:
            logger.error("model output is not JSON-serialisable: %s", exc)
            raise RequestError(
                500, "INTERNAL_ERROR", client_message(f"The model's output could not be converted to JSON: {exc}")
            ) from exc


class Batcher:
    """Micro-batching for the fast path: concurrent requests share one predict call.

    Requests wait in a queue on the event loop.  Whenever the model is free, everything waiting
    (up to ``max_rows`` rows) becomes one batch.  Nothing waits on purpose: a lone request is
    predicted at once, and under load batches grow by themselves while the previous one runs,
    as with Ray Serve's ``@serve.batch`` or Triton's dynamic batcher without a queue delay.

    A batch runs on the batcher's own thread, or right on the event loop once batches of that
    size are known to take under INLINE_PREDICT_BUDGET_S: for a sub-millisecond model the
    hand-off to a thread and back (~100 µs, plus GIL hand-overs) costs as much as the
    prediction.  So a slow model never holds the loop for longer than about that budget, and
    /health and new connections stay responsive.  Only touched from the event loop thread,
    except ``_run`` on the batch thread.
    """

    def __init__(self, fast: SklearnFastPath, *, max_rows: int) -> None:
        self.fast = fast
        # Row counts only matter for row-independent models; others go one request per call.
        self.max_rows = max_rows if fast.row_independent else 1
        self._loop = asyncio.get_running_loop()
        self._waiting: deque[tuple[FastInput, asyncio.Future[bytes | None]]] = deque()
        self._flush_scheduled = False
        self._thread_busy = False
        # The largest batch (in rows) last seen to predict within the budget; batches up to it
        # run inline.  0 at first, so the first batch runs on the thread and gets timed.
        self.inline_rows = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    def predict(self, item: FastInput) -> asyncio.Future[bytes | None]:
        """Queue one request; the future gets its response body, or None (see predict_batch)."""
        future: asyncio.Future[bytes | None] = self._loop.create_future()
        self._waiting.append((item, future))
        self._schedule()
        return future

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _schedule(self) -> None:
        if not self._flush_scheduled and not self._thread_busy:
            self._flush_scheduled = True
            # Next loop iteration: every request read in this one joins the batch.
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._waiting:
            return
        batch = [self._waiting.popleft()]
        rows = batch[0][0].rows
        while self._waiting and rows + self._waiting[0][0].rows <= self.max_rows:
            batch.append(self._waiting.popleft())
            rows += batch[-1][0].rows
        if rows <= self.inline_rows:
            started = time.perf_counter()
            answers = self._run(batch)
            self._finish(batch, rows, answers, time.perf_counter() - started)
            if self._waiting:
                self._schedule()  # the loop serves I/O before the next batch
        else:
            self._thread_busy = True
            self._thread.submit(self._run_on_thread, batch, rows)

    def _run(self, batch: list[tuple[FastInput, asyncio.Future[bytes | None]]]) -> list[bytes | None]:
        try:
            return self.fast.predict_batch([item for item, _ in batch])
        except Exception:
            logger.exception("fast path failed; answering these requests through the full path")
            return [None] * len(batch)

    def _run_on_thread(self, batch: list[tuple[FastInput, asyncio.Future[bytes | None]]], rows: int) -> None:
        started = time.thread_time()  # CPU time: waiting for the GIL is not the model's cost
        answers = self._run(batch)
        cost = time.thread_time() - started
        try:
            self._loop.call_soon_threadsafe(self._thread_done, batch, rows, answers, cost)
        except RuntimeError:
            pass  # the loop is closed: shut down past the grace period

    def _thread_done(
        self,
        batch: list[tuple[FastInput, asyncio.Future[bytes | None]]],
        rows: int,
        answers: list[bytes | None],
        cost: float,
    ) -> None:
        self._thread_busy = False
        self._finish(batch, rows, answers, cost)
        self._flush()  # what gathered meanwhile is the next batch

    def _finish(
        self,
        batch: list[tuple[FastInput, asyncio.Future[bytes | None]]],
        rows: int,
        answers: list[bytes | None],
        cost: float,
    ) -> None:
        if cost <= INLINE_PREDICT_BUDGET_S:
            self.inline_rows = max(self.inline_rows, rows)
        else:
            self.inline_rows = min(self.inline_rows, rows - 1)
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)


@dataclass
class Metrics:
    """Counters for /invocations requests, exposed in Prometheus text format.

    Only touched from the event loop thread, so no locking is needed.
    """

    labels: str
    request_count: int = 0
    request_4xx_count: int = 0
    request_5xx_count: int = 0
    # Per-bucket (not cumulative) counts; the last slot is the +Inf overflow.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    start_time: float = field(default_factory=time.time)

    def observe(self, status: int, latency_ms: float) -> None:
        self.request_count += 1
        if 400 <= status < 500:
            self.request_4xx_count += 1
        elif status >= 500:
            self.request_5xx_count += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms

    def render(self, *, in_flight: int, load_seconds: float | None) -> bytes:
        labels = self.labels
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{labels}}} {value}")

        metric("request_count_total", "counter", "Invocation requests answered.", self.request_count)
        metric("request_4xx_count_total", "counter", "Invocation requests answered with 4xx.", self.request_4xx_count)
        metric("request_5xx_count_total", "counter", "Invocation requests answered with 5xx.", self.request_5xx_count)
        lines.append("# HELP request_latency_ms Invocation latency inside the model server, milliseconds.")
        lines.append("# TYPE request_latency_ms histogram")
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, None), self.latency_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound is None else f"{bound:g}"
            lines.append(f'request_latency_ms_bucket{{{labels},le="{le}"}} {cumulative}')
        lines.append(f"request_latency_ms_sum{{{labels}}} {self.latency_sum_ms:.3f}")
        lines.append(f"request_latency_ms_count{{{labels}}} {self.request_count}")
        metric("in_flight_requests", "gauge", "Invocation requests being handled now.", in_flight)
        for gpu, util, mem_used_pct in _gpu_usage():
            lines.append(f'gpu_usage_percentage{{{labels},gpu="{gpu}"}} {util}')
            lines.append(f'gpu_mem_usage_percentage{{{labels},gpu="{gpu}"}} {mem_used_pct}')
        cpu, mem = _resource_usage()
        if cpu is not None:
            metric(
                "cpu_usage_percentage", "gauge", "CPU used by this replica since the last scrape, % of one core.", cpu
            )
            metric("mem_usage_percentage", "gauge", "Resident memory of this replica, % of the host's memory.", mem)
        if load_seconds is not None:
            metric("model_load_seconds", "gauge", "Seconds it took to load the model.", round(load_seconds, 3))
        metric(
            "process_start_time_seconds", "gauge", "Start time of the process, Unix seconds.", round(self.start_time, 3)
        )
        return ("\n".join(lines) + "\n").encode()


_process: Any = None
_gpu_cache: tuple[float, list[tuple[str, float, float]]] = (0.0, [])


def _gpu_usage() -> list[tuple[str, float, float]]:
    """(gpu index, utilisation %, memory used %) of the GPUs this replica is pinned to.

    Only when the runtime pinned it (CUDA_VISIBLE_DEVICES) and nvidia-smi exists; cached for 5 s
    because nvidia-smi takes tens of milliseconds.
    """
    global _gpu_cache
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible or visible == "-1":
        return []
    now = time.monotonic()
    if now - _gpu_cache[0] < 5.0:
        return _gpu_cache[1]
    import shutil
    import subprocess

    result: list[tuple[str, float, float]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [
                    smi,
                    "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                    "--format=csv,noheader,nounits",
                    "-i",
                    visible,
                ],
                capture_output=True,
                text=True,
                timeout=2,
                check=True,
            ).stdout
            for row in out.strip().splitlines():
                index, util, used, total = (part.strip() for part in row.split(","))
                result.append(
                    (index, float(util), round(100.0 * float(used) / float(total), 2) if float(total) else 0.0)
                )
        except (OSError, subprocess.SubprocessError, ValueError):
            result = []
    _gpu_cache = (now, result)
    return result


def _resource_usage() -> tuple[float | None, float | None]:
    """(CPU %, memory %) of this process via psutil (an MLflow dependency); (None, None) without it."""
    global _process
    try:
        import psutil
    except ImportError:
        return None, None
    if _process is None:
        _process = psutil.Process()
        _process.cpu_percent(interval=None)  # the first call only sets the baseline
    return round(_process.cpu_percent(interval=None), 2), round(_process.memory_percent(), 3)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ModelServerApp:
    """The ASGI application: routes, body limits, error mapping and metrics around one model."""

    def __init__(
        self,
        *,
        name: str,
        replica_id: int,
        threads: int,
        credential: str,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        isolation: str = "none",
    ) -> None:
        if not credential:
            raise ValueError("a replica needs a credential")
        self.name = name
        self._expected_authorization = f"Bearer {credential}".encode()
        self.isolation = isolation
        self.replica_id = replica_id
        self.pid = os.getpid()
        self.model: ServedModel | None = None
        self.load_seconds: float | None = None
        self.load_failed = False
        self.in_flight = 0
        # When the last invocation finished (or the model was loaded): the agent's idle clock
        # for scale-to-zero.
        self.last_request_at = time.monotonic()
        self.metrics = Metrics(labels=f'served_entity="{_label_value(name)}",replica="{replica_id}"')
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        self.max_batch_rows = max_batch_rows
        self.batcher: Batcher | None = None

    def model_loaded(self, model: ServedModel, seconds: float) -> None:
        """Called on the event loop once the background load succeeds; /health turns 200."""
        if model.fast is not None:
            self.batcher = Batcher(model.fast, max_rows=self.max_batch_rows)
        self.model = model
        self.load_seconds = seconds
        self.last_request_at = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are disabled
            return
        path = scope["path"]
        method = scope["method"]
        if not self._authorized(scope):
            await _send_error(
                send,
                RequestError(
                    401,
                    "UNAUTHENTICATED",
                    "This model server answers only its gateway: send the replica's credential.",
                    headers=UNAUTHORIZED_HEADERS,
                ),
            )
            return
        if path == "/invocations":
            await self._invocations(scope, receive, send)
        elif path == "/health":
            if method in ("GET", "HEAD"):
                await self._health(send)
            else:
                await _send_error(send, method_not_allowed(method, path, "GET"))
        elif path == "/metrics":
            if method in ("GET", "HEAD"):
                body = self.metrics.render(in_flight=self.in_flight, load_seconds=self.load_seconds)
                await _send(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE)])
            else:
                await _send_error(send, method_not_allowed(method, path, "GET"))
        else:
            await _send_error(send, RequestError(404, "ENDPOINT_NOT_FOUND", f"No route for {path}."))

    def _authorized(self, scope: Scope) -> bool:
        """Whether the request carries this replica's credential (compared in constant time)."""
        for header, value in scope["headers"]:
            if header == b"authorization":
                return hmac.compare_digest(value, self._expected_authorization)
        return False

    async def _health(self, send: Send) -> None:
        if self.model is not None:
            status_code, status = 200, "ready"
        else:
            status_code, status = 503, "failed" if self.load_failed else "loading"
        document = {
            "status": status,
            "in_flight": self.in_flight,
            "requests": self.metrics.request_count,
            "idle_seconds": 0.0 if self.in_flight else round(time.monotonic() - self.last_request_at, 3),
            "model": self.name,
            "replica": self.replica_id,
            "pid": self.pid,
            "isolation": self.isolation,
        }
        await _send(send, status_code, json.dumps(document).encode(), JSON_HEADERS)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self.in_flight += 1
        status = 500
        try:
            try:
                body = await self._invoke(scope, receive)
                status = 200
                await _send(send, 200, body, JSON_HEADERS)
            except RequestError as exc:
                status = exc.status
                await _send_error(send, exc)
            except _ClientGone:
                status = 499  # nginx's "client closed request"; nothing to send
            except Exception:
                logger.exception("request handling failed")
                status = 500
                await _send_error(
                    send,
                    RequestError(500, "INTERNAL_ERROR", "The model server failed to handle the request; see its log."),
                )
        finally:
            self.in_flight -= 1
            self.last_request_at = time.monotonic()
            self.metrics.observe(status, (time.perf_counter() - started) * 1000.0)

    async def _invoke(self, scope: Scope, receive: Receive) -> bytes:
        """Check the request, then parse, predict and serialise it in a worker thread."""
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], "/invocations", "POST")
        model = self.model
        if model is None:
            raise RequestError(503, "TEMPORARILY_UNAVAILABLE", "The model is still loading.")
        content_type = b""
        content_length = -1
        for header, value in scope["headers"]:
            if header == b"content-type":
                content_type = value
            elif header == b"content-length":
                content_length = int(value) if value.isdigit() else -1
        if content_length > MAX_BODY_BYTES:
            raise _too_large()
        handler = _handler_for(model, content_type)
        body = await _read_body(receive)
        loop = asyncio.get_running_loop()
        if self.batcher is not None and handler == model.predict_json:
            return await self._invoke_fast(model, self.batcher, body)
        return await loop.run_in_executor(self.executor, handler, body)

    async def _invoke_fast(self, model: ServedModel, batcher: Batcher, body: bytes) -> bytes:
        """A JSON request to a model with a fast path: decode and check it (on the loop when
        small), predict it in a batch; whatever the fast path does not take, or cannot answer,
        goes to the full path in a worker thread, which gives MLflow's own answer or error."""
        loop = asyncio.get_running_loop()
        if len(body) <= INLINE_PARSE_MAX_BYTES:
            payload, item = model.read_fast(body)
        else:
            payload, item = await loop.run_in_executor(self.executor, model.read_fast, body)
        if item is not None:
            answer = await batcher.predict(item)
            if answer is not None:
                return answer
        if payload is NOT_JSON:
            return await loop.run_in_executor(self.executor, model.predict_json, body)
        return await loop.run_in_executor(self.executor, model.predict_payload, payload)


def _handler_for(model: ServedModel, content_type: bytes) -> Callable[[bytes], bytes]:
    """Pick the parser for a Content-Type; a missing one means JSON, as clients often omit it."""
    mime, _, parameters = content_type.decode("latin-1").partition(";")
    mime = mime.strip().lower()
    charset = ""
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset not in ("", "utf-8", "utf8"):
        raise RequestError(415, "BAD_REQUEST", f"Only UTF-8 request bodies are supported, not charset={charset}.")
    if mime in ("", "application/json"):
        return model.predict_json
    if mime == "text/csv":
        return model.predict_csv
    raise RequestError(415, "BAD_REQUEST", f"Unsupported Content-Type {mime!r}; send application/json (or text/csv).")


def _too_large() -> RequestError:
    return RequestError(
        413,
        "RESOURCE_LIMIT_EXCEEDED",
        f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.",
        # The connection stays open: uvicorn discards the unread rest of the body once the
        # response is sent.  Closing instead would leave unread bytes in the socket, so the
        # kernel would answer with a reset and the client might never see this 413.
    )


async def _read_body(receive: Receive) -> bytes:
    """Read the whole request body, refusing it as soon as it passes the size limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: RequestError) -> None:
    await _send(send, error.status, error_body(error.error_code, error.message), [*JSON_HEADERS, *error.headers])


class _Server(uvicorn.Server):
    """uvicorn's server, logging the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: ModelServerApp) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info(
                "shutting down (%s): finishing %d in-flight request(s)", signal.Signals(sig).name, self.app.in_flight
            )
        super().handle_exit(sig, frame)


class _CoalescingTransport:
    """A connection's transport that sends what one loop iteration writes as one write.

    uvicorn writes a response as two writes (status line and headers, then the body), each a
    send() system call.  Held until the next loop iteration (or close), they go out together:
    one system call per response instead of two, ~8% more requests per second at
    concurrency 8 on two cores.  Everything else is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, it parses faster; else h11) with
    Nagle's algorithm switched off on every accepted connection, and each response's writes
    sent together (see _CoalescingTransport).

    Why set TCP_NODELAY here: uvicorn 0.54 itself never sets it.  Today the event loop does
    (asyncio's ``_SelectorSocketTransport.__init__`` calls ``base_events._set_nodelay``, and
    uvloop 0.23's accepted sockets have it on too), but that is the loop's choice, not a
    promise.  uvicorn writes headers and body separately, and with Nagle on the second write
    waited for the client's delayed ACK: ~40 ms per request (measured: p50 44 ms instead of
    under 1 ms for /health).  The coalescing transport now merges them, but a write can still
    follow an unacknowledged one (a 100-continue, pipelined requests); one setsockopt per
    connection is cheap insurance.
    """
    base: type[asyncio.Protocol]
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class NoDelayProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(_CoalescingTransport(transport))  # type: ignore[arg-type]

    NoDelayProtocol.__name__ = f"NoDelay{base.__name__}"
    return NoDelayProtocol


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it; it is faster), else asyncio's default."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


def _load_in_background(app: ModelServerApp, server: uvicorn.Server, model_path: Path) -> threading.Thread:
    """Load the model in a daemon thread and report back to the event loop.

    A daemon thread, so that a stop signal during a long load does not wait for it.
    """
    loop = asyncio.get_running_loop()

    def fail() -> None:
        app.load_failed = True
        server.should_exit = True

    def report(callback: Callable[..., None], *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: a stop signal arrived while the model was loading

    def load() -> None:
        started = time.perf_counter()
        try:
            if not model_path.is_dir():
                # Only local directories: a models:/ or runs:/ URI would reach out to a tracking server.
                raise FileNotFoundError(f"model directory {str(model_path)!r} does not exist")
            model = ServedModel(mlflow.pyfunc.load_model(str(model_path)))
        except BaseException as exc:
            # The summary comes first so that a one-line view of the log says why.
            logger.error("model load failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            report(fail)
            return
        seconds = time.perf_counter() - started
        if model.fast is not None:
            logger.info("fast path: %s", model.fast_note)
        else:
            logger.info("no fast path: %s", model.fast_note)
        logger.info("model loaded in %.2f s; ready", seconds)
        report(app.model_loaded, model, seconds)

    thread = threading.Thread(target=load, name="model-loader", daemon=True)
    thread.start()
    return thread


async def serve(
    *,
    model_path: Path,
    host: str,
    port: int,
    name: str,
    replica_id: int,
    threads: int,
    credential: str,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    isolation: str = "none",
) -> int:
    """Serve until a stop signal (exit code 0), a failed model load (3) or a failed bind (4)."""
    app = ModelServerApp(
        name=name,
        replica_id=replica_id,
        threads=threads,
        credential=credential,
        max_batch_rows=max_batch_rows,
        isolation=isolation,
    )
    protocol = http_protocol_class()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        # uvicorn's own logging config would add handlers with another format; ours is on root.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = _Server(config, app)
    logger.info(
        "starting: model %s on http://%s:%d (pid %d, http=%s, %d predict threads)",
        model_path,
        host,
        port,
        os.getpid(),
        protocol.__name__,
        threads,
    )
    _load_in_background(app, server, model_path)
    try:
        await server.serve()
    except SystemExit:
        # uvicorn has logged why (typically "address already in use") and calls sys.exit().
        logger.error("could not listen on %s:%d", host, port)
        return EXIT_LISTEN_FAILED
    app.executor.shutdown(wait=False, cancel_futures=True)
    if app.batcher is not None:
        app.batcher.close()
    if app.load_failed:
        return EXIT_LOAD_FAILED
    logger.info("stopped")
    return 0


def _configure_logging(name: str, replica_id: int) -> None:
    """One format for our lines, uvicorn's and mlflow's, all to stderr (the replica's log)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{name} replica {replica_id}] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # mlflow installs its own stderr handler at import and stops propagation; undo that.
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.handlers.clear()
    mlflow_logger.propagate = True
    logging.captureWarnings(True)


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    """After a graceful stop uvicorn re-raises the signal it caught, to "trigger the expected
    behaviour"; with the default SIGTERM action that would kill us with -15 instead of exit 0.
    This no-op handler is what uvicorn restores and re-raises into."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m endpoints_app.runtime.model_server",
        description="Load one MLflow pyfunc model and serve /invocations, /health and /metrics.",
    )
    parser.add_argument("--model-path", type=Path, help="local MLflow model directory (required)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="port to listen on (required)")
    parser.add_argument("--name", default=None, help="served entity name (default: the model directory's name)")
    parser.add_argument("--replica-id", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4, help="worker threads that run predict (default 4)")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=DEFAULT_MAX_BATCH_ROWS,
        help=f"rows that concurrent fast-path requests may share one predict call with (default "
        f"{DEFAULT_MAX_BATCH_ROWS}; 1 predicts every request on its own)",
    )
    parser.add_argument(
        "--scratch-dir",
        type=Path,
        default=None,
        help="the replica's own writable folder (TMPDIR and HOME); the only one it may write in a sandbox",
    )
    parser.add_argument(
        "--standby",
        action="store_true",
        help="import everything, then wait for one JSON line on stdin saying what to serve (see STANDBY_KEYS)",
    )
    args = parser.parse_args(argv)
    if args.standby:
        if args.model_path is not None or args.port is not None:
            parser.error("--standby takes the model path and port from stdin, not the command line")
        return args
    if args.model_path is None or args.port is None:
        parser.error("--model-path and --port are required (or --standby)")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.max_batch_rows < 1:
        parser.error("--max-batch-rows must be at least 1")
    if args.name is None:
        args.name = args.model_path.name or "model"
    return args


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


def _preload() -> None:
    for module in STANDBY_IMPORTS:
        try:
            importlib.import_module(module)
        except Exception:  # missing or broken: the replica imports it itself, or fails as it would fresh
            pass
    # load_model compares the model's requirements with what is installed, through a map of
    # every installed distribution's modules that MLflow builds once per process (~0.7 s).
    try:
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()
    except Exception:  # a private MLflow helper: without it the first load is just slower
        pass


def _wait_for_assignment(defaults: argparse.Namespace) -> tuple[argparse.Namespace, list[str], str] | None:
    """Standby mode: block until one line of JSON arrives on stdin, then become that replica.

    Returns the arguments to serve with, the names of the environment variables applied and the
    replica's credential, or None when stdin closes without a line (the agent no longer needs this standby).  Raises
    SystemExit(2) for a line that is not a valid assignment (reported in the replica's log when
    it names one, else on the standby's own stderr).  The line's env only reaches what reads
    the environment from now on: settings that MLflow or a library read at import are fixed.
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
    return parse_args(argv), sorted(str(key) for key in env), str(assignment.get("credential") or "")


def _redirect_output(log_path: str) -> None:
    """Point file descriptors 1 and 2 at the replica's log, so that everything written from now
    on (our logging, uvicorn, MLflow, the model, C libraries) lands there."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handover: str | None = None
    credential = os.environ.pop(CREDENTIAL_ENV, "")
    if args.standby:
        _preload()
        waiting_since = time.monotonic()
        assigned = _wait_for_assignment(args)
        if assigned is None:
            return 0
        args, env_keys, credential = assigned
        handover = (
            f"handed over by a standby process after {time.monotonic() - waiting_since:.1f} s of waiting; "
            f"environment from the assignment: {', '.join(env_keys) or 'none'}"
        )
    _configure_logging(args.name, args.replica_id)
    if handover:
        logger.info("%s", handover)
    if not credential:
        logger.error(
            "no replica credential: set %s (or the standby assignment's 'credential'); "
            "a model server never answers without one",
            CREDENTIAL_ENV,
        )
        return 2
    try:
        isolation = _confine(args)
    except (sandbox.SandboxError, OSError) as exc:
        logger.error("sandbox: could not confine the replica to its model and scratch folder: %s", exc)
        return 5
    signal.signal(signal.SIGTERM, _ignore_signal)
    signal.signal(signal.SIGINT, _ignore_signal)
    # Our own runner, not uvicorn's Server.run(), because the model loader needs the loop; so
    # uvicorn's `loop` setting does not apply and the loop is chosen here.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            serve(
                model_path=args.model_path.resolve(),
                host=args.host,
                port=args.port,
                name=args.name,
                replica_id=args.replica_id,
                threads=args.threads,
                credential=credential,
                max_batch_rows=args.max_batch_rows,
                isolation=isolation,
            )
        )


def _confine(args: argparse.Namespace) -> str:
    """Narrow the sandbox to this replica's model, scratch folder and port; log what is in force."""
    if sandbox.ISOLATION.stages == 0:
        logger.warning("isolation: none (started without the runtime agent's sandbox plan): model code is unconfined")
        return "none"
    if args.scratch_dir is None:
        raise sandbox.SandboxError("a sandboxed replica needs --scratch-dir (its only writable folder)")
    scratch = args.scratch_dir.resolve()
    isolation = sandbox.enter_final(model_path=str(args.model_path.resolve()), scratch=str(scratch), port=args.port)
    if isolation.landlock_abi == 0:
        logger.warning(
            "isolation: %s: this kernel offers no Landlock, so replica FILES ARE NOT CONFINED: model code can "
            "read and write whatever its user can%s",
            isolation.describe(),
            "; seccomp still refuses outbound connections, UDP/raw/unix sockets, namespaces and signals to other "
            "processes"
            if isolation.seccomp
            else ", and connect anywhere",
        )
    else:
        logger.info(
            "isolation: %s (reads its model and the Python installation, writes %s, binds port %d only; "
            "no outbound connections, no UDP/raw/unix sockets, no namespaces, no signals or ptrace outside "
            "its sandbox)",
            isolation.describe(),
            scratch,
            args.port,
        )
    for tag, why in isolation.gaps() if isolation.landlock_abi else []:
        logger.warning("isolation: this kernel's Landlock (ABI %d) lacks %s: %s", isolation.landlock_abi, tag, why)
    return isolation.describe()


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:  # argparse errors, a bad standby assignment
        code = exc.code if isinstance(exc.code, int) else 2
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the loader thread may still be inside mlflow (a stop signal
    # during a long load) or a predict may have outlived the grace period, and joining either
    # would hold the process past the signal.
    os._exit(code)
