"""The backend interface the control plane deploys through."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from endpoints_app.runtime.layout import LogKind

if TYPE_CHECKING:
    from endpoints_app.models import ConfigVersion, ServedEntity
    from endpoints_app.runtime.credentials import ReplicaTarget


@dataclass(frozen=True)
class EntityStatus:
    deployment: str  # a ServedModelStateDeployment value (DEPLOYMENT_READY, ...)
    message: str
    ready_replicas: int


class ServingBackend(Protocol):
    """Deploys the served entities that run model servers. Served entities that are external models
    (``ServedEntity.external_model``) are served by the gateway itself: ``apply`` and ``status``
    leave them out, and rollouts count them as ready at once."""

    def apply(self, *, config: ConfigVersion) -> None:
        """Make every served entity of ``config`` deployed (idempotent; reuses identical ones)."""

    def status(self, *, config: ConfigVersion) -> dict[str, EntityStatus]:
        """Deployment state of each served entity of ``config``, by served entity name."""

    def logs(self, *, entity: ServedEntity, kind: LogKind, max_bytes: int = 1_000_000) -> str:
        """The tail of a served entity's server or build log."""

    def read_log(
        self, *, deployment_id: int, kind: LogKind, offset: int, max_bytes: int = 1_000_000
    ) -> tuple[bytes, int]:
        """Raw log bytes from ``offset`` (whole lines only) and the offset to read from next.

        A log shorter than ``offset`` was truncated or replaced: reading starts again at 0.
        """

    def remove(self, *, deployment_ids: Iterable[int]) -> None:
        """Drain and stop deployments that no config uses any more."""

    def coming_up(self, *, deployment_ids: Iterable[int]) -> set[int]:
        """The deployments among these that will have a ready replica if a query waits: scaled to
        zero (a query wakes them), or starting or recovering one. Not failed or stopped ones."""

    def wake(self, *, deployment_id: int) -> None:
        """A query is waiting: start a scaled-to-zero deployment's replicas now."""

    def ready_replicas(self, *, deployment_ids: Iterable[int]) -> dict[int, list[ReplicaTarget]]:
        """Base URLs and credentials of the replicas that may take queries now, by deployment (the gateway's view)."""
