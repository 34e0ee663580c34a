"""The plain-table fast path for custom python models (served_model.PyfuncTableFastPath).

Its answers are the full path's bytes, alone and in batches; a request that fails in a batch gets
the full path's error alone while the others are answered; requests
whose table the model would see differently (an index, params, strings ending in NUL) are left
to the full path; a model not declared row-wise keeps the full path; one whose output is not one
answer per row stops being batched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema

from endpoints_app.runtime.model_server.responses import RequestError
from endpoints_app.runtime.model_server.served_model import PyfuncTableFastPath, ServedModel

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "plan"), ColSpec("long", "age"), ColSpec("double", "spend")])
)


class Rules(PythonModel):
    """Row by row; reports the table's dtypes and index type so any difference shows (a row-wise
    model does not read the index labels: in a batch they are the batch's)."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        answers = []
        for row in model_input.itertuples(index=False):
            if row.plan == "bad":
                raise ValueError("a bad plan")
            answers.append(
                f"{row.plan}:{row.age}:{row.spend}:{type(model_input.index).__name__}:{model_input.dtypes.to_dict()}"
            )
        return answers


class Total(PythonModel):
    """One answer for the whole table: not row-wise, whatever its metadata says."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [float(model_input["spend"].sum())]


def serve(path: Path, model: PythonModel, *, batchable: bool) -> ServedModel:
    mlflow.pyfunc.save_model(
        str(path),
        python_model=model,
        signature=SIGNATURE,
        metadata={"modelfleet": {"batchable": batchable}},
        pip_requirements=["cloudpickle"],
    )
    served = ServedModel(mlflow.pyfunc.load_model(str(path)))
    assert isinstance(served.fast, PyfuncTableFastPath), served.fast_note
    return served


def body(rows: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"dataframe_records": rows, **extra}).encode()


def row(i: int, plan: str = "basic") -> dict[str, Any]:
    return {"plan": plan, "age": 20 + i, "spend": 10.5 * i}


def full(served: ServedModel, data: bytes) -> bytes:
    return served.predict_one(served.parse_json(data))


def test_answers_are_the_full_paths_bytes_alone_and_in_batches(tmp_path: Path) -> None:
    served = serve(tmp_path / "rules", Rules(), batchable=True)
    assert served.fast is not None
    bodies = [body([row(1)]), body([row(2), row(3)]), body([row(4, "caf\u00e9")])]
    bodies.append(
        json.dumps({"dataframe_split": {"columns": ["spend", "plan", "age"], "data": [[1, "x", 3]]}}).encode()
    )
    bodies.append(json.dumps({"inputs": {"plan": ["a", "b"], "age": [1, 2], "spend": [0.5, 2]}}).encode())
    items = [served.read_fast(data)[1] for data in bodies]
    assert all(item is not None for item in items)
    expected = [full(served, data) for data in bodies]
    assert [served.fast.predict_batch([item])[0] for item in items] == expected  # type: ignore[list-item]
    assert served.fast.predict_batch(items) == expected  # type: ignore[arg-type]


def test_a_failing_request_in_a_batch_fails_alone_with_the_full_paths_error(tmp_path: Path) -> None:
    served = serve(tmp_path / "rules", Rules(), batchable=True)
    assert served.fast is not None
    bodies = [body([row(1)]), body([row(2, "bad")]), body([row(3)])]
    items = [served.read_fast(data)[1] for data in bodies]
    answers = served.fast.predict_batch(items)  # type: ignore[arg-type]
    assert [answers[0], answers[2]] == [full(served, bodies[0]), full(served, bodies[2])]
    with pytest.raises(RequestError) as raised:
        full(served, bodies[1])
    error = answers[1]
    assert isinstance(error, RequestError)
    assert (error.status, error.error_code, error.message) == (
        raised.value.status,
        raised.value.error_code,
        raised.value.message,
    )


def test_what_the_model_would_see_differently_goes_to_the_full_path(tmp_path: Path) -> None:
    served = serve(tmp_path / "rules", Rules(), batchable=True)
    split_with_index = {"dataframe_split": {"columns": ["plan", "age", "spend"], "data": [["a", 1, 2.0]], "index": [7]}}
    for data in (
        json.dumps(split_with_index).encode(),
        body([row(1)], params={"x": 1}),
        json.dumps({"instances": [{"plan": "nul\x00", "age": 1, "spend": 2.0}]}).encode(),
        body([{**row(1), "age": 1.5}]),
        body([{**row(1), "spend": None}]),
        body([{"plan": "a", "age": 1}]),
    ):
        assert served.read_fast(data)[1] is None, data


def test_a_model_whose_output_is_not_per_row_stops_batching(tmp_path: Path) -> None:
    served = serve(tmp_path / "total", Total(), batchable=True)
    assert served.fast is not None
    bodies = [body([row(1)]), body([row(2), row(3)])]
    items = [served.read_fast(data)[1] for data in bodies]
    assert served.fast.predict_batch(items) == [full(served, data) for data in bodies]  # type: ignore[arg-type]
    assert served.fast.row_independent is False


def test_a_model_not_declared_row_wise_keeps_the_full_path(tmp_path: Path) -> None:
    mlflow.pyfunc.save_model(
        str(tmp_path / "rules"), python_model=Rules(), signature=SIGNATURE, pip_requirements=["cloudpickle"]
    )
    served = ServedModel(mlflow.pyfunc.load_model(str(tmp_path / "rules")))
    assert served.fast is None
    assert "not declared row-wise" in served.fast_note


def test_only_custom_python_models_take_it(tmp_path: Path) -> None:
    import sklearn
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0]})
    mlflow.sklearn.save_model(
        LogisticRegression().fit(frame, [0, 1, 0]),
        str(tmp_path / "linear"),
        signature=mlflow.models.infer_signature(frame, [0]),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    served = ServedModel(mlflow.pyfunc.load_model(str(tmp_path / "linear")))
    assert not isinstance(served.fast, PyfuncTableFastPath)


def test_its_batches_never_run_on_the_event_loop() -> None:
    """A custom model's code may be slow for some input: /health must not wait for it."""
    import asyncio
    import threading
    from dataclasses import dataclass

    from endpoints_app.runtime.model_server.batching import Batcher

    @dataclass
    class Item:
        rows: int = 1
        key: None = None

    ran_on: list[threading.Thread] = []

    def predict(items: list[Item]) -> list[int]:
        ran_on.append(threading.current_thread())
        return [1] * len(items)

    async def main() -> None:
        batcher: Batcher[Item, int] = Batcher(predict, max_rows=8, inline=PyfuncTableFastPath.may_run_inline)
        for _ in range(5):
            assert await batcher.predict(Item()) == 1
        batcher.close()

    asyncio.run(main())
    assert len(ran_on) == 5
    assert threading.main_thread() not in ran_on
