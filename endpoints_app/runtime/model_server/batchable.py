"""Which models may answer concurrent requests with one predict call: those that predict every
row on its own, so that a row's answer is the same whichever rows share the call.

Decided once, when the model loads (``decide_batching``), from the first of these that speaks:

1. ``MODELFLEET_BATCHABLE=true|false`` in the served entity's ``environment_vars``: whoever
   serves the model has the last word, and ``false`` turns batching off even for a flavour that
   would batch (a model that normalises by its input, say, logged with a row-wise flavour).
2. The model's own declaration in its MLmodel ``metadata``: ``{"modelfleet": {"batchable":
   true}}``, set by its author with ``mlflow.pyfunc.log_model(..., metadata=...)``.  Only the
   author of a custom ``python_model`` knows whether its ``predict`` looks at one row at a time.
3. Its flavour: XGBoost, LightGBM and CatBoost models predict row by row; so do scikit-learn
   estimators and pipelines served with a per-row predict function (``predict``,
   ``predict_proba``...), as long as every step is one of these libraries' own classes and none
   is a FunctionTransformer (a user function that may look at the whole table).

Everything else (custom pyfuncs, deep-learning flavours, time-series models) keeps one predict
call per request: their code may compare, sort or normalise rows.  A value that is neither true
nor false, in either place, fails the model load with a message saying so, rather than being
read as one or the other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.pyfunc import PyFuncModel

ENV_VAR = "MODELFLEET_BATCHABLE"
METADATA_SECTION = "modelfleet"
METADATA_KEY = "batchable"
# pyfunc loader modules whose models predict every row on their own (their wrappers hand the
# whole table to the library's predict, which scores each row with the same trees).
ROW_WISE_LOADERS: dict[str, str] = {
    "mlflow.xgboost": "XGBoost",
    "mlflow.lightgbm": "LightGBM",
    "mlflow.catboost": "CatBoost",
}
# A scikit-learn model's pyfunc predict functions that answer each row on its own ("score"
# needs labels and answers one number for the whole table).
ROW_WISE_PREDICT_FNS = frozenset({"predict", "predict_proba", "predict_log_proba", "predict_joint_log_proba"})
# Libraries whose estimators, inside a scikit-learn pipeline too, transform and predict each row
# on its own once fitted.
ROW_WISE_LIBRARIES = ("sklearn.", "xgboost.", "lightgbm.", "catboost.")
# scikit-learn classes that run user code on the whole table at predict time.
ROW_DEPENDENT_ESTIMATORS = frozenset({"FunctionTransformer"})


class BatchingSettingError(ValueError):
    """MODELFLEET_BATCHABLE or the model's metadata flag is neither true nor false."""


@dataclass(frozen=True)
class Batching:
    """Whether concurrent requests may share one predict call, and why (for the replica's log)."""

    enabled: bool
    reason: str


def decide_batching(model: PyFuncModel, environ: Mapping[str, str] = os.environ) -> Batching:
    """Whether this model may batch: the served entity's setting, else the model's declaration,
    else what its flavour is known to do (see the module docstring).

    Raises:
        BatchingSettingError: MODELFLEET_BATCHABLE or the metadata flag is neither true nor false.
    """
    setting = environ.get(ENV_VAR, "").strip().lower()
    if setting:
        if setting not in ("true", "false"):
            raise BatchingSettingError(f"{ENV_VAR} must be true or false, not {environ[ENV_VAR]!r}")
        return Batching(setting == "true", f"{ENV_VAR}={setting} in the served entity's environment")
    declared = _declared(model.metadata.metadata)
    if declared is not None:
        return Batching(
            declared, f"the model's metadata says {METADATA_SECTION}.{METADATA_KEY}: {str(declared).lower()}"
        )
    pyfunc_conf = model.metadata.flavors.get("python_function", {})
    loader = pyfunc_conf.get("loader_module", "")
    if loader in ROW_WISE_LOADERS:
        return Batching(True, f"a {ROW_WISE_LOADERS[loader]} model predicts row by row")
    if loader == "mlflow.sklearn":
        return _sklearn_batching(model, pyfunc_conf.get("predict_fn", "predict"))
    return Batching(
        False,
        f"a {loader or 'pyfunc'} model is not known to predict row by row "
        f"(its author can declare it in the model's metadata, {{{METADATA_SECTION}: {{{METADATA_KEY}: true}}}}, "
        f"or the served entity with {ENV_VAR}=true)",
    )


def estimator_classes(estimator: Any) -> set[tuple[str, str]]:
    """(module, class name) of the estimator and of every estimator nested in its parameters
    (pipeline steps, column transformers, ensembles' members)."""
    found = {(type(estimator).__module__, type(estimator).__name__)}
    try:
        params = estimator.get_params(deep=True)
    except Exception:
        return found | {("", "unknown")}
    for value in params.values():
        if hasattr(value, "fit"):
            found.add((type(value).__module__, type(value).__name__))
    return found


def _declared(metadata: dict[str, Any] | None) -> bool | None:
    """The author's ``modelfleet.batchable`` flag from the MLmodel metadata, None when absent."""
    section = (metadata or {}).get(METADATA_SECTION)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BatchingSettingError(f"the model's metadata {METADATA_SECTION!r} must be a mapping, not {section!r}")
    value = section.get(METADATA_KEY)
    if value is None or isinstance(value, bool):
        return value
    raise BatchingSettingError(
        f"the model's metadata {METADATA_SECTION}.{METADATA_KEY} must be true or false, not {value!r}"
    )


def _sklearn_batching(model: PyFuncModel, predict_fn: str) -> Batching:
    if predict_fn not in ROW_WISE_PREDICT_FNS:
        return Batching(False, f"its scikit-learn predict function is {predict_fn}")
    classes = estimator_classes(model.get_raw_model())
    foreign = sorted(name for module, name in classes if not module.startswith(ROW_WISE_LIBRARIES))
    if foreign:
        return Batching(False, f"not only scikit-learn's own estimators ({', '.join(foreign)})")
    user_code = sorted({name for _, name in classes} & ROW_DEPENDENT_ESTIMATORS)
    if user_code:
        return Batching(False, f"{', '.join(user_code)} runs user code on the whole table")
    return Batching(True, "a scikit-learn model predicts row by row")
