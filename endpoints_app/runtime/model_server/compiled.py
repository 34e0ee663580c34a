"""Compiled column transforms: a scikit-learn ``Pipeline`` that starts with a ``ColumnTransformer``
answered without pandas.

The typical tabular model (one-hot on a string column, numbers passed through or scaled, then a
classifier) spends ~90 % of a 1-row predict in the ``ColumnTransformer``: selecting columns of
a DataFrame, narwhals' container checks and ``check_array``, ~2 ms per call whatever the rows,
against ~0.2 ms for the classifier.  For the transformers whose fitted state fully defines
their output (``OneHotEncoder`` without dropped or infrequent categories, ``StandardScaler``,
passthrough, drop), this module computes each transformer's output directly from the request's
columns with the fitted attributes, the way scikit-learn does (same dtypes, same arithmetic,
same sparse layout), stacks them with the ``ColumnTransformer``'s own ``_hstack``, and hands the
result to the pipeline's later steps unchanged.

A pipeline is compiled only when every part is one of those, checked by exact type (a subclass
may change anything), and only after a self-check at load: synthetic rows (every category,
unknown ones, numbers of both signs) must give exactly what the pipeline's own ``predict`` gives,
value for value and dtype for dtype.  Anything else keeps the DataFrame path.  A request the
compiled path cannot answer (an unknown category for an encoder that refuses them) raises, and
the caller falls back to MLflow's full path, which answers with MLflow's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

# The numeric dtypes a passthrough or scaled column may have here (bool would become an object
# column in pandas' common type, strings are not numbers).
_NUMERIC = frozenset(np.dtype(name) for name in ("float64", "float32", "int64", "int32"))
_FLOATS = frozenset(np.dtype(name) for name in ("float64", "float32"))
_SELF_CHECK_UNKNOWN = "\x00modelfleet-self-check-unknown"

Columns = Sequence[Any]  # one entry per signature column: list[str] or a 1-D numpy array
Part = Callable[[Columns, int], Any]


class NotCompiled(Exception):
    """Why this pipeline keeps the DataFrame path."""


def self_check(expected: Callable[[], Any], got: Callable[[], Any], whose: str) -> None:
    """A compiled path's check at load: its answer to sample rows must be the reference's (same
    dtype, shape and values, NaN where NaN); any failure means the reference path is kept."""
    try:
        want, have = expected(), got()
    except Exception as error:  # noqa: BLE001 - any failure means: keep the reference path
        raise NotCompiled(f"self-check failed: {type(error).__name__}") from error
    if not (
        isinstance(want, np.ndarray)
        and isinstance(have, np.ndarray)
        and want.dtype == have.dtype
        and want.shape == have.shape
        and np.array_equal(want, have, equal_nan=want.dtype.kind in "fc")
    ):
        raise NotCompiled(f"self-check: the compiled answer differs from {whose}")


def _passthrough(positions: list[int], dtypes: list[np.dtype | None]) -> Part:
    if any(dtypes[p] not in _NUMERIC for p in positions):
        raise NotCompiled("a passed-through column is not a number column")
    common = np.result_type(*(dtypes[p] for p in positions))

    def part(columns: Columns, rows: int) -> np.ndarray:
        # What pandas' DataFrame.to_numpy gives for these columns: their common dtype, by column.
        out = np.empty((rows, len(positions)), dtype=common, order="F")
        for j, p in enumerate(positions):
            out[:, j] = columns[p]
        return out

    return part


def _standard_scaler(scaler: Any, positions: list[int], dtypes: list[np.dtype | None]) -> Part:
    if any(dtypes[p] not in _NUMERIC for p in positions):
        raise NotCompiled("a scaled column is not a number column")
    common = np.result_type(*(dtypes[p] for p in positions))
    dtype = common if common in _FLOATS else np.dtype(np.float64)
    mean = None if not scaler.with_mean else np.asarray(scaler.mean_).astype(dtype)
    scale = None if not scaler.with_std else np.asarray(scaler.scale_).astype(dtype)

    def part(columns: Columns, rows: int) -> np.ndarray:
        out = np.empty((rows, len(positions)), dtype=dtype)
        for j, p in enumerate(positions):
            out[:, j] = columns[p]
        if mean is not None:
            out -= mean
        if scale is not None:
            out /= scale
        return out

    return part


def _one_hot(encoder: Any, positions: list[int], dtypes: list[np.dtype | None], *, dense_stack: bool) -> Part:
    """``dense_stack``: the ColumnTransformer stacks its outputs densely (``sparse_output_`` is
    False, decided at fit), so its ``_hstack`` would turn a sparse one-hot into an array anyway:
    the array is made directly, the same values and dtype without building a sparse matrix."""
    from scipy import sparse
    from sklearn.utils import _align_api_if_sparse
    from sklearn.utils.fixes import _ensure_sparse_index_int32

    if getattr(encoder, "_drop_idx_after_grouping", None) is not None or encoder.drop is not None:
        raise NotCompiled("the one-hot encoder drops categories")
    if getattr(encoder, "_infrequent_enabled", False):
        raise NotCompiled("the one-hot encoder groups infrequent categories")
    if encoder.handle_unknown not in ("ignore", "infrequent_if_exist", "error"):
        raise NotCompiled(f"the one-hot encoder's handle_unknown is {encoder.handle_unknown!r}")
    lookups: list[dict[Any, int]] = []
    for p, categories in zip(positions, encoder.categories_, strict=True):
        values = list(categories)
        if dtypes[p] is None and categories.dtype == object and all(isinstance(v, str) for v in values):
            lookups.append({str(v): i for i, v in enumerate(values)})
        elif dtypes[p] in (np.dtype(np.int64), np.dtype(np.int32)) and categories.dtype.kind == "i":
            lookups.append({int(v): i for i, v in enumerate(values)})
        else:
            raise NotCompiled("a one-hot column is neither strings nor integers matching its categories")
    offsets = np.cumsum([0, *encoder._n_features_outs])
    width = int(offsets[-1])
    refuse_unknown = encoder.handle_unknown == "error"
    n_features = len(positions)

    def part(columns: Columns, rows: int) -> Any:
        # Row-major (row, feature) like sklearn's X_int; an unknown value has no entry.
        indices: list[int] = []
        counts = np.zeros(rows, dtype=int)
        codes = [
            [lookup.get(v if type(v) is str else int(v), -1) for v in columns[p]]
            for p, lookup in zip(positions, lookups, strict=True)
        ]
        for row in range(rows):
            for feature in range(n_features):
                code = codes[feature][row]
                if code < 0:
                    if refuse_unknown:
                        raise ValueError("unknown category: MLflow's path answers with scikit-learn's message")
                    continue
                indices.append(code + int(offsets[feature]))
                counts[row] += 1
        if dense_stack or not encoder.sparse_output:
            dense = np.zeros((rows, width), dtype=encoder.dtype)
            dense[np.repeat(np.arange(rows), counts), indices] = 1
            return dense
        indptr = np.empty(rows + 1, dtype=int)
        indptr[0] = 0
        np.cumsum(counts, out=indptr[1:])
        out = sparse.csr_array(
            (np.ones(indptr[-1]), np.asarray(indices, dtype=int), indptr),
            shape=(rows, width),
            dtype=encoder.dtype,
        )
        _ensure_sparse_index_int32(out)
        return _align_api_if_sparse(out)

    return part


def _linear_predict(estimator: Any) -> Callable[[Any], np.ndarray] | None:
    """A linear classifier's ``predict`` without scikit-learn's input validation, or None.

    On a compiled pipeline's output (a float matrix of the width the classifier was fitted on,
    made here) ``validate_data``, narwhals' container checks and the array-API lookups cost about
    70 % of the whole call for a few rows, and leave the matrix as it is.  What is left is
    ``LinearClassifierMixin.predict`` itself: the same ``safe_sparse_dot``, intercept, threshold or
    argmax and ``take``, so the answer is the same number for number (the self-check compares
    them at load).  Validation's one refusal that can apply, NaN or infinity, is kept: the
    request then goes to MLflow's full path and gets its error.  Exact types only.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression, Perceptron, RidgeClassifier, SGDClassifier
    from sklearn.svm import LinearSVC
    from sklearn.utils.extmath import safe_sparse_dot

    if type(estimator) not in (LogisticRegression, RidgeClassifier, SGDClassifier, Perceptron, LinearSVC):
        return None
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    classes = getattr(estimator, "classes_", None)
    if not (isinstance(coef, np.ndarray) and isinstance(intercept, np.ndarray) and isinstance(classes, np.ndarray)):
        return None
    if coef.ndim not in (1, 2):
        return None
    coef_t = coef.T if coef.ndim == 2 else coef  # as decision_function takes it

    def predict(data: Any) -> np.ndarray:
        if sparse.issparse(data):
            if data.format != "csr":
                data = data.tocsr()
            values = data.data
        else:
            values = data
        if values.dtype.kind not in "fiub":
            raise ValueError("not a numeric matrix")  # validation would convert it: the full path
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError("Input X contains NaN or infinity")
        scores = safe_sparse_dot(data, coef_t, dense_output=True) + intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = scores.reshape(-1)
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return classes.take(indices, axis=0)

    return predict


def _default_output(estimator: Any) -> bool:
    from sklearn.utils._set_output import _get_output_config

    return bool(_get_output_config("transform", estimator)["dense"] == "default")


class CompiledPipeline:
    """``predict`` of a ``Pipeline(ColumnTransformer, …)`` on the request's columns, no pandas."""

    def __init__(self, *, pipeline: Any, parts: list[Part], predict_fn: str) -> None:
        self._transformer = pipeline.steps[0][1]
        self._parts = parts
        later = [step for _, _, step in pipeline._iter(with_final=False, filter_passthrough=True)][1:]
        self._later_transforms = [step.transform for step in later]
        final = pipeline.steps[-1][1]
        self._predict = (_linear_predict(final) if predict_fn == "predict" else None) or getattr(final, predict_fn)

    def __call__(self, columns: Columns, rows: int) -> Any:
        outputs = [part(columns, rows) for part in self._parts]
        if not outputs:
            data: Any = np.zeros((rows, 0))
        else:
            data = self._transformer._hstack(outputs, n_samples=rows)
        for transform in self._later_transforms:
            data = transform(data)
        return self._predict(data)

    @classmethod
    def build(
        cls, estimator: Any, *, names: list[str], dtypes: list[np.dtype | None], predict_fn: str
    ) -> tuple[CompiledPipeline | None, str]:
        """The compiled pipeline, or None and why this estimator keeps the DataFrame path."""
        try:
            compiled = cls._compile(estimator, names=names, dtypes=dtypes, predict_fn=predict_fn)
            cls._self_check(compiled, estimator, names=names, dtypes=dtypes, predict_fn=predict_fn)
        except NotCompiled as why:
            return None, str(why)
        return compiled, "compiled column transform"

    @classmethod
    def _compile(
        cls, estimator: Any, *, names: list[str], dtypes: list[np.dtype | None], predict_fn: str
    ) -> CompiledPipeline:
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

        if type(estimator) is not Pipeline or len(estimator.steps) < 2:
            raise NotCompiled("not a scikit-learn Pipeline of several steps")
        transformer = estimator.steps[0][1]
        if type(transformer) is not ColumnTransformer:
            raise NotCompiled("its first step is not a ColumnTransformer")
        fitted_names = getattr(transformer, "feature_names_in_", None)
        if fitted_names is None or list(fitted_names) != names:
            raise NotCompiled("its ColumnTransformer was not fitted on the signature's columns in order")
        if not all(_default_output(step) for _, step in estimator.steps if hasattr(step, "transform")):
            raise NotCompiled("a step's output is configured (set_output)")
        parts: list[Part] = []
        for name, step, columns in transformer.transformers_:
            positions = cls._positions(columns, names)
            if isinstance(step, str) and step == "drop":
                continue
            if not positions:
                continue  # sklearn skips transformers of no columns
            if not _default_output(step):
                raise NotCompiled(f"transformer {name!r} has a configured output")
            if type(step) is FunctionTransformer and step.func is None and not step.validate:
                parts.append(_passthrough(positions, dtypes))
            elif type(step) is OneHotEncoder:
                dense_stack = getattr(transformer, "sparse_output_", True) is False
                parts.append(_one_hot(step, positions, dtypes, dense_stack=dense_stack))
            elif type(step) is StandardScaler:
                parts.append(_standard_scaler(step, positions, dtypes))
            else:
                raise NotCompiled(f"transformer {name!r} is a {type(step).__name__}")
        if not callable(getattr(estimator.steps[-1][1], predict_fn, None)):
            raise NotCompiled(f"the final step has no {predict_fn}")
        return cls(pipeline=estimator, parts=parts, predict_fn=predict_fn)

    @staticmethod
    def _positions(columns: Any, names: list[str]) -> list[int]:
        if isinstance(columns, str):
            raise NotCompiled("a transformer's columns are one name, not a list")  # 1-D output
        if isinstance(columns, (list, tuple, np.ndarray)):
            values = list(columns)
            if all(isinstance(c, str) for c in values):
                return [names.index(c) for c in values]
            if all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in values):
                return [int(c) for c in values]
        raise NotCompiled("a transformer's columns are not a list of names or positions")

    @staticmethod
    def _self_check(
        compiled: CompiledPipeline, estimator: Any, *, names: list[str], dtypes: list[np.dtype | None], predict_fn: str
    ) -> None:
        """Synthetic rows through both paths; any difference and the pipeline is not compiled."""
        transformer = estimator.steps[0][1]
        known: dict[int, list[Any]] = {}
        for _, step, spec in transformer.transformers_:
            if type(step).__name__ == "OneHotEncoder":
                for p, categories in zip(CompiledPipeline._positions(spec, names), step.categories_, strict=True):
                    known[p] = list(categories)
        rows = 8
        columns: list[Any] = []
        for p, dtype in enumerate(dtypes):
            if dtype is None:
                pool = [str(v) for v in known.get(p, [])] or ["a", "b"]
                if step_ignores_unknown(transformer, p, names):
                    pool.append(_SELF_CHECK_UNKNOWN)
                columns.append([pool[i % len(pool)] for i in range(rows)])
            elif p in known:
                integers = [int(v) for v in known[p]]
                columns.append(np.array([integers[i % len(integers)] for i in range(rows)], dtype=dtype))
            else:
                numbers = (
                    [0, 1, -2, 3, 7, -11, 2, 5] if dtype.kind in "iu" else [0.0, 1.5, -2.25, 3e3, 7.0, -0.001, 2.0, 5.5]
                )
                columns.append(np.array(numbers, dtype=dtype))
        self_check(
            lambda: getattr(estimator, predict_fn)(pd.DataFrame(dict(zip(names, columns, strict=True)))),
            lambda: compiled(columns, rows),
            "the pipeline's",
        )


def step_ignores_unknown(transformer: Any, position: int, names: list[str]) -> bool:
    """Whether the one-hot encoder reading this column ignores unknown values (so the self-check
    may send one)."""
    for _, step, columns in transformer.transformers_:
        if type(step).__name__ != "OneHotEncoder":
            continue
        if position in CompiledPipeline._positions(columns, names):
            return step.handle_unknown in ("ignore", "infrequent_if_exist")
    return False
