"""Workload sizes → provisioned concurrency → replicas, and whether a config fits the runtime host.

``workload_size`` is a range of provisioned concurrency (reference §2.7): Small 4, Medium 8–16,
Large 16–64, with a lower bound of 0 when scale-to-zero is on; or the explicit
``min/max_provisioned_concurrency``. One replica takes MODELFLEET_REPLICA_CONCURRENCY requests at
a time (4), so Small is one replica, Medium two to four, Large four to sixteen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings

from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import Deployment, Replica, ReplicaState, RuntimeHost
from endpoints_app.validation import CoreConfig, ServedEntitySpec

SIZE_CONCURRENCY = {"Small": (4, 4), "Medium": (8, 16), "Large": (16, 64)}
GPU_WORKLOAD_PREFIXES = ("GPU_", "MULTIGPU_")


@dataclass(frozen=True)
class ReplicaRange:
    min_concurrency: int
    max_concurrency: int
    min_replicas: int  # 0 only with scale-to-zero
    max_replicas: int


def concurrency_range(
    *, workload_size: str, min_pc: int | None, max_pc: int | None, scale_to_zero: bool
) -> tuple[int, int]:
    if min_pc is not None and max_pc is not None:
        low, high = min_pc, max_pc
    else:
        low, high = SIZE_CONCURRENCY.get(workload_size or "Small", SIZE_CONCURRENCY["Small"])
    return (0 if scale_to_zero else low), high


def replica_range(*, workload_size: str, min_pc: int | None, max_pc: int | None, scale_to_zero: bool) -> ReplicaRange:
    low, high = concurrency_range(
        workload_size=workload_size, min_pc=min_pc, max_pc=max_pc, scale_to_zero=scale_to_zero
    )
    per = settings.REPLICA_CONCURRENCY
    max_replicas = max(1, math.ceil(high / per))
    min_replicas = min(max_replicas, math.ceil(low / per))
    return ReplicaRange(low, high, min_replicas, max_replicas)


def entity_range(entity: ServedEntitySpec) -> ReplicaRange:
    return replica_range(
        workload_size=entity.workload_size,
        min_pc=entity.min_provisioned_concurrency,
        max_pc=entity.max_provisioned_concurrency,
        scale_to_zero=entity.scale_to_zero_enabled,
    )


def is_gpu_workload(workload_type: str) -> bool:
    return workload_type.startswith(GPU_WORKLOAD_PREFIXES)


def check_fits(config: CoreConfig) -> None:
    """Refuse a config the runtime host cannot hold, before anything is deployed or stopped.

    During a rollout the new version's replicas run beside everything already running, so the
    check adds the new config's starting replicas (at least one per entity, even with
    scale-to-zero, until it is ready) to the replicas every live deployment wants now. Without a
    host report (no agent has started yet) there is nothing to check against.
    """
    if settings.SERVING_BACKEND == "ray":
        check_fits_ray(config)
        return
    hosts = list(RuntimeHost.objects.all())
    if not hosts:
        return
    budget_mb = sum(int(h.memory_mb * settings.RUNTIME_MEMORY_FRACTION) for h in hosts)
    per_mb = settings.REPLICA_MEMORY_MB
    running = sum(
        Deployment.objects.filter(stopped_at__isnull=True, remove_requested_at__isnull=True).values_list(
            "desired_replicas", flat=True
        )
    )
    needed = sum(max(1, entity_range(e).min_replicas) for e in config.served_entities)
    if (running + needed) * per_mb > budget_mb:
        free_mb = max(0, budget_mb - running * per_mb)
        raise InvalidParameterValue(
            f"Not enough capacity on the runtime host: this config starts {needed} replica(s) "
            f"({needed} × {per_mb} MB = {needed * per_mb} MB) but only {free_mb} MB of the {budget_mb} MB "
            f"budget is free ({running} replica(s) running). Remove endpoints, or choose a smaller "
            "workload_size or min_provisioned_concurrency."
        )


# --- the ray backend: what one replica asks a Ray node for ---------------------------------------

# A replica takes REPLICA_CONCURRENCY requests at a time, and each request is worth 1 CPU and 4 GB:
# Small (4) is 4 CPU and 16 GB, Medium 8 / 32 over its 2+ replicas, Large 16 / 64 over 4+.
RAY_CPUS_PER_REQUEST = 1.0
RAY_MEMORY_MB_PER_REQUEST = 4096
# GPUs and the accelerator (Ray's accelerator_type) behind each GPU workload type.
GPU_WORKLOADS: dict[str, tuple[int, str]] = {
    "GPU_SMALL": (1, "T4"),
    "GPU_MEDIUM": (1, "A10G"),
    "MULTIGPU_MEDIUM": (4, "A10G"),
    "GPU_LARGE": (1, "A100"),
    "GPU_XLARGE": (1, "H100"),
    "GPU_XLARGE_8": (8, "H100"),
}
RAY_HOST_PREFIX = "ray:"  # RuntimeHost rows of Ray nodes: "ray:<node address>"


@dataclass(frozen=True)
class ReplicaResources:
    cpus: float
    memory_mb: int
    gpus: int = 0
    accelerator: str = ""

    def describe(self) -> str:
        text = f"{self.cpus:g} CPU, {self.memory_mb} MB memory"
        if self.gpus:
            text += f", {self.gpus} GPU" + (f" ({self.accelerator})" if self.accelerator else "")
        return text


def ray_replica_resources(workload_type: str | None) -> ReplicaResources:
    per = settings.REPLICA_CONCURRENCY
    scale = settings.RAY_RESOURCE_SCALE
    gpus, accelerator = GPU_WORKLOADS.get(workload_type or "CPU", (0, ""))
    if not gpus and is_gpu_workload(workload_type or "CPU"):
        gpus = 1
    return ReplicaResources(
        cpus=round(per * RAY_CPUS_PER_REQUEST * scale, 4),
        memory_mb=max(1, int(per * RAY_MEMORY_MB_PER_REQUEST * scale)),
        gpus=gpus,
        accelerator=accelerator,
    )


@dataclass
class NodeRoom:
    """What is left on one Ray node for new replicas."""

    name: str
    cpus: float
    memory_mb: float
    gpus: list[dict]

    def fits(self, need: ReplicaResources) -> list[str]:
        """What this node lacks for one replica of ``need`` ([] when it fits)."""
        missing = []
        if self.cpus + 1e-9 < need.cpus:
            missing.append(f"{need.cpus - self.cpus:g} CPU")
        if self.memory_mb + 1e-9 < need.memory_mb:
            missing.append(f"{need.memory_mb - self.memory_mb:.0f} MB memory")
        if need.gpus:
            matching = [g for g in self.gpus if not need.accelerator or g.get("name") == need.accelerator]
            if len(matching) < need.gpus:
                kind = f" {need.accelerator}" if need.accelerator else ""
                missing.append(f"{need.gpus - len(matching)}{kind} GPU")
        return missing

    def take(self, need: ReplicaResources) -> None:
        self.cpus -= need.cpus
        self.memory_mb -= need.memory_mb
        if need.gpus:
            taken = [g for g in self.gpus if not need.accelerator or g.get("name") == need.accelerator][: need.gpus]
            self.gpus = [g for g in self.gpus if g not in taken]


def ray_node_room() -> list[NodeRoom]:
    """The Ray nodes (as the ray runtime reports them) less the replicas already placed on them."""
    hosts = RuntimeHost.objects.filter(agent_id__startswith=RAY_HOST_PREFIX)
    rooms = {
        h.agent_id[len(RAY_HOST_PREFIX) :]: NodeRoom(
            h.agent_id[len(RAY_HOST_PREFIX) :], h.cpus, h.memory_mb, list(h.gpus)
        )
        for h in hosts
    }
    placed = Replica.objects.filter(
        agent_id__startswith=RAY_HOST_PREFIX,
        state__in=[ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING],
    ).values_list("agent_id", "deployment__spec")
    for agent_id, spec in placed:
        room = rooms.get(agent_id[len(RAY_HOST_PREFIX) :])
        if room is not None:
            room.take(ray_replica_resources((spec or {}).get("workload_type")))
    return list(rooms.values())


def check_fits_ray(config: CoreConfig) -> None:
    """Refuse a config the Ray cluster cannot hold: each new entity's starting replicas are placed
    (on paper) on the nodes' room left by the replicas already placed; the message names the
    smallest shortfall. Without any node reported yet there is nothing to check against."""
    rooms = ray_node_room()
    if not rooms:
        return
    for entity in config.served_entities:
        if entity.external_model is not None:
            continue
        need = ray_replica_resources(entity.workload_type)
        wanted = max(1, entity_range(entity).min_replicas)
        for placed in range(wanted):
            verdicts = [(room, room.fits(need)) for room in rooms]
            fitting = [room for room, missing in verdicts if not missing]
            if fitting:
                max(fitting, key=lambda r: (r.cpus, r.memory_mb)).take(need)
                continue
            closest = min(verdicts, key=lambda v: len(v[1]))
            raise InvalidParameterValue(
                f"Not enough room in the Ray cluster for served entity {entity.name!r}: it starts {wanted} "
                f"replica(s) of {need.describe()} each (workload_size {entity.workload_size}, "
                f"workload_type {entity.workload_type or 'CPU'}), and only {placed} fit on the "
                f"{len(rooms)} node(s). The roomiest node ({closest[0].name}) is missing "
                f"{', '.join(closest[1])}. Add Ray nodes, or choose a smaller workload_size, "
                "min_provisioned_concurrency or workload_type."
            )
