"""The local backend: desired state in the database, reconciled by the runtime agent on this host."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from endpoints_app.backends.base import EntityStatus, LogKind
from endpoints_app.capacity import replica_range
from endpoints_app.models import ConfigVersion, Deployment, DeploymentState, Replica, ReplicaState, ServedEntity
from endpoints_app.redis_client import get_redis
from endpoints_app.runtime.credentials import ReplicaTarget
from endpoints_app.runtime.layout import WAKE_QUEUE, log_path, read_tail


def entity_spec(entity: ServedEntity) -> dict:
    """Everything that makes one model server differ from another."""
    return {
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "workload_size": entity.workload_size,
        "workload_type": entity.workload_type,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
        "min_provisioned_concurrency": entity.min_provisioned_concurrency,
        "max_provisioned_concurrency": entity.max_provisioned_concurrency,
        "environment_vars": entity.environment_vars,
    }


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class LocalBackend:
    def apply(self, *, config: ConfigVersion) -> None:
        endpoint = config.endpoint
        with transaction.atomic():
            # External models are served by the gateway itself: nothing to deploy for them.
            pending = config.served_entities.select_for_update().filter(deployment__isnull=True)
            for entity in pending.filter(external_model__isnull=True):
                spec = entity_spec(entity)
                digest = spec_hash(spec)
                # 1. Reuse a live, healthy deployment of the identical entity (no restart).
                deployment = (
                    Deployment.objects.filter(
                        endpoint=endpoint,
                        served_entity_name=entity.name,
                        spec_hash=digest,
                        remove_requested_at__isnull=True,
                    )
                    .exclude(state__in=[DeploymentState.FAILED, DeploymentState.ABORTED])
                    .order_by("-id")
                    .first()
                )
                # 2. Otherwise ask the runtime for a new one.
                if deployment is None:
                    scale = replica_range(
                        workload_size=entity.workload_size,
                        min_pc=entity.min_provisioned_concurrency,
                        max_pc=entity.max_provisioned_concurrency,
                        scale_to_zero=entity.scale_to_zero_enabled,
                    )
                    deployment = Deployment.objects.create(
                        min_replicas=scale.min_replicas,
                        max_replicas=scale.max_replicas,
                        scale_to_zero_enabled=entity.scale_to_zero_enabled,
                        endpoint=endpoint,
                        endpoint_name=endpoint.name,
                        served_entity_name=entity.name,
                        spec_hash=digest,
                        spec=spec,
                        model_name=entity.entity_name,
                        model_version=entity.entity_version,
                        # A new deployment starts at its minimum, and at least one replica even
                        # with scale-to-zero: a rollout only switches traffic to what is ready.
                        desired_replicas=max(1, scale.min_replicas),
                    )
                entity.deployment = deployment
                entity.save(update_fields=["deployment"])

    def status(self, *, config: ConfigVersion) -> dict[str, EntityStatus]:
        result: dict[str, EntityStatus] = {}
        entities = config.served_entities.filter(external_model__isnull=True).select_related("deployment")
        ready_counts = dict(
            ServedEntity.objects.filter(config_version=config, deployment__replicas__state=ReplicaState.READY)
            .values_list("name")
            .annotate(n=Count("deployment__replicas"))
        )
        for entity in entities:
            dep = entity.deployment
            if dep is None:
                result[entity.name] = EntityStatus(DeploymentState.CREATING, "Waiting for the runtime.", 0)
            else:
                result[entity.name] = EntityStatus(dep.state, dep.state_message, ready_counts.get(entity.name, 0))
        return result

    def logs(self, *, entity: ServedEntity, kind: LogKind, max_bytes: int = 1_000_000) -> str:
        if entity.deployment_id is None:
            return ""
        return read_tail(log_path(entity.deployment_id, kind), max_bytes)

    def read_log(
        self, *, deployment_id: int, kind: LogKind, offset: int, max_bytes: int = 1_000_000
    ) -> tuple[bytes, int]:
        path = log_path(deployment_id, kind)
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                if size < offset:
                    offset = 0
                fh.seek(offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return b"", offset
        end = data.rfind(b"\n")
        if end < 0:
            # No complete line yet; a single line longer than max_bytes is taken whole.
            return (data, offset + len(data)) if len(data) >= max_bytes else (b"", offset)
        return data[: end + 1], offset + end + 1

    def coming_up(self, *, deployment_ids: Iterable[int]) -> set[int]:
        return set(
            Deployment.objects.filter(
                id__in=list(deployment_ids),
                stopped_at__isnull=True,
                remove_requested_at__isnull=True,
                state__in=[DeploymentState.CREATING, DeploymentState.READY, DeploymentState.RECOVERING],
            ).values_list("id", flat=True)
        )

    def wake(self, *, deployment_id: int) -> None:
        Deployment.objects.filter(id=deployment_id, wake_requested_at__isnull=True).update(
            wake_requested_at=timezone.now()
        )
        Deployment.objects.filter(id=deployment_id, wake_requested_at__lt=F("scaled_to_zero_at")).update(
            wake_requested_at=timezone.now()
        )
        try:
            get_redis().rpush(WAKE_QUEUE, str(deployment_id))  # the agent's loop wakes at once
        except Exception:  # without Redis the agent sees the row on its next pass
            pass

    def ready_replicas(self, *, deployment_ids: Iterable[int]) -> dict[int, list[ReplicaTarget]]:
        replicas: dict[int, list[ReplicaTarget]] = {}
        rows = (
            Replica.objects.filter(deployment_id__in=list(deployment_ids), state=ReplicaState.READY)
            .order_by("index")
            .values_list("deployment_id", "host", "port", "credential")
        )
        for deployment_id, host, port, credential in rows:
            replicas.setdefault(deployment_id, []).append(ReplicaTarget(f"http://{host}:{port}", credential))
        return replicas

    def remove(self, *, deployment_ids: Iterable[int]) -> None:
        ids = list(deployment_ids)
        if ids:
            Deployment.objects.filter(id__in=ids, remove_requested_at__isnull=True).update(
                remove_requested_at=timezone.now()
            )
