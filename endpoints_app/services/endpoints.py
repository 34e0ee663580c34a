"""Creating, reconfiguring (served entities and their traffic split), tagging and deleting serving
endpoints, and setting their email notifications and telemetry: one function per change, shared by
the API, the dashboard and approved change requests.

Each one, in order:
1. checks access (``access``: CAN_MANAGE on the endpoint, or the creator roles to create);
2. passes the approval gate (``services.gate``): apply now, or refuse / propose a change request
   when a policy covers the endpoint, as the caller chose with ``on_approval_needed``; an approved
   change request (``approved``) stands in for both;
3. checks what must hold outside the transaction (models, capacity, secret references);
4. writes, with an audit row, in one transaction, and enqueues the rollout on commit.

A traffic split is part of the config (``traffic_config.routes``), so changing one is a config
update; ``services.rollouts`` then carries the new version to its end without deciding anything.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Max
from django.utils import timezone

from endpoints_app import access, audit, capacity, jobs, registry
from endpoints_app.backends import get_backend
from endpoints_app.errors import (
    InvalidParameterValue,
    ResourceAlreadyExists,
    ResourceConflict,
)
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import iter_secret_fields
from endpoints_app.models import (
    ChangeRequest,
    ConfigUpdate,
    ConfigVersion,
    Deployment,
    Endpoint,
    EndpointPermission,
    EndpointTag,
    PermissionLevel,
    PollTarget,
    RolloutPlan,
    RolloutPlanState,
    ServedEntity,
)
from endpoints_app.services import checks, gate, proposals, rollouts, secrets
from endpoints_app.services.gate import OnApprovalNeeded, Outcome
from endpoints_app.validation import (
    CoreConfig,
    Plaintext,
    parse_core_config,
    parse_create_request,
    parse_email_notifications,
    parse_tags_patch,
    parse_telemetry_config,
    require_object,
)

# Settings that change neither what an endpoint serves nor who may use it: no approval policy
# covers them (``gate.GOVERNED``), but they pass the gate like every change, so a rule would land there.
NOTIFICATIONS = "email_notifications"
TELEMETRY = "telemetry_config"


def _check_models_exist(config: CoreConfig) -> None:
    """Every served entity names a registered model version (registry I/O: call outside atomic())."""
    for entity in config.served_entities:
        if entity.external_model is None:
            registry.get_model_version(entity.entity_name, entity.entity_version)


def _check_deployable(*, actor: User | None, config: CoreConfig, endpoint: Endpoint | None = None) -> None:
    """What must hold before anything is written: the models exist and fit the host, or, for
    external models, the actor may read every secret the config refers to (reference §3)."""
    checks.check_secret_references(
        actor=actor, config=config, in_use=checks.secret_references_of(endpoint) if endpoint else frozenset()
    )
    if not config.is_external:
        _check_models_exist(config)
        capacity.check_fits(config)


def _store_plaintext_credentials(
    *, actor: User | None, endpoint_name: str, config: CoreConfig
) -> CoreConfig:
    """The config with every ``*_plaintext`` credential stored in the managed secret scope and
    replaced by its reference: the endpoint never holds a raw credential. Call inside the
    transaction that writes the config, so a failed change stores nothing."""
    if not config.is_external:
        return config
    entities = []
    for entity in config.served_entities:
        if entity.external_model is None:
            entities.append(entity)
            continue
        external = copy.copy(entity.external_model)
        provider = PROVIDERS[external["provider"]]
        block = external[provider.config_key] = copy.deepcopy(external[provider.config_key])
        for path, holder, name in iter_secret_fields(provider.fields, block):
            plain = holder.pop(f"{name}_plaintext", None)
            if isinstance(plain, Plaintext):
                # Unique per store, so a failed update never overwrites what the active config uses.
                key = f"{endpoint_name}.{entity.name}.{path}"[:119] + "-" + uuid.uuid4().hex[:8]
                holder[name] = secrets.store_plaintext(
                    user=actor,
                    scope=secrets.MANAGED_SCOPE,
                    key=key,
                    value=plain.value,
                )
        entities.append(dataclasses.replace(entity, external_model=external))
    return dataclasses.replace(config, served_entities=entities)


def _check_same_kind(endpoint: Endpoint, config: CoreConfig) -> None:
    """An endpoint created with external models stays external, and one with custom models stays
    custom (reference §2.3)."""
    current = endpoint.active_config or endpoint.pending_config
    if current is None:
        return
    was_external = current.served_entities.filter(external_model__isnull=False).exists()
    if was_external != config.is_external:
        kinds = ("external models", "custom models") if was_external else ("custom models", "external models")
        raise InvalidParameterValue(
            f"Endpoint '{endpoint.name}' serves {kinds[0]} and cannot be switched to {kinds[1]}; "
            "create another endpoint for them"
        )


def _create_config_version(*, endpoint: Endpoint, config: CoreConfig, actor: User | None) -> ConfigVersion:
    last = endpoint.config_versions.aggregate(m=Max("version"))["m"] or 0
    version = ConfigVersion.objects.create(
        endpoint=endpoint,
        version=last + 1,
        traffic_config=config.traffic_config,
        auto_capture_config=config.auto_capture_config,
        legacy_served_models=config.legacy_served_models,
        created_by=actor,
    )
    ServedEntity.objects.bulk_create(
        ServedEntity(
            config_version=version,
            position=i,
            name=e.name,
            entity_name=e.entity_name,
            entity_version=e.entity_version,
            workload_size=e.workload_size,
            workload_type=e.workload_type,
            scale_to_zero_enabled=e.scale_to_zero_enabled,
            min_provisioned_concurrency=e.min_provisioned_concurrency,
            max_provisioned_concurrency=e.max_provisioned_concurrency,
            environment_vars=e.environment_vars,
            extra=e.extra,
            external_model=e.external_model,
            creator=actor,
        )
        for i, e in enumerate(config.served_entities)
    )
    return version


def _begin_rollout(endpoint: Endpoint, version: ConfigVersion) -> None:
    now = timezone.now()
    endpoint.pending_config = version
    endpoint.config_update = ConfigUpdate.IN_PROGRESS
    endpoint.config_update_message = ""
    endpoint.rollout_started_at = now
    endpoint.rollout_deadline = now + timedelta(seconds=settings.ROLLOUT_TIMEOUT_SECONDS)
    endpoint.rollout_next_check_at = now
    endpoint.save()
    jobs.enqueue_on_commit(jobs.START_ROLLOUT, endpoint.id)


def create_endpoint(
    *,
    actor: User | None,
    body: Any,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[Endpoint]:
    """Create an endpoint from a create request's body and start deploying its first config
    version. Its creator manages it; for an approved request that is the request's author."""
    if approved is None:
        access.require_create(actor)
    request = parse_create_request(body)
    proposal = gate.admit(
        actor=actor,
        action=ChangeRequest.Action.CREATE,
        endpoint_name=request.name,
        body=body,
        tag_sets=(dict(request.tags),),
        on_approval_needed=on_approval_needed,
        approved=approved,
    )
    if proposal is not None:
        return Outcome(change_request=proposal)
    if Endpoint.objects.filter(name=request.name).exists():
        raise ResourceAlreadyExists(f"Endpoint with name '{request.name}' already exists")
    _check_deployable(actor=actor, config=request.config)
    try:
        with transaction.atomic():
            endpoint = Endpoint.objects.create(
                name=request.name,
                creator=actor,
                description=request.description,
                route_optimized=request.route_optimized,
                budget_policy_id=request.budget_policy_id,
                ai_gateway=request.ai_gateway,
                email_notifications=request.email_notifications,
                telemetry_config=request.telemetry_config,
            )
            if actor is not None and actor.is_authenticated:
                # The creator manages what they create (reference §2.11).
                EndpointPermission.objects.create(endpoint=endpoint, user=actor, level=PermissionLevel.CAN_MANAGE)
            EndpointTag.objects.bulk_create(
                EndpointTag(endpoint=endpoint, key=k, value=v) for k, v in dict(request.tags).items()
            )
            config = _store_plaintext_credentials(actor=actor, endpoint_name=endpoint.name, config=request.config)
            version = _create_config_version(endpoint=endpoint, config=config, actor=actor)
            _begin_rollout(endpoint, version)
            audit.record(
                actor=actor,
                action="endpoint.create",
                object_type="endpoint",
                object_id=endpoint.id,
                object_name=endpoint.name,
                after=audit.endpoint_snapshot(endpoint),
            )
    except IntegrityError:
        # Two creates raced for the same name; the loser gets the same answer as above.
        raise ResourceAlreadyExists(f"Endpoint with name '{request.name}' already exists") from None
    _finish_external_rollout(endpoint, request.config)
    return Outcome(endpoint)


def update_endpoint_config(
    *,
    actor: User | None,
    name: str,
    body: Any,
    if_match: str | None = None,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
    rollout_plan: int | None = None,
    note: dict[str, Any] | None = None,
    restore: bool = False,
) -> Outcome[Endpoint]:
    """Start rolling out a new config version (served entities, traffic split, auto-capture) from
    a config body; the active version keeps serving until the new one is ready.

    For an approved change request the config's secret references are checked against its
    author's rights, not the approver's (``actor``), so a proposal cannot use a secret only its
    approver may read.

    ``rollout_plan``: the rollout plan (``services.rollout_plans``) making this change, whose
    step, share and gate readings (``note``) the audit row records; any other change pauses the
    plan running on the endpoint, which would otherwise fight it. With ``restore`` the plan puts
    traffic back on the version that served before it (a rollback, an abort, its close): the
    platform's own safety action, admitted without the access check and the gate, like the
    rollout driver's switches (the plan checked whoever asked for it)."""
    if restore and rollout_plan is not None:
        current = checks.managed_endpoint(actor, name, approved=None, check_access=False)
        proposal = None
    else:
        current = checks.managed_endpoint(actor, name, approved=approved)
        proposal = gate.admit(
            actor=actor,
            action=ChangeRequest.Action.UPDATE_CONFIG,
            endpoint_name=name,
            body=body,
            on_approval_needed=on_approval_needed,
            approved=approved,
            if_match=if_match,
        )
    if proposal is not None:
        return Outcome(change_request=proposal)
    body = checks.restore_redacted_environment(current, require_object(body, "config"))  # a GET's config put back
    config = parse_core_config(body, where="config")
    _check_deployable(actor=approved.author if approved else actor, config=config, endpoint=current)
    with transaction.atomic():
        endpoint = checks.get_endpoint_for_update(name, if_match=if_match)
        if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
            raise ResourceConflict(
                f"Endpoint '{name}' is already being updated (config version "
                f"{endpoint.pending_config.version if endpoint.pending_config else '?'}); "
                "wait until state.config_update is NOT_UPDATING and try again"
            )
        _check_same_kind(endpoint, config)
        before = audit.endpoint_snapshot(endpoint)
        config = _store_plaintext_credentials(actor=actor, endpoint_name=endpoint.name, config=config)
        version = _create_config_version(endpoint=endpoint, config=config, actor=actor)
        _begin_rollout(endpoint, version)
        after = audit.endpoint_snapshot(endpoint)
        if rollout_plan is None:
            _pause_rollout_plans(actor=actor, endpoint=endpoint, version=version)
        else:
            after["rollout_plan"] = {"plan": rollout_plan, **(note or {})}
        audit.record(
            actor=actor,
            action="endpoint.update_config",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before=before,
            after=after,
        )
    _finish_external_rollout(endpoint, config)
    return Outcome(endpoint)


def _pause_rollout_plans(*, actor: User | None, endpoint: Endpoint, version: ConfigVersion) -> None:
    """A config change made by hand while a rollout plan runs pauses the plan (in the change's
    transaction); resuming it applies its current step on top of this change."""
    who = actor.get_username() if actor is not None and actor.is_authenticated else "the platform"
    for plan in RolloutPlan.objects.select_for_update().filter(endpoint=endpoint, state=RolloutPlanState.RUNNING):
        plan.state = RolloutPlanState.PAUSED
        plan.reason = f"paused: {who} changed the endpoint's config by hand (config version {version.version})"
        plan.save(update_fields=["state", "reason", "updated_at"])
        audit.record(
            actor=actor,
            action="rollout_plan.pause",
            object_type="rollout_plan",
            object_id=str(plan.pk),
            object_name=endpoint.name,
            after={"state": plan.state, "reason": plan.reason},
        )


def _finish_external_rollout(endpoint: Endpoint, config: CoreConfig) -> None:
    """External models have nothing to deploy: switch to the new config now (a few queries, no
    I/O), so the endpoint is READY when the call returns. The enqueued rollout task then finds
    nothing left to do."""
    if config.is_external:
        rollouts.start_rollout(endpoint_id=endpoint.id)


def patch_endpoint_tags(
    *,
    actor: User | None,
    name: str,
    body: Any,
    if_match: str | None = None,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[list[EndpointTag]]:
    """``PATCH …/tags``: delete ``delete_tags``, then set ``add_tags``; returns every tag after.

    Tags decide which policies cover an endpoint, so the gate judges a tag change both on the tags
    the endpoint has and on those it would have: otherwise removing ``env=prod``, changing the
    endpoint freely and adding the tag back would bypass the policy; and adding a policy's tag is
    a change to what the approvers guard."""
    endpoint = checks.managed_endpoint(actor, name, approved=approved)
    add_tags, delete_tags = parse_tags_patch(body)
    before = {t.key: t.value for t in endpoint.tags.all()}
    proposal = gate.admit(
        actor=actor,
        action=ChangeRequest.Action.TAGS,
        endpoint_name=name,
        body=body,
        tag_sets=(before, proposals.patched_tags(before, add_tags, delete_tags)),
        on_approval_needed=on_approval_needed,
        approved=approved,
        if_match=if_match,
    )
    if proposal is not None:
        return Outcome(change_request=proposal)
    with transaction.atomic():
        endpoint = checks.get_endpoint_for_update(name, if_match=if_match)
        before = {t.key: t.value for t in endpoint.tags.all()}
        if delete_tags:
            endpoint.tags.filter(key__in=delete_tags).delete()
        for key, value in add_tags:
            EndpointTag.objects.update_or_create(endpoint=endpoint, key=key, defaults={"value": value})
        endpoint.save(update_fields=["updated_at"])
        audit.record(
            actor=actor,
            action="endpoint.tags",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before=before,
            after={t.key: t.value for t in endpoint.tags.all()},
        )
    return Outcome(list(endpoint.tags.order_by("key")))


def update_notifications(*, actor: User | None, name: str, body: Any, if_match: str | None = None) -> Endpoint:
    """``PATCH …/notifications``: the endpoint's ``email_notifications`` replaced (an empty or
    missing block turns them off); the rollout emails these addresses when an update ends."""
    checks.managed_endpoint(actor, name, approved=None)
    gate.admit(actor=actor, action=NOTIFICATIONS, endpoint_name=name, body=body, if_match=if_match)
    data = require_object(body if body is not None else {}, "request body")
    value = parse_email_notifications(data.get("email_notifications"))
    return _set_setting(actor=actor, name=name, field=NOTIFICATIONS, value=value, if_match=if_match)


def patch_telemetry_config(*, actor: User | None, name: str, body: Any, if_match: str | None = None) -> Endpoint:
    """``PATCH …/telemetry-config``: the endpoint's ``telemetry_config`` replaced, or removed when
    the body has none (reference §1, row 18)."""
    checks.managed_endpoint(actor, name, approved=None)
    gate.admit(actor=actor, action=TELEMETRY, endpoint_name=name, body=body, if_match=if_match)
    data = require_object(body if body is not None else {}, "request body")
    value = parse_telemetry_config(data.get("telemetry_config"))
    return _set_setting(actor=actor, name=name, field=TELEMETRY, value=value, if_match=if_match)


def _set_setting(*, actor: User | None, name: str, field: str, value: Any, if_match: str | None) -> Endpoint:
    with transaction.atomic():
        endpoint = checks.get_endpoint_for_update(name, if_match=if_match)
        before = getattr(endpoint, field)
        setattr(endpoint, field, value)
        endpoint.save(update_fields=[field, "updated_at"])
        audit.record(
            actor=actor,
            action=f"endpoint.update_{field}",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before={field: before},
            after={field: value},
        )
    return endpoint


def delete_endpoint(
    *,
    actor: User | None,
    name: str,
    if_match: str | None = None,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[None]:
    """Delete the endpoint now; its replicas drain and stop in the background."""
    checks.managed_endpoint(actor, name, approved=approved)
    proposal = gate.admit(
        actor=actor,
        action=ChangeRequest.Action.DELETE,
        endpoint_name=name,
        body={},
        on_approval_needed=on_approval_needed,
        approved=approved,
        if_match=if_match,
    )
    if proposal is not None:
        return Outcome(change_request=proposal)

    def delete() -> list[int]:
        with transaction.atomic():
            endpoint = checks.get_endpoint_for_update(name, if_match=if_match)
            # Pollers write rows that point at the endpoint (locked above) and at its poll
            # targets: locked too, a poll run written meanwhile waits for this delete, instead
            # of landing between the cascade's collection and its DELETE.
            list(PollTarget.objects.select_for_update().filter(endpoint=endpoint).values_list("id", flat=True))
            deployment_ids = list(
                Deployment.objects.filter(endpoint=endpoint, remove_requested_at__isnull=True).values_list(
                    "id", flat=True
                )
            )
            audit.record(
                actor=actor,
                action="endpoint.delete",
                object_type="endpoint",
                object_id=endpoint.id,
                object_name=endpoint.name,
                before=audit.endpoint_snapshot(endpoint),
            )
            # Credentials given as *_plaintext were stored for this endpoint alone: they go with it.
            stored = ServedEntity.objects.filter(config_version__endpoint=endpoint, external_model__isnull=False)
            blocks = [block for block in stored.values_list("external_model", flat=True) if block is not None]
            secrets.delete_managed(actor=actor, references=checks.references_in(blocks))
            endpoint.delete()
        return deployment_ids

    deployment_ids = _retrying_write_conflicts(delete)
    get_backend().remove(deployment_ids=deployment_ids)
    return Outcome()


# PostgreSQL's deadlock_detected, serialization_failure and foreign_key_violation: what a write
# that races the pollers' writes can meet (a row inserted between the cascade's read and its
# DELETE). The whole transaction rolled back, so running it again is safe.
_WRITE_CONFLICTS = frozenset({"40P01", "40001", "23503"})
T = TypeVar("T")


def _retrying_write_conflicts(write: Callable[[], T], attempts: int = 4) -> T:
    for attempt in range(attempts):
        try:
            return write()
        except (OperationalError, IntegrityError) as exc:
            state = getattr(exc.__cause__, "sqlstate", None)
            if attempt == attempts - 1 or state not in _WRITE_CONFLICTS:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
