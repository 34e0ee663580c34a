"""The model registry: MLflow's Model Registry at ``MLFLOW_TRACKING_URI``.

``entity_name`` + ``entity_version`` of a served entity name a model version here. Registering a
model directory copies it into the data dir's model store first, so the registry never points at
a folder the user may delete later.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from django.conf import settings  # noqa: E402

from endpoints_app.errors import InvalidParameterValue, ResourceDoesNotExist  # noqa: E402

if TYPE_CHECKING:  # MLflow takes seconds to import: processes that never touch the registry skip it
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    source: str
    status: str
    run_id: str
    creation_timestamp: int


@lru_cache(maxsize=4)
def _client_for(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client() -> MlflowClient:
    return _client_for(settings.MLFLOW_TRACKING_URI)


def _info(mv: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        source=mv.source or "",
        status=str(mv.status or "READY"),
        run_id=mv.run_id or "",
        creation_timestamp=int(mv.creation_timestamp or 0),
    )


def get_model_version(name: str, version: str) -> ModelVersionInfo:
    """The registered version, or RESOURCE_DOES_NOT_EXIST naming what is missing."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        raise ResourceDoesNotExist(f"Registered model '{name}' does not exist in the model registry") from None
    try:
        return _info(c.get_model_version(name, str(version)))
    except MlflowException:
        raise ResourceDoesNotExist(f"Model version '{version}' of registered model '{name}' does not exist") from None


def register_model_dir(path: Path, name: str, *, description: str = "") -> ModelVersionInfo:
    """Copy an MLflow model directory into the model store and register it as a new version."""
    from mlflow.exceptions import MlflowException

    path = Path(path)
    if not (path / "MLmodel").is_file():
        raise InvalidParameterValue(f"'{path.name}' is not an MLflow model directory: it has no MLmodel file")
    if not name or "/" in name or len(name) > 256:
        raise InvalidParameterValue(f"model name '{name}' is invalid")
    target = Path(settings.MODEL_STORE_DIR) / _safe(name) / uuid.uuid4().hex
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(path, target, symlinks=False)
    c = client()
    try:
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, description=description or None)
        mv = c.create_model_version(name=name, source=str(target), description=description or None)
    except MlflowException as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidParameterValue(f"could not register model '{name}': {exc.message}") from None
    return _info(mv)


def list_registered_models(name: str | None = None) -> list[dict]:
    from mlflow.exceptions import MlflowException

    c = client()
    models = []
    if name:
        # One name is looked up, not searched for: a filter string cannot quote a name holding a
        # quote (the API's ?name= is any text; found by tests/test_fuzz_api.py, a 500 before).
        try:
            found = [c.get_registered_model(name)]
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            found = []
    else:
        found = c.search_registered_models(max_results=1000)
    for rm in found:
        versions = c.search_model_versions(f"name = '{rm.name}'", max_results=1000)
        models.append(
            {
                "name": rm.name,
                "description": rm.description or "",
                "creation_timestamp": int(rm.creation_timestamp or 0),
                "last_updated_timestamp": int(rm.last_updated_timestamp or 0),
                "versions": [
                    {
                        "version": str(v.version),
                        "status": str(v.status or "READY"),
                        "creation_timestamp": int(v.creation_timestamp or 0),
                        "source": v.source or "",
                        "run_id": v.run_id or "",
                    }
                    for v in sorted(versions, key=lambda v: int(v.version))
                ],
            }
        )
    return models


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
