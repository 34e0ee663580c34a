"""Compiled gradient-boosted models: a LightGBM model's predict on the request's numbers, without
pandas, MLflow's wrapper or LightGBM's scikit-learn layer.

For a 1-row request to a 100-tree ``LGBMClassifier`` served through MLflow, the trees themselves
take ~20 µs; the rest of a ~1 ms call is the DataFrame MLflow builds, LightGBM's
``_data_from_pandas`` turning it back into a matrix, the scikit-learn layer's per-call
``_process_params`` (``get_params`` and a deep copy), ``cpu_count`` and ``LabelEncoder``'s
checks, and OpenMP waking every core for one row: with the cores busy (a server under load,
other processes), that last part alone was ~5 ms a call on two shared cores.

``CompiledBooster`` makes the matrix LightGBM would make of MLflow's DataFrame (the signature's
columns in order, ``np.result_type`` of their dtypes and float32, as ``_data_from_pandas``
does), calls the booster's own ``predict`` with the parameters the scikit-learn layer would pass
(worked out once, at load) except ``num_threads=1`` (each row is scored by one thread whatever
the count, so the numbers do not change; a one-row call no longer wakes every core), and applies
``LGBMClassifier.predict``'s own last steps (probabilities, argmax, the label encoder's classes).

Built only for exact types (``LGBMClassifier``, ``LGBMRegressor``, a bare ``Booster``), a model
without pandas categorical features, a custom objective or a predict function other than
``predict``, whose signature is numeric columns, and only after a self-check at load: synthetic
rows must give what MLflow's own predict gives, value for value and dtype for dtype.  A request
it cannot answer raises, and the caller falls back to MLflow's full path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from endpoints_app.runtime.model_server.compiled import NotCompiled, self_check

_NUMERIC_KINDS = "iufb"
Columns = Sequence[Any]


class CompiledBooster:
    """``predict`` of a LightGBM model served by ``mlflow.lightgbm`` on the request's columns."""

    def __init__(
        self,
        *,
        booster: Any,
        dtype: np.dtype,
        params: dict[str, Any],
        finish: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        from lightgbm.basic import _InnerPredictor

        # What Booster.predict makes on every call (a deep copy of the parameters, their string
        # form, the predictor), made once; its predict is the same call with the same arguments.
        self._predictor = _InnerPredictor.from_booster(booster=booster, pred_parameter=dict(params))
        self._num_iteration = booster.best_iteration
        self._dtype = dtype
        self._finish = finish

    def __call__(self, columns: Columns, rows: int) -> np.ndarray:
        matrix = np.empty((rows, len(columns)), dtype=self._dtype)
        for j, column in enumerate(columns):
            matrix[:, j] = column
        result = self._predictor.predict(
            data=matrix,
            start_iteration=0,
            num_iteration=self._num_iteration,
            raw_score=False,
            pred_leaf=False,
            pred_contrib=False,
            data_has_header=False,
            validate_features=False,
        )
        if not isinstance(result, np.ndarray):
            raise ValueError("not an array of predictions: MLflow's path answers")
        return self._finish(result)

    @classmethod
    def build(
        cls, model: Any, *, names: list[str], dtypes: list[np.dtype | None]
    ) -> tuple[CompiledBooster | None, str]:
        """The compiled model, or None and why this model keeps MLflow's path."""
        try:
            compiled = cls._compile(model, names=names, dtypes=dtypes)
            cls._self_check(compiled, model, names=names, dtypes=dtypes)
        except NotCompiled as why:
            return None, str(why)
        return compiled, "compiled booster"

    @classmethod
    def _compile(cls, model: Any, *, names: list[str], dtypes: list[np.dtype | None]) -> CompiledBooster:
        import lightgbm
        from lightgbm.basic import _ConfigAliases

        pyfunc_conf = model.metadata.flavors.get("python_function", {})
        if pyfunc_conf.get("loader_module") != "mlflow.lightgbm":
            raise NotCompiled("not a LightGBM model")
        if pyfunc_conf.get("predict_fn", "predict") != "predict":
            raise NotCompiled(f"its pyfunc predict function is {pyfunc_conf.get('predict_fn')}")
        impl = getattr(model, "_model_impl", None)
        if type(impl).__name__ != "_LGBModelWrapper" or type(impl).__module__ != "mlflow.lightgbm":
            raise NotCompiled("its pyfunc wrapper is not MLflow's LightGBM wrapper")
        if not dtypes or any(dtype is None or dtype.kind not in _NUMERIC_KINDS for dtype in dtypes):
            raise NotCompiled("an input column is not a number column")
        estimator: Any = getattr(impl, "lgb_model", None)
        # What _data_from_pandas converts the DataFrame to: its columns' common type, at least float32.
        dtype = np.result_type(*(dtype.type for dtype in dtypes if dtype is not None), np.float32)
        if type(estimator) is lightgbm.Booster:
            booster = estimator
            params: dict[str, Any] = {}
            finish: Callable[[np.ndarray], np.ndarray] = _same
        elif type(estimator) in (lightgbm.LGBMClassifier, lightgbm.LGBMRegressor):
            if not estimator.__sklearn_is_fitted__():
                raise NotCompiled("the estimator is not fitted")
            if callable(estimator._objective):
                raise NotCompiled("a custom objective")
            booster = estimator.booster_
            # LGBMModel.predict's own parameters for the booster, worked out once.
            params = estimator._process_params(stage="predict")
            for alias in _ConfigAliases.get_by_alias(
                "data", "X", "raw_score", "start_iteration", "num_iteration", "pred_leaf", "pred_contrib"
            ):
                params.pop(alias, None)
            for alias in _ConfigAliases.get("num_threads"):
                params.pop(alias, None)
            finish = _classify(estimator) if type(estimator) is lightgbm.LGBMClassifier else _same
        else:
            raise NotCompiled(f"a {type(estimator).__name__}, not a LightGBM Booster, LGBMClassifier or LGBMRegressor")
        if booster.pandas_categorical:
            raise NotCompiled("it has pandas categorical features")
        if booster.num_feature() != len(names):
            raise NotCompiled("its feature count is not the signature's column count")
        params["num_threads"] = 1
        try:
            return cls(booster=booster, dtype=dtype, params=params, finish=finish)
        except (ImportError, AttributeError, TypeError) as error:  # LightGBM's internals moved
            raise NotCompiled(f"LightGBM's predictor is not reachable: {type(error).__name__}") from error

    @staticmethod
    def _self_check(compiled: CompiledBooster, model: Any, *, names: list[str], dtypes: list[np.dtype | None]) -> None:
        """Synthetic rows through both paths; any difference and the model is not compiled."""
        rows = 16
        rng = np.random.default_rng(0)
        columns: list[np.ndarray] = []
        for dtype in dtypes:
            assert dtype is not None
            if dtype.kind == "b":
                columns.append(np.arange(rows) % 2 == 0)
            elif dtype.kind in "iu":
                columns.append(rng.integers(-5, 200, rows).astype(dtype))
            else:
                values = rng.normal(0, 100, rows).astype(dtype)
                values[3] = np.nan
                columns.append(values)
        self_check(
            lambda: model._model_impl.predict(pd.DataFrame(dict(zip(names, columns, strict=True)))),
            lambda: compiled(columns, rows),
            "the model's",
        )


def _same(result: np.ndarray) -> np.ndarray:
    return result


def _classify(estimator: Any) -> Callable[[np.ndarray], np.ndarray]:
    """LGBMClassifier.predict after the booster: probabilities (two columns for a binary model),
    argmax, and the label encoder's classes (``inverse_transform`` is ``take`` after checks that
    an argmax of the right width always passes)."""
    multiclass = estimator._LGBMClassifier__is_multiclass
    classes = estimator._le.classes_
    n_classes = len(classes)

    def finish(result: np.ndarray) -> np.ndarray:
        proba = result if multiclass else np.vstack((1.0 - result, result)).transpose()
        if proba.ndim != 2 or proba.shape[1] != n_classes:
            raise ValueError("unexpected probabilities: MLflow's path answers")
        return classes.take(np.argmax(proba, axis=1), axis=0)

    return finish
