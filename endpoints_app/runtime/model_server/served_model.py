"""The full MLflow path: one loaded pyfunc model answering request bodies the way
``mlflow models serve`` does.

The MLflow / Databricks scoring protocol (``dataframe_split``, ``dataframe_records``,
``instances``, ``inputs``, optional ``params``; ``text/csv`` too) is parsed by MLflow's own
scoring-server helpers, so answers and schema errors match ``mlflow models serve``.  Everything
here runs in a worker thread (app.py), except ServedModel.read_fast, which only decodes a small
body and hands it to the fast path (fastpath.py).

For a model that predicts row by row (batchable.py), concurrent requests share one predict call
(batching.py, app.py), and what they share is decided here:

1. Each request is parsed and schema-enforced on its own (``parse_*``, then ``prepare_batch``),
   exactly as MLflow's predict would enforce it, so a request that does not fit gets its own
   400 with MLflow's message and never reaches a batch.
2. Requests whose enforced inputs stack into one table (same columns and dtypes, or array
   shapes, and equal params) are concatenated and predicted with one call of the pyfunc
   model, which enforces the schema once more on the whole table.
3. The output is split back by row counts, in order, and each part serialised as if it had
   been predicted alone.  When the combined call raises, every request is predicted alone, so
   one bad request fails only itself; when the output is not one answer per row, every request
   is predicted alone and the model is not batched again.

A request predicted alone (because nothing else was waiting, or it does not stack) takes
exactly the unbatched route, ``predict_one``.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import operator
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel, _validate_prediction_input
from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, _parse_json_data, parse_csv_input
from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input

from endpoints_app.runtime.model_server.batchable import Batching, BatchingSettingError, decide_batching
from endpoints_app.runtime.model_server.fastpath import FastInput, SklearnFastPath, scalar_columns
from endpoints_app.runtime.model_server.frames import FrameBuilder
from endpoints_app.runtime.model_server.responses import RequestError, client_message, predictions_json

logger = logging.getLogger(__name__)

# MLflow's own pieces of PyFuncModel.predict, for DirectPythonModel (private names: an MLflow
# without them keeps PyFuncModel.predict).
try:
    from mlflow.models.dependencies_schemas import _get_dependencies_schema_from_model
    from mlflow.models.signature import _is_context_in_predict_function_signature
    from mlflow.pyfunc.context import Context, get_prediction_context, set_prediction_context
    from mlflow.pyfunc.model import _log_warning_if_params_not_in_predict_signature, _PythonModelPyfuncWrapper

    _DIRECT_PREDICT = True
except ImportError:  # pragma: no cover - another MLflow
    _DIRECT_PREDICT = False
# Where MLflow's pyfunc wrapper logs its "params will be ignored" warning.
_MLFLOW_PYFUNC_LOGGER = logging.getLogger("mlflow.pyfunc.model")

# ServedModel.read_fast's payload for a body that is not JSON (None is JSON's null).
NOT_JSON = object()
INPUT_KEYS_HELP = (
    "The request body must be a JSON object with exactly one of the keys "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs', and optionally 'params'."
)


_SPLIT_KEYS = frozenset({"columns", "data", "index"})
_INDEX_TYPES = (frozenset({int}), frozenset({str}))


class PlainTables:
    """The table MLflow's parsing and schema enforcement would hand the model, built in one pass
    for plain-table requests.

    MLflow builds a request's table three times: its scoring server parses the body into a
    DataFrame (``dataframe_from_parsed_json`` or ``parse_tf_serving_input``), casts it to the
    signature's types (``cast_df_types_according_to_schema``), and ``PyFuncModel.predict``
    enforces the schema on it once more (``_enforce_schema``), each pass column by column
    through pandas.  For a one-row request to a four-column model that is ~1.5 ms, several
    times what a custom pyfunc's own predict costs.

    For a model whose input signature is named, required scalar columns, and a request that is a
    plain table of exactly those columns whose values are of the JSON types MLflow keeps as they
    are or converts by numpy's own rule (the fast path's table, ``_FAST_COLUMN_TYPES``: an int
    in a double column, say, but not a bool or a numeric string), that table is known beforehand:
    the signature's columns in its order, each with the signature's dtype (strings left to pandas'
    inference, as MLflow leaves them), the ``dataframe_split`` index when one is sent, else a
    RangeIndex.  ``read`` builds it, or answers None for anything else: other shapes, missing,
    extra or repeated columns, other value types, anything MLflow would refuse, convert by rules
    of its own, or warn about.  Those requests, and every error, still take MLflow's path.

    tests/test_model_server_parity.py checks the tables against MLflow's, dtypes and index
    included, and the answers against `mlflow models serve`'s, byte for byte.
    """

    def __init__(self, names: list[str], dtypes: list[np.dtype | None], accepts: list[frozenset[type]]) -> None:
        self.names = names
        self.dtypes = dtypes
        self.accepts = accepts
        self._name_set = frozenset(names)
        self._width = len(names)
        # Tables without an index built from their blocks (frames.py), checked at load.
        self.frames, self.frames_note = FrameBuilder.for_columns(names, dtypes)
        # Record -> its values in signature order, in C (a KeyError for a missing column).
        if len(names) == 1:
            only = names[0]
            self._values_of: Callable[[dict[str, Any]], tuple[Any, ...]] = lambda record: (record[only],)
        else:
            self._values_of = operator.itemgetter(*names)

    @classmethod
    def for_model(cls, model: PyFuncModel) -> tuple[PlainTables | None, str]:
        """The reader for this model's signature, or None and the reason there is none."""
        metadata = model.metadata
        if type(model) is not PyFuncModel:
            return None, f"the model is a {type(model).__name__}"
        columns = scalar_columns(metadata)
        if isinstance(columns, str):
            return None, columns
        names, dtypes, accepts = columns
        tables = cls(names, dtypes, accepts)
        return tables, f"tables of {len(names)} named columns, {tables.frames_note}"

    def read(self, payload: dict[str, Any]) -> pd.DataFrame | None:
        """The model's input table for a decoded request body, or None when MLflow must read it.

        ``payload`` may hold one input key and ``params`` (read by the caller), nothing else.
        """
        key = None
        for name in payload:
            if name in SUPPORTED_FORMATS and key is None:
                key = name
            elif name != "params":
                return None  # a second input key, or a key MLflow ignores: MLflow's business
        value = payload.get(key) if key is not None else None
        try:
            if key == "dataframe_split":
                return self._read_split(value)
            if key == "dataframe_records":
                return self._read_records(value, numpy_strings=False)
            # MLflow reads these values through numpy, whose strings lose trailing NULs.
            if key == "instances" or (key == "inputs" and type(value) is list):
                return self._read_records(value, numpy_strings=True)
            if key == "inputs" and type(value) is dict:
                return self._read_inputs(value)
        except (TypeError, ValueError, KeyError, OverflowError):
            pass  # shapes or values MLflow refuses, or converts by rules of its own
        return None

    def _read_split(self, split: Any) -> pd.DataFrame | None:
        if type(split) is not dict or not split.keys() <= _SPLIT_KEYS:
            return None
        columns = split["columns"]  # a KeyError (no columns or no data) is MLflow's to report
        data = split["data"]
        if type(columns) is not list or len(columns) != self._width or set(columns) != self._name_set:
            return None
        if type(data) is not list or not data or set(map(type, data)) != {list} or set(map(len, data)) != {self._width}:
            return None
        index = split.get("index")
        # pandas infers an Index from the list as it does for MLflow: only plain, unique labels.
        if index is not None and (
            type(index) is not list
            or len(index) != len(data)
            or frozenset(map(type, index)) not in _INDEX_TYPES
            or len(set(index)) != len(index)
        ):
            return None
        by_column = dict(zip(columns, zip(*data, strict=True), strict=True))
        return self._table([by_column[name] for name in self.names], index=index, numpy_strings=False)

    def _read_records(self, records: Any, *, numpy_strings: bool) -> pd.DataFrame | None:
        if type(records) is not list or not records or set(map(type, records)) != {dict}:
            return None
        if set(map(len, records)) != {self._width}:
            return None  # the same length, and every name present (else KeyError): the same keys
        rows = list(map(self._values_of, records))
        return self._table(list(zip(*rows, strict=True)), index=None, numpy_strings=numpy_strings)

    def _read_inputs(self, columns: dict[str, Any]) -> pd.DataFrame | None:
        """``inputs`` as one list per column, or as one record of scalars."""
        if len(columns) != self._width:
            return None
        values = [columns[name] for name in self.names]
        kinds = set(map(type, values))
        if kinds == {list}:
            lengths = set(map(len, values))
            if len(lengths) != 1 or 0 in lengths:
                return None
            return self._table(values, index=None, numpy_strings=True)
        if list in kinds or dict in kinds:
            return None
        return self._table([[value] for value in values], index=None, numpy_strings=True)

    def _table(
        self, columns: Sequence[Sequence[Any]], *, index: list[Any] | None, numpy_strings: bool
    ) -> pd.DataFrame | None:
        for values, dtype, accepts in zip(columns, self.dtypes, self.accepts, strict=True):
            if not set(map(type, values)) <= accepts:
                return None
            if dtype is None and numpy_strings and any(text.endswith("\x00") for text in values):
                return None  # MLflow's numpy strings would drop them; rare enough to leave to it
        if index is None and self.frames is not None:
            return self.frames.build(columns, len(columns[0]))
        converted: dict[str, Any] = {}
        for name, values, dtype in zip(self.names, columns, self.dtypes, strict=True):
            converted[name] = list(values) if dtype is None else np.array(values, dtype=dtype)
        return pd.DataFrame(converted, index=index)


class PyfuncTableFastPath(SklearnFastPath):
    """Plain-table requests to a custom ``python_model`` read on the event loop and predicted by
    the fast path's batcher, instead of a worker thread each.

    A request is read into columns exactly as PlainTables reads it (the same JSON types, the same
    dtypes); the batch's table is the one PlainTables would build for it (its columns stacked,
    a RangeIndex), predicted by the model's own MLflow predict without the input schema enforced
    again (ServedModel.predict_plain_table, as the full path does for such a table).  Only for a model
    that may batch (batchable.py, e.g. declared row-wise by its author): concurrent requests
    share one call, split back by rows (each alone again if the model stops being batched).

    Left to the full path: params, a ``dataframe_split`` index (the model would see it), strings
    ending in NUL, anything else the reader does not take.  A request whose prediction fails
    gets the full path's error (ServedModel._predict's RequestError) from its own call alone, so
    the model is called for it once, as on the full path.
    """

    # The model's own Python code: always on the batcher's thread, so a slow input never stalls
    # the event loop (and /health).
    may_run_inline = False

    @classmethod
    def for_served(cls, served: ServedModel) -> tuple[PyfuncTableFastPath | None, str]:
        model = served.model
        loader = model.metadata.flavors.get("python_function", {}).get("loader_module")
        if loader != "mlflow.pyfunc.model":
            return None, "not a custom python_model"
        if not served.batching.enabled:
            # Measured: one request at a time on the batcher's thread was slower at concurrency 1
            # than the full path's worker threads (~2x on the loaded 2-core machine).
            return None, "not declared row-wise: each request takes the full path in a worker thread"
        if served._unenforced is model:
            return None, "its full path enforces the schema"
        columns = scalar_columns(model.metadata)
        if isinstance(columns, str):
            return None, columns
        names, dtypes, accepts = columns
        fast = cls(
            predict=served.predict_plain_table,
            names=names,
            dtypes=dtypes,
            accepts=accepts,
            as_array=False,
            row_independent=served.batching.enabled,
        )
        return fast, "custom python_model on plain tables read on the event loop, batched"

    def read(self, payload: dict[str, Any]) -> FastInput | None:
        split = payload.get("dataframe_split")
        if type(split) is dict and split.get("index") is not None:
            return None
        item = super().read(payload)
        if item is None:
            return None
        for values, dtype in zip(item.data, self.dtypes, strict=True):
            if dtype is None and any(text.endswith("\x00") for text in values):
                return None
        return item

    def predict_batch(self, inputs: list[FastInput]) -> list[bytes | RequestError | None]:
        """Each request's response body, or the RequestError that the full path would answer it
        with (the model is called once per request alone, as there), or None where the full
        path must answer it."""
        if len(inputs) > 1 and not self.row_independent:
            return [self.predict_batch([one])[0] for one in inputs]
        rows = [one.rows for one in inputs]
        try:
            output = self.predict(self._frame(inputs))
        except RequestError as exc:
            if len(inputs) == 1:
                return [exc]
            return [self.predict_batch([one])[0] for one in inputs]
        except Exception:
            if len(inputs) == 1:
                return [None]
            return [self.predict_batch([one])[0] for one in inputs]
        if len(inputs) == 1:
            parts: list[Any] | None = [output]
        else:
            parts = _split(output, rows)
        if parts is None:
            self.row_independent = False  # not one answer per row: each request alone from now on
            logger.warning("batching off: the model did not answer one row per input row")
            return [self.predict_batch([one])[0] for one in inputs]
        answers: list[bytes | RequestError | None] = []
        for part in parts:
            try:
                answers.append(predictions_json(part, wrap=True))
            except RequestError as exc:
                answers.append(exc)
        return answers


def _without_input_schema(model: PyFuncModel) -> PyFuncModel:
    """The same model, whose predict enforces params but not the input schema: for tables that
    PlainTables built, which are already what that enforcement would make of them.

    Everything else is MLflow's own predict (prediction context, params schema, the model's
    predict function), on a copy of the model's metadata whose signature has no inputs.
    """
    metadata = copy.copy(model.metadata)
    signature = metadata.signature
    if signature.outputs is None and signature.params is None:
        metadata.signature = None
    else:
        metadata.signature = ModelSignature(inputs=None, outputs=signature.outputs, params=signature.params)
    pyfunc_conf = metadata.flavors.get("python_function", {})
    twin = PyFuncModel(
        model_meta=metadata,
        model_impl=model._model_impl,
        predict_fn=pyfunc_conf.get("predict_fn", "predict"),
        model_id=model.model_id,
    )
    twin.input_example = model.input_example
    return twin


class DirectPythonModel:
    """A custom ``python_model``'s predict for tables PlainTables built, without the per-call
    work of ``PyFuncModel.predict`` that gives the same answer every time.

    ``PyFuncModel.predict`` on the unenforced twin (_without_input_schema) and the pyfunc
    wrapper's predict spend ~70 µs per call working out, with ``inspect.signature`` twice,
    whether the model's predict takes ``params`` and a context, and whether its type hints ask
    for the DataFrame to be converted: all fixed once the model is loaded.  This does what they
    do, in their order, with those answers worked out at load: the prediction context (model id
    and dependency schemas, as MLflow sets them), the params schema enforced by MLflow's own
    ``_validate_prediction_input`` (the same errors), then the model's predict (with MLflow's
    type-hint wrapper, as loaded) on the table as it is.

    Built (``for_model``) only for ``mlflow.pyfunc.model``'s wrapper around a ``PythonModel``
    whose pyfunc predict function is ``predict``, whose signature does not come from type hints
    and whose predict's input hint leaves a DataFrame as it is (none, ``pd.DataFrame`` or Any);
    any other model keeps ``PyFuncModel.predict``.
    """

    def __init__(self, twin: PyFuncModel, impl: _PythonModelPyfuncWrapper, takes_params: bool, takes_context: bool):
        self.twin = twin
        self._metadata = twin.metadata
        self._model_id = twin.model_id
        self._params_schema = twin.metadata.get_params_schema()
        self._loader_module = twin.loader_module
        self._context = impl.context
        self._predict: Callable[..., Any] = impl.python_model.predict
        self._takes_params = takes_params
        self._takes_context = takes_context

    @classmethod
    def for_model(cls, twin: PyFuncModel) -> DirectPythonModel | None:
        if not _DIRECT_PREDICT:
            return None
        impl = twin._model_impl
        conf = twin.metadata.flavors.get("python_function", {})
        if type(twin) is not PyFuncModel or type(impl) is not _PythonModelPyfuncWrapper:
            return None
        if conf.get("loader_module") != "mlflow.pyfunc.model" or conf.get("predict_fn", "predict") != "predict":
            return None
        if twin.metadata._is_signature_from_type_hint() or twin.metadata._is_type_hint_from_example():
            return None
        python_model = impl.python_model
        if python_model.predict_type_hints.input not in (None, pd.DataFrame, Any):
            return None  # the wrapper's _convert_input may turn the DataFrame into something else
        params_arg = inspect.signature(twin._predict_fn).parameters.get("params")
        if params_arg is None or params_arg.kind == inspect.Parameter.VAR_KEYWORD:
            return None  # PyFuncModel would call it without params
        parameters = inspect.signature(python_model.predict).parameters
        return cls(twin, impl, "params" in parameters, _is_context_in_predict_function_signature(parameters=parameters))

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """What ``twin.predict(data, params)`` answers (or raises)."""
        context = get_prediction_context() or Context()
        with set_prediction_context(context):
            if schema := _get_dependencies_schema_from_model(self._metadata):
                context.update(**schema)
            if self._model_id:
                context.update(model_id=self._model_id)
            data, params = _validate_prediction_input(data, params, None, self._params_schema, self._loader_module)
            if self._takes_params:
                if self._takes_context:
                    return self._predict(self._context, data, params=params)
                return self._predict(data, params=params)
            _log_warning_if_params_not_in_predict_signature(_MLFLOW_PYFUNC_LOGGER, params)
            if self._takes_context:
                return self._predict(self._context, data)
            return self._predict(data)


def _direct(twin: PyFuncModel) -> PyFuncModel | DirectPythonModel:
    """The unenforced twin's DirectPythonModel, or the twin itself for any other model."""
    try:
        direct = DirectPythonModel.for_model(twin)
    except Exception as exc:  # an unusual model: PyFuncModel.predict, as before
        logger.info("full path: MLflow's predict for plain tables (%s: %s)", type(exc).__name__, exc)
        return twin
    return twin if direct is None else direct


@dataclass(slots=True, eq=False)
class ParsedRequest:
    """One request on the full path, parsed: what MLflow's scoring server would hand the model."""

    data: Any
    params: dict[str, Any] | None
    # {"predictions": ...} around the output; chat/completions/embeddings bodies get it bare.
    wrap: bool = True
    # The data is a table PlainTables built: already what schema enforcement would make of it.
    enforced: bool = False
    # Set by ServedModel.prepare_batch: the schema-enforced input, its rows, and what it can be
    # stacked with (batching.BatchItem); key None means it is predicted alone.
    table: Any = None
    rows: int = 0
    key: Hashable = None


class ServedModel:
    """A loaded pyfunc model plus what can be worked out once instead of on every request.

    Raises BatchingSettingError when the served entity's MODELFLEET_BATCHABLE, or the model's
    metadata flag, is neither true nor false (batchable.py).
    """

    def __init__(self, model: PyFuncModel, *, environ: Mapping[str, str] = os.environ) -> None:
        self.model = model
        self.metadata = model.metadata
        self.input_schema = model.metadata.get_input_schema()
        self.params_schema = model.metadata.get_params_schema()
        self.has_params_schema = self.params_schema is not None
        self.accepts_params = "params" in inspect.signature(model.predict).parameters
        # MLflow's predict enforces nothing itself for these: the model's type hints do.
        self._enforced_by_model = model.metadata._is_signature_from_type_hint()
        self._warned_params_ignored = False
        try:
            self.batching = decide_batching(model, environ)
        except BatchingSettingError:
            raise
        except Exception as exc:  # an unusual model: serve it, one request per call
            self.batching = Batching(False, f"{type(exc).__name__}: {exc}")
        logger.info("batching: %s (%s)", "on" if self.batching.enabled else "off", self.batching.reason)
        try:
            self.fast, self.fast_note = SklearnFastPath.for_model(model, self.batching)
        except Exception as exc:  # an unusual estimator: serve it, just not faster
            self.fast, self.fast_note = None, f"{type(exc).__name__}: {exc}"
        # Plain tables read in one pass, predicted without enforcing the schema again.
        self.tables: PlainTables | None = None
        try:
            self.tables, self.tables_note = PlainTables.for_model(model)
            self._unenforced: PyFuncModel | DirectPythonModel = (
                _without_input_schema(model) if self.tables is not None else model
            )
            if isinstance(self._unenforced, PyFuncModel) and self._unenforced is not model:
                self._unenforced = _direct(self._unenforced)
        except Exception as exc:  # an unusual model: MLflow reads every request
            self.tables, self.tables_note, self._unenforced = None, f"{type(exc).__name__}: {exc}", model
        if isinstance(self._unenforced, DirectPythonModel):
            self.tables_note += ", predicted by the python_model's predict directly"
        if self.tables is not None:
            logger.info("full path: plain tables read in one pass (%s)", self.tables_note)
        else:
            logger.info("full path: MLflow reads every request (%s)", self.tables_note)
        if self.fast is None and self.tables is not None:
            try:
                fast, note = PyfuncTableFastPath.for_served(self)
            except Exception as exc:  # an unusual model: the full path answers every request
                fast, note = None, f"{type(exc).__name__}: {exc}"
            if fast is not None:
                self.fast = fast
            self.fast_note = f"{self.fast_note}; {note}" if fast is None else note

    def predict_plain_table(self, table: pd.DataFrame) -> Any:
        """The model's output for a table PlainTables (or the fast path) built, no params: what
        predict_one predicts for such a request.

        Raises:
            RequestError: what predict_one raises for it (MLflow's message or the model's).
        """
        return self._predict(self._unenforced, table, None)

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
        return self.predict_one(self.parse_json(body))

    def predict_payload(self, payload: Any) -> bytes:
        """Answer one decoded JSON request body through MLflow's parsing and the pyfunc model."""
        return self.predict_one(self.parse_payload(payload))

    def predict_csv(self, body: bytes) -> bytes:
        """Answer one ``text/csv`` request body (a DataFrame with a header row)."""
        return self.predict_one(self.parse_csv(body))

    def parse_json(self, body: bytes) -> ParsedRequest:
        """Decode and parse one JSON request body (RequestError as predict_json)."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid JSON: {exc}") from exc
        except RecursionError:  # e.g. 100 000 "[": the decoder recurses once per level
            raise RequestError(400, "MALFORMED_REQUEST", "The request body's JSON is nested too deeply") from None
        return self.parse_payload(payload)

    def parse_payload(self, payload: Any) -> ParsedRequest:
        """Parse one decoded JSON request body with MLflow's scoring-server helpers."""
        if not isinstance(payload, dict):
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", f"{INPUT_KEYS_HELP} Got a JSON {type(payload).__name__}."
            )
        if self.tables is not None:
            table = self.tables.read(payload)
            if table is not None:
                return ParsedRequest(table, self._request_params(payload.get("params")), enforced=True)
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
        # Chat/completions/embeddings bodies get the model output unwrapped, as MLflow does.
        return ParsedRequest(parsed.data, self._request_params(parsed.params), wrap=not parsed.is_unified_llm_input)

    def _request_params(self, params: Any) -> Any:
        """A request's params as the model gets them (its params schema checks them at predict)."""
        if params and not self.has_params_schema:
            # MLflow would ignore them too, but with a warning on every request; warn once.
            if not self._warned_params_ignored:
                self._warned_params_ignored = True
                logger.warning("ignoring request params: the model's signature defines no params schema")
            return None
        return params

    def parse_csv(self, body: bytes) -> ParsedRequest:
        """Parse one ``text/csv`` request body (a DataFrame with a header row)."""
        try:
            frame = parse_csv_input(StringIO(body.decode("utf-8")), schema=self.input_schema)
        except UnicodeDecodeError as exc:
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid UTF-8: {exc}") from exc
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        return ParsedRequest(frame, None)

    def predict_one(self, request: ParsedRequest) -> bytes:
        """Predict one parsed request with its own call, as an unbatched server does."""
        model = self._unenforced if request.enforced else self.model
        return predictions_json(self._predict(model, request.data, request.params), wrap=request.wrap)

    def may_batch(self, request: ParsedRequest) -> bool:
        """Whether the request could share a call: the model is batched and the body is a table
        of rows (not a chat/completions body)."""
        return self.batching.enabled and request.wrap

    def prepare_batch(self, request: ParsedRequest) -> bool:
        """Enforce the request's input schema on its own, as the pyfunc model's predict would,
        and work out what it stacks with; False when it must be predicted alone.

        Raises:
            RequestError: the input does not fit the schema or the params schema (MLflow's
                message, the same 400 that predicting it alone gives).
        """
        params = request.params if self.accepts_params else None
        if self._enforced_by_model:
            table = request.data
        else:
            # A table PlainTables built needs only its params checked.
            input_schema = None if request.enforced else self.input_schema
            try:
                # The function MLflow's own predict calls first (private, like _parse_json_data):
                # the same conversions and the same message for input that does not fit.
                table, _ = _validate_prediction_input(
                    request.data, params, input_schema, self.params_schema, self.model.loader_module
                )
            except MlflowException as exc:
                raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
            except Exception:
                return False  # predicted alone, which reports it as the unbatched server does
        shape = _stack_shape(table)
        if shape is None or not self.batching.enabled:
            return False
        rows, layout = shape
        request.table, request.rows = table, rows
        request.key = (layout, None if params is None else json.dumps(params, sort_keys=True))
        return True

    def predict_batch(self, requests: list[ParsedRequest]) -> list[bytes | RequestError]:
        """Answer requests that stack (equal keys, from prepare_batch) with one predict call.

        Each answer is the response body, or the RequestError that predicting the request alone
        raises.  A one-request batch, or one whose key is None, is predicted alone.
        """
        if len(requests) == 1 or requests[0].key is None:
            return [self._answer_alone(request) for request in requests]
        first = requests[0]
        params = first.params if self.accepts_params else None
        # Tables that PlainTables built stack into one that needs no enforcing either.
        model = self._unenforced if all(request.enforced for request in requests) else self.model
        try:
            combined = _stack([request.table for request in requests])
            if self.accepts_params:
                output = model.predict(combined, params=params)
            else:
                output = model.predict(combined)
        except Exception as exc:
            # Mostly one bad request among good ones: each is predicted alone, so it fails alone.
            logger.debug(
                "a batch of %d requests failed (%s: %s); predicting each alone", len(requests), type(exc).__name__, exc
            )
            return [self._answer_alone(request) for request in requests]
        parts = _split(output, [request.rows for request in requests])
        if parts is None:
            self.batching = Batching(False, "its output was not one answer per input row")
            logger.warning(
                "batching off: for %d rows the model answered %s, not one answer per row; "
                "requests are predicted one by one from now on",
                sum(request.rows for request in requests),
                _describe(output),
            )
            return [self._answer_alone(request) for request in requests]
        answers: list[bytes | RequestError] = []
        for part in parts:
            try:
                answers.append(predictions_json(part, wrap=True))
            except RequestError as exc:
                answers.append(exc)
        return answers

    def _answer_alone(self, request: ParsedRequest) -> bytes | RequestError:
        try:
            return self.predict_one(request)
        except RequestError as exc:
            return exc

    def _predict(self, model: PyFuncModel | DirectPythonModel, data: Any, params: dict[str, Any] | None) -> Any:
        try:
            if self.accepts_params:
                return model.predict(data, params=params)
            return model.predict(data)
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


def _stack_shape(table: Any) -> tuple[int, Hashable] | None:
    """(rows, layout) of an enforced model input that can be stacked with others of the same
    layout along its first axis; None for anything else (no rows, a scalar, a string...)."""
    layout: Hashable
    if isinstance(table, pd.DataFrame):
        if not table.columns.is_unique:
            return None
        rows, layout = len(table), ("frame", tuple(table.columns), tuple(table.dtypes))
    elif isinstance(table, np.ndarray):
        if table.ndim == 0:
            return None
        rows, layout = len(table), ("array", table.dtype, table.shape[1:])
    elif isinstance(table, list):
        rows, layout = len(table), ("list",)
    elif isinstance(table, dict) and table and all(isinstance(v, np.ndarray) and v.ndim > 0 for v in table.values()):
        lengths = {len(value) for value in table.values()}
        if len(lengths) != 1:
            return None
        rows = lengths.pop()
        layout = ("arrays", tuple((name, value.dtype, value.shape[1:]) for name, value in table.items()))
    else:
        return None
    return (rows, layout) if rows else None


def _stack(tables: list[Any]) -> Any:
    """One model input from inputs of one layout (see _stack_shape), rows in order."""
    first = tables[0]
    if isinstance(first, pd.DataFrame):
        return pd.concat(tables, ignore_index=True)
    if isinstance(first, np.ndarray):
        return np.concatenate(tables)
    if isinstance(first, list):
        return list(chain.from_iterable(tables))
    return {name: np.concatenate([table[name] for table in tables]) for name in first}


def _split(output: Any, rows: list[int]) -> list[Any] | None:
    """The model's output for stacked inputs, cut back into one part per input; None when it is
    not one answer per input row."""
    total = sum(rows)
    if isinstance(output, pd.DataFrame | pd.Series):
        if len(output) != total:
            return None
        cut: Any = output.iloc
    elif isinstance(output, np.ndarray | list):
        if (isinstance(output, np.ndarray) and output.ndim == 0) or len(output) != total:
            return None
        cut = output
    else:
        return None
    parts = []
    start = 0
    for count in rows:
        parts.append(cut[start : start + count])
        start += count
    return parts


def _describe(output: Any) -> str:
    length = f" of length {len(output)}" if hasattr(output, "__len__") else ""
    return f"a {type(output).__name__}{length}"
