"""Serving substrates behind one small interface (apply, status, logs, remove).

The control plane never talks to replicas except through a backend. ``local`` runs model servers
as processes on this host through the runtime agent; a distributed engine or a remote
Databricks-compatible workspace would be another backend with the same four calls.
"""

from __future__ import annotations

from django.conf import settings

from endpoints_app.backends.base import EntityStatus, ServingBackend
from endpoints_app.backends.local import LocalBackend
from endpoints_app.backends.ray import RayBackend


def get_backend() -> ServingBackend:
    if settings.SERVING_BACKEND == "ray":  # replicas on a Ray cluster (MODELFLEET_BACKEND=ray)
        return RayBackend()
    return LocalBackend()


__all__ = ["EntityStatus", "ServingBackend", "get_backend"]
