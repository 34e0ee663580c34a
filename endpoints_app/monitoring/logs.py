"""Log lines polled into the database (to be written)."""

from endpoints_app.models import Endpoint


def poll_logs(endpoint: Endpoint) -> None:
    return None


def prune_logs() -> int:
    return 0
