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
from endpoints_app.models import Deployment, RuntimeHost
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
