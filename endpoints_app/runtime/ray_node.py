"""Start a Ray node for Modelfleet's replicas without anything phoning home.

``python -m endpoints_app.runtime.ray_node start --head|--address ... --node-ip-address ADDR ...``
takes ``ray start``'s arguments and runs ``ray start`` with these settings (docker-compose.yml's
ray profile and the tests' cluster, tests/ray_cluster.py, start their nodes this way):

* ``--node-ip-address`` is required: without it Ray finds the node's address with a UDP
  ``connect()`` to 8.8.8.8:53 (ray._private.services.get_node_ip_address).
* Even with it, Ray processes still run that probe whenever they ask for "this node's address"
  before they are connected to a node: ``ray start`` itself (the head computes the fallback before
  looking at the flag; a joining node checks its version against the cluster's, naming itself) and
  every node's runtime-env agent (for the prefix of its log lines). No setting of Ray covers the
  first: here, in ``ray start``'s own process, that question is answered with ``--node-ip-address``
  (ray._private.services.get_node_ip_address, wrapped). For the second, the processes the node
  starts get ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, with which Ray answers with the loopback
  address instead of probing (connected processes, the replicas' workers among them, still get the
  node's address from their node). ``ray start`` itself must not see that switch: with it, a
  joining node refuses to start.
* Usage stats off (``RAY_USAGE_STATS_ENABLED=0``). With them off Ray still starts a dashboard process
  on the head that runs only its usage module, which asks the cloud metadata servers
  (169.254.169.254, metadata.google.internal) which cloud it is on unless
  ``~/ray_bootstrap_config.yaml`` exists (written here, empty, when it does not), and then sends a
  "usage stats disabled" report to usage-stats.ray.io unless ``RAY_USAGE_STATS_REPORT_URL`` points
  elsewhere (here: the node's own loopback, where nothing listens).

This module imports nothing of Django (it runs on Ray nodes, which have no database).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
NO_IP_PROBE = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
BOOTSTRAP_CONFIG = (
    "# Written by Modelfleet (endpoints_app/runtime/ray_node.py): while this file exists, Ray's usage\n"
    "# module reads it instead of asking cloud metadata servers which cloud this node is on.\n{}\n"
)


def node_ip(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--node-ip-address="):
            return arg.split("=", 1)[1]
        if arg == "--node-ip-address" and i + 1 < len(argv):
            return argv[i + 1]
    raise ValueError("no --node-ip-address")


def answer_node_ip(address: str) -> None:
    """In this process, "this node's address" without a connected node is ``address`` (not a probe)."""
    import ray
    import ray._private.services as services
    import ray._private.worker

    probing = services.get_node_ip_address

    def get_node_ip_address(perspective: str | None = None) -> str:
        if perspective is None and ray._private.worker._global_node is None:
            return address
        return probing(perspective)

    services.get_node_ip_address = get_node_ip_address
    ray.util.get_node_ip_address = get_node_ip_address


def prepare(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Set the quiet environment and write ~/ray_bootstrap_config.yaml when missing; returns its path."""
    environ.update(QUIET_ENV)
    home = Path(environ.get("HOME") or Path.home())
    bootstrap = home / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text(BOOTSTRAP_CONFIG)
    return bootstrap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "start":
        print("usage: python -m endpoints_app.runtime.ray_node start [ray start's options]", file=sys.stderr)
        return 2
    if not any(a == "--node-ip-address" or a.startswith("--node-ip-address=") for a in argv[1:]):
        print(
            "ray_node: pass --node-ip-address (without it Ray finds the node's address by a UDP connect to 8.8.8.8)",
            file=sys.stderr,
        )
        return 2
    prepare()
    from ray.scripts.scripts import cli

    answer_node_ip(node_ip(argv))
    os.environ[NO_IP_PROBE[0]] = NO_IP_PROBE[1]  # for the node's processes: see the module docstring
    cli.main(args=argv, prog_name="ray")
    return 0


if __name__ == "__main__":
    sys.exit(main())
