"""Recording audit events. Call ``record`` inside the transaction of the change it describes.

The client's address comes from the request (``AuditSourceMiddleware`` puts it in a context
variable), so services need no request object. Values are snapshots the caller chooses; never
pass a token, password or secret value.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse

from endpoints_app.models import AuditEvent

_source: contextvars.ContextVar[str] = contextvars.ContextVar("audit_source", default="")


def record(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    object_type: str = "",
    object_id: str = "",
    object_name: str = "",
    before: Any = None,
    after: Any = None,
    source: str | None = None,
) -> AuditEvent:
    authenticated = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditEvent.objects.create(
        actor=actor if authenticated else None,
        actor_name=actor.get_username() if authenticated else "",
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


def endpoint_snapshot(endpoint: Any) -> dict[str, Any]:
    """What an endpoint looks like for before/after: its state and its active/pending versions."""
    from endpoints_app.models import ConfigVersion

    def version(config: ConfigVersion | None) -> dict[str, Any] | None:
        if config is None:
            return None
        return {
            "config_version": config.version,
            "served_entities": [
                # External models hold {{secrets/...}} references only, never a credential.
                {"name": e.name, "external_model": e.external_model}
                if e.external_model is not None
                else {
                    "name": e.name,
                    "entity_name": e.entity_name,
                    "entity_version": e.entity_version,
                    "workload_size": e.workload_size,
                    "workload_type": e.workload_type,
                    "scale_to_zero_enabled": e.scale_to_zero_enabled,
                }
                for e in config.served_entities.all()
            ],
            "traffic_config": config.traffic_config,
        }

    return {
        "name": endpoint.name,
        "config_update": endpoint.config_update,
        "config": version(endpoint.active_config),
        "pending_config": version(endpoint.pending_config),
        "tags": {t.key: t.value for t in endpoint.tags.all()},
    }


def on_failed_login(sender: object, credentials: dict, request: HttpRequest | None = None, **kwargs: object) -> None:
    """A failed sign-in (Django's user_login_failed): the username only, never the password."""
    record(
        actor=None,
        action="auth.failed",
        object_type="user",
        object_name=str(credentials.get("username", ""))[:255],
        source=client_address(request) if request is not None else None,
    )
