"""The scikit-learn fast path: plain-table requests to a scikit-learn model, checked and converted
here instead of by MLflow.

MLflow's parsing and schema enforcement cost ~1.5 ms of a ~2 ms request, so plain-table requests
to a scikit-learn model whose signature is named scalar columns are checked and converted here,
and only when MLflow would build exactly the same table; everything else, errors included, still
goes through MLflow (served_model.py).  Requests that arrive together share one predict call
(batching.py) when the model predicts row by row (batchable.py).  Measured on two cores for the iris demo model: ~2,500 requests/s at concurrency 1
and ~7,500 at concurrency 8, against ~400 and ~300 through MLflow's path.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PyFuncModel
from mlflow.types import ColSpec, DataType

from endpoints_app.runtime.model_server.batchable import ROW_WISE_PREDICT_FNS, Batching, estimator_classes
from endpoints_app.runtime.model_server.boosted import CompiledBooster
from endpoints_app.runtime.model_server.compiled import CompiledPipeline
from endpoints_app.runtime.model_server.frames import FrameBuilder
from endpoints_app.runtime.model_server.responses import RequestError, predictions_json

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
# selection by name, and arbitrary user functions.
_NAME_DEPENDENT_ESTIMATORS = frozenset({"ColumnTransformer", "FunctionTransformer"})
# sklearn warns on every call when an estimator fitted on a DataFrame is given an array; the
# fast path does that on purpose (same values, same column order, several times faster).
_FEATURE_NAMES_WARNING = "X does not have valid feature names"


def scalar_columns(
    metadata: Any,
) -> tuple[list[str], list[np.dtype | None], list[frozenset[type]]] | str:
    """A model's input signature as named scalar columns (names, dtypes as MLflow hands them to
    the model, the JSON types read directly), or the reason it is not one: the one test both the
    scikit-learn fast path and the full path's plain-table reader (served_model.py) apply."""
    if metadata._is_signature_from_type_hint() or metadata._is_type_hint_from_example():
        return "its signature comes from type hints"
    schema = metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return "its input signature is not a table of named columns"
    dtypes: list[np.dtype | None] = []
    accepts: list[frozenset[type]] = []
    for spec in schema.inputs:
        if not (
            isinstance(spec, ColSpec)
            and spec.required
            and isinstance(spec.type, DataType)
            and spec.type in _FAST_COLUMN_TYPES
        ):
            return f"input column {spec.name!r} is not a required scalar column"
        dtype, types = _FAST_COLUMN_TYPES[spec.type]
        dtypes.append(dtype)
        accepts.append(types)
    names = schema.input_names()
    if len(set(names)) != len(names):
        return "its signature repeats a column name"
    return names, dtypes, accepts


class FastInput:
    """One request's rows, checked and converted: an (n, k) array, or one sequence per column."""

    __slots__ = ("data", "rows")
    # Any two fast-path requests to one model may share a call (batching.BatchItem).
    key = None

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

    # Batches may run on the event loop once they are known to take under a millisecond: the
    # libraries' own code, whose cost does not depend on what the request says.
    may_run_inline = True

    def __init__(
        self,
        *,
        predict: Callable[[Any], Any],
        names: list[str],
        dtypes: list[np.dtype | None],
        accepts: list[frozenset[type]],
        as_array: bool,
        row_independent: bool,
        compiled: CompiledPipeline | CompiledBooster | None = None,
    ) -> None:
        self.predict = predict
        # The pipeline's predict on the request's columns without pandas (compiled.py), if any.
        self.compiled = compiled
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
        # DataFrames built from their blocks (frames.py), when not an array and not compiled.
        self.frames: FrameBuilder | None = None
        if not as_array and compiled is None:
            self.frames, _ = FrameBuilder.for_columns(names, dtypes)
        # Record -> tuple of values in signature order, in C.
        if len(names) == 1:
            only = names[0]
            self._values_of: Callable[[dict[str, Any]], tuple[Any, ...]] = lambda record: (record[only],)
        else:
            self._values_of = operator.itemgetter(*names)

    @classmethod
    def for_model(cls, model: PyFuncModel, batching: Batching) -> tuple[SklearnFastPath | None, str]:
        """The fast path for this model, or None and the reason it has none; requests share
        predict calls when ``batching`` allows it (batchable.py)."""
        metadata = model.metadata
        pyfunc_conf = metadata.flavors.get("python_function", {})
        if pyfunc_conf.get("loader_module") == "mlflow.lightgbm":
            return cls._for_booster(model, batching)
        if "sklearn" not in metadata.flavors or pyfunc_conf.get("loader_module") != "mlflow.sklearn":
            return None, "not a scikit-learn model"
        columns = scalar_columns(metadata)
        if isinstance(columns, str):
            return None, columns
        names, dtypes, accepts = columns
        if metadata.get_params_schema() is not None:
            return None, "its signature has params"
        predict_fn = pyfunc_conf.get("predict_fn", "predict")
        if predict_fn not in ROW_WISE_PREDICT_FNS:
            return None, f"its pyfunc predict function is {predict_fn}"
        estimator = model.get_raw_model()
        predict = getattr(estimator, predict_fn, None)
        if not callable(predict):
            return None, f"the estimator has no {predict_fn}"
        classes = estimator_classes(estimator)
        sklearn_only = all(module.startswith("sklearn.") for module, _ in classes)
        class_names = {name for _, name in classes}
        fitted_names = getattr(estimator, "feature_names_in_", None)
        as_array = (
            sklearn_only
            and not class_names & _NAME_DEPENDENT_ESTIMATORS
            and len(set(dtypes)) == 1
            and dtypes[0] is not None
            # Fitted on a DataFrame: sklearn then checks names and order, so the array must be
            # in the same order (otherwise the DataFrame gets sklearn's own error).
            and (fitted_names is None or list(fitted_names) == names)
        )
        if as_array and fitted_names is not None:
            warnings.filterwarnings("ignore", message=_FEATURE_NAMES_WARNING, category=UserWarning)
        compiled, not_compiled = (
            (None, "")
            if as_array
            else CompiledPipeline.build(estimator, names=names, dtypes=dtypes, predict_fn=predict_fn)
        )
        fast = cls(
            predict=predict,
            names=names,
            dtypes=dtypes,
            accepts=accepts,
            as_array=as_array,
            row_independent=batching.enabled,
            compiled=compiled,
        )
        if as_array:
            how = "numpy arrays"
        elif compiled is not None:
            how = "columns through a compiled column transform"
        else:
            how = f"DataFrames (not compiled: {not_compiled})"
        shared = "batched" if batching.enabled else f"one request per call ({batching.reason})"
        return fast, f"{type(estimator).__name__}.{predict_fn} on {how}, {shared}"

    @classmethod
    def _for_booster(cls, model: PyFuncModel, batching: Batching) -> tuple[SklearnFastPath | None, str]:
        """A LightGBM model's fast path: the same request reading, the booster called directly
        (boosted.py)."""
        columns = scalar_columns(model.metadata)
        if isinstance(columns, str):
            return None, columns
        names, dtypes, accepts = columns
        if model.metadata.get_params_schema() is not None:
            return None, "its signature has params"
        compiled, not_compiled = CompiledBooster.build(model, names=names, dtypes=dtypes)
        if compiled is None:
            return None, f"LightGBM model not compiled: {not_compiled}"
        fast = cls(
            predict=lambda data: None,  # unused: `compiled` answers every request it reads
            names=names,
            dtypes=dtypes,
            accepts=accepts,
            as_array=False,
            row_independent=batching.enabled,
            compiled=compiled,
        )
        shared = "batched" if batching.enabled else f"one request per call ({batching.reason})"
        return fast, f"LightGBM booster.predict on the request's columns (compiled), {shared}"

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

    def predict_batch(self, inputs: list[FastInput]) -> list[bytes | RequestError | None]:
        """Predict several requests with one call and split the answer by their row counts.

        Returns each request's response body, or None for a request the full MLflow path must
        answer: the prediction raised (so the caller gets MLflow's message for it) or the model
        returned something other than one array row per input row.  When the call for a whole
        batch raises, each request is predicted alone, so one bad request fails only itself.
        """
        try:
            if self.compiled is not None:
                predictions = self.compiled(self._columns(inputs), sum(one.rows for one in inputs))
            else:
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
        answers: list[bytes | RequestError | None] = []
        start = 0
        for one in inputs:
            try:
                answers.append(predictions_json(predictions[start : start + one.rows], wrap=True))
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
        return self._frame(inputs)

    def _frame(self, inputs: list[FastInput]) -> pd.DataFrame:
        """The requests' rows as the DataFrame ``pd.DataFrame`` would make of their columns."""
        columns = self._columns(inputs)
        if self.frames is not None:
            return self.frames.build(columns, sum(one.rows for one in inputs))
        return pd.DataFrame(dict(zip(self.names, columns, strict=True)))

    def _columns(self, inputs: list[FastInput]) -> list[Any]:
        """The requests' rows as one sequence per signature column (strings: a list)."""
        columns: list[Any] = []
        for position, dtype in enumerate(self.dtypes):
            parts = [one.data[position] for one in inputs]
            if dtype is None:
                columns.append(parts[0] if len(parts) == 1 else list(chain.from_iterable(parts)))
            else:
                columns.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
        return columns
