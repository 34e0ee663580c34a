"""The autoscaler's decisions (``…/scaling-decisions``). The series and the export are shaped by
``monitoring.metrics`` and ``monitoring.export``, which compute them."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import ScalingDecision


def serialize_scaling_decision(d: ScalingDecision) -> dict[str, Any]:
    return {
        "at": ms(d.at),
        "served_model_name": d.deployment.served_entity_name,
        "from_replicas": d.from_replicas,
        "to_replicas": d.to_replicas,
        "reason": d.reason,
    }
