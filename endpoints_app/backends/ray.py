"""The ray backend: replicas on the nodes of a Ray cluster (``MODELFLEET_BACKEND=ray``).

The control plane's side is the local backend's: desired state in the database (deployments,
replicas), reconciled by the runtime agent, which with this backend is the ray runtime
(runtime/ray_agent.py): it places each replica as a Ray actor on a node, ships the model through
Ray's object store, and mirrors each replica's log into the deployment's server.log here. So
apply, status, remove, wake and coming_up are the local backend's; ``ready_replicas`` gives the
nodes' own addresses (the gateway routes to the replicas directly, without Ray in the path);
``logs`` and ``read_log`` read what the runtime brought back from the nodes. What a config asks
of the cluster is checked before anything is written (capacity.check_fits_ray).
"""

from __future__ import annotations

from endpoints_app.backends.local import LocalBackend


class RayBackend(LocalBackend):
    """The local backend's bookkeeping; the ray runtime does the placing (see the module docstring)."""

    name = "ray"
