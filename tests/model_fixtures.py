"""Build tiny MLflow models on disk for tests that need a real model server.

Every helper writes a complete MLflow model directory (``MLmodel`` and friends) at ``path`` and
returns that path, so a test can hand it straight to ``endpoints_app.runtime.model_server``.

The custom pyfunc models are pickled *by value* (``cloudpickle.register_pickle_by_value``):
the server runs in another process whose ``sys.path`` need not contain this ``tests`` folder,
so pickling the classes by reference (``tests.model_fixtures.ConstantModel``) would fail to
load there.  By value, the pickle carries the class body and needs only mlflow and the standard
library on the loading side.
"""

from __future__ import annotations

import os

# Set before mlflow is imported anywhere in this process: tests must never phone home.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cloudpickle  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.models import ModelSignature, infer_signature  # noqa: E402
from mlflow.pyfunc import PythonModel  # noqa: E402
from mlflow.types import ParamSchema, ParamSpec  # noqa: E402

IRIS_COLUMNS: list[str] = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_frame() -> tuple[pd.DataFrame, pd.Series]:
    """Return sklearn's bundled iris data as (features with readable column names, labels)."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    features = pd.DataFrame(iris.data, columns=IRIS_COLUMNS)
    labels = pd.Series(iris.target, name="species")
    return features, labels


def save_iris_model(path: str | Path, *, multiply: int = 1) -> Path:
    """Train a LogisticRegression on iris and save it as an MLflow sklearn model with a signature.

    ``multiply`` scales the training features, so models saved with different values keep the
    same signature but answer differently, which lets a test tell versions apart.  Measured
    (scikit-learn 1.9): ``multiply=1`` and ``multiply=2`` agree on the 50 setosa rows (0-49,
    both say 0) and differ on every one of rows 50-149; e.g. row 100,
    ``iris_frame()[0].iloc[[100]]``, is 2 for ``multiply=1`` and 1 for ``multiply=2``.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    path = Path(path)
    features, labels = iris_frame()
    model = LogisticRegression(max_iter=500)
    model.fit(features * multiply, labels)
    signature = infer_signature(features, labels)
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=signature,
        # Explicit requirements skip mlflow's inference, which re-loads the model in a
        # subprocess and costs about five seconds per save.
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    return path


class ConstantModel(PythonModel):
    """Answer every input row with the same label (or the ``value`` param when one is sent)."""

    def __init__(self, value: str) -> None:
        self.value = value

    # predict() is deliberately left without type hints on the input and output: mlflow reads
    # them to infer a signature (and then insists on an ``inputs``-only request format).
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Return one label per input row; a request's ``params.value`` overrides the default."""
        value = (params or {}).get("value", self.value)
        return [value] * len(model_input)


class SlowModel(PythonModel):
    """Sleep before answering (and optionally while loading): for draining, shutdown and
    "still loading" tests."""

    def __init__(self, seconds: float, load_seconds: float) -> None:
        self.seconds = seconds
        self.load_seconds = load_seconds

    def load_context(self, context: Any) -> None:
        """Stand in for a model whose weights take a while to load."""
        time.sleep(self.load_seconds)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Sleep, then return the row count for each row, so the answer is easy to check."""
        time.sleep(self.seconds)
        return [len(model_input)] * len(model_input)


class BrokenModel(PythonModel):
    """Fail while loading, like a model whose artifacts were damaged after registration."""

    def load_context(self, context: Any) -> None:
        """Raise the error the server must report before it ever answers /health with 200."""
        raise RuntimeError("weights file is corrupt")

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Never reached: loading fails first."""
        return [0] * len(model_input)


@contextmanager
def _pickled_by_value() -> Iterator[None]:
    """Pickle this module's classes by value while a model is being saved (see module docstring).

    The registration is undone afterwards so that nothing else pickled in the test process
    changes behaviour.
    """
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def _save_pyfunc(path: Path, python_model: PythonModel, signature: ModelSignature | None) -> Path:
    with _pickled_by_value():
        mlflow.pyfunc.save_model(
            str(path),
            python_model=python_model,
            signature=signature,
            # Explicit requirements skip mlflow's inference (see save_iris_model); for
            # BrokenModel that inference would also run load_context and log its failure.
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        )
    return path


def save_constant_model(path: str | Path, value: str) -> Path:
    """Save a pyfunc model that predicts ``value`` for every row, whatever the input columns.

    Its signature declares only a ``value`` param (default: ``value``), so inputs are not
    schema-checked and a request may override the label with ``{"params": {"value": "..."}}``.
    Useful to tell versions apart in traffic-split tests.
    """
    signature = ModelSignature(params=ParamSchema([ParamSpec("value", "string", value)]))
    return _save_pyfunc(Path(path), ConstantModel(value), signature)


def save_slow_model(path: str | Path, seconds: float, *, load_seconds: float = 0.0) -> Path:
    """Save a pyfunc model whose every prediction takes ``seconds`` and whose load takes
    ``load_seconds`` (no input schema; it answers the row count for each row)."""
    return _save_pyfunc(Path(path), SlowModel(seconds, load_seconds), None)


class FlakyModel(PythonModel):
    """Fail ``failures`` of every 10 queries (a deterministic share, counted per replica): a new
    version that errors on some inputs, for canary and rollback tests."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Raise on the first ``failures`` of every 10 calls, else answer 1 per row."""
        self.calls += 1
        if (self.calls - 1) % 10 < self.failures:
            raise ValueError("this version cannot handle this input")
        return [1] * len(model_input)


def save_flaky_model(path: str | Path, failures: int = 3) -> Path:
    """Save a pyfunc model that fails ``failures`` in 10 of its queries (the model server answers
    those with 400) and answers 1 per row otherwise; no input schema."""
    return _save_pyfunc(Path(path), FlakyModel(failures), None)


def save_broken_model(path: str | Path) -> Path:
    """Save a pyfunc model whose ``load_context`` raises ``RuntimeError("weights file is corrupt")``."""
    return _save_pyfunc(Path(path), BrokenModel(), None)


TYPED_COLORS: list[str] = ["red", "green", "blue"]


def typed_frame(rows: int = 120, *, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A table with one column of each scalar type the model server's fast path converts itself
    (double, float, long, integer, boolean, string), and labels that depend on all of them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "x_double": rng.normal(0, 1, rows),
            "x_float": rng.normal(0, 1, rows).astype(np.float32),
            "x_long": rng.integers(-50, 50, rows).astype(np.int64),
            "x_int": rng.integers(0, 10, rows).astype(np.int32),
            "flag": rng.integers(0, 2, rows).astype(bool),
            "color": pd.Series(rng.choice(TYPED_COLORS, rows), dtype=str),
        }
    )
    score = features["x_double"] + features["x_float"] + features["x_long"] / 25 - features["x_int"] / 5
    score = score + features["flag"] + (features["color"] == "red")
    labels = pd.Series(pd.cut(score, 3, labels=False).astype(int), name="label")
    return features, labels


def save_typed_model(path: str | Path) -> Path:
    """Save a scikit-learn pipeline over ``typed_frame()``'s six column types, served with
    ``predict_proba`` (float outputs, so tests can compare answers bit for bit).

    One-hot encoding ``color`` by name (a ColumnTransformer) means the model needs a DataFrame,
    not a bare array.
    """
    import sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    path = Path(path)
    features, labels = typed_frame()
    model = Pipeline(
        [
            (
                "encode",
                ColumnTransformer(
                    [("color", OneHotEncoder(handle_unknown="ignore"), ["color"])], remainder="passthrough"
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    )
    model.fit(features, labels)
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels),
        pyfunc_predict_fn="predict_proba",
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    return path


def save_iris_regression_model(path: str | Path) -> Path:
    """Save a LinearRegression fitted on iris (a DataFrame, so it knows the column names) that
    answers the species number as a float: float outputs from a plain, array-friendly estimator."""
    import sklearn
    from sklearn.linear_model import LinearRegression

    path = Path(path)
    features, labels = iris_frame()
    model = LinearRegression().fit(features, labels.astype(float))
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels.astype(float)),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    return path
