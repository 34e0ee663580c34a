"""served_model.DirectPythonModel: a custom python_model's predict for plain tables without
PyFuncModel.predict's per-call signature inspection.  It must answer (and raise, and warn, and
show the model the prediction context) exactly as PyFuncModel.predict on the same table, and be
used only for models where that holds."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.pyfunc.context import get_prediction_context
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from endpoints_app.runtime.model_server.served_model import DirectPythonModel, ServedModel

INPUTS = Schema([ColSpec("string", "plan"), ColSpec("long", "age"), ColSpec("double", "spend")])
PARAMS = ParamSchema([ParamSpec("threshold", "double", 0.5)])
RECORDS = [{"plan": "basic", "age": 30, "spend": 12.5}, {"plan": "premium", "age": 71, "spend": 99.0}]


def _seen(model_input: pd.DataFrame, params: Any, context: Any) -> list[str]:
    prediction = get_prediction_context()
    where = None if prediction is None else (prediction.model_id, prediction.dependencies_schemas)
    return [
        f"{row.plan}:{row.age}:{row.spend}|{params}|{where}|{type(context).__name__}|{model_input.dtypes.to_dict()}"
        for row in model_input.itertuples(index=False)
    ]


class WithContextAndParams(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return _seen(model_input, params, context)


class WithoutParams(PythonModel):
    def predict(self, context, model_input):  # type: ignore[no-untyped-def]
        return _seen(model_input, "none", context)


class WithoutContext(PythonModel):
    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        return _seen(model_input, params, None)


class Raises(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        raise ValueError(f"no answer for {len(model_input)} rows")


class ListOfStrings(PythonModel):
    """Its type hint makes MLflow's wrapper turn the DataFrame into a list: not direct."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:  # type: ignore[no-untyped-def]
        return list(model_input)


def _served(path: Path, model: PythonModel, *, params: bool, metadata: dict[str, Any] | None = None) -> ServedModel:
    mlflow.pyfunc.save_model(
        str(path),
        python_model=model,
        signature=ModelSignature(inputs=INPUTS, params=PARAMS if params else None),
        metadata=metadata,
        pip_requirements=["cloudpickle"],
    )
    return ServedModel(mlflow.pyfunc.load_model(str(path)))


def _outcome(call: Any) -> Any:
    try:
        return ("answer", call())
    except MlflowException as exc:
        return ("mlflow", exc.message, exc.error_code)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


CASES = {
    "context and params": (WithContextAndParams, True),
    "context and params, no params schema": (WithContextAndParams, False),
    "no params argument": (WithoutParams, True),
    "no context argument": (WithoutContext, True),
    "raises": (Raises, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_predict_is_pyfunc_predict(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_class, params_schema = CASES[case]
    metadata = {"dependencies_schemas": {"retrievers": [{"name": "r", "primary_key": "id"}]}}
    served = _served(tmp_path / "m", model_class(), params=params_schema, metadata=metadata)
    direct = served._unenforced
    assert isinstance(direct, DirectPythonModel)
    table = served.tables.read({"dataframe_records": RECORDS}) if served.tables else None
    assert table is not None
    for params in (None, {"threshold": 0.75}, {"threshold": "high"}, {"unknown": 1}):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            theirs = _outcome(lambda: direct.twin.predict(table.copy(), params))  # noqa: B023
        their_log = [record.getMessage() for record in caplog.records]
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ours = _outcome(lambda: direct.predict(table.copy(), params))  # noqa: B023
        assert ours == theirs, (case, params)
        assert [record.getMessage() for record in caplog.records] == their_log, (case, params)
    # And through the server: the same bytes as the table through MLflow's whole predict.
    body = json.dumps({"dataframe_records": RECORDS}).encode()
    if model_class is not Raises:
        assert json.loads(served.predict_json(body)) == {"predictions": served.model.predict(pd.DataFrame(RECORDS))}


def test_models_whose_wrapper_converts_the_table_keep_pyfunc_predict(tmp_path: Path) -> None:
    mlflow.pyfunc.save_model(
        str(tmp_path / "hinted"),
        python_model=ListOfStrings(),
        signature=ModelSignature(inputs=Schema([ColSpec("string", "text")])),
        pip_requirements=["cloudpickle"],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "hinted"))
    assert DirectPythonModel.for_model(model) is None
    served = ServedModel(model)
    assert not isinstance(served._unenforced, DirectPythonModel)


def test_the_offer_model_of_the_benchmark_takes_the_direct_predict(tmp_path: Path) -> None:
    from benchmarks.model_shapes import save_pyfunc

    save_pyfunc(tmp_path / "offer")
    served = ServedModel(mlflow.pyfunc.load_model(str(tmp_path / "offer")))
    assert isinstance(served._unenforced, DirectPythonModel)
    assert served.tables is not None and served.tables.frames is not None
