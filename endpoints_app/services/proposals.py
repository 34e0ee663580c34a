"""Proposing a change for approval: a change request, checked now as it will be when applied, with
a diff against the active config, an audit row and a mail to the approvers.

The governed services (``services.endpoints``, ``services.ai_gateway``) call ``propose`` when the
approval gate (``services.gate``) says a change must wait; the change-request API calls it
directly. Approving and rejecting live in ``services.changes``, above the services that apply.
"""

from __future__ import annotations

import difflib
import json
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction

from endpoints_app import access, audit, validation
from endpoints_app.errors import InvalidParameterValue, ResourceConflict, ResourceDoesNotExist
from endpoints_app.models import ChangeRequest, Endpoint, PermissionLevel, Workspace
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.services import checks, remote_calls

log = logging.getLogger(__name__)


def patched_tags(before: dict[str, str], add_tags: list[tuple[str, str]], delete_tags: list[str]) -> dict[str, str]:
    """The tags after a PATCH …/tags (deletes first, then adds, as ``patch_endpoint_tags`` applies them)."""
    after = {k: v for k, v in before.items() if k not in set(delete_tags)}
    after.update(add_tags)
    return after


def _comparable(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    return {k: v for k, v in config.items() if k != "config_version"}


def _config_view(config: validation.CoreConfig) -> dict[str, Any]:
    """A parsed config in the shape of the audit snapshot, so the diff shows real changes only."""
    return audit.config_snapshot(
        config.served_entities,
        traffic_config=config.traffic_config,
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
    if action == ChangeRequest.Action.ROLLOUT_PLAN and isinstance(body, dict):
        shown = dict(body)
        if "config" in body:
            shown["config"] = config(body["config"])
        if "served_entity" in body:
            shown["served_entity"] = config({"served_entities": [body["served_entity"]]})["served_entities"][0]
        return shown
    return body


def _diff(before: Any, after: Any) -> str:
    a = json.dumps(before, indent=2, sort_keys=True).splitlines() if before is not None else []
    b = json.dumps(after, indent=2, sort_keys=True).splitlines() if after is not None else []
    return "\n".join(difflib.unified_diff(a, b, "active", "proposed", lineterm=""))


def propose(
    *,
    actor: User,
    endpoint_name: str,
    action: str,
    body: Any,
    if_match: str | None = None,
    workspace: Workspace | None = None,
) -> ChangeRequest:
    """Open a change request for an approver, checked now as it will be when applied.

    ``if_match``: the ETag the author read (the dashboard's form); a proposal based on an older
    read is refused (412), so it never rests on a config its author did not see. ``workspace``: a
    remote workspace's endpoint (``propose_remote``); none or ``local``, this installation's."""
    if workspace is not None and not workspace.is_local:
        return propose_remote(actor=actor, workspace=workspace, endpoint_name=endpoint_name, action=action, body=body)
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
        checks.check_secret_references(actor=actor, config=create.config)  # the author's, as at approval
        before, after, base = None, shown_proposal(action, body), ""  # env values redacted in the diff too
    else:
        if endpoint is None:
            raise ResourceDoesNotExist(f"Endpoint '{endpoint_name}' does not exist")
        access.require(actor, endpoint, PermissionLevel.CAN_MANAGE)
        before = _comparable(audit.endpoint_snapshot(endpoint)["config"])
        if action == ChangeRequest.Action.UPDATE_CONFIG:
            body = validation.require_object(body, "body")
            body = checks.restore_redacted_environment(endpoint, body)
            parsed = validation.parse_core_config(body)
            _refuse_plaintext_credentials(parsed)
            checks.check_secret_references(actor=actor, config=parsed, in_use=checks.secret_references_of(endpoint))
            after = _config_view(parsed)
        elif action == ChangeRequest.Action.TAGS:
            body = validation.require_object(body, "body")
            add, delete = validation.parse_tags_patch(body)  # refuse now what would fail later
            current = {t.key: t.value for t in endpoint.tags.all()}
            before, after = {"tags": current}, {"tags": patched_tags(current, add, delete)}
        elif action == ChangeRequest.Action.ROLLOUT_PLAN:
            # services.rollout_plans checked the plan; approving it starts it there.
            body = validation.require_object(body, "body")
            after = {"rollout_plan": shown_proposal(action, body)}
        elif action == ChangeRequest.Action.AI_GATEWAY:
            body = validation.require_object(body if body is not None else {}, "body")
            gateway = endpoint.ai_gateway if isinstance(endpoint.ai_gateway, dict) else None
            before = {"ai_gateway": gateway}
            # Refuse now what would fail later.
            after = {"ai_gateway": validation.parse_ai_gateway(body, current=gateway)}
        else:
            body, after = {}, None
        checks.check_if_match(endpoint, if_match)
        base = checks.etag(endpoint)
    return _open(
        actor=actor,
        endpoint_name=endpoint_name,
        action=action,
        body=body,
        diff=_diff(before, after),
        shown={"action": action, "proposed": shown_proposal(action, body)},
        base_etag=base,
    )


def propose_remote(*, actor: User, workspace: Workspace, endpoint_name: str, action: str, body: Any) -> ChangeRequest:
    """A change request for an endpoint of a remote workspace (issue 16): proposed by an editor
    there (global, or granted in the workspace), checked as a local change is, and based on the
    remote's ``config_version`` read now with the SDK, so that approving it after the remote moved
    on is refused as stale (``services.remote_changes``). An endpoint no poll has brought in is
    unknown here (404), as it is to the fleet view; a create must name a new one."""
    access.require_remote_edit(actor, workspace)
    body, after = remote_calls.checked_body(action=action, name=endpoint_name, body=body)
    copy = Endpoint.fleet.filter(workspace=workspace, name=endpoint_name).first()
    base: int | None = None
    if action == ChangeRequest.Action.CREATE:
        if copy is not None and copy.remote_gone_at is None:
            raise ResourceConflict(f"Endpoint '{endpoint_name}' already exists in workspace '{workspace.name}'")
        before = None
    else:
        if copy is None:
            raise ResourceDoesNotExist(f"Endpoint '{endpoint_name}' does not exist in workspace '{workspace.name}'")
        detail = remote_calls.read_endpoint(workspace, endpoint_name)  # outside any transaction
        base = remote_calls.config_version(detail)
        before = remote_calls.current_view(action, detail)
    shown = {
        "action": action,
        "workspace": workspace.name,
        "base_config_version": base,
        "proposed": shown_proposal(action, body),
    }
    return _open(
        actor=actor,
        endpoint_name=endpoint_name,
        action=action,
        body=body,
        diff=_diff(before, after),
        shown=shown,
        workspace=workspace,
        base_config_version=base,
    )


def _open(
    *, actor: User, endpoint_name: str, action: str, body: Any, diff: Any, shown: dict[str, Any], **base: Any
) -> ChangeRequest:
    """The request and its audit row in one transaction; then the approvers are emailed. ``base``:
    what it is based on (a local ETag, or a remote workspace and its config_version)."""
    with transaction.atomic():
        request = ChangeRequest.objects.create(
            endpoint_name=endpoint_name, action=action, proposed=body, diff=diff, author=actor, **base
        )
        audit.record(
            actor=actor,
            action="change_request.propose",
            object_type="change_request",
            object_id=str(request.pk),
            object_name=endpoint_name,
            after=shown,
        )
    _notify_approvers(request)
    return request


def _notify_approvers(request: ChangeRequest) -> None:
    """Email every approver and admin (outside any transaction; a mail failure is only logged)."""
    where = request.workspace.name if request.workspace is not None else LOCAL_WORKSPACE
    users = get_user_model().objects.filter(is_active=True).exclude(email="").filter(access.approvers(where)).distinct()
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
