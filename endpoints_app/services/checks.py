"""What a change to an endpoint checks before anything is written, whether it applies now
(``services.endpoints``, ``services.ai_gateway``) or is proposed for approval
(``services.proposals``): the If-Match precondition and the row lock, the ``[REDACTED]``
environment values a client sent back, and the secrets a config may refer to.

These sit below both the services that apply changes and the one that proposes them, so a change
is checked the same way on either path and neither imports the other.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import User

from endpoints_app import access
from endpoints_app.errors import PreconditionFailed, ResourceDoesNotExist
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import iter_secret_fields
from endpoints_app.models import ChangeRequest, Endpoint, PermissionLevel, ServedEntity
from endpoints_app.secret_references import parse_reference
from endpoints_app.validation import (
    REDACTED,
    CoreConfig,
    ServedEntitySpec,
    default_served_entity_name,
    environment_secret_reference,
)


def etag(endpoint: Endpoint) -> str:
    """A version tag of the endpoint: it changes with every change to it (config, state, tags)."""
    return f'"{endpoint.id[:12]}-{int(endpoint.updated_at.timestamp() * 1_000_000)}"'


def managed_endpoint(
    actor: User | None, name: str, *, approved: ChangeRequest | None, check_access: bool = True
) -> Endpoint:
    """The endpoint, if ``actor`` may change it: CAN_MANAGE on it (404 when they cannot see it,
    403 when they cannot manage it). An approved change request stands in for that check: its
    approver's role was checked when they claimed it (``services.changes``), and the gate
    (``services.gate.admit``) matches it to the change being applied."""
    endpoint = Endpoint.objects.filter(name=name).first()
    if endpoint is None:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    if approved is None and check_access:
        access.require(actor, endpoint, PermissionLevel.CAN_MANAGE)
    return endpoint


def get_endpoint_for_update(name: str, *, if_match: str | None = None) -> Endpoint:
    """Lock the endpoint's row; with If-Match, refuse (412) when it changed since that read."""
    try:
        endpoint = Endpoint.objects.select_for_update().get(name=name)
    except Endpoint.DoesNotExist:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist") from None
    check_if_match(endpoint, if_match)
    return endpoint


def check_if_match(endpoint: Endpoint, if_match: str | None) -> None:
    """Refuse (412) a change based on a read of the endpoint older than its current version; a
    proposal checks it too, so it is never based on a config its author did not see."""
    if if_match is not None and if_match.strip() != "*" and if_match.strip() != etag(endpoint):
        raise PreconditionFailed(
            f"Endpoint '{endpoint.name}' changed since you read it (If-Match {if_match.strip()}, now "
            f"{etag(endpoint)}); read it again and re-apply your change"
        )


def references_in(external_models: list[dict]) -> set[str]:
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
    *, actor: User | None, config: CoreConfig, in_use: frozenset[str] = frozenset()
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
    references: list[tuple[str, str]] = []
    for text in references_in(checking):
        parsed = parse_reference(text)
        assert parsed is not None  # validation accepted only references here
        references.append(parsed)
    # Environment variables the same way: one already given to this model version under this
    # name passes; giving it to other model code (which could return it) needs READ.
    for entity in config.served_entities:
        references += [ref for where, ref in _env_destinations(entity).items() if where not in in_use]
    for scope, key in sorted(set(references)):
        access.check_can_read(user=actor, scope=scope, key=key)
