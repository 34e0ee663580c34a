"""Registered models (``/api/2.0/modelfleet/models``): a version as the upload answers it."""

from __future__ import annotations

from typing import Any

from endpoints_app.registry import ModelVersionInfo


def serialize_model_version(info: ModelVersionInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "source": info.source, "status": info.status}
