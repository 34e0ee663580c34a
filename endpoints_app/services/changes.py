"""Change requests: propose, approve (which applies through the same services as a direct change),
reject. Policies say which endpoints need approval; approvers and admins may change them directly.

Rules:
- the author can never approve their own request;
- approving claims the request with a conditional update, so two approvals apply it once;
- a request whose endpoint changed after it was proposed is stale and must be re-proposed.
"""

from __future__ import annotations

import difflib
import json
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from endpoints_app import access, audit, validation
from endpoints_app.errors import (
    DomainError,
    InvalidParameterValue,
    PermissionDenied,
    ResourceConflict,
    ResourceDoesNotExist,
)
from endpoints_app.models import ApprovalPolicy, ChangeRequest, ChangeRequestStatus, Endpoint, PermissionLevel, Role
from endpoints_app.services import ai_gateway
from endpoints_app.services import endpoints as endpoint_services

log = logging.getLogger(__name__)
APPROVER_ROLES = (Role.APPROVER, Role.ADMIN)


def needs_approval(*, endpoint_name: str, tags: dict[str, str] | None = None) -> bool:
    """Whether a policy covers this endpoint (by name, or by one of its tags)."""
    if tags is None:
        endpoint = Endpoint.objects.filter(name=endpoint_name).prefetch_related("tags").first()
        tags = {t.key: t.value for t in endpoint.tags.all()} if endpoint else {}
    tag_match = Q()
    for key, value in tags.items():
        tag_match |= Q(tag_key=key, tag_value=value)
    return ApprovalPolicy.objects.filter(
        Q(endpoint_name=endpoint_name) | (tag_match if tags else Q(pk__in=[]))
    ).exists()


def may_skip_approval(user: AbstractBaseUser) -> bool:
    return access.role_of(user) in APPROVER_ROLES


def require_direct_change_allowed(
    user: AbstractBaseUser, *, endpoint_name: str, tags: dict[str, str] | None = None, action: str = "update-config"
) -> None:
    """Refuse (403) a direct change to an endpoint a policy covers, naming the change request to propose."""
    if needs_approval(endpoint_name=endpoint_name, tags=tags) and not may_skip_approval(user):
        body = {"tags": " --json @tags.json", "delete": "", "ai-gateway": " --json @ai-gateway.json"}.get(
            action, " --json @config.json"
        )
        raise PermissionDenied(
            f"Changes to endpoint '{endpoint_name}' need approval. Propose it instead: "
            f"POST /api/2.0/modelfleet/change-requests with action '{action.replace('-', '_')}', or "
            f"`modelfleet change-requests propose {endpoint_name} --action {action}{body}`; "
            "an approver then approves it."
        )


def patched_tags(before: dict[str, str], add_tags: list[tuple[str, str]], delete_tags: list[str]) -> dict[str, str]:
    """The tags after a PATCH …/tags (deletes first, then adds, as ``patch_endpoint_tags`` applies them)."""
    after = {k: v for k, v in before.items() if k not in set(delete_tags)}
    after.update(add_tags)
    return after


def _current_tags(endpoint_name: str) -> dict[str, str]:
    endpoint = Endpoint.objects.filter(name=endpoint_name).prefetch_related("tags").first()
    return {t.key: t.value for t in endpoint.tags.all()} if endpoint else {}


def require_direct_tag_change_allowed(
    user: AbstractBaseUser, *, endpoint_name: str, add_tags: list[tuple[str, str]], delete_tags: list[str]
) -> None:
    """Tags decide which policies cover an endpoint, so a tag change is gated both on the tags it
    has and on the tags it would have: otherwise removing ``env=prod``, changing the endpoint
    freely and adding the tag back would bypass the policy; and adding a policy's tag is a change
    to what the approvers guard."""
    before = _current_tags(endpoint_name)
    for tags in (before, patched_tags(before, add_tags, delete_tags)):
        require_direct_change_allowed(user, endpoint_name=endpoint_name, tags=tags, action="tags")


def _comparable(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    return {k: v for k, v in config.items() if k != "config_version"}


def _config_view(config: validation.CoreConfig) -> dict[str, Any]:
    """A parsed config in the shape of the audit snapshot, so the diff shows real changes only."""
    return audit.config_snapshot(
        config.served_entities,
        traffic_config={"routes": config.routes},
        auto_capture_config=config.auto_capture_config,
        legacy_served_models=config.legacy_served_models,
    )


def _refuse_plaintext_credentials(config: validation.CoreConfig) -> None:
    """A proposal is stored, shown to approvers and audited as given: it must not carry a raw key."""
    fields = validation.plaintext_credentials(config)
    if fields:
        raise InvalidParameterValue(
            f"A change request cannot carry plaintext credentials ({', '.join(fields)}): it is stored and shown "
            "to approvers. Put the key in a secret scope (modelfleet secrets put-secret SCOPE KEY) and refer to "
            "it as {{secrets/SCOPE/KEY}}."
        )


def shown_proposal(action: str, body: Any) -> Any:
    """A proposal's body as the API, the pages and the audit log show it: environment values
    redacted as they are on the endpoint (names and secret references as written)."""

    def config(raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        for key in ("served_entities", "served_models"):
            if isinstance(raw.get(key), list):
                out[key] = [
                    {**e, "environment_vars": validation.redact_environment_vars(e["environment_vars"])}
                    if isinstance(e, dict) and isinstance(e.get("environment_vars"), dict)
                    else e
                    for e in raw[key]
                ]
        return out

    if action == ChangeRequest.Action.CREATE and isinstance(body, dict):
        return {**body, "config": config(body.get("config"))}
    if action == ChangeRequest.Action.UPDATE_CONFIG:
        return config(body)
    return body


def _diff(before: Any, after: Any) -> str:
    a = json.dumps(before, indent=2, sort_keys=True).splitlines() if before is not None else []
    b = json.dumps(after, indent=2, sort_keys=True).splitlines() if after is not None else []
    return "\n".join(difflib.unified_diff(a, b, "active", "proposed", lineterm=""))


def propose(*, actor: AbstractBaseUser, endpoint_name: str, action: str, body: Any) -> ChangeRequest:
    if action not in ChangeRequest.Action.values:
        raise InvalidParameterValue(f"action must be one of {', '.join(ChangeRequest.Action.values)}")
    endpoint = Endpoint.objects.filter(name=endpoint_name).first()
    if action == ChangeRequest.Action.CREATE:
        if endpoint is not None:
            raise ResourceConflict(f"Endpoint '{endpoint_name}' already exists")
        access.require_create(actor)
        body = validation.require_object(body, "body")
        create = validation.parse_create_request({**body, "name": endpoint_name})  # refuse now what would fail later
        _refuse_plaintext_credentials(create.config)
        endpoint_services.check_secret_references(actor=actor, config=create.config)  # the author's, as at approval
        before, after, base = None, shown_proposal(action, body), ""  # env values redacted in the diff too
    else:
        if endpoint is None:
            raise ResourceDoesNotExist(f"Endpoint '{endpoint_name}' does not exist")
        access.require(actor, endpoint, PermissionLevel.CAN_MANAGE)
        before = _comparable(audit.endpoint_snapshot(endpoint)["config"])
        if action == ChangeRequest.Action.UPDATE_CONFIG:
            body = validation.require_object(body, "body")
            body = endpoint_services.restore_redacted_environment(endpoint, body)
            parsed = validation.parse_core_config(body)
            _refuse_plaintext_credentials(parsed)
            endpoint_services.check_secret_references(
                actor=actor, config=parsed, in_use=endpoint_services.secret_references_of(endpoint)
            )
            after = _config_view(parsed)
        elif action == ChangeRequest.Action.TAGS:
            body = validation.require_object(body, "body")
            add, delete = validation.parse_tags_patch(body)  # refuse now what would fail later
            current = {t.key: t.value for t in endpoint.tags.all()}
            before, after = {"tags": current}, {"tags": patched_tags(current, add, delete)}
        elif action == ChangeRequest.Action.AI_GATEWAY:
            body = validation.require_object(body if body is not None else {}, "body")
            current = endpoint.ai_gateway if isinstance(endpoint.ai_gateway, dict) else None
            before = {"ai_gateway": current}
            # Refuse now what would fail later.
            after = {"ai_gateway": validation.parse_ai_gateway(body, current=current)}
        else:
            body, after = {}, None
        base = endpoint_services.etag(endpoint)
    with transaction.atomic():
        request = ChangeRequest.objects.create(
            endpoint_name=endpoint_name,
            action=action,
            proposed=body,
            diff=_diff(before, after),
            base_etag=base,
            author=actor,
        )
        audit.record(
            actor=actor,
            action="change_request.propose",
            object_type="change_request",
            object_id=str(request.pk),
            object_name=endpoint_name,
            after={"action": action, "proposed": shown_proposal(action, body)},
        )
    _notify_approvers(request)
    return request


def get(request_id: int) -> ChangeRequest:
    request = ChangeRequest.objects.select_related("author", "decided_by").filter(pk=request_id).first()
    if request is None:
        raise ResourceDoesNotExist(f"Change request {request_id} does not exist")
    return request


def _decide(*, actor: AbstractBaseUser, request: ChangeRequest, status: str, comment: str) -> None:
    if not may_skip_approval(actor):
        raise PermissionDenied("Approving or rejecting change requests needs the approver or admin role")
    if request.author_id == actor.pk:
        raise PermissionDenied("You cannot approve or reject your own change request; ask another approver")
    # Claim: only one decision wins, however many approvers click at once.
    claimed = ChangeRequest.objects.filter(pk=request.pk, status=ChangeRequestStatus.PENDING).update(
        status=status, decided_by=actor, decided_at=timezone.now(), comment=comment
    )
    if claimed != 1:
        request.refresh_from_db()
        raise ResourceConflict(f"Change request {request.pk} is already {request.status}")
    request.refresh_from_db()


def reject(*, actor: AbstractBaseUser, request: ChangeRequest, comment: str = "") -> ChangeRequest:
    with transaction.atomic():
        _decide(actor=actor, request=request, status=ChangeRequestStatus.REJECTED, comment=comment)
        audit.record(
            actor=actor,
            action="change_request.reject",
            object_type="change_request",
            object_id=str(request.pk),
            object_name=request.endpoint_name,
            after={"comment": comment},
        )
    return request


def approve(*, actor: AbstractBaseUser, request: ChangeRequest, comment: str = "") -> ChangeRequest:
    """Approve and apply. Stale requests are refused; a failed apply is recorded on the request."""
    with transaction.atomic():
        _decide(actor=actor, request=request, status=ChangeRequestStatus.APPLIED, comment=comment)
        audit.record(
            actor=actor,
            action="change_request.approve",
            object_type="change_request",
            object_id=str(request.pk),
            object_name=request.endpoint_name,
            after={"comment": comment},
        )
    try:
        _apply(actor=actor, request=request)
    except Exception as exc:
        if not isinstance(exc, DomainError):
            exc = DomainError(f"applying the change failed: {type(exc).__name__}: {exc}", status=500)
        status = ChangeRequestStatus.STALE if exc.status == 412 else ChangeRequestStatus.FAILED
        with transaction.atomic():
            ChangeRequest.objects.filter(pk=request.pk).update(status=status, error=exc.message)
            audit.record(
                actor=actor,
                action=f"change_request.{status.lower()}",
                object_type="change_request",
                object_id=str(request.pk),
                object_name=request.endpoint_name,
                after={"error": exc.message},
            )
        request.refresh_from_db()
        if status == ChangeRequestStatus.STALE:
            raise ResourceConflict(
                f"Change request {request.pk} is stale: endpoint '{request.endpoint_name}' changed after it was "
                "proposed. Propose the change again against the current config."
            ) from None
        raise
    return request


def _apply(*, actor: AbstractBaseUser, request: ChangeRequest) -> None:
    """Apply an approved request. A config's secret references are checked against the author's
    rights (the approver vouches for the change, not for access to secrets they may read)."""
    if request.action in (ChangeRequest.Action.CREATE, ChangeRequest.Action.UPDATE_CONFIG) and request.author is None:
        raise PermissionDenied(
            f"The author of change request {request.pk} no longer exists, so whether they may use the secrets it "
            "refers to cannot be checked; propose the change again"
        )
    if request.action == ChangeRequest.Action.CREATE:
        create = validation.parse_create_request({**request.proposed, "name": request.endpoint_name})
        endpoint_services.create_endpoint(actor=request.author, request=create)
    elif request.action == ChangeRequest.Action.UPDATE_CONFIG:
        endpoint_services.update_endpoint_config(
            actor=actor,
            name=request.endpoint_name,
            config=validation.parse_core_config(request.proposed),
            if_match=request.base_etag,
            proposer=request.author,
        )
    elif request.action == ChangeRequest.Action.TAGS:
        add, delete = validation.parse_tags_patch(request.proposed)
        endpoint_services.patch_endpoint_tags(
            actor=actor, name=request.endpoint_name, add_tags=add, delete_tags=delete, if_match=request.base_etag
        )
    elif request.action == ChangeRequest.Action.AI_GATEWAY:
        ai_gateway.put_ai_gateway(
            actor=actor, name=request.endpoint_name, raw=request.proposed, if_match=request.base_etag
        )
    else:
        endpoint_services.delete_endpoint(actor=actor, name=request.endpoint_name, if_match=request.base_etag)


def _notify_approvers(request: ChangeRequest) -> None:
    """Email every approver and admin (outside any transaction; a mail failure is only logged)."""
    users = (
        get_user_model()
        .objects.filter(is_active=True)
        .exclude(email="")
        .filter(Q(is_superuser=True) | Q(profile__role__in=APPROVER_ROLES))
    )
    recipients = sorted({u.email for u in users if request.author_id != u.pk})
    if not recipients:
        return
    author = request.author.get_username() if request.author else "someone"
    try:
        send_mail(
            f"[Modelfleet] approval needed: {request.action} {request.endpoint_name} (#{request.pk})",
            f"{author} proposed to {request.action.replace('_', ' ')} endpoint {request.endpoint_name}.\n\n"
            f"{request.diff or '(no config change)'}\n\nApprove: modelfleet change-requests approve {request.pk}\n"
            f"Review: {settings.PUBLIC_URL}/api/2.0/modelfleet/change-requests/{request.pk}\n",
            None,
            recipients,
        )
    except Exception as exc:  # the request stands; the mail server is someone else's problem
        log.warning("could not email approvers about change request %s: %s", request.pk, exc)
