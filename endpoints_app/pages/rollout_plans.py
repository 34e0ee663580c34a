"""Rollout plans on the endpoint page: the progress strip over the charts (state, step, share,
gate readings), the form that starts a plan (defaults filled in), and the buttons that pause,
resume, abort, promote or close it. Each button and the form POST here (Django's CSRF check
applies) and call ``services.rollout_plans``, which checks CAN_MANAGE again; a refusal is the
error page for its status (``pages.errors``)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import path
from django.views.decorators.http import require_POST

from endpoints_app import registry
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import InvalidParameterValue, ResourceDoesNotExist
from endpoints_app.models import Endpoint, PermissionLevel, RolloutPlan, RolloutPlanState
from endpoints_app.pages.edit import proposed
from endpoints_app.services import rollout_plans

# Which buttons a plan in each state shows (the service refuses the others anyway).
ACTIONS_BY_STATE: dict[str, tuple[str, ...]] = {
    RolloutPlanState.PENDING_APPROVAL: ("abort",),
    RolloutPlanState.RUNNING: ("pause", "promote", "abort"),
    RolloutPlanState.PAUSED: ("resume", "promote", "abort"),
    RolloutPlanState.ROLLED_BACK: ("close",),
    RolloutPlanState.ABORTED: ("close",),
    RolloutPlanState.FAILED: ("close",),
}
LABELS = {
    "pause": "Pause",
    "resume": "Resume",
    "promote": "Promote now",
    "abort": "Abort (all traffic back)",
    "close": "Close (remove the new version)",
}


def _default_entity(endpoint: Endpoint) -> tuple[str, str]:
    """The form's new version: the model the endpoint serves most traffic from, at its newest
    registered version (or the same one when there is no newer)."""
    config = endpoint.active_config
    if config is None:
        return "", ""
    routes = rollout_plans.route_shares(config.traffic_config)
    entities = [e for e in config.served_entities.all() if e.external_model is None]
    if not entities:
        return "", ""
    main = max(entities, key=lambda e: routes.get(e.name, 0))
    version = main.entity_version
    try:
        found = registry.list_registered_models(main.entity_name)
        versions = [v["version"] for m in found for v in m["versions"]]
        numeric = [int(v) for v in versions if str(v).isdigit()]
        if numeric:
            version = str(max(numeric))
    except Exception:  # a default is a convenience: the registry may be away
        pass
    return main.entity_name, version


def strip_context(endpoint: Endpoint, level: str) -> dict[str, Any]:
    """What the endpoint page needs for the strip and the form."""
    plan = RolloutPlan.objects.filter(endpoint=endpoint).select_related("author").first()
    can_manage = level == PermissionLevel.CAN_MANAGE
    gates = rollout_plans.DEFAULT_GATES
    entity_name, entity_version = _default_entity(endpoint) if can_manage else ("", "")
    readings = (plan.readings or {}) if plan else {}
    return {
        "rollout": plan,
        "rollout_share": rollout_plans.share_of(plan) if plan else 0,
        "rollout_readings": readings,
        "rollout_steps": [
            {
                "share": s,
                "done": plan is not None and i < plan.current_step,
                "current": plan is not None and i == plan.current_step,
            }
            for i, s in enumerate(plan.steps if plan else [])
        ],
        "rollout_actions": [(a, LABELS[a]) for a in ACTIONS_BY_STATE.get(plan.state, ())]
        if plan and plan.is_open and can_manage
        else [],
        "rollout_form": {
            "entity_name": entity_name,
            "entity_version": entity_version,
            "steps": ",".join(str(s) for s in rollout_plans.DEFAULT_STEPS),
            "bake_seconds": rollout_plans.DEFAULT_BAKE_SECONDS,
            **{key: gates[key] for key in gates},
        }
        if can_manage and (plan is None or not plan.is_open)
        else None,
    }


def _number(request: AuthenticatedHttpRequest, key: str, kind: type) -> Any:
    raw = (request.POST.get(key) or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidParameterValue(f"{key} must be a number, got {raw[:40]!r}") from None


def form_body(request: AuthenticatedHttpRequest) -> dict[str, Any]:
    """The plan from the form's fields, in the API's shape (the service validates it)."""
    entity: dict[str, Any] = {
        "entity_name": (request.POST.get("entity_name") or "").strip(),
        "entity_version": (request.POST.get("entity_version") or "").strip(),
        "workload_size": (request.POST.get("workload_size") or "Small").strip(),
    }
    if (request.POST.get("served_entity_name") or "").strip():
        entity["name"] = request.POST["served_entity_name"].strip()
    body: dict[str, Any] = {"served_entity": entity}
    steps = (request.POST.get("steps") or "").strip()
    if steps:
        try:
            body["steps"] = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise InvalidParameterValue(
                f"steps must be whole percentages separated by commas, got {steps[:80]!r}"
            ) from None
    bake = _number(request, "bake_seconds", int)
    if bake is not None:
        body["bake_seconds"] = bake
    gates = {}
    for key in rollout_plans.GATE_RANGES:
        value = _number(request, key, int if key == "min_requests" else float)
        if value is not None:
            gates[key] = value
    if gates:
        body["gates"] = gates
    return body


@login_required
@require_POST
def start(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    plan = rollout_plans.start_plan(actor=request.user, name=name, body=form_body(request))
    if plan.change_request is not None:
        return proposed(request, plan.change_request, f"The rollout plan for {name} needs approval")
    messages.success(request, f"Rollout plan {plan.pk} started: {rollout_plans.share_of(plan)} % to the new version.")
    return redirect(f"/endpoints/{name}/#rollout")


@login_required
@require_POST
def act(request: AuthenticatedHttpRequest, name: str, plan_id: int, action: str) -> HttpResponse:
    service = {
        "pause": rollout_plans.pause,
        "resume": rollout_plans.resume,
        "abort": rollout_plans.abort,
        "promote": rollout_plans.promote,
        "close": rollout_plans.close,
    }.get(action)
    if service is None:
        raise ResourceDoesNotExist(f"No action '{action}' on rollout plans")
    plan = service(actor=request.user, name=name, plan_id=plan_id)
    messages.success(request, f"Rollout plan {plan.pk}: {plan.get_state_display().lower()}.")
    return redirect(f"/endpoints/{name}/#rollout")


urlpatterns = [
    path("endpoints/<str:name>/rollouts/start", start, name="rollout_start"),
    path("endpoints/<str:name>/rollouts/<int:plan_id>/<str:action>", act, name="rollout_action"),
]
