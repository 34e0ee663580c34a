"""Deciding change requests: approve (which applies the change through the same service a direct
change calls) or reject. Proposing one is ``services.proposals``; whether a change needs one is
``services.gate``.

Rules:
- only approvers and admins decide, and the author can never decide their own request;
- approving claims the request with a conditional update, so two approvals apply it once;
- a request whose endpoint changed after it was proposed is stale and must be re-proposed (for a
  remote workspace's endpoint: its ``config_version`` moved, ``services.remote_changes``);
- a remote workspace's requests are decided by approvers in that workspace (global, or granted there).
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from endpoints_app import access, audit
from endpoints_app.errors import DomainError, PermissionDenied, ResourceConflict, ResourceDoesNotExist
from endpoints_app.models import ChangeRequest, ChangeRequestStatus
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.services import ai_gateway, remote_changes, rollout_plans
from endpoints_app.services import endpoints as endpoint_services


def get(request_id: int) -> ChangeRequest:
    request = ChangeRequest.objects.select_related("author", "decided_by", "workspace").filter(pk=request_id).first()
    if request is None:
        raise ResourceDoesNotExist(f"Change request {request_id} does not exist")
    return request


def _decide(*, actor: User, request: ChangeRequest, status: str, comment: str) -> None:
    workspace = request.workspace.name if request.workspace is not None else LOCAL_WORKSPACE
    if not access.may_approve(actor, workspace):
        where = f" in workspace '{workspace}'" if request.workspace is not None else ""
        raise PermissionDenied(f"Approving or rejecting change requests needs the approver or admin role{where}")
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


def reject(*, actor: User, request: ChangeRequest, comment: str = "") -> ChangeRequest:
    with transaction.atomic():
        _decide(actor=actor, request=request, status=ChangeRequestStatus.REJECTED, comment=comment)
        if request.action == ChangeRequest.Action.ROLLOUT_PLAN:
            rollout_plans.rejected(actor=actor, request=request)
        audit.record(
            actor=actor,
            action="change_request.reject",
            object_type="change_request",
            object_id=str(request.pk),
            object_name=request.endpoint_name,
            after={"comment": comment},
        )
    return request


def approve(*, actor: User, request: ChangeRequest, comment: str = "") -> ChangeRequest:
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


def _apply(*, actor: User, request: ChangeRequest) -> None:
    """Apply an approved request through the service a direct change calls, with the request
    standing in for the approval gate and the access check (``_decide`` checked the approver).
    A config's secret references are checked against the author's rights (the approver vouches
    for the change, not for access to secrets they may read); a created endpoint is the author's."""
    if (
        request.action
        in (ChangeRequest.Action.CREATE, ChangeRequest.Action.UPDATE_CONFIG, ChangeRequest.Action.ROLLOUT_PLAN)
        and request.author is None
    ):
        raise PermissionDenied(
            f"The author of change request {request.pk} no longer exists, so whether they may use the secrets it "
            "refers to cannot be checked; propose the change again"
        )
    if request.workspace_id is not None:
        remote_changes.apply_approved(actor=actor, request=request)
        return
    name, base = request.endpoint_name, request.base_etag
    if request.action == ChangeRequest.Action.CREATE:
        endpoint_services.create_endpoint(
            actor=request.author, body={**request.proposed, "name": name}, approved=request
        )
    elif request.action == ChangeRequest.Action.UPDATE_CONFIG:
        endpoint_services.update_endpoint_config(
            actor=actor, name=name, body=request.proposed, if_match=base, approved=request
        )
    elif request.action == ChangeRequest.Action.TAGS:
        endpoint_services.patch_endpoint_tags(
            actor=actor, name=name, body=request.proposed, if_match=base, approved=request
        )
    elif request.action == ChangeRequest.Action.ROLLOUT_PLAN:
        rollout_plans.start_approved(actor=actor, request=request)
    elif request.action == ChangeRequest.Action.AI_GATEWAY:
        ai_gateway.put_ai_gateway(actor=actor, name=name, body=request.proposed, if_match=base, approved=request)
    else:
        endpoint_services.delete_endpoint(actor=actor, name=name, if_match=base, approved=request)
