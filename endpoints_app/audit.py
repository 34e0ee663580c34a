"""Recording audit events. Call ``record`` inside the transaction of the change it describes.

The client's address comes from the request (``AuditSourceMiddleware`` puts it in a context
variable), so services need no request object. Values are snapshots the caller chooses; never
pass a token, password or secret value.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse

from endpoints_app import validation
from endpoints_app.models import AuditEvent, ConfigVersion

_source: contextvars.ContextVar[str] = contextvars.ContextVar("audit_source", default="")


def record(
    *,
    actor: User | None,
    action: str,
    object_type: str = "",
    object_id: str = "",
    object_name: str = "",
    before: Any = None,
    after: Any = None,
    source: str | None = None,
) -> AuditEvent:
    known = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor=known,
        actor_name=known.get_username() if known is not None else "",
        source=source if source is not None else _source.get(),
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        object_name=object_name,
        before=before,
        after=after,
    )


def client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or ""


def current_source() -> str:
    """The address of the client whose request is being handled ("" outside a request)."""
    return _source.get()


class AuditSourceMiddleware:
    """Remember the client's address for the audit rows this request writes."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _source.set(client_address(request))
        try:
            return self.get_response(request)
        finally:
            _source.reset(token)


def _fingerprint(value: str) -> str:
    """A short keyed digest of a plain environment value: a change shows in a diff or an audit
    row, the value does not (and cannot be guessed from it without the server's key)."""
    digest = hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"{validation.REDACTED[:-1]} {digest[:10]}]"


def environment_snapshot(env: dict[str, str] | None) -> dict[str, str]:
    """Variable names, secret references as written, plain values as a keyed fingerprint."""
    return {
        k: v if validation.environment_secret_reference(v) else _fingerprint(v) for k, v in sorted((env or {}).items())
    }


def entity_snapshot(entity: Any) -> dict[str, Any]:
    """One served entity, everything in its config: a ``ServedEntity`` row or a parsed
    ``ServedEntitySpec`` (same attribute names), so a proposal diffs against the active config."""
    if entity.external_model is not None:
        # External models hold {{secrets/...}} references only, never a credential.
        return {"name": entity.name, "external_model": entity.external_model, **(entity.extra or {})}
    return {
        "name": entity.name,
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "workload_size": entity.workload_size,
        "workload_type": entity.workload_type,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
        "min_provisioned_concurrency": entity.min_provisioned_concurrency,
        "max_provisioned_concurrency": entity.max_provisioned_concurrency,
        "environment_vars": environment_snapshot(entity.environment_vars),
        **(entity.extra or {}),
    }


def config_snapshot(
    entities: Iterable[Any], *, traffic_config: Any, auto_capture_config: Any, legacy_served_models: bool
) -> dict[str, Any]:
    """A whole config as audit rows and change-request diffs show it."""
    return {
        "served_entities": [entity_snapshot(e) for e in entities],
        "traffic_config": traffic_config,
        "auto_capture_config": auto_capture_config,
        "legacy_served_models": legacy_served_models,
    }


def endpoint_snapshot(endpoint: Any) -> dict[str, Any]:
    """What an endpoint looks like for before/after: its state and its active/pending versions."""

    def version(config: ConfigVersion | None) -> dict[str, Any] | None:
        if config is None:
            return None
        return {
            "config_version": config.version,
            **config_snapshot(
                config.served_entities.all(),
                traffic_config=config.traffic_config,
                auto_capture_config=config.auto_capture_config,
                legacy_served_models=config.legacy_served_models,
            ),
        }

    return {
        "name": endpoint.name,
        "config_update": endpoint.config_update,
        "config": version(endpoint.active_config),
        "pending_config": version(endpoint.pending_config),
        "tags": {t.key: t.value for t in endpoint.tags.all()},
    }
