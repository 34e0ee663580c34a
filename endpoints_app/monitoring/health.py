"""Endpoint health from the status polls (to be written)."""

from endpoints_app.models import Endpoint


def poll_status(endpoint: Endpoint) -> None:
    return None
