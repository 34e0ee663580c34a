"""The build step of a deployment: resolve the model version and copy its files, logging each step.

The model server then loads from the deployment's own copy, so a later change to the registry or
the model store cannot change what a running deployment serves.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import yaml
from django.conf import settings

from endpoints_app import registry
from endpoints_app.errors import DomainError

if TYPE_CHECKING:  # the model classes need the app registry, which the caller has set up
    from endpoints_app.models import Deployment


class BuildError(Exception):
    """A build failed for a reason the user can act on; the message says which."""


def _log(fh: TextIO, message: str) -> None:
    fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    fh.flush()


def prepare_model(deployment: Deployment, target: Path, fh: TextIO) -> Path:
    started = time.monotonic()
    _log(fh, f"Building {deployment.endpoint_name}/{deployment.served_entity_name} (deployment {deployment.pk})")
    _log(
        fh,
        f"Resolving model '{deployment.model_name}' version {deployment.model_version} in the registry at {_redact(settings.MLFLOW_TRACKING_URI)}",
    )
    try:
        info = registry.get_model_version(deployment.model_name, deployment.model_version)
    except DomainError as exc:
        _log(fh, f"ERROR {exc.message}")
        raise BuildError(exc.message) from None
    _log(fh, f"Model source: {info.source}")

    if target.exists():
        shutil.rmtree(target)
    source_path = Path(info.source.removeprefix("file://"))
    try:
        if source_path.is_dir():
            shutil.copytree(source_path, target)
        else:
            import mlflow.artifacts  # slow to import, and needed only for a remote model store

            _log(fh, "Downloading model artifacts")
            mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(target))
    except Exception as exc:
        _log(fh, f"ERROR could not copy the model files: {exc}")
        raise BuildError(f"Could not copy the model files from {info.source}: {exc}") from None

    mlmodel = target / "MLmodel"
    if not mlmodel.is_file():
        _log(fh, "ERROR the model has no MLmodel file")
        raise BuildError(f"Model '{deployment.model_name}' version {deployment.model_version} has no MLmodel file")
    try:
        meta = yaml.safe_load(mlmodel.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BuildError(f"The MLmodel file is not valid YAML: {exc}") from None
    flavors = meta.get("flavors") or {}
    _log(fh, f"Flavors: {', '.join(flavors) or 'none'}")
    if "python_function" not in flavors:
        _log(fh, "ERROR the model has no python_function flavor")
        raise BuildError("The model has no python_function flavor, so it cannot be served")
    model_python = (flavors.get("python_function") or {}).get("python_version")
    ours = platform.python_version()
    if model_python and model_python.rsplit(".", 1)[0] != ours.rsplit(".", 1)[0]:
        _log(fh, f"WARNING the model was logged with Python {model_python}; the runtime runs Python {ours}")
    requirements = target / "requirements.txt"
    if requirements.is_file():
        reqs = [
            line.strip() for line in requirements.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        _log(fh, f"Model requirements: {', '.join(reqs) or 'none'}")
    _log(fh, "Using the runtime's Python environment (env_manager=local)")
    _log(fh, f"Build finished in {time.monotonic() - started:.1f}s")
    return target


def _redact(uri: str) -> str:
    """A tracking URI without credentials."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
