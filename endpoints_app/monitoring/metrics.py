"""Metric polling, series and export (being written)."""

from endpoints_app.models import Endpoint


def poll_metrics(endpoint: Endpoint) -> None:
    return None


def rollup() -> None:
    return None


def prune() -> int:
    return 0
