"""Per-request overhead of the model server's full path, in process: MLflow's way and ours.

The full path (served_model.py) answers every request the scikit-learn fast path does not take:
every request to a custom pyfunc, LightGBM, XGBoost..., and requests with params.  This measures,
for each table format at 1 and 100 rows, the CPU time of one request from its body's bytes to
the response body's bytes, less the model's own predict on the same table:

* ``mlflow``: what ``mlflow models serve`` does per request (``_parse_json_data``, then
  ``PyFuncModel.predict``, which enforces the schema, then serialise), which is what the full
  path did before it read plain tables itself;
* ``ours``: ``ServedModel.parse_json`` + ``predict_one`` as the replica runs them.

Each real model (the one-hot pipeline and the per-row pyfunc of model_shapes.py) is measured,
and so is a stub with the same input signature whose predict returns zeros: a predict that costs
a few microseconds leaves the overhead alone, where a real model's predict (a few ms for the
pipeline, and much noisier than the overhead on a shared machine) has to be subtracted.

CPU time (``time.thread_time``), not wall time, and the two alternated over several rounds with
the best round kept, so that other processes on a busy machine disturb the comparison as little
as possible.  No HTTP: that part is the same for both (see bench_models.py for requests/s).

    .venv/bin/python benchmarks/bench_full_path.py [--rounds 7] [--requests 60]
"""

from __future__ import annotations

import os

# Set before mlflow is imported anywhere in this process: benchmarks never phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.pyfunc import PythonModel  # noqa: E402
from mlflow.pyfunc.scoring_server import _parse_json_data  # noqa: E402

from benchmarks import model_shapes  # noqa: E402
from endpoints_app.runtime.model_server.responses import predictions_json  # noqa: E402
from endpoints_app.runtime.model_server.served_model import ServedModel  # noqa: E402

FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs", "records+params"]


class Zeros(PythonModel):
    """A stub model: one zero per row, whatever the rows."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        return np.zeros(len(model_input))


def save_stub(path: Path, like: Path) -> None:
    """A Zeros model with the input signature of the model saved at ``like``."""
    schema = mlflow.pyfunc.load_model(str(like)).metadata.get_input_schema()
    mlflow.pyfunc.save_model(str(path), python_model=Zeros(), signature=ModelSignature(inputs=schema))


def bodies(frame: pd.DataFrame) -> dict[str, bytes]:
    records = frame.to_dict(orient="records")
    documents = {
        "dataframe_split": {"dataframe_split": frame.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs": {"inputs": frame.to_dict(orient="list")},
        "records+params": {"dataframe_records": records, "params": {"unused": 1}},
    }
    return {name: json.dumps(document).encode() for name, document in documents.items()}


def cpu_ms(call: Callable[[], Any], requests: int) -> float:
    started = time.thread_time()
    for _ in range(requests):
        call()
    return (time.thread_time() - started) / requests * 1000.0


def measure(
    model_dir: Path, frame: pd.DataFrame, *, rounds: int, requests: int, formats: list[str]
) -> list[dict[str, Any]]:
    model = mlflow.pyfunc.load_model(str(model_dir))
    served = ServedModel(model)
    schema = model.metadata.get_input_schema()
    rows = []
    for size in (1, 100):
        for name, body in bodies(frame.iloc[:size].reset_index(drop=True)).items():
            if name not in formats:
                continue

            def mlflow_way(body: bytes = body) -> bytes:
                parsed = _parse_json_data(json.loads(body), model.metadata, schema)
                return predictions_json(model.predict(parsed.data, params=parsed.params), wrap=True)

            def ours(body: bytes = body) -> bytes:
                return served.predict_one(served.parse_json(body))

            assert ours() == mlflow_way(), (model_dir.name, name, size)
            table = served.parse_json(body).data

            def predict_only(table: Any = table) -> Any:
                return model._model_impl.predict(table, params=None)

            best: dict[str, float] = {}
            for _ in range(rounds):  # alternated, best round kept
                for label, call in (("mlflow", mlflow_way), ("ours", ours), ("predict", predict_only)):
                    best[label] = min(best.get(label, float("inf")), cpu_ms(call, requests))
            rows.append(
                {
                    "model": model_dir.name,
                    "format": name,
                    "rows": size,
                    "predict_ms": best["predict"],
                    "mlflow_overhead_ms": best["mlflow"] - best["predict"],
                    "ours_overhead_ms": best["ours"] - best["predict"],
                }
            )
            print(
                f"{model_dir.name:14s} {name:18s} {size:3d} rows: predict {best['predict']:.3f} ms, overhead "
                f"mlflow {best['mlflow'] - best['predict']:.3f} ms -> ours {best['ours'] - best['predict']:.3f} ms",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=60, help="requests per round and variant")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"a comma-separated subset of {FORMATS}")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    # MLflow warns on every request that brings params the model has no schema for.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    # One BLAS/OpenMP thread, as a replica on a busy machine effectively gets.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    frame = model_shapes.customers(100, seed=1)[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-full-path-") as tmp:
        folder = Path(tmp)
        for key, save in (("pipeline", model_shapes.save_pipeline), ("pyfunc", model_shapes.save_pyfunc)):
            save(folder / key)
            save_stub(folder / f"{key}-stub", like=folder / key)
        for key in ("pipeline", "pipeline-stub", "pyfunc", "pyfunc-stub"):
            formats = args.formats.split(",")
            results += measure(folder / key, frame, rounds=args.rounds, requests=args.requests, formats=formats)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
