"""The compiled LightGBM booster (runtime/model_server/boosted.py) answers exactly as MLflow does.

Each LightGBM shape people serve (a binary or multi-class LGBMClassifier with integer or string
labels, an LGBMRegressor, a bare Booster; int, float and float32 columns) is loaded through
MLflow, compiled, and its fast-path answer to random rows (NaN included) compared, byte for
byte, with the full MLflow path's.  Shapes it does not know keep MLflow's path, with a reason;
in a batch, a request the booster cannot take is answered by the full path alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

lightgbm = pytest.importorskip("lightgbm")

import mlflow.lightgbm  # noqa: E402
import mlflow.pyfunc  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

from endpoints_app.runtime.model_server.boosted import CompiledBooster  # noqa: E402
from endpoints_app.runtime.model_server.served_model import ServedModel  # noqa: E402

# Explicit requirements skip MLflow's inference, which loads the model again in a subprocess.
REQUIREMENTS = [f"lightgbm=={lightgbm.__version__}"]


def features(rows: int, *, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(np.int64),
            "spend": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "calls": rng.poisson(1.5, rows).astype(np.int64),
            "ratio": rng.random(rows).astype(np.float32),
        }
    )


def target(frame: pd.DataFrame, kind: str) -> Any:
    score = frame["calls"] * 0.5 - frame["age"] / 30 + frame["spend"] / 60
    if kind == "binary":
        return (score > score.median()).astype(np.int64)
    if kind == "strings":
        return np.where(score > score.median(), "churn", "stay")
    if kind == "multiclass":
        return pd.cut(score, 3, labels=False).astype(np.int64)
    return score.to_numpy()


def save(path: Path, kind: str, *, columns: list[str] | None = None) -> ServedModel:
    frame = features(600, seed=0)
    if columns is not None:
        frame = frame[columns]
    labels = target(features(600, seed=0), kind)
    if kind == "booster":
        model: Any = lightgbm.train({"objective": "regression", "verbose": -1}, lightgbm.Dataset(frame, labels), 15)
    elif kind == "regression":
        model = lightgbm.LGBMRegressor(n_estimators=15, verbose=-1).fit(frame, labels)
    else:
        model = lightgbm.LGBMClassifier(n_estimators=15, verbose=-1).fit(frame, labels)
    mlflow.lightgbm.save_model(
        model, str(path), signature=infer_signature(frame, model.predict(frame)), pip_requirements=REQUIREMENTS
    )
    return ServedModel(mlflow.pyfunc.load_model(str(path)))


def body(frame: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()


def full_path(served: ServedModel, data: bytes) -> bytes:
    return served.predict_one(served.parse_json(data))


@pytest.mark.parametrize("kind", ["binary", "strings", "multiclass", "regression", "booster"])
def test_the_booster_answers_the_same_bytes_as_mlflow(kind: str, tmp_path: Path) -> None:
    served = save(tmp_path / kind, kind)
    assert served.fast is not None, served.fast_note
    assert "LightGBM booster.predict" in served.fast_note
    for seed, rows in enumerate([1, 2, 7, 100]):
        frame = features(rows, seed=seed + 1)
        if seed % 2:
            frame["spend"] = frame["spend"].where(frame.index != 0, np.nan)
        data = body(frame)
        payload, item = served.read_fast(data)
        assert item is not None
        (answer,) = served.fast.predict_batch([item])
        # The full path through MLflow's own parsing (CSV), schema enforcement and predict.
        mlflow_answer = served.predict_one(served.parse_csv(frame.to_csv(index=False).encode()))
        assert answer == mlflow_answer == full_path(served, data)


def test_a_batch_is_answered_as_each_request_alone(tmp_path: Path) -> None:
    served = save(tmp_path / "binary", "binary")
    assert served.fast is not None
    bodies = [body(features(rows, seed=seed)) for seed, rows in enumerate([1, 3, 1, 5])]
    items = [served.read_fast(data)[1] for data in bodies]
    assert all(item is not None for item in items)
    answers = served.fast.predict_batch(items)  # type: ignore[arg-type]
    assert answers == [full_path(served, data) for data in bodies]


def test_requests_it_cannot_read_go_to_mlflows_path(tmp_path: Path) -> None:
    served = save(tmp_path / "binary", "binary")
    record = features(1, seed=3).to_dict(orient="records")[0]
    for odd in ({**record, "age": 30.5}, {**record, "spend": None}, {**record, "spend": True}, {"age": 3}):
        payload, item = served.read_fast(json.dumps({"dataframe_records": [odd]}).encode())
        assert item is None, odd


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("categorical", "pandas categorical"),
        ("predict_proba", "predict function"),
    ],
)
def test_shapes_it_does_not_know_keep_mlflows_path(case: str, reason: str, tmp_path: Path) -> None:
    frame = features(300, seed=0)
    labels = target(frame, "binary")
    path = tmp_path / case
    if case == "categorical":
        frame = frame.assign(calls=frame["calls"].astype("category"))
        model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(frame, labels)
        mlflow.lightgbm.save_model(model, str(path), pip_requirements=REQUIREMENTS)
        # A signature of numbers (as someone could log it): the model still has categories.
        served = ServedModel(mlflow.pyfunc.load_model(str(path)))
        assert served.fast is None
        return
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(frame, labels)
    mlflow.lightgbm.save_model(
        model, str(path), signature=infer_signature(frame, labels), pip_requirements=REQUIREMENTS
    )
    loaded = mlflow.pyfunc.load_model(str(path))
    loaded.metadata.flavors["python_function"]["predict_fn"] = "predict_proba"
    served = ServedModel(loaded)
    assert served.fast is None
    assert reason in served.fast_note


def test_the_booster_is_compiled_with_one_thread(tmp_path: Path) -> None:
    served = save(tmp_path / "binary", "binary")
    assert served.fast is not None
    compiled = served.fast.compiled
    assert isinstance(compiled, CompiledBooster)
    assert "num_threads=1" in compiled._predictor.pred_parameter
