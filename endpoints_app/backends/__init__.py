"""Serving substrates behind one small interface (apply, status, logs, remove).

The control plane never talks to replicas except through a backend. ``local`` runs model servers
as processes on this host through the runtime agent; a distributed engine or a remote
Databricks-compatible workspace would be another backend with the same four calls.
"""

from __future__ import annotations

from endpoints_app.backends.base import EntityStatus, ServingBackend
from endpoints_app.backends.local import LocalBackend


def get_backend() -> ServingBackend:
    return LocalBackend()


__all__ = ["EntityStatus", "ServingBackend", "get_backend"]
