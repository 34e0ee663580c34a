"""What the runtime agent and the local backend agree on: where a deployment's files lie on disk,
and the Redis list that wakes the agent.

The agent (its own process) writes a deployment's model and logs; the local backend (in web and
worker processes) reads the logs and asks for wake-ups. Both import this module and neither
imports the other.

Under ``RUNTIME_DIR``::

    deployments/<deployment id>/model        the model files the build copied
    deployments/<deployment id>/build.log    the build's steps
    deployments/<deployment id>/server.log   the model server's stdout and stderr
    scratch/, standby.log                    replicas' writable folders, the standby's log (the agent's alone)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from django.conf import settings

LogKind = Literal["server", "build"]

# A Redis list: the gateway pushes a deployment id when a query waits for a scaled-to-zero one.
WAKE_QUEUE = "mf:runtime:wake"


def deployments_root(runtime_dir: Path | None = None) -> Path:
    return Path(settings.RUNTIME_DIR if runtime_dir is None else runtime_dir) / "deployments"


def deployment_dir(deployment_id: int) -> Path:
    return deployments_root() / str(deployment_id)


def log_path(deployment_id: int, kind: LogKind) -> Path:
    return deployment_dir(deployment_id) / f"{kind}.log"


def read_tail(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of a log as text, from its first whole line; "" when there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:  # drop the partial first line
        text = text.split("\n", 1)[-1]
    return text
