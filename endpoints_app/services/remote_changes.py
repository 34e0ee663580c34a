"""Changes to a remote workspace's endpoints (issue 16): create, config (the traffic split
included), tags, AI-gateway settings and delete, through the same gate and audit as local ones,
applied to the remote with the databricks-sdk (``services.remote_calls``).

Each function, in order, as ``services.endpoints`` does for a local endpoint:

1. access: the editor role or higher in the workspace (global, or granted there; 404 for a user
   who cannot see it, 403 for a viewer); an approved change request stands in for it;
2. the body checked as a local one is (400 ``INVALID_PARAMETER_VALUE``), and the endpoint known
   to the fleet (404 otherwise: a local endpoint's name does not reach a remote this way);
3. the approval gate (``services.gate``), with the workspace: a policy for the whole workspace,
   the endpoint's name or one of its tags there makes the change wait for an approver in that
   workspace (``refuse`` for the API, naming how to propose; ``propose`` for the dashboard);
4. for an approved request, the remote read again: if its ``config_version`` moved since the
   proposal, the request is stale (412 → ``changes.approve`` marks it STALE, as a local ETag);
5. the SDK call, outside any transaction; then one short transaction: the audit row (what was
   sent and what came back, or the error; never the token) and the fleet's copy refreshed from
   the remote's answer (``monitoring.remote.store_detail``), so the page shows the change before
   the next poll. A failed call raises ``RemoteCallFailed`` after its audit row is written; an
   approved request records it as FAILED with the remote's message.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from endpoints_app import access, audit
from endpoints_app.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from endpoints_app.models import ChangeRequest, Endpoint, Workspace
from endpoints_app.monitoring.remote import store_detail
from endpoints_app.services import gate, remote_calls
from endpoints_app.services.gate import OnApprovalNeeded, Outcome
from endpoints_app.services.workspaces import get_workspace

Action = ChangeRequest.Action


def remote_workspace(*, user: User | None, name: object) -> Workspace:
    """A remote workspace the user may see, by name (404 otherwise). ``local`` is this
    installation: its endpoints change through ``/api/2.0/serving-endpoints``."""
    workspace = get_workspace(user=user, name=name)
    if workspace.is_local:
        raise InvalidParameterValue(
            "Workspace 'local' is this installation: change its endpoints with /api/2.0/serving-endpoints"
        )
    return workspace


def _known(workspace: Workspace, name: str) -> Endpoint:
    copy = Endpoint.fleet.filter(workspace=workspace, name=name).first()
    if copy is None:
        raise ResourceDoesNotExist(f"Endpoint '{name[:255]}' does not exist in workspace '{workspace.name}'")
    return copy


def _change(
    *,
    actor: User | None,
    workspace: Workspace,
    action: str,
    name: str,
    body: Any,
    on_approval_needed: OnApprovalNeeded,
    approved: ChangeRequest | None,
    based_on: int | None = None,
) -> Outcome[dict[str, Any]]:
    if approved is None:
        access.require_remote_edit(actor, workspace)
    body, _after = remote_calls.checked_body(action=action, name=name, body=body)
    if based_on is not None and approved is None:  # after the rights check: no remote read for others
        remote_calls.check_not_stale(workspace, name, based_on)
    tag_sets: tuple[dict[str, str] | None, ...] = (None,)
    if action == Action.CREATE:
        copy = Endpoint.fleet.filter(workspace=workspace, name=name, remote_gone_at__isnull=True).first()
        if copy is not None and approved is None:
            raise ResourceAlreadyExists(f"Endpoint '{name}' already exists in workspace '{workspace.name}'")
        tag_sets = ({t["key"]: t.get("value", "") for t in body.get("tags") or [] if isinstance(t, dict)},)
    else:
        copy = _known(workspace, name)
        if action == Action.TAGS:
            before = {t.key: t.value for t in copy.tags.all()}
            after = {k: v for k, v in before.items() if k not in set(body.get("delete_tags") or [])}
            after.update({t["key"]: t.get("value", "") for t in body.get("add_tags") or []})
            tag_sets = (before, after)  # as for a local endpoint: judged on the tags before and after
    proposal = gate.admit(
        actor=actor,
        action=action,
        endpoint_name=name,
        body=body,
        tag_sets=tag_sets,
        on_approval_needed=on_approval_needed,
        approved=approved,
        workspace=workspace,
    )
    if proposal is not None:
        return Outcome(change_request=proposal)
    if approved is not None:
        remote_calls.check_not_stale(workspace, name, approved.base_config_version)
    return Outcome(_apply(actor=actor, workspace=workspace, action=action, name=name, body=body, approved=approved))


def _apply(
    *, actor: User | None, workspace: Workspace, action: str, name: str, body: Any, approved: ChangeRequest | None
) -> dict[str, Any]:
    exchange = remote_calls.send(workspace, action=action, name=name, body=body)
    detail: Any = None
    if not exchange.error and action != Action.DELETE:
        try:  # the fleet's copy from the remote's answer now; the next poll would bring it anyway
            client, _token = remote_calls.client_for(workspace)
            detail = client.serving_endpoints.get(name)
        except Exception:  # noqa: BLE001 - the change was made; only the copy waits for the poll
            detail = None
    shown = exchange.as_audit(workspace)
    if approved is not None:
        shown["change_request"] = approved.pk
    with transaction.atomic():
        copy = Endpoint.fleet.filter(workspace=workspace, name=name).first()
        audit.record(
            actor=actor,
            action=f"remote_endpoint.{action}" + (".failed" if exchange.error else ""),
            object_type="endpoint",
            object_id=copy.id if copy is not None else "",
            object_name=name,
            after=shown,
        )
        if detail is not None:
            store_detail(workspace, detail, now=timezone.now())
        elif action == Action.DELETE and not exchange.error and copy is not None:
            # Kept with its history, marked gone, as the poller marks what a list no longer has.
            Endpoint.fleet.filter(pk=copy.pk).update(remote_gone_at=timezone.now())
    if exchange.failure is not None:
        raise exchange.failure
    return exchange.received if isinstance(exchange.received, dict) else {}


def create_remote_endpoint(
    *,
    actor: User | None,
    workspace: Workspace,
    body: Any,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[dict[str, Any]]:
    """``POST …/serving-endpoints`` on the remote: the value is the remote's answer."""
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidParameterValue("name is required: the new endpoint's name")
    return _change(
        actor=actor,
        workspace=workspace,
        action=Action.CREATE,
        name=name,
        body=body,
        on_approval_needed=on_approval_needed,
        approved=approved,
    )


def update_remote_config(
    *,
    actor: User | None,
    workspace: Workspace,
    name: str,
    body: Any,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
    based_on: int | None = None,
) -> Outcome[dict[str, Any]]:
    """``PUT …/serving-endpoints/<name>/config`` on the remote (served entities, traffic split).

    ``based_on``: the remote ``config_version`` the body was made from (the dashboard's split
    editor builds it from the fleet's copy): refused (412) when the remote has moved on since,
    so a copy older than the remote never reverts what changed there, applied or proposed."""
    return _change(
        actor=actor,
        workspace=workspace,
        action=Action.UPDATE_CONFIG,
        name=name,
        body=body,
        on_approval_needed=on_approval_needed,
        approved=approved,
        based_on=based_on,
    )


def patch_remote_tags(
    *,
    actor: User | None,
    workspace: Workspace,
    name: str,
    body: Any,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[dict[str, Any]]:
    """``PATCH …/serving-endpoints/<name>/tags`` on the remote."""
    return _change(
        actor=actor,
        workspace=workspace,
        action=Action.TAGS,
        name=name,
        body=body,
        on_approval_needed=on_approval_needed,
        approved=approved,
    )


def put_remote_ai_gateway(
    *,
    actor: User | None,
    workspace: Workspace,
    name: str,
    body: Any,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[dict[str, Any]]:
    """``PUT …/serving-endpoints/<name>/ai-gateway`` on the remote."""
    return _change(
        actor=actor,
        workspace=workspace,
        action=Action.AI_GATEWAY,
        name=name,
        body=body,
        on_approval_needed=on_approval_needed,
        approved=approved,
    )


def delete_remote_endpoint(
    *,
    actor: User | None,
    workspace: Workspace,
    name: str,
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
) -> Outcome[dict[str, Any]]:
    """``DELETE …/serving-endpoints/<name>`` on the remote; the fleet's copy is kept, marked gone."""
    return _change(
        actor=actor,
        workspace=workspace,
        action=Action.DELETE,
        name=name,
        body={},
        on_approval_needed=on_approval_needed,
        approved=approved,
    )


def apply_approved(*, actor: User, request: ChangeRequest) -> None:
    """Apply an approved remote change request (``services.changes``) through the service a direct
    change calls, the request standing in for the gate and the access check."""
    workspace = request.workspace
    assert workspace is not None
    common: dict[str, Any] = {"actor": actor, "workspace": workspace, "approved": request}
    if request.action == Action.CREATE:
        create_remote_endpoint(body={**request.proposed, "name": request.endpoint_name}, **common)
    elif request.action == Action.UPDATE_CONFIG:
        update_remote_config(name=request.endpoint_name, body=request.proposed, **common)
    elif request.action == Action.TAGS:
        patch_remote_tags(name=request.endpoint_name, body=request.proposed, **common)
    elif request.action == Action.AI_GATEWAY:
        put_remote_ai_gateway(name=request.endpoint_name, body=request.proposed, **common)
    elif request.action == Action.DELETE:
        delete_remote_endpoint(name=request.endpoint_name, **common)
    else:
        raise InvalidParameterValue(f"A {request.action} change request cannot be applied to a remote workspace")
