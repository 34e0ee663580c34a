"""Creating, reconfiguring, tagging and deleting serving endpoints."""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from endpoints_app import audit, capacity, jobs, registry
from endpoints_app.backends import get_backend
from endpoints_app.errors import (
    InvalidParameterValue,
    PreconditionFailed,
    ResourceAlreadyExists,
    ResourceConflict,
    ResourceDoesNotExist,
)
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import iter_secret_fields
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
from endpoints_app.services import rollouts, secrets
from endpoints_app.validation import (
    REDACTED,
    CoreConfig,
    CreateRequest,
    Plaintext,
    ServedEntitySpec,
    default_served_entity_name,
    environment_secret_reference,
)


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
        if entity.external_model is None:
            registry.get_model_version(entity.entity_name, entity.entity_version)


def _check_deployable(*, actor: AbstractBaseUser | None, config: CoreConfig, endpoint: Endpoint | None = None) -> None:
    """What must hold before anything is written: the models exist and fit the host, or, for
    external models, the actor may read every secret the config refers to (reference §3)."""
    check_secret_references(
        actor=actor, config=config, in_use=secret_references_of(endpoint) if endpoint else frozenset()
    )
    if not config.is_external:
        _check_models_exist(config)
        capacity.check_fits(config)


def _references(external_models: list[dict]) -> set[str]:
    """The ``{{secrets/…}}`` references in external-model blocks, as written."""
    found = set()
    for external in external_models:
        provider = PROVIDERS[external["provider"]]
        for _path, holder, name in iter_secret_fields(provider.fields, external.get(provider.config_key) or {}):
            if isinstance(holder.get(name), str):
                found.add(holder[name])
    return found


def _destination(external: dict) -> str:
    """Where a credential is sent: the provider and its whole config block (base URL, API type,
    deployment, region…), canonical JSON. The model name and task do not move the key."""
    provider = PROVIDERS[external["provider"]]
    # A raw credential (Plaintext) is never JSON: it becomes a marker unique to this request, so a
    # block holding one never matches, and its value never reaches the text.
    return json.dumps(
        [provider.name, external.get(provider.config_key) or {}], sort_keys=True, default=lambda v: f"<new {id(v)}>"
    )


def _env_destinations(entity: ServedEntity | ServedEntitySpec) -> dict[str, tuple[str, str]]:
    """Where an entity's ``{{secrets/…}}`` environment variables go (the model version whose code
    reads them, under that variable name), each with the ``(scope, key)`` it refers to."""
    found = {}
    for name, value in (entity.environment_vars or {}).items():
        reference = environment_secret_reference(value)
        if reference is not None:
            found[json.dumps(["env", entity.entity_name, entity.entity_version, name, value])] = reference
    return found


def secret_references_of(endpoint: Endpoint) -> frozenset[str]:
    """Where the endpoint's active and pending configs already send their credentials (external
    models' provider blocks, and secret-valued environment variables of its model versions)."""
    versions = [v for v in (endpoint.active_config_id, endpoint.pending_config_id) if v]
    entities = ServedEntity.objects.filter(config_version_id__in=versions)
    found: set[str] = set()
    for entity in entities:
        if entity.external_model is not None:
            found.add(_destination(entity.external_model))
        else:
            found |= set(_env_destinations(entity))
    return frozenset(found)


def restore_redacted_environment(endpoint: Endpoint, body: Any) -> Any:
    """A config body with each ``[REDACTED]`` environment value put back from the stored config.

    Responses show plain environment values as ``[REDACTED]``, so a client that reads a config,
    changes one field and puts it back (Terraform, the SDK, the dashboard's form) sends that
    placeholder. It keeps the stored value only for the same variable of the same served entity
    (same name, model and version): a value never moves to other model code this way. Anything
    else is left for validation, which refuses a placeholder it cannot resolve.
    """
    config = endpoint.active_config or endpoint.pending_config
    if config is None or not isinstance(body, dict):
        return body
    stored = {
        (e.name, e.entity_name, str(e.entity_version)): dict(e.environment_vars or {})
        for e in config.served_entities.all()
        if e.environment_vars
    }
    if not stored:
        return body
    out = dict(body)
    for key in ("served_entities", "served_models"):
        entities = body.get(key)
        if not isinstance(entities, list):
            continue
        restored = []
        for entity in entities:
            env = entity.get("environment_vars") if isinstance(entity, dict) else None
            if isinstance(env, dict) and REDACTED in env.values():
                model = entity.get("entity_name", entity.get("model_name"))
                version = entity.get("entity_version", entity.get("model_version"))
                if isinstance(model, str) and isinstance(version, str | int):
                    name = entity.get("name") or default_served_entity_name(model, str(version))
                    previous = stored.get((name, model, str(version)), {})
                    env = {k: previous.get(k, v) if v == REDACTED else v for k, v in env.items()}
                    entity = {**entity, "environment_vars": env}
            restored.append(entity)
        out[key] = restored
    return out


def check_secret_references(
    *, actor: AbstractBaseUser | None, config: CoreConfig, in_use: frozenset[str] = frozenset()
) -> None:
    """The actor has READ on every ``{{secrets/scope/key}}`` the external models refer to
    (404 RESOURCE_DOES_NOT_EXIST or 403 PERMISSION_DENIED from the secrets store otherwise).

    An entity whose provider and config block (credential references included) are exactly as the
    endpoint already has them (``in_use``, from ``secret_references_of``) passes unchecked: a manager
    of the endpoint may re-submit its config with a credential someone else stored (e.g. a
    ``*_plaintext`` key kept in the managed scope), but can neither send it anywhere else (another
    base URL or deployment) nor copy the reference to another endpoint. Secret-valued
    ``environment_vars`` likewise: unchanged on the same model version they pass, anywhere else
    they need READ (model code could return the value).
    """
    checking = [
        e.external_model
        for e in config.served_entities
        if e.external_model is not None and _destination(e.external_model) not in in_use
    ]
    references = [secrets.parse_reference(r) for r in _references(checking)]
    # Environment variables the same way: one already given to this model version under this
    # name passes; giving it to other model code (which could return it) needs READ.
    for entity in config.served_entities:
        references += [ref for where, ref in _env_destinations(entity).items() if where not in in_use]
    for parsed in sorted(set(references)):  # type: ignore[type-var]
        assert parsed is not None  # validation accepted only references here
        secrets.check_can_read(user=actor, scope=parsed[0], key=parsed[1])


def _store_plaintext_credentials(
    *, actor: AbstractBaseUser | None, endpoint_name: str, config: CoreConfig
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
                    user=actor,  # type: ignore[arg-type]
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


def create_endpoint(*, actor: AbstractBaseUser | None, request: CreateRequest) -> Endpoint:
    """Create an endpoint and start deploying its first config version."""
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
                rate_limits=request.rate_limits,
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
    return endpoint


def update_endpoint_config(
    *,
    actor: AbstractBaseUser | None,
    name: str,
    config: CoreConfig,
    if_match: str | None = None,
    proposer: AbstractBaseUser | None = None,
) -> Endpoint:
    """Start rolling out a new config version; the active one keeps serving until it is ready.

    ``proposer``: for an approved change request, its author: the config's secret references are
    checked against the author's rights, not the approver's (``actor``), so a proposal cannot use
    a secret only its approver may read."""
    current = Endpoint.objects.filter(name=name).first()
    if current is None:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    _check_deployable(actor=proposer or actor, config=config, endpoint=current)
    with transaction.atomic():
        endpoint = get_endpoint_for_update(name, if_match=if_match)
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
        audit.record(
            actor=actor,
            action="endpoint.update_config",
            object_type="endpoint",
            object_id=endpoint.id,
            object_name=endpoint.name,
            before=before,
            after=audit.endpoint_snapshot(endpoint),
        )
    _finish_external_rollout(endpoint, config)
    return endpoint


def _finish_external_rollout(endpoint: Endpoint, config: CoreConfig) -> None:
    """External models have nothing to deploy: switch to the new config now (a few queries, no
    I/O), so the endpoint is READY when the call returns. The enqueued rollout task then finds
    nothing left to do."""
    if config.is_external:
        rollouts.start_rollout(endpoint_id=endpoint.id)


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
        # Credentials given as *_plaintext were stored for this endpoint alone: they go with it.
        stored = ServedEntity.objects.filter(config_version__endpoint=endpoint, external_model__isnull=False)
        secrets.delete_managed(
            actor=actor, references=_references(list(stored.values_list("external_model", flat=True)))
        )
        endpoint.delete()
    get_backend().remove(deployment_ids=deployment_ids)
