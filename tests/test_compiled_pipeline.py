"""The compiled column transform (runtime/model_server/compiled.py) answers exactly as the pipeline.

Each pipeline shape people serve (one-hot on strings or integers, dense or sparse stacking,
passthrough, scaling, a later step, labels or probabilities) is compiled and compared with the
pipeline's own ``predict`` on random rows, unknown categories included: same values, same dtype.
Shapes the compiler does not know keep the DataFrame path, each with its reason; an unknown
category for an encoder that refuses them raises, so the request falls back to MLflow's path.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import sklearn
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Perceptron, RidgeClassifier, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from endpoints_app.runtime.model_server.batchable import Batching
from endpoints_app.runtime.model_server.compiled import CompiledPipeline
from endpoints_app.runtime.model_server.fastpath import FastInput, SklearnFastPath

PLANS = ["basic", "plus", "pro", "team"]
REGIONS = [f"region-{i}" for i in range(25)]


def frame(rows: int, *, seed: int, unknown: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plans = [PLANS[i] for i in rng.integers(0, len(PLANS), rows)]
    regions = [REGIONS[i] for i in rng.integers(0, len(REGIONS), rows)]
    if unknown:
        plans = [p if rng.random() > unknown else "enterprise" for p in plans]
        regions = [r if rng.random() > unknown else "region-x" for r in regions]
    return pd.DataFrame(
        {
            "plan": plans,
            "region": regions,
            "seats": rng.integers(1, 500, rows).astype(np.int64),
            "tier": rng.integers(0, 4, rows).astype(np.int64),
            "spend": rng.normal(100.0, 40.0, rows),
            "ratio": rng.random(rows).astype(np.float32),
        }
    )


NAMES = list(frame(1, seed=0).columns)


def labels(features: pd.DataFrame) -> np.ndarray:
    return ((features["spend"] > 100) ^ (features["plan"] == "pro")).to_numpy().astype(int)


def three_labels(features: pd.DataFrame) -> np.ndarray:
    """Three string classes: the multi-class linear predict (argmax, then the class names)."""
    return np.array(["low", "mid", "high"])[np.digitize(features["spend"].to_numpy(), [80.0, 120.0])]


def dtypes_of(features: pd.DataFrame) -> list[np.dtype | None]:
    return [None if name in ("plan", "region") else np.dtype(str(features[name].dtype)) for name in NAMES]


def columns_of(features: pd.DataFrame) -> list[Any]:
    return [list(features[n]) if n in ("plan", "region") else features[n].to_numpy() for n in NAMES]


def fitted(
    transformers: list[Any],
    *,
    remainder: str = "drop",
    later: list[Any] | None = None,
    final: Any = None,
    target: Any = labels,
) -> Pipeline:
    train = frame(400, seed=1)
    steps: list[tuple[str, Any]] = [("encode", ColumnTransformer(transformers, remainder=remainder))]
    steps += [(f"later{i}", step) for i, step in enumerate(later or [])]
    # Unscaled numbers converge slowly; a few iterations give a model as good for comparing answers.
    steps.append(("classify", final if final is not None else LogisticRegression(max_iter=50)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Pipeline(steps).fit(train, target(train))


SHAPES: dict[str, Any] = {  # each fitted once per module (functools.cache below)
    "one-hot + passthrough (dense stack)": lambda: fitted(
        [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]), ("gone", "drop", ["region"])],
        remainder="passthrough",
    ),
    "two wide one-hots only (sparse stack)": lambda: fitted(
        [("cats", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"])]
    ),
    "dense one-hot + scaled ints and floats, a later step, a tree": lambda: fitted(
        [
            ("plan", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["plan"]),
            ("numbers", StandardScaler(), ["seats", "spend"]),
        ],
        later=[StandardScaler()],
        final=DecisionTreeClassifier(max_depth=5, random_state=0),
    ),
    "integer categories, float32 scaled, positions for columns": lambda: fitted(
        [("tier", OneHotEncoder(handle_unknown="infrequent_if_exist"), [3]), ("ratio", StandardScaler(), [5])]
    ),
    "'passthrough' named explicitly, a dropped column": lambda: fitted(
        [
            ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ("raw", "passthrough", ["seats", "ratio"]),
            ("gone", "drop", ["region"]),
        ]
    ),
    # The linear classifiers' predict is computed without scikit-learn's input validation
    # (compiled._linear_predict): binary and multi-class, sparse and dense stacks.
    "three string classes, logistic regression (argmax)": lambda: fitted(
        [("cats", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"])],
        remainder="passthrough",
        target=three_labels,
    ),
    "ridge classifier, dense stack": lambda: fitted(
        [("plan", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["plan"]), ("gone", "drop", ["region"])],
        remainder="passthrough",
        final=RidgeClassifier(),
    ),
    "linear SVM, three classes": lambda: fitted(
        [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]), ("numbers", StandardScaler(), ["spend"])],
        final=LinearSVC(max_iter=200),
        target=three_labels,
    ),
    "SGD classifier, binary": lambda: fitted(
        [("cats", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]), ("numbers", StandardScaler(), [4])],
        final=SGDClassifier(max_iter=20, random_state=0),
    ),
    "perceptron": lambda: fitted(
        [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]), ("numbers", StandardScaler(), ["spend"])],
        final=Perceptron(max_iter=20, random_state=0),
    ),
}
LINEAR = [name for name in SHAPES if "logistic" in name or "ridge" in name or "SVM" in name or "SGD" in name]
LINEAR.append("perceptron")

SHAPES = {name: functools.cache(make) for name, make in SHAPES.items()}


NO_PROBABILITIES = {
    "ridge classifier, dense stack",
    "linear SVM, three classes",
    "SGD classifier, binary",
    "perceptron",
}


@pytest.mark.parametrize(
    ("shape", "method"),
    [(shape, "predict") for shape in SHAPES]
    + [(shape, "predict_proba") for shape in SHAPES if shape not in NO_PROBABILITIES],
)
def test_compiled_answers_exactly_as_the_pipeline(shape: str, method: str) -> None:
    pipeline = SHAPES[shape]()
    compiled, why = CompiledPipeline.build(pipeline, names=NAMES, dtypes=dtypes_of(frame(1, seed=0)), predict_fn=method)
    assert compiled is not None, why
    for seed, rows in enumerate([1, 2, 3, 8, 50, 257]):
        features = frame(rows, seed=100 + seed, unknown=0.2)
        expected = getattr(pipeline, method)(features)
        got = compiled(columns_of(features), rows)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected), (shape, rows)


@pytest.mark.parametrize("shape", LINEAR)
def test_a_linear_classifier_is_predicted_without_validation_and_still_refuses_nan(shape: str) -> None:
    pipeline = SHAPES[shape]()
    compiled, why = CompiledPipeline.build(
        pipeline, names=NAMES, dtypes=dtypes_of(frame(1, seed=0)), predict_fn="predict"
    )
    assert compiled is not None, why
    final = pipeline.steps[-1][1]
    assert compiled._predict != final.predict  # its own linear predict, not scikit-learn's
    features = frame(5, seed=9)
    features.loc[2, "spend"] = np.nan  # scikit-learn refuses NaN; so must the compiled path
    with pytest.raises(ValueError):
        pipeline.predict(features)
    with pytest.raises(ValueError):
        compiled(columns_of(features), 5)


def test_an_unknown_category_that_the_encoder_refuses_raises() -> None:
    pipeline = fitted(
        [("plan", OneHotEncoder(handle_unknown="error"), ["plan"]), ("gone", "drop", ["region"])],
        remainder="passthrough",
    )
    compiled, why = CompiledPipeline.build(
        pipeline, names=NAMES, dtypes=dtypes_of(frame(1, seed=0)), predict_fn="predict"
    )
    assert compiled is not None, why
    features = frame(4, seed=3)
    assert np.array_equal(compiled(columns_of(features), 4), pipeline.predict(features))
    features.loc[2, "plan"] = "enterprise"
    with pytest.raises(ValueError):
        pipeline.predict(features)
    with pytest.raises(ValueError):
        compiled(columns_of(features), 4)


class MyEncoder(OneHotEncoder):
    """A subclass may change anything: never compiled."""


NOT_COMPILED: dict[str, tuple[Any, str | None]] = {
    "a dropped first category": (
        lambda: fitted([("plan", OneHotEncoder(drop="first"), ["plan"])]),
        "drops categories",
    ),
    "infrequent categories grouped": (
        lambda: fitted([("region", OneHotEncoder(min_frequency=30, handle_unknown="infrequent_if_exist"), ["region"])]),
        "infrequent",
    ),
    "a function step inside": (
        lambda: fitted([("plan", OneHotEncoder(), ["plan"]), ("log", FunctionTransformer(np.log1p), ["seats"])]),
        "FunctionTransformer",
    ),
    "an encoder subclass": (lambda: fitted([("plan", MyEncoder(), ["plan"])]), "MyEncoder"),
    "pandas output configured": (
        lambda: fitted([("plan", OneHotEncoder(sparse_output=False), ["plan"])]).set_output(transform="pandas"),
        "set_output",
    ),
    "not a pipeline": (lambda: LogisticRegression(), "not a scikit-learn Pipeline"),
    "strings passed through": (
        lambda: fitted(
            [("plan", OneHotEncoder(), ["plan"]), ("raw", "passthrough", ["region"])], final=DecisionTreeClassifier()
        ),
        None,
    ),
}


@pytest.mark.parametrize("case", list(NOT_COMPILED))
def test_shapes_it_does_not_know_keep_the_dataframe_path(case: str) -> None:
    make, reason = NOT_COMPILED[case]
    try:
        estimator = make()
    except (ValueError, TypeError):
        return  # scikit-learn itself refuses to fit it: nothing to serve
    compiled, why = CompiledPipeline.build(
        estimator, names=NAMES, dtypes=dtypes_of(frame(1, seed=0)), predict_fn="predict"
    )
    assert compiled is None
    if reason:
        assert reason in why


def test_a_pipeline_fitted_on_other_column_order_is_not_compiled() -> None:
    pipeline = fitted([("plan", OneHotEncoder(), ["plan"]), ("gone", "drop", ["region"])], remainder="passthrough")
    compiled, why = CompiledPipeline.build(
        pipeline, names=list(reversed(NAMES)), dtypes=list(reversed(dtypes_of(frame(1, seed=0)))), predict_fn="predict"
    )
    assert compiled is None and "in order" in why


def test_the_fast_path_uses_it_and_answers_the_same_bytes(tmp_path: Path) -> None:
    """Through the model server's fast path, as the replica runs it: the same bytes, compiled or not,
    and batched requests split back in order."""
    pipeline = SHAPES["one-hot + passthrough (dense stack)"]()
    train = frame(50, seed=9)
    mlflow.sklearn.save_model(
        pipeline,
        str(tmp_path / "m"),
        signature=infer_signature(train, labels(train)),
        # Explicit requirements skip MLflow's inference, which re-loads the model in a subprocess.
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    fast, how = SklearnFastPath.for_model(model, Batching(enabled=True, reason="test"))
    assert fast is not None and fast.compiled is not None, how
    assert "compiled column transform" in how
    requests = [frame(rows, seed=20 + rows, unknown=0.1) for rows in (1, 3, 7)]
    inputs = [fast.read({"dataframe_split": json_split(one)}) for one in requests]
    assert all(isinstance(one, FastInput) for one in inputs)
    compiled_answers = fast.predict_batch(inputs)  # type: ignore[arg-type]
    fast.compiled = None
    dataframe_answers = fast.predict_batch(inputs)  # type: ignore[arg-type]
    assert compiled_answers == dataframe_answers
    assert all(answer is not None for answer in compiled_answers)


def json_split(features: pd.DataFrame) -> dict[str, Any]:
    return {"columns": NAMES, "data": [[_plain(v) for v in row] for row in features.itertuples(index=False)]}


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
