"""The runtime agent's process: ``modelfleet runtime`` and ``python -m endpoints_app.runtime.agent_main``.

The agent reads and writes the database through Django's models, which exist only once Django is
set up; so this process main configures Django first and imports the agent after. It is one of
the declared entry points that import inside a function (tests/test_import_graph.py).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(args: argparse.Namespace | None = None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import django

    django.setup()
    from endpoints_app.observability import processes
    from endpoints_app.runtime import agent

    processes.start("agent")  # the heartbeat /metrics reads

    from django.conf import settings

    if settings.SERVING_BACKEND == "ray":  # replicas on a Ray cluster's nodes (runtime/ray_agent.py)
        from endpoints_app.runtime import ray_agent

        return agent.run(args, agent_class=ray_agent.RayAgent)
    return agent.run(args)


if __name__ == "__main__":
    sys.exit(main())
