"""Rollout plans: a new version of an endpoint (one new served entity, or a whole new config) moved
onto it step by step (e.g. 5, 25, 50, 100 % of the traffic), each step baked for a while and
passed on only while the new version is as good as the current one over the same window.

- Starting a plan (``start_plan``) passes the approval gate once, for the whole plan: on an
  endpoint an approval policy covers (and an author who is not an approver) it opens one change
  request (action ``rollout_plan``); approving it (``services.changes``) calls ``start_approved``.
- Each step is a config update through ``services.endpoints.update_endpoint_config``, as any
  change: the plan's approved change request stands in for the gate (``services.gate``), and the
  audit row carries the plan, the step and the gate readings that allowed it.
- ``evaluate`` (a Celery beat task every ``ROLLOUT_PLAN_EVALUATION_SECONDS``) reads the gateway's
  own cumulative counters per served entity (``gateway.metrics``, flushed to Redis each second:
  fresher than the 15 s polled series), the deltas since the step's config became active, and
  compares the new version against the others: 4xx and 5xx rate increases, the p99 latency ratio
  (each p99 at least ``p99_latency_floor_ms``, so noise on fast models cannot fail it), once the
  new version has ``min_requests``. A breach rolls all traffic back at once (the new version stays
  deployed at 0 % until the plan is closed), marks the plan ROLLED_BACK with the readings and
  emails the endpoint's notification list and the author. Bake time over and every gate passed:
  the next step.
- A manual config change while a plan runs pauses it (``services.endpoints``); ``resume`` applies
  the current step again on top of what is active then.

One open plan per endpoint (a partial unique index): it stays open until it succeeds, is rejected,
or, after a rollback, abort or failure, is closed (``close`` removes the new version).
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from endpoints_app import access, audit, registry, validation
from endpoints_app.errors import (
    DomainError,
    InvalidParameterValue,
    ResourceConflict,
    ResourceDoesNotExist,
)
from endpoints_app.gateway.metrics import BUCKET_LABELS, UNATTRIBUTED, read_counters
from endpoints_app.models import (
    ChangeRequest,
    ConfigUpdate,
    Endpoint,
    PermissionLevel,
    RolloutPlan,
    RolloutPlanState,
)
from endpoints_app.monitoring import notifications
from endpoints_app.monitoring.metrics import counter_delta, quantile
from endpoints_app.services import checks, gate
from endpoints_app.services import endpoints as endpoint_services

log = logging.getLogger(__name__)

DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_BAKE_SECONDS = 300
MAX_STEPS = 20
MAX_BAKE_SECONDS = 7 * 24 * 3600
DEFAULT_GATES: dict[str, float] = {
    "max_4xx_rate_increase": 0.05,
    "max_5xx_rate_increase": 0.01,
    "max_p99_latency_ratio": 1.5,
    "min_requests": 100,
    "p99_latency_floor_ms": 50.0,
}
# gate → (lowest, highest) accepted
GATE_RANGES: dict[str, tuple[float, float]] = {
    "max_4xx_rate_increase": (0.0, 1.0),
    "max_5xx_rate_increase": (0.0, 1.0),
    "max_p99_latency_ratio": (1.0, 1000.0),
    "min_requests": (1, 1_000_000_000),
    "p99_latency_floor_ms": (0.0, 600_000.0),
}
SPEC_KEYS = frozenset({"served_entity", "config", "steps", "bake_seconds", "gates"})
ACTIVE = (RolloutPlanState.RUNNING, RolloutPlanState.PAUSED)
ENDED = (RolloutPlanState.ROLLED_BACK, RolloutPlanState.ABORTED, RolloutPlanState.FAILED)
PASS, FAIL, WAITING = "PASS", "FAIL", "WAITING"


# --- the plan's spec ------------------------------------------------------------------------------


def _number(data: dict[str, Any], key: str, low: float, high: float, *, integer: bool) -> float | int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidParameterValue(f"{key} must be a number")
    if integer and value != int(value):
        raise InvalidParameterValue(f"{key} must be a whole number")
    if not low <= value <= high:
        raise InvalidParameterValue(f"{key} must be between {low:g} and {high:g}, got {value:g}")
    return int(value) if integer else float(value)


def parse_steps(value: Any) -> list[int]:
    """Traffic shares of the new version: whole percentages, strictly increasing, ending at 100."""
    if value is None:
        return list(DEFAULT_STEPS)
    if not isinstance(value, list) or not value:
        raise InvalidParameterValue("steps must be a non-empty array of percentages, e.g. [5, 25, 50, 100]")
    if len(value) > MAX_STEPS:
        raise InvalidParameterValue(f"steps may hold at most {MAX_STEPS} percentages, got {len(value)}")
    steps = [int(_number({"steps[]": s}, "steps[]", 1, 100, integer=True)) for s in value]
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise InvalidParameterValue(f"steps must increase strictly, got {steps}")
    if steps[-1] != 100:
        raise InvalidParameterValue(f"steps must end at 100 (the new version serving all traffic), got {steps}")
    return steps


def parse_gates(value: Any) -> dict[str, float]:
    if value is None:
        return dict(DEFAULT_GATES)
    data = validation.require_object(value, "gates")
    unknown = sorted(set(data) - set(GATE_RANGES))
    if unknown:
        raise InvalidParameterValue(f"gates has unknown fields {unknown}; known: {sorted(GATE_RANGES)}")
    gates = dict(DEFAULT_GATES)
    for key, (low, high) in GATE_RANGES.items():
        if data.get(key) is not None:
            gates[key] = _number(data, key, low, high, integer=key == "min_requests")
    return gates


def _named_config(config: validation.CoreConfig, raw: dict[str, Any]) -> dict[str, Any]:
    """A config body whose served entities carry the names parsing gave them and explicit routes."""
    key = "served_entities" if isinstance(raw.get("served_entities"), list) else "served_models"
    entities = []
    for given, spec in zip(raw.get(key) or [], config.served_entities, strict=False):
        entities.append({**given, "name": spec.name})
    body: dict[str, Any] = {
        key: entities,
        "traffic_config": {
            "routes": [
                {"served_model_name": r["served_entity_name"], "traffic_percentage": r["traffic_percentage"]}
                for r in config.routes
            ]
        },
    }
    if config.auto_capture_config is not None:
        body["auto_capture_config"] = config.auto_capture_config
    return body


def _target(endpoint: Endpoint, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config the endpoint has once promoted, and the names of the new version's entities."""
    if ("served_entity" in data) == ("config" in data):
        raise InvalidParameterValue("give served_entity (one new served entity) or config (a whole new config)")
    if "served_entity" in data:
        entity = validation.require_object(data["served_entity"], "served_entity")
        raw: dict[str, Any] = {"served_entities": [entity]}
        active = endpoint.active_config
        if active is not None and active.auto_capture_config is not None:
            raw["auto_capture_config"] = active.auto_capture_config
        where = "served_entity"
    else:
        raw = validation.require_object(data["config"], "config")
        where = "config"
    parsed = validation.parse_core_config(raw, where=where)
    plaintext = validation.plaintext_credentials(parsed)
    if plaintext:
        raise InvalidParameterValue(
            f"A rollout plan cannot carry plaintext credentials ({', '.join(plaintext)}): put the key in a secret "
            "scope and refer to it as {{secrets/SCOPE/KEY}}"
        )
    names = [e.name for e in parsed.served_entities]
    current = (
        set(endpoint.active_config.served_entities.values_list("name", flat=True)) if endpoint.active_config else set()
    )
    clash = sorted(current & set(names))
    if clash:
        raise InvalidParameterValue(
            f"served entity {clash[0]!r} is already in endpoint '{endpoint.name}'; give the new version another "
            "name (served_entity.name) so both can serve side by side"
        )
    for spec in parsed.served_entities:
        if spec.external_model is None:
            registry.get_model_version(spec.entity_name, spec.entity_version)  # 404 naming what is missing
    return _named_config(parsed, raw), names


def parse_spec(endpoint: Endpoint, body: Any) -> dict[str, Any]:
    """The plan as stored: target config, new entity names, steps, bake time, gates (400 when invalid)."""
    data = validation.require_object(body, "request body")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise InvalidParameterValue(f"unknown fields {unknown}; a rollout plan takes {sorted(SPEC_KEYS)}")
    steps = parse_steps(data.get("steps"))
    bake = DEFAULT_BAKE_SECONDS
    if data.get("bake_seconds") is not None:
        bake = int(_number(data, "bake_seconds", 0, MAX_BAKE_SECONDS, integer=True))
    gates = parse_gates(data.get("gates"))
    target, names = _target(endpoint, data)
    return {"target_config": target, "new_entity_names": names, "steps": steps, "bake_seconds": bake, "gates": gates}


# --- the configs of each step ---------------------------------------------------------------------


def _split(total: int, weights: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``total`` percent over ``weights`` in proportion, whole numbers summing to ``total``
    (largest remainder); equal shares when every weight is 0."""
    if not weights:
        return []
    base = sum(w for _, w in weights)
    if base <= 0:
        weights, base = [(n, 1) for n, _ in weights], len(weights)
    exact = [(n, total * w / base) for n, w in weights]
    out = {n: int(math.floor(x)) for n, x in exact}
    left = total - sum(out.values())
    for n, _ in sorted(exact, key=lambda item: item[1] - math.floor(item[1]), reverse=True)[:left]:
        out[n] += 1
    return [(n, out[n]) for n, _ in weights]


def _entity_body(entity: Any) -> dict[str, Any]:
    """A stored served entity as a config body gives it (environment values redacted: the update
    puts them back from the stored config, ``checks.restore_redacted_environment``)."""
    return {k: v for k, v in audit.entity_snapshot(entity).items() if v is not None}


def _traffic(active: dict[str, Any], routes: list[tuple[str, int]], kept: set[str]) -> dict[str, Any]:
    """``traffic_config`` with these routes; the active config's shadows of kept entities stay."""
    traffic: dict[str, Any] = {"routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in routes]}
    shadow = [s for s in active.get("shadow") or [] if isinstance(s, dict) and s.get("served_entity_name") in kept]
    if shadow:
        traffic["shadow"] = shadow
    return traffic


def route_name(route: dict[str, Any]) -> str:
    """A stored route's served entity (older rows name it ``served_model_name`` only)."""
    return str(route.get("served_entity_name") or route.get("served_model_name") or "")


def route_shares(traffic_config: Any) -> dict[str, int]:
    routes = traffic_config.get("routes") if isinstance(traffic_config, dict) else None
    return {route_name(r): int(r.get("traffic_percentage") or 0) for r in routes or [] if isinstance(r, dict)}


def serving_names(routes: list[dict[str, Any]]) -> set[str]:
    """Served entities that take a share of the traffic (not shadows, not those at 0 %)."""
    return {route_name(r) for r in routes if int(r.get("traffic_percentage") or 0) > 0}


def step_config(endpoint: Endpoint, plan: RolloutPlan, share: int) -> dict[str, Any]:
    """The config that gives the new version ``share`` % of the traffic, on top of the active one:
    the other served entities keep their proportions in the rest. 100 is the plan's target."""
    if share >= 100:
        return plan.target_config
    active = endpoint.active_config
    if active is None:
        raise ResourceConflict(f"Endpoint '{endpoint.name}' has no active config to roll out from")
    new = set(plan.new_entity_names)
    old = [e for e in active.served_entities.order_by("position") if e.name not in new]
    if not old:
        raise ResourceConflict(f"Endpoint '{endpoint.name}' serves only the new version: nothing to share with")
    current = route_shares(active.traffic_config)
    target_routes = [
        (r["served_model_name"], int(r["traffic_percentage"])) for r in plan.target_config["traffic_config"]["routes"]
    ]
    routes = _split(100 - share, [(e.name, current.get(e.name, 0)) for e in old]) + _split(share, target_routes)
    body: dict[str, Any] = {
        "served_entities": [_entity_body(e) for e in old] + list(plan.target_config["served_entities"]),
        "traffic_config": _traffic(active.traffic_config, routes, {e.name for e in old}),
    }
    if active.auto_capture_config is not None:
        body["auto_capture_config"] = active.auto_capture_config
    return body


def _without_new_version(endpoint: Endpoint, plan: RolloutPlan) -> dict[str, Any] | None:
    """The active config without the new version's entities (None when it has none of them)."""
    active = endpoint.active_config
    if active is None:
        return None
    new = set(plan.new_entity_names)
    entities = list(active.served_entities.order_by("position"))
    if not any(e.name in new for e in entities):
        return None
    old = [e for e in entities if e.name not in new]
    if not old:
        return None
    current = route_shares(active.traffic_config)
    routes = _split(100, [(e.name, current.get(e.name, 0)) for e in old])
    body: dict[str, Any] = {
        "served_entities": [_entity_body(e) for e in old],
        "traffic_config": _traffic(active.traffic_config, routes, {e.name for e in old}),
    }
    if active.auto_capture_config is not None:
        body["auto_capture_config"] = active.auto_capture_config
    return body


def share_of(plan: RolloutPlan) -> int:
    """The new version's traffic share the plan has set now (0 before its first step and after a rollback)."""
    if plan.state in ENDED or plan.current_step < 0:
        return 0
    return int(plan.steps[plan.current_step])


# --- reads ------------------------------------------------------------------------------------------


def _visible_endpoint(actor: User | None, name: str, needed: str) -> Endpoint:
    endpoint = Endpoint.objects.filter(name=name).select_related("active_config").first()
    if endpoint is None:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    access.require(actor, endpoint, needed)
    return endpoint


def list_plans(*, actor: User | None, name: str) -> list[RolloutPlan]:
    endpoint = _visible_endpoint(actor, name, PermissionLevel.CAN_VIEW)
    return list(RolloutPlan.objects.filter(endpoint=endpoint).select_related("author")[:200])


def get_plan(*, actor: User | None, name: str, plan_id: int, needed: str = PermissionLevel.CAN_VIEW) -> RolloutPlan:
    endpoint = _visible_endpoint(actor, name, needed)
    plan = RolloutPlan.objects.filter(endpoint=endpoint, pk=plan_id).select_related("author").first()
    if plan is None:
        raise ResourceDoesNotExist(f"Rollout plan {plan_id} of endpoint '{name}' does not exist")
    return plan


def open_plan(endpoint: Endpoint) -> RolloutPlan | None:
    return RolloutPlan.objects.filter(endpoint=endpoint, is_open=True).select_related("author").first()


def snapshot(plan: RolloutPlan) -> dict[str, Any]:
    """What the audit log records of a plan."""
    return {
        "id": plan.pk,
        "state": plan.state,
        "new_served_entities": plan.new_entity_names,
        "steps": plan.steps,
        "current_step": plan.current_step,
        "share": share_of(plan),
        "bake_seconds": plan.bake_seconds,
        "gates": plan.gates,
        "reason": plan.reason,
    }


def _record(actor: User | None, plan: RolloutPlan, action: str, **after: Any) -> None:
    audit.record(
        actor=actor,
        action=f"rollout_plan.{action}",
        object_type="rollout_plan",
        object_id=str(plan.pk),
        object_name=plan.endpoint_name,
        after={**snapshot(plan), **after},
    )


# --- starting ---------------------------------------------------------------------------------------


def _check_startable(endpoint: Endpoint) -> None:
    existing = open_plan(endpoint)
    if existing is not None:
        raise ResourceConflict(
            f"Endpoint '{endpoint.name}' already has rollout plan {existing.pk} ({existing.state}); "
            + (
                "close it first (modelfleet rollouts close)"
                if existing.state in ENDED
                else "abort it or wait until it ends"
            )
        )
    if endpoint.active_config is None:
        raise ResourceConflict(f"Endpoint '{endpoint.name}' has no active config yet; wait until it is ready")
    if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
        raise ResourceConflict(f"Endpoint '{endpoint.name}' is being updated; wait until the update ends")


def start_plan(*, actor: User | None, name: str, body: Any) -> RolloutPlan:
    """Start a rollout plan, or, when an approval policy covers the endpoint, open one change
    request holding it (the plan waits as PENDING_APPROVAL)."""
    endpoint = checks.managed_endpoint(actor, name, approved=None)
    _check_startable(endpoint)
    spec = parse_spec(endpoint, body)
    plan = RolloutPlan(
        endpoint=endpoint,
        endpoint_name=endpoint.name,
        author=actor if actor is not None and actor.is_authenticated else None,
        spec=body,
        **spec,
    )
    validation.parse_core_config(step_config(endpoint, plan, plan.steps[0]))  # refuse now what would fail later
    proposal = gate.admit(
        actor=actor,
        action=ChangeRequest.Action.ROLLOUT_PLAN,
        endpoint_name=name,
        body=body,
        on_approval_needed="propose",
    )
    plan.state = RolloutPlanState.PENDING_APPROVAL if proposal is not None else RolloutPlanState.RUNNING
    plan.change_request = proposal
    try:
        with transaction.atomic():
            plan.save()
            _record(actor, plan, "create", change_request=proposal.pk if proposal else None)
    except IntegrityError:
        raise ResourceConflict(f"Endpoint '{name}' already has an open rollout plan") from None
    if proposal is None:
        _first_step(actor=actor, plan=plan, if_match=None)
        plan.refresh_from_db()
    return plan


def _first_step(*, actor: User | None, plan: RolloutPlan, if_match: str | None) -> None:
    try:
        _apply_step(
            actor=actor, plan=plan, index=0, readings=None, if_match=if_match, states=(RolloutPlanState.RUNNING,)
        )
    except DomainError as exc:
        with transaction.atomic():
            RolloutPlan.objects.filter(pk=plan.pk).update(
                state=RolloutPlanState.FAILED,
                is_open=False,
                reason=f"the first step could not be applied: {exc.message}",
                finished_at=timezone.now(),
                closed_at=timezone.now(),
            )
            plan.refresh_from_db()
            _record(actor, plan, "fail")
        raise


def start_approved(*, actor: User, request: ChangeRequest) -> RolloutPlan:
    """An approver approved the plan's change request (``services.changes``): start it. The
    request stands in for the gate at every step of the plan."""
    plan = RolloutPlan.objects.filter(change_request=request).first()
    if plan is None:  # proposed through the change-request API: the plan comes from its body
        endpoint = Endpoint.objects.filter(name=request.endpoint_name).select_related("active_config").first()
        if endpoint is None:
            raise ResourceDoesNotExist(f"Endpoint '{request.endpoint_name}' does not exist")
        _check_startable(endpoint)
        try:
            with transaction.atomic():
                plan = RolloutPlan.objects.create(
                    endpoint=endpoint,
                    endpoint_name=endpoint.name,
                    author=request.author,
                    spec=request.proposed,
                    change_request=request,
                    state=RolloutPlanState.PENDING_APPROVAL,
                    **parse_spec(endpoint, request.proposed),
                )
        except IntegrityError:
            raise ResourceConflict(f"Endpoint '{endpoint.name}' already has an open rollout plan") from None
    claimed = RolloutPlan.objects.filter(pk=plan.pk, state=RolloutPlanState.PENDING_APPROVAL).update(
        state=RolloutPlanState.RUNNING
    )
    if claimed != 1:
        plan.refresh_from_db()
        raise ResourceConflict(f"Rollout plan {plan.pk} is {plan.state}, not waiting for approval")
    plan.refresh_from_db()
    with transaction.atomic():
        _record(actor, plan, "approve", change_request=request.pk)
    _first_step(actor=actor, plan=plan, if_match=request.base_etag or None)
    plan.refresh_from_db()
    return plan


def rejected(*, actor: User, request: ChangeRequest) -> None:
    """Its change request was rejected: the plan ends without having changed anything."""
    for plan in RolloutPlan.objects.filter(change_request=request, state=RolloutPlanState.PENDING_APPROVAL):
        plan.state, plan.is_open = RolloutPlanState.REJECTED, False
        plan.finished_at = plan.closed_at = timezone.now()
        plan.reason = f"change request {request.pk} was rejected"
        plan.save()
        _record(actor, plan, "reject", change_request=request.pk)


# --- applying a step -----------------------------------------------------------------------------


def _apply_config(
    *,
    actor: User | None,
    plan: RolloutPlan,
    body: dict[str, Any],
    note: dict[str, Any],
    if_match: str | None = None,
    restore: bool = False,
) -> int:
    """One config change of the plan, through the service every config change goes through;
    returns the new config version. A step forward passes the gate (the plan's approved change
    request stands in for it) as its author; ``restore`` (traffic back on the previous version)
    is the platform's, so no lost right or new policy can hold a rollback up."""
    endpoint = endpoint_services.update_endpoint_config(
        actor=actor,
        name=plan.endpoint_name,
        body=body,
        if_match=if_match,
        approved=plan.change_request if plan.change_request_id else None,
        rollout_plan=plan.pk,
        note={"plan": plan.pk, **note},
        restore=restore,
    ).applied()
    version = endpoint.pending_config.version if endpoint.pending_config is not None else None
    if version is None:  # external models switch at once
        endpoint.refresh_from_db()
        version = endpoint.active_config.version if endpoint.active_config else 0
    return int(version)


def _locked(plan: RolloutPlan) -> tuple[Endpoint, RolloutPlan]:
    """Lock the endpoint, then the plan (the order every config change locks them in)."""
    endpoint = checks.get_endpoint_for_update(plan.endpoint_name)
    locked = RolloutPlan.objects.select_for_update().get(pk=plan.pk)
    return endpoint, locked


def _apply_step(
    *,
    actor: User | None,
    plan: RolloutPlan,
    index: int,
    readings: dict[str, Any] | None,
    states: tuple[str, ...],
    if_match: str | None = None,
) -> RolloutPlan:
    with transaction.atomic():
        endpoint, plan = _locked(plan)
        if plan.state not in states:
            raise ResourceConflict(f"Rollout plan {plan.pk} is {plan.state}")
        share = int(plan.steps[index])
        note = {"step": index, "share": share, "readings": readings}
        version = _apply_config(
            actor=actor, plan=plan, body=step_config(endpoint, plan, share), note=note, if_match=if_match
        )
        plan.current_step = index
        plan.step_config_version = version
        if readings is not None:
            plan.readings = readings  # what allowed this step, until the next window's first reading
        plan.step_started_at = None
        plan.step_baseline = {}
        plan.history = [
            *plan.history[-(4 * MAX_STEPS) :],
            {
                "at": timezone.now().isoformat(),
                "step": index,
                "share": share,
                "config_version": version,
                "readings": readings,
            },
        ]
        plan.next_evaluation_at = None
        plan.save()
        _record(actor, plan, "step", config_version=version, readings=readings)
    return plan


# --- people's actions --------------------------------------------------------------------------------


def _managed_plan(actor: User | None, name: str, plan_id: int) -> RolloutPlan:
    plan = get_plan(actor=actor, name=name, plan_id=plan_id, needed=PermissionLevel.CAN_MANAGE)
    if plan.state in (RolloutPlanState.SUCCEEDED, RolloutPlanState.REJECTED) or not plan.is_open:
        raise ResourceConflict(f"Rollout plan {plan.pk} is finished ({plan.state}); start a new one")
    return plan


def _refuse(plan: RolloutPlan, what: str) -> ResourceConflict:
    return ResourceConflict(f"Rollout plan {plan.pk} is {plan.state}: it cannot be {what}")


def _who(actor: User | None) -> str:
    return actor.get_username() if actor is not None and actor.is_authenticated else "the platform"


def pause(*, actor: User | None, name: str, plan_id: int) -> RolloutPlan:
    plan = _managed_plan(actor, name, plan_id)
    with transaction.atomic():
        plan = RolloutPlan.objects.select_for_update().get(pk=plan.pk)
        if plan.state != RolloutPlanState.RUNNING:
            raise _refuse(plan, "paused")
        plan.state, plan.reason = RolloutPlanState.PAUSED, f"paused by {_who(actor)}"
        plan.save()
        _record(actor, plan, "pause")
    return plan


def resume(*, actor: User | None, name: str, plan_id: int) -> RolloutPlan:
    """Run again from the current step: the step is applied again on top of the active config when
    a change came between (its bake starts over either way)."""
    plan = _managed_plan(actor, name, plan_id)
    if plan.state != RolloutPlanState.PAUSED:
        raise _refuse(plan, "resumed")
    endpoint = Endpoint.objects.get(pk=plan.endpoint_id)
    latest = endpoint.config_versions.order_by("-version").values_list("version", flat=True).first()
    if plan.current_step >= 0 and latest != plan.step_config_version:
        if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
            raise ResourceConflict(f"Endpoint '{name}' is being updated; resume the plan when the update ends")
        plan = _apply_step(
            actor=actor, plan=plan, index=plan.current_step, readings=None, states=(RolloutPlanState.PAUSED,)
        )
    with transaction.atomic():
        plan = RolloutPlan.objects.select_for_update().get(pk=plan.pk)
        if plan.state != RolloutPlanState.PAUSED:
            raise _refuse(plan, "resumed")
        plan.state, plan.reason = RolloutPlanState.RUNNING, ""
        plan.step_started_at, plan.step_baseline = None, {}
        plan.save()
        _record(actor, plan, "resume")
    return plan


def _back_to_previous(
    *,
    actor: User | None,
    plan: RolloutPlan,
    state: str,
    reason: str,
    readings: dict[str, Any] | None,
    states: tuple[str, ...],
) -> RolloutPlan:
    """All traffic back on the previous version (the new one stays deployed at 0 %)."""
    with transaction.atomic():
        endpoint, plan = _locked(plan)
        if plan.state not in states:
            raise _refuse(plan, "rolled back")
        if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
            raise ResourceConflict(
                f"Endpoint '{endpoint.name}' is being updated (config version "
                f"{endpoint.pending_config.version if endpoint.pending_config else '?'}); try again when it ends"
            )
        version = None
        if plan.current_step >= 0 and endpoint.active_config is not None:
            has_new = endpoint.active_config.served_entities.filter(name__in=plan.new_entity_names).exists()
            if has_new:
                note = {"step": "rollback", "share": 0, "reason": reason, "readings": readings}
                body = step_config(endpoint, plan, 0)
                version = _apply_config(actor=actor, plan=plan, body=body, note=note, restore=True)
        plan.state, plan.reason = state, reason
        if readings is not None:
            plan.readings = readings
        plan.finished_at = timezone.now()
        if version is None:  # the new version never served: nothing to inspect, nothing to close
            plan.is_open, plan.closed_at = False, timezone.now()
        plan.history = [
            *plan.history,
            {
                "at": timezone.now().isoformat(),
                "step": state,
                "share": 0,
                "config_version": version,
                "readings": readings,
            },
        ]
        plan.save()
        _record(actor, plan, "rollback" if state == RolloutPlanState.ROLLED_BACK else state.lower(), readings=readings)
    return plan


def abort(*, actor: User | None, name: str, plan_id: int) -> RolloutPlan:
    """Stop the plan: all traffic back on the previous version (a plan waiting for approval just ends)."""
    plan = _managed_plan(actor, name, plan_id)
    if plan.state == RolloutPlanState.PENDING_APPROVAL:
        with transaction.atomic():
            claimed = RolloutPlan.objects.filter(pk=plan.pk, state=RolloutPlanState.PENDING_APPROVAL).update(
                state=RolloutPlanState.ABORTED,
                is_open=False,
                reason=f"aborted by {_who(actor)} before approval",
                finished_at=timezone.now(),
                closed_at=timezone.now(),
            )
            plan.refresh_from_db()
            if claimed != 1:
                raise _refuse(plan, "aborted")
            _record(actor, plan, "abort")
        return plan
    if plan.state not in ACTIVE:
        raise _refuse(plan, "aborted")
    return _back_to_previous(
        actor=actor,
        plan=plan,
        state=RolloutPlanState.ABORTED,
        reason=f"aborted by {_who(actor)}",
        readings=None,
        states=ACTIVE,
    )


def promote(*, actor: User | None, name: str, plan_id: int) -> RolloutPlan:
    """Skip the remaining steps: the target config now (the plan succeeds once it is active)."""
    plan = _managed_plan(actor, name, plan_id)
    if plan.state not in ACTIVE:
        raise _refuse(plan, "promoted")
    plan = _apply_step(actor=actor, plan=plan, index=len(plan.steps) - 1, readings=plan.readings or None, states=ACTIVE)
    with transaction.atomic():
        RolloutPlan.objects.filter(pk=plan.pk).update(
            state=RolloutPlanState.RUNNING, reason=f"promoted by {_who(actor)}"
        )
        plan.refresh_from_db()
        _record(actor, plan, "promote")
    return plan


def close(*, actor: User | None, name: str, plan_id: int) -> RolloutPlan:
    """Close a rolled-back, aborted or failed plan: the new version leaves the endpoint."""
    plan = _managed_plan(actor, name, plan_id)
    if plan.state not in ENDED:
        raise _refuse(plan, "closed (abort it first)")
    with transaction.atomic():
        endpoint, plan = _locked(plan)
        if plan.state not in ENDED or not plan.is_open:
            raise _refuse(plan, "closed")
        if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
            raise ResourceConflict(f"Endpoint '{name}' is being updated; close the plan when the update ends")
        body = _without_new_version(endpoint, plan)
        version = None
        if body is not None:
            version = _apply_config(actor=actor, plan=plan, body=body, note={"step": "close"}, restore=True)
        plan.is_open, plan.closed_at = False, timezone.now()
        plan.save()
        _record(actor, plan, "close", config_version=version)
    return plan


# --- evaluation ----------------------------------------------------------------------------------------


def _claim(plan_id: int) -> bool:
    now = timezone.now()
    hold = timedelta(seconds=max(0.1, settings.ROLLOUT_PLAN_EVALUATION_SECONDS / 2))
    return (
        RolloutPlan.objects.filter(pk=plan_id, state=RolloutPlanState.RUNNING)
        .filter(Q(next_evaluation_at__isnull=True) | Q(next_evaluation_at__lte=now))
        .update(next_evaluation_at=now + hold)
        == 1
    )


def _side(deltas: list[dict[str, float]]) -> dict[str, Any]:
    count = sum(d.get("count", 0.0) for d in deltas)
    c4 = sum(d.get("4xx", 0.0) for d in deltas)
    c5 = sum(d.get("5xx", 0.0) for d in deltas)
    buckets = {label: sum(d.get(f"b{label}", 0.0) for d in deltas) for label in BUCKET_LABELS}
    p99 = quantile(buckets, 0.99)
    return {
        "requests": int(count),
        "rate_4xx": round(c4 / count, 4) if count else 0.0,
        "rate_5xx": round(c5 / count, 4) if count else 0.0,
        "p99_ms": round(p99, 2) if p99 is not None else None,
    }


def readings(
    plan: RolloutPlan, counters: dict[str, dict[str, float]], *, current: set[str], elapsed: float
) -> dict[str, Any]:
    """The gates over the step's window: the new version against the ``current`` version (the
    other served entities that take traffic; shadows and entities at 0 % are neither)."""
    new = set(plan.new_entity_names)
    canary: list[dict[str, float]] = []
    others: list[dict[str, float]] = []
    for entity, values in counters.items():
        if entity == UNATTRIBUTED or (entity not in new and entity not in current):
            continue
        delta = counter_delta(plan.step_baseline.get(entity), values)
        (canary if entity in new else others).append(delta)
    c, b = _side(canary), _side(others)
    g = plan.gates
    enough = c["requests"] >= g["min_requests"]
    floor = float(g["p99_latency_floor_ms"])
    ratio = None
    if c["p99_ms"] is not None:
        ratio = round(max(c["p99_ms"], floor) / max(b["p99_ms"] or 0.0, floor, 1e-9), 3)

    def judge(value: float | None, limit: float) -> str:
        if not enough:
            return WAITING
        return FAIL if value is not None and value > limit else PASS

    gates = [
        {
            "gate": "4xx_rate_increase",
            "value": round(c["rate_4xx"] - b["rate_4xx"], 4),
            "limit": g["max_4xx_rate_increase"],
        },
        {
            "gate": "5xx_rate_increase",
            "value": round(c["rate_5xx"] - b["rate_5xx"], 4),
            "limit": g["max_5xx_rate_increase"],
        },
        {"gate": "p99_latency_ratio", "value": ratio, "limit": g["max_p99_latency_ratio"]},
    ]
    for item in gates:
        item["status"] = judge(item["value"], item["limit"])
    statuses = {item["status"] for item in gates}
    status = FAIL if FAIL in statuses else (WAITING if WAITING in statuses else PASS)
    return {
        "evaluated_at": timezone.now().isoformat(),
        "step": plan.current_step,
        "share": share_of(plan),
        "elapsed_seconds": round(elapsed, 1),
        "bake_seconds": plan.bake_seconds,
        "min_requests": g["min_requests"],
        "new_version": c,
        "current_version": b,
        "gates": gates,
        "status": status,
    }


def breach_reason(reading: dict[str, Any]) -> str:
    failed = [g for g in reading["gates"] if g["status"] == FAIL]
    parts = [f"{g['gate']} {g['value']} > {g['limit']}" for g in failed]
    return f"gate breached at step {reading['step'] + 1} ({reading['share']} %): " + "; ".join(parts)


def running_plan_ids() -> list[int]:
    return list(RolloutPlan.objects.filter(state=RolloutPlanState.RUNNING).values_list("id", flat=True))


def evaluate_all() -> int:
    """Beat: one evaluation of every running plan (one failing plan does not stop the others)."""
    ids = running_plan_ids()
    for plan_id in ids:
        try:
            evaluate(plan_id)
        except Exception:
            log.exception("evaluating rollout plan %s failed", plan_id)
    return len(ids)


def evaluate(plan_id: int) -> None:
    """One look at a running plan: wait for its step's config, bake, judge, advance or roll back."""
    if not _claim(plan_id):
        return
    plan = RolloutPlan.objects.select_related("endpoint", "endpoint__active_config", "endpoint__pending_config").get(
        pk=plan_id
    )
    endpoint = plan.endpoint
    if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
        return  # the step's config (or someone's) is rolling out
    pending = endpoint.pending_config
    if (
        endpoint.config_update == ConfigUpdate.UPDATE_FAILED
        and pending is not None
        and pending.version == plan.step_config_version
    ):
        _step_failed(plan, endpoint.config_update_message)
        return
    active = endpoint.active_config
    if active is None or active.version != plan.step_config_version:
        return
    share = share_of(plan)
    if share >= 100:
        _succeed(plan)
        return
    counters = read_counters(endpoint.id)
    now = timezone.now()
    if plan.step_started_at is None:
        RolloutPlan.objects.filter(pk=plan.pk, state=RolloutPlanState.RUNNING).update(
            step_started_at=now, step_baseline=counters
        )
        return
    elapsed = (now - plan.step_started_at).total_seconds()
    current = serving_names((active.traffic_config or {}).get("routes") or []) - set(plan.new_entity_names)
    reading = readings(plan, counters, current=current, elapsed=elapsed)
    if reading["status"] == FAIL:
        _roll_back(plan, reading)
        return
    if elapsed >= plan.bake_seconds and reading["status"] == PASS:
        try:
            _apply_step(
                actor=plan.author,
                plan=plan,
                index=plan.current_step + 1,
                readings=reading,
                states=(RolloutPlanState.RUNNING,),
            )
        except ResourceConflict as exc:  # someone's update in progress: try again next time
            log.info("rollout plan %s: next step waits: %s", plan.pk, exc.message)
        except DomainError as exc:
            _pause_for(plan, f"step {plan.current_step + 2} could not be applied: {exc.message}")
        return
    RolloutPlan.objects.filter(pk=plan.pk, state=RolloutPlanState.RUNNING).update(readings=reading)


def _pause_for(plan: RolloutPlan, reason: str) -> None:
    with transaction.atomic():
        updated = RolloutPlan.objects.filter(pk=plan.pk, state=RolloutPlanState.RUNNING).update(
            state=RolloutPlanState.PAUSED, reason=reason
        )
        if updated:
            plan.refresh_from_db()
            _record(None, plan, "pause")


def _succeed(plan: RolloutPlan) -> None:
    with transaction.atomic():
        updated = RolloutPlan.objects.filter(pk=plan.pk, state=RolloutPlanState.RUNNING).update(
            state=RolloutPlanState.SUCCEEDED, is_open=False, finished_at=timezone.now(), closed_at=timezone.now()
        )
        if updated:
            plan.refresh_from_db()
            _record(None, plan, "succeed")


def _step_failed(plan: RolloutPlan, message: str) -> None:
    reason = f"step {plan.current_step + 1} failed to deploy: {message}"
    try:
        plan = _back_to_previous(
            actor=None,
            plan=plan,
            state=RolloutPlanState.FAILED,
            reason=reason,
            readings=plan.readings or None,
            states=(RolloutPlanState.RUNNING,),
        )
    except ResourceConflict as exc:
        log.info("rollout plan %s: could not end after a failed step yet: %s", plan.pk, exc.message)
        return
    _notify(plan, "failed")


def _roll_back(plan: RolloutPlan, reading: dict[str, Any]) -> None:
    reason = breach_reason(reading)
    try:
        plan = _back_to_previous(
            actor=None,
            plan=plan,
            state=RolloutPlanState.ROLLED_BACK,
            reason=reason,
            readings=reading,
            states=(RolloutPlanState.RUNNING,),
        )
    except ResourceConflict as exc:  # e.g. someone's update in progress: the breach stands, next time
        log.warning("rollout plan %s: rollback waits: %s", plan.pk, exc.message)
        return
    log.warning("rollout plan %s of %s rolled back: %s", plan.pk, plan.endpoint_name, reason)
    _notify(plan, "rolled back")


def _notify(plan: RolloutPlan, what: str) -> None:
    endpoint = Endpoint.objects.filter(pk=plan.endpoint_id).first()
    lists = endpoint.email_notifications if endpoint and isinstance(endpoint.email_notifications, dict) else {}
    to = notifications.recipients(lists.get("on_update_failure"))
    if plan.author is not None and plan.author.email and plan.author.email not in to:
        to.append(plan.author.email)
    notifications.notify_rollout_plan(
        to=to,
        endpoint_name=plan.endpoint_name,
        plan_id=plan.pk,
        what=what,
        reason=plan.reason,
        readings=plan.readings,
        new_entities=list(plan.new_entity_names),
    )
