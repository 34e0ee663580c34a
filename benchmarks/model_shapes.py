"""The models bench_models.py serves: the shapes people really deploy, built fresh on disk.

* ``pipeline`` — a scikit-learn ``Pipeline``: a ``ColumnTransformer`` that one-hot encodes a
  string column and passes the numbers through, then a ``LogisticRegression`` (a typical
  tabular classifier; it needs a DataFrame with column names, not a bare array).
* ``pyfunc`` — a custom ``mlflow.pyfunc.PythonModel`` whose ``predict`` walks the rows in Python
  (business rules choosing a retention offer per customer).
* ``pyfunc_rowwise`` — the same model, declared row-wise by its author (MLmodel metadata
  ``modelfleet.batchable: true``), which lets Modelfleet batch it; MLflow ignores the flag.
* ``lightgbm`` — a gradient-boosted classifier (LightGBM's scikit-learn API, 100 trees).

The iris model is the demo model that ``modelfleet setup`` registers; it is not built here.

All three are trained on one synthetic customer table (``customers``), so their request bodies
look alike.  The pyfunc's class is pickled *by value* (``cloudpickle.register_pickle_by_value``):
the model servers that load it do not have this ``benchmarks`` folder on their path.
"""

from __future__ import annotations

import os

# Set before mlflow is imported anywhere in this process: benchmarks never phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import importlib.util  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cloudpickle  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sklearn  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.pyfunc import PythonModel  # noqa: E402

PLANS: list[str] = ["basic", "standard", "premium", "enterprise"]
NUMERIC_COLUMNS: list[str] = ["age", "tenure_months", "monthly_spend", "support_calls", "discount"]

# MLflow's advice while saving (no input example, integer columns cannot hold missing values)
# is meant for someone logging their own model; here it would bury the benchmark's output.
warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")


def customers(rows: int, *, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A customer table (one string column, ``plan``, and five numbers) and whether each churned."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "plan": pd.Series(rng.choice(PLANS, rows), dtype=str),
            "age": rng.integers(18, 80, rows).astype(np.int64),
            "tenure_months": rng.integers(0, 120, rows).astype(np.int64),
            "monthly_spend": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "support_calls": rng.poisson(1.5, rows).astype(np.int64),
            "discount": np.round(rng.uniform(0, 0.3, rows), 3),
        }
    )
    score = (
        0.4 * frame["support_calls"]
        - frame["tenure_months"] / 30
        + (frame["plan"] == "basic") * 0.8
        - frame["discount"] * 3
        + rng.normal(0, 0.5, rows)
    )
    return frame, pd.Series((score > 0).astype(np.int64), name="churned")


def lightgbm_available() -> bool:
    return importlib.util.find_spec("lightgbm") is not None


def save_pipeline(path: Path) -> pd.DataFrame:
    """Save the one-hot + passthrough → LogisticRegression pipeline; return rows to query it with."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    features, labels = customers(2000)
    model = Pipeline(
        [
            (
                "encode",
                ColumnTransformer(
                    [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])], remainder="passthrough"
                ),
            ),
            ("classify", LogisticRegression(max_iter=1000)),
        ]
    ).fit(features, labels)
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels),
        # Explicit requirements skip mlflow's inference, which re-loads the model in a subprocess.
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    return customers(100, seed=1)[0]


class RetentionOffer(PythonModel):
    """Business rules, one customer at a time: which retention offer to make (a string per row)."""

    def __init__(self) -> None:
        self.plan_spend = {"basic": 20.0, "standard": 45.0, "premium": 90.0, "enterprise": 200.0}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        offers = []
        for row in model_input.itertuples(index=False):
            expected = self.plan_spend.get(row.plan, 45.0)
            if row.tenure_months < 3:
                offers.append("welcome_call")
            elif row.support_calls >= 4 and row.plan in ("premium", "enterprise"):
                offers.append("account_manager")
            elif row.monthly_spend > 1.5 * expected and row.discount < 0.1:
                offers.append("loyalty_discount")
            elif row.age >= 65:
                offers.append("senior_plan")
            else:
                offers.append("none")
        return offers


def save_pyfunc(path: Path, *, rowwise: bool = False) -> pd.DataFrame:
    """Save the per-row rules model as a pyfunc with a signature; return rows to query it with.

    ``rowwise``: its author declares that its predict looks at one row at a time (MLmodel
    metadata ``{"modelfleet": {"batchable": true}}``, see runtime/model_server/batchable.py), so
    Modelfleet may answer concurrent requests with one call; the same model otherwise.
    """
    features, _ = customers(100, seed=1)
    model = RetentionOffer()
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        mlflow.pyfunc.save_model(
            str(path),
            python_model=model,
            signature=infer_signature(features, model.predict(None, features)),
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
            metadata={"modelfleet": {"batchable": True}} if rowwise else None,
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return features


def save_lightgbm(path: Path) -> pd.DataFrame:
    """Save a 100-tree LightGBM classifier on the numeric columns; return rows to query it with."""
    import lightgbm
    import mlflow.lightgbm

    features, labels = customers(2000)
    features = features[NUMERIC_COLUMNS]
    model = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(features, labels)
    mlflow.lightgbm.save_model(
        model,
        str(path),
        signature=infer_signature(features, labels),
        pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
    )
    return customers(100, seed=1)[0][NUMERIC_COLUMNS]
