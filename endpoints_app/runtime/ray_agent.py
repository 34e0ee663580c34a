"""The ray runtime: the runtime agent's loop, with replicas placed on the nodes of a Ray cluster.

``MODELFLEET_BACKEND=ray`` runs this instead of the local agent (runtime/agent_main.py). It is
the same reconciler (runtime/agent.py: builds, desired replicas, readiness, restarts with
backoff, crash loops, autoscaling, scale to zero, drains); what differs is where a replica runs:

* **Placement.** Each replica is a Ray actor (runtime/ray_replica.py) that runs the model server
  as a child process on its node. The agent picks the node: one whose room (its Ray resources
  less the replicas this agent placed there) holds the replica's CPUs, memory and GPUs
  (capacity.ray_replica_resources), preferring the node with the fewest replicas of the same
  deployment, so the replicas of one served entity spread across nodes; Ray reserves the
  resources (``NodeAffinitySchedulingStrategy``, hard). A replica no node could ever hold fails
  the deployment with what is missing; one the nodes are merely too full for waits.
* **Artifacts.** The control plane builds the model as for the local runtime, packs it into a
  tarball once per deployment and puts it into Ray's object store with its SHA-256; a node
  fetches it only when its cache lacks that digest and checks it before unpacking.
* **Logs.** Each poll of a replica brings its new log lines; they are appended to the
  deployment's server.log on the control plane, which the backend (backends/ray.py) reads.
* **Node loss.** A replica whose actor fails, or does not answer for MODELFLEET_RAY_NODE_LOST_SECONDS,
  is lost: its row is FAILED (the gateway stops routing to it; queries already sent there are
  retried once on another replica), its node is avoided for a minute, and a new replica starts
  after the usual backoff on another node.

Nothing phones home: RAY_USAGE_STATS_ENABLED=0 before Ray is imported, no dashboard is started
from here, and the agent talks only to MODELFLEET_RAY_ADDRESS.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from endpoints_app import capacity
from endpoints_app.models import Deployment, Replica, ReplicaState, RuntimeHost
from endpoints_app.runtime import ray_replica
from endpoints_app.runtime.agent import Agent, DeploymentRuntime, ReplicaProc, replica_environment
from endpoints_app.runtime.credentials import new_credential
from endpoints_app.runtime.layout import log_path

log = logging.getLogger("modelfleet.runtime.ray")

POLL_SECONDS = 0.5
SUSPECT_SECONDS = 60.0
HOST_PREFIX = capacity.RAY_HOST_PREFIX


def connect(address: str) -> Any:
    """Ray, connected to the cluster at ``address`` (ray://host:port through Ray Client, or a GCS's host:port)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import ray

    if not ray.is_initialized():
        ray.init(
            address=address,
            namespace="modelfleet",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    return ray


@dataclass
class Node:
    node_id: str
    address: str
    cpus: float
    memory_mb: float
    gpus: list[dict] = field(default_factory=list)


def cluster_nodes(ray: Any) -> list[Node]:
    """The live nodes and their Ray resources (a node without CPUs, such as a head started with
    ``--num-cpus 0``, holds no replicas)."""
    nodes = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        res = info.get("Resources") or {}
        accelerator = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), "GPU")
        gpus = [{"index": str(i), "name": accelerator, "memory_mb": 0} for i in range(int(res.get("GPU", 0)))]
        nodes.append(
            Node(
                node_id=info["NodeID"],
                address=info["NodeManagerAddress"],
                cpus=float(res.get("CPU", 0.0)),
                memory_mb=float(res.get("memory", 0.0)) / 2**20,
                gpus=gpus,
            )
        )
    return nodes


class ActorProcess:
    """A replica's actor, behind the part of ``subprocess.Popen`` the agent uses (poll, terminate,
    kill, wait, pid). Every call returns at once: answers are collected on later polls."""

    def __init__(self, *, ray: Any, actor: Any, start_ref: Any, deployment_id: int, node: Node, need: Any) -> None:
        self.ray = ray
        self.actor = actor
        self.start_ref = start_ref
        self.deployment_id = deployment_id
        self.node = node
        self.need = need
        self.started_at = time.monotonic()
        self.pid: int | None = None
        self.returncode: int | None = None
        self.lost = False
        self.answer: dict | None = None  # what start() returned
        self.start_error = ""
        self.poll_ref: Any = None
        self.poll_sent = 0.0
        self.log_offset = 0
        self.disposed = False

    # --- what the agent calls ---

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        now = time.monotonic()
        if self.start_ref is not None:
            if not self._ready(self.start_ref):
                return None
            try:
                self.answer = self.ray.get(self.start_ref)
            except Exception as exc:
                self.start_error = _error_text(exc)
                self._exited(1 if _is_task_error(exc) else -1, lost=not _is_task_error(exc), note=self.start_error)
                return self.returncode
            self.start_ref = None
            self.pid = self.answer.get("pid")
            return None
        if self.poll_ref is not None:
            if self._ready(self.poll_ref):
                try:
                    result = self.ray.get(self.poll_ref)
                except Exception as exc:
                    self._exited(-1, lost=True, note=f"replica lost on node {self.node.address}: {_error_text(exc)}")
                    return self.returncode
                self.poll_ref = None
                self._mirror(result["data"], result["offset"])
                if result["exit_code"] is not None:
                    self._exited(int(result["exit_code"]), lost=False, note="")
            elif now - self.poll_sent > settings.RAY_NODE_LOST_SECONDS:
                self._exited(
                    -1,
                    lost=True,
                    note=f"replica lost: node {self.node.address} did not answer for {settings.RAY_NODE_LOST_SECONDS:g} s",
                )
            return self.returncode
        if now - self.poll_sent >= POLL_SECONDS:
            self.poll_ref = self.actor.poll.remote(self.log_offset)
            self.poll_sent = now
        return None

    def terminate(self) -> None:
        if self.returncode is None and self.start_ref is None:
            self.actor.stop.remote(False)
        elif self.returncode is None:
            self.kill()

    def kill(self) -> None:
        if self.returncode is None:
            self._exited(-9, lost=False, note="")

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("ray replica", timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    # --- internals ---

    def _ready(self, ref: Any) -> bool:
        ready, _ = self.ray.wait([ref], timeout=0)
        return bool(ready)

    def _mirror(self, data: bytes, offset: int) -> None:
        """Append the replica's new whole lines to the deployment's server.log on the control plane."""
        if not data:
            return
        end = data.rfind(b"\n")
        if end < 0 and len(data) < ray_replica.MAX_LOG_CHUNK:
            return  # wait for the rest of the line
        keep = data if end < 0 else data[: end + 1]
        with open(log_path(self.deployment_id, "server"), "ab") as fh:
            fh.write(keep)
        self.log_offset = offset - len(data) + len(keep)

    def _exited(self, code: int, *, lost: bool, note: str) -> None:
        self.returncode = code
        self.lost = lost
        if note:
            with open(log_path(self.deployment_id, "server"), "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runtime: {note}\n")
        self.dispose()

    def dispose(self) -> None:
        """Stop the actor (its model server dies with it) after letting it remove its folder."""
        if self.disposed:
            return
        self.disposed = True
        if not self.lost:
            try:
                self.ray.get(self.actor.cleanup.remote(), timeout=5)
            except Exception:  # gone already, or slow: the kill below ends it either way
                pass
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:
            pass


def _is_task_error(exc: Exception) -> bool:
    """The actor ran and raised (the start failed on the node), rather than being lost."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayTaskError)


def _error_text(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


class RayAgent(Agent):
    def __init__(self, *, agent_id: str) -> None:
        super().__init__(agent_id=agent_id)
        self.ray = connect(settings.RAY_ADDRESS)
        self.actor_class = self.ray.remote(ray_replica.ReplicaHost)
        self.artifacts: dict[int, tuple[str, Any]] = {}  # deployment id → (digest, ObjectRef)
        self.suspect: dict[str, float] = {}  # node id → when a replica was lost there
        self.waiting_noted: set[int] = set()
        self.gpus = []
        self.spares: dict[str, tuple[Any, Node]] = {}  # node id → a warm spare actor there
        nodes = cluster_nodes(self.ray)
        log.info(
            "ray runtime connected to %s: %d live node(s), %g CPUs for replicas",
            settings.RAY_ADDRESS,
            len(nodes),
            sum(n.cpus for n in nodes),
        )

    # --- what differs from the local runtime ---------------------------------------------------

    def _choose_replica_user(self) -> str:
        return ""  # decided on each node (ray_replica._replica_user)

    def _spawn_standby(self) -> None:
        return None  # no warm standby on remote nodes

    def _close_data_dir_to_others(self) -> None:
        return None  # no replica runs on this host

    def forget_previous_run(self) -> None:
        """Replicas an earlier run placed belonged to its Ray job, which ended with it."""
        Replica.objects.filter(agent_id__startswith=HOST_PREFIX).exclude(state=ReplicaState.STOPPED).update(
            state=ReplicaState.STOPPED, stopped_at=timezone.now(), message="ray runtime restarted"
        )

    def heartbeat(self) -> None:
        """One RuntimeHost row per live Ray node (the API's capacity check reads them)."""
        self.last_heartbeat = time.monotonic()
        nodes = cluster_nodes(self.ray)
        now = timezone.now()
        names = []
        for node in nodes:
            name = HOST_PREFIX + node.address
            names.append(name)
            RuntimeHost.objects.update_or_create(
                agent_id=name,
                defaults={
                    "memory_mb": int(node.memory_mb),
                    "cpus": int(node.cpus),
                    "gpus": node.gpus,
                    "heartbeat_at": now,
                },
            )
        RuntimeHost.objects.filter(agent_id__startswith=HOST_PREFIX).exclude(agent_id__in=names).delete()
        self.gpus = [g for node in nodes for g in node.gpus]
        self._keep_spares(nodes)
        # Models of stopped deployments leave the object store.
        live = set(Deployment.objects.filter(stopped_at__isnull=True).values_list("id", flat=True))
        for deployment_id in [d for d in self.artifacts if d not in live]:
            self.artifacts.pop(deployment_id, None)

    def _keep_spares(self, nodes: list[Node]) -> None:
        """One warm spare on every trusted node with room for a CPU replica; none on lost nodes."""
        alive = {n.node_id for n in nodes}
        for node_id in list(self.spares):
            if node_id not in alive or node_id in self.suspect:
                self._drop_spare(node_id)
        if not settings.RAY_WARM_SPARES:
            return
        need = capacity.ray_replica_resources("CPU")
        rooms = self._rooms(nodes)
        for node in nodes:
            if node.node_id in self.spares or node.node_id in self.suspect or rooms[node.node_id].fits(need):
                continue
            actor = self.actor_class.options(**self._actor_options(node, need)).remote(True)
            self.spares[node.node_id] = (actor, node)

    def _drop_spare(self, node_id: str) -> None:
        spare = self.spares.pop(node_id, None)
        if spare is not None:
            try:
                spare[0].cleanup.remote()
                self.ray.kill(spare[0], no_restart=True)
            except Exception:
                pass

    def _actor_options(self, node: Node, need: capacity.ReplicaResources) -> dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options: dict[str, Any] = {
            "num_cpus": need.cpus,
            "memory": need.memory_mb * 2**20,
            "num_gpus": need.gpus,
            "max_restarts": 0,
            "max_concurrency": 2,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False),
        }
        if need.accelerator:
            options["accelerator_type"] = need.accelerator
        return options

    def _rooms(self, nodes: list[Node]) -> dict[str, capacity.NodeRoom]:
        """Each node's room left by this runtime's replicas and spares."""
        rooms = {n.node_id: capacity.NodeRoom(n.address, n.cpus, n.memory_mb, list(n.gpus)) for n in nodes}
        for proc in self.procs.values():
            actor = proc.popen
            if isinstance(actor, ActorProcess) and actor.returncode is None and actor.node.node_id in rooms:
                rooms[actor.node.node_id].take(actor.need)
        spare_need = capacity.ray_replica_resources("CPU")
        for node_id in self.spares:
            if node_id in rooms:
                rooms[node_id].take(spare_need)
        return rooms

    def _release(self, proc: ReplicaProc) -> None:
        actor = proc.popen
        if isinstance(actor, ActorProcess):
            if actor.lost:
                self.suspect[actor.node.node_id] = time.monotonic()
                self.last_heartbeat = 0.0  # refresh the node list on the next pass
            actor.dispose()
        self.procs.pop(proc.replica_id, None)

    def _check_replica(self, deployment: Deployment, rt: DeploymentRuntime, proc: ReplicaProc, now: float) -> None:
        actor = proc.popen
        if isinstance(actor, ActorProcess) and not proc.port:
            code = actor.poll()
            if code is None and actor.answer is not None:
                proc.port = int(actor.answer["port"])
                proc.host = str(actor.answer["host"])
                Replica.objects.filter(id=proc.replica_id).update(
                    host=proc.host, port=proc.port, message=f"on Ray node {proc.host} as {actor.answer.get('user')}"
                )
            elif code is None:
                if now - proc.started > self.ready_timeout:
                    self._server_log_note(
                        deployment.id, f"replica {proc.index} was not placed within {self.ready_timeout:.0f}s"
                    )
                    actor.kill()
                return
        super()._check_replica(deployment, rt, proc, now)

    def _artifact(self, deployment: Deployment) -> tuple[str, Any]:
        """The deployment's model in Ray's object store, packed once: (SHA-256, reference)."""
        cached = self.artifacts.get(deployment.id)
        if cached is None:
            data, digest = ray_replica.pack_model(Path(deployment.model_path))
            cached = self.artifacts[deployment.id] = (digest, self.ray.put(data))
            self._server_log_note(deployment.id, f"model packed for the Ray nodes: {len(data)} bytes, sha256 {digest}")
        return cached

    def _choose_node(self, deployment: Deployment, need: capacity.ReplicaResources) -> tuple[Node | None, str]:
        """The node for a new replica of ``deployment``, or None and why (``"never: …"`` when no
        node of the cluster could hold it even empty)."""
        nodes = cluster_nodes(self.ray)
        rooms = self._rooms(nodes)
        same: dict[str, int] = {}
        for proc in self.procs.values():
            actor = proc.popen
            if isinstance(actor, ActorProcess) and actor.returncode is None and proc.deployment_id == deployment.id:
                same[actor.node.node_id] = same.get(actor.node.node_id, 0) + 1
        now = time.monotonic()
        self.suspect = {k: t for k, t in self.suspect.items() if now - t < SUSPECT_SECONDS}
        # A node's spare is room for a CPU replica (it becomes one), and is given up for a GPU one.
        spare_need = capacity.ray_replica_resources("CPU")
        for node_id in self.spares:
            if node_id in rooms and not need.gpus:
                room = rooms[node_id]
                room.cpus, room.memory_mb = room.cpus + spare_need.cpus, room.memory_mb + spare_need.memory_mb
        fitting = [n for n in nodes if not rooms[n.node_id].fits(need)]
        if fitting:
            trusted = [n for n in fitting if n.node_id not in self.suspect] or fitting
            best = min(
                trusted,
                key=lambda n: (same.get(n.node_id, 0), n.node_id not in self.spares, -rooms[n.node_id].cpus, n.address),
            )
            return best, ""
        empty = [(n, capacity.NodeRoom(n.address, n.cpus, n.memory_mb, list(n.gpus)).fits(need)) for n in nodes]
        if not nodes or all(missing for _, missing in empty):
            if not nodes:
                return None, "never: the Ray cluster has no live node"
            node, missing = min(empty, key=lambda v: len(v[1]))
            return None, (
                f"never: no node of the Ray cluster can hold a replica of {need.describe()}; "
                f"the closest ({node.address}) lacks {', '.join(missing)}"
            )
        return None, f"the Ray nodes are full: waiting for room for a replica of {need.describe()}"

    def _start_replica(self, deployment: Deployment, rt: DeploymentRuntime) -> None:
        try:
            model_env = replica_environment(deployment.spec.get("environment_vars") or {})
        except ValueError as exc:
            self._fail(deployment, str(exc))
            return
        need = capacity.ray_replica_resources(deployment.spec.get("workload_type"))
        node, why = self._choose_node(deployment, need)
        if node is None:
            if why.startswith("never: "):
                self._fail(deployment, f"Cannot place the model server: {why[len('never: ') :]}.")
                return
            if deployment.id not in self.waiting_noted:
                self.waiting_noted.add(deployment.id)
                self._server_log_note(deployment.id, why)
            rt.next_start_at = time.monotonic() + 2.0
            return
        self.waiting_noted.discard(deployment.id)
        digest, ref = self._artifact(deployment)
        index = rt.next_index
        rt.next_index += 1
        credential = new_credential()
        spare = self.spares.pop(node.node_id, None)
        if spare is not None and not need.gpus:
            actor = spare[0]  # warm: becomes this replica
            self.last_heartbeat = 0.0  # a new spare where room allows, on the next pass
        else:
            if spare is not None:
                self.spares[node.node_id] = spare
                self._drop_spare(node.node_id)
            actor = self.actor_class.options(**self._actor_options(node, need)).remote()
        assignment = {
            "deployment_id": deployment.id,
            "index": index,
            "name": deployment.served_entity_name,
            "credential": credential,
            "env": model_env,
            "gpus": need.gpus,
        }
        start_ref = actor.start.remote(assignment, [digest, ref])
        log_path(deployment.id, "server").parent.mkdir(parents=True, exist_ok=True)
        process = ActorProcess(
            ray=self.ray, actor=actor, start_ref=start_ref, deployment_id=deployment.id, node=node, need=need
        )
        replica = Replica.objects.create(
            deployment=deployment,
            agent_id=HOST_PREFIX + node.address,
            index=index,
            host=node.address,
            port=0,
            pid=None,
            credential=credential,
            message=f"placed on Ray node {node.address}",
        )
        self.procs[replica.id] = ReplicaProc(
            replica.id,
            deployment.id,
            index,
            0,
            process,  # type: ignore[arg-type]  # an ActorProcess stands in for the Popen
            credential=credential,
            host=node.address,
        )
        log.info("placed replica %s of %s on Ray node %s (%s)", index, deployment, node.address, need.describe())
