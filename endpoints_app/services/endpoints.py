"""Creating, reconfiguring, tagging and deleting serving endpoints."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from endpoints_app import audit, capacity, registry
from endpoints_app.backends import get_backend
from endpoints_app.errors import PreconditionFailed, ResourceAlreadyExists, ResourceConflict, ResourceDoesNotExist
from endpoints_app.models import (
    ConfigUpdate,
    ConfigVersion,
    Deployment,
    Endpoint,
    EndpointPermission,
    EndpointTag,
    PermissionLevel,
    ServedEntity,
)
from endpoints_app.validation import CoreConfig, CreateRequest


def etag(endpoint: Endpoint) -> str:
    """A version tag of the endpoint: it changes with every change to it (config, state, tags)."""
    return f'"{endpoint.id[:12]}-{int(endpoint.updated_at.timestamp() * 1_000_000)}"'


def get_endpoint_for_update(name: str, *, if_match: str | None = None) -> Endpoint:
    """Lock the endpoint's row; with If-Match, refuse (412) when it changed since that read."""
    try:
        endpoint = Endpoint.objects.select_for_update().get(name=name)
    except Endpoint.DoesNotExist:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist") from None
    if if_match is not None and if_match.strip() != "*" and if_match.strip() != etag(endpoint):
        raise PreconditionFailed(
            f"Endpoint '{name}' changed since you read it (If-Match {if_match.strip()}, now {etag(endpoint)}); "
            "read it again and re-apply your change"
        )
    return endpoint


def _check_models_exist(config: CoreConfig) -> None:
    """Every served entity names a registered model version (registry I/O: call outside atomic())."""
    for entity in config.served_entities:
        registry.get_model_version(entity.entity_name, entity.entity_version)


def _create_config_version(*, endpoint: Endpoint, config: CoreConfig, actor: AbstractBaseUser | None) -> ConfigVersion:
    last = endpoint.config_versions.aggregate(m=Max("version"))["m"] or 0
    version = ConfigVersion.objects.create(
        endpoint=endpoint,
        version=last + 1,
        traffic_config={"routes": config.routes},
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
            creator=actor,
        )
        for i, e in enumerate(config.served_entities)
    )
    return version


def _begin_rollout(endpoint: Endpoint, version: ConfigVersion) -> None:
    from endpoints_app import tasks

    now = timezone.now()
    endpoint.pending_config = version
    endpoint.config_update = ConfigUpdate.IN_PROGRESS
    endpoint.config_update_message = ""
    endpoint.rollout_started_at = now
    endpoint.rollout_deadline = now + timedelta(seconds=settings.ROLLOUT_TIMEOUT_SECONDS)
    endpoint.rollout_next_check_at = now
    endpoint.save()
    endpoint_id = endpoint.id
    transaction.on_commit(lambda: tasks.start_rollout.delay(endpoint_id))


def create_endpoint(*, actor: AbstractBaseUser | None, request: CreateRequest) -> Endpoint:
    """Create an endpoint and start deploying its first config version."""
    if Endpoint.objects.filter(name=request.name).exists():
        raise ResourceAlreadyExists(f"Endpoint with name '{request.name}' already exists")
    _check_models_exist(request.config)
    capacity.check_fits(request.config)
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
                rate_limits=request.rate_limits,
            )
            if actor is not None and actor.is_authenticated:
                # The creator manages what they create (reference §2.11).
                EndpointPermission.objects.create(endpoint=endpoint, user=actor, level=PermissionLevel.CAN_MANAGE)
            EndpointTag.objects.bulk_create(
                EndpointTag(endpoint=endpoint, key=k, value=v) for k, v in dict(request.tags).items()
            )
            version = _create_config_version(endpoint=endpoint, config=request.config, actor=actor)
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
    return endpoint


def update_endpoint_config(
    *, actor: AbstractBaseUser | None, name: str, config: CoreConfig, if_match: str | None = None
) -> Endpoint:
    """Start rolling out a new config version; the active one keeps serving until it is ready."""
    if not Endpoint.objects.filter(name=name).exists():
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    _check_models_exist(config)
    capacity.check_fits(config)
    with transaction.atomic():
        endpoint = get_endpoint_for_update(name, if_match=if_match)
        if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
            raise ResourceConflict(
                f"Endpoint '{name}' is already being updated (config version "
                f"{endpoint.pending_config.version if endpoint.pending_config else '?'}); "
                "wait until state.config_update is NOT_UPDATING and try again"
            )
        before = audit.endpoint_snapshot(endpoint)
        version = _create_config_version(endpoint=endpoint, config=config, actor=actor)
        _begin_rollout(endpoint, version)
        audit.record(
            actor=actor,
            action="endpoint.update_config",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before=before,
            after=audit.endpoint_snapshot(endpoint),
        )
    return endpoint


def patch_endpoint_tags(
    *,
    actor: AbstractBaseUser | None,
    name: str,
    add_tags: list[tuple[str, str]],
    delete_tags: list[str],
    if_match: str | None = None,
) -> list[EndpointTag]:
    with transaction.atomic():
        endpoint = get_endpoint_for_update(name, if_match=if_match)
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
    return list(endpoint.tags.order_by("key"))


def delete_endpoint(*, actor: AbstractBaseUser | None, name: str, if_match: str | None = None) -> None:
    """Delete the endpoint now; its replicas drain and stop in the background."""
    with transaction.atomic():
        endpoint = get_endpoint_for_update(name, if_match=if_match)
        deployment_ids = list(
            Deployment.objects.filter(endpoint=endpoint, remove_requested_at__isnull=True).values_list("id", flat=True)
        )
        audit.record(
            actor=actor,
            action="endpoint.delete",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before=audit.endpoint_snapshot(endpoint),
        )
        endpoint.delete()
    get_backend().remove(deployment_ids=deployment_ids)
