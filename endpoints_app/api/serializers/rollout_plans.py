"""Rollout plans (``/api/2.0/modelfleet/serving-endpoints/<name>/rollouts``)."""

from __future__ import annotations

from typing import Any

from endpoints_app.api.serializers.common import ms
from endpoints_app.models import ChangeRequest, RolloutPlan
from endpoints_app.services import proposals, rollout_plans


def serialize_rollout_plan(plan: RolloutPlan) -> dict[str, Any]:
    steps = [int(s) for s in plan.steps]
    shown = proposals.shown_proposal(ChangeRequest.Action.ROLLOUT_PLAN, {"config": plan.target_config})
    return {
        "id": plan.pk,
        "endpoint_name": plan.endpoint_name,
        "state": plan.state,
        "open": plan.is_open,
        "author": plan.author.get_username() if plan.author else None,
        "new_served_entities": list(plan.new_entity_names),
        "target_config": shown["config"],
        "steps": steps,
        "bake_seconds": plan.bake_seconds,
        "gates": plan.gates,
        "current_step": plan.current_step,
        "current_share": rollout_plans.share_of(plan),
        "step_config_version": plan.step_config_version,
        "step_started_at": ms(plan.step_started_at),
        "readings": plan.readings or None,
        "history": plan.history,
        "reason": plan.reason,
        "change_request_id": plan.change_request_id,
        "created_at": ms(plan.created_at),
        "updated_at": ms(plan.updated_at),
        "finished_at": ms(plan.finished_at),
        "closed_at": ms(plan.closed_at),
    }
