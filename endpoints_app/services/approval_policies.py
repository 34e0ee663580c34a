"""Approval policies: which endpoints need a second person's approval before a change applies
(one endpoint by name, every endpoint with a tag, or every endpoint of a workspace), within one
workspace (``workspace``; ``local`` when not given). Only admins set them; each change passes
the approval gate and writes its audit row in the same transaction as the policy.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from endpoints_app import access, audit
from endpoints_app.errors import InvalidParameterValue, ResourceDoesNotExist
from endpoints_app.models import ApprovalPolicy
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.services import gate
from endpoints_app.services.workspaces import get_workspace
from endpoints_app.validation import require_object

WHAT = "Approval policies"


def snapshot(policy: ApprovalPolicy) -> dict[str, Any]:
    """The policy as the API shows it and the audit log records it."""
    return {
        "id": policy.pk,
        "endpoint_name": policy.endpoint_name or None,
        "tag_key": policy.tag_key or None,
        "tag_value": policy.tag_value or None,
        "workspace": policy.workspace.name if policy.workspace is not None else LOCAL_WORKSPACE,
    }


def _field(body: dict[str, Any], key: str, max_length: int) -> str:
    """A string field of a policy, within its column's length (PostgreSQL refuses longer)."""
    value = body.get(key) or ""
    if not isinstance(value, str) or len(value) > max_length:
        raise InvalidParameterValue(f"{key} must be a string of at most {max_length} characters")
    return value


def _subject(policy: ApprovalPolicy) -> str:
    if not policy.endpoint_name and not policy.tag_key:
        return f"workspace {policy.workspace.name if policy.workspace else LOCAL_WORKSPACE}"
    return policy.endpoint_name or f"{policy.tag_key}={policy.tag_value}"


def create_policy(*, actor: User, body: Any) -> ApprovalPolicy:
    """A policy covering ``endpoint_name``, or every endpoint tagged ``tag_key`` = ``tag_value``, in
    ``workspace`` (``local`` when not given); with ``workspace`` alone, every endpoint there
    ("every change in prod needs an approver")."""
    access.require_admin(actor, WHAT)
    data = require_object(body, "request body")
    endpoint_name = _field(data, "endpoint_name", 255)
    tag_key, tag_value = _field(data, "tag_key", 255), _field(data, "tag_value", 1024)
    workspace_name = _field(data, "workspace", 63)
    workspace = get_workspace(user=actor, name=workspace_name) if workspace_name else None
    if endpoint_name and tag_key:
        raise InvalidParameterValue("give endpoint_name or tag_key (with tag_value), not both")
    if not endpoint_name and not tag_key and not workspace_name:
        raise InvalidParameterValue("give endpoint_name, tag_key (with tag_value) or workspace")
    if workspace is not None and workspace.is_local:
        workspace = None  # local's policies name no workspace (ApprovalPolicy)
    policy = ApprovalPolicy(
        endpoint_name=endpoint_name, tag_key=tag_key, tag_value=tag_value, workspace=workspace, created_by=actor
    )
    gate.admit(actor=actor, action=gate.APPROVAL_POLICY, endpoint_name=_subject(policy), body=data)
    with transaction.atomic():
        policy.save()
        audit.record(
            actor=actor,
            action="approval_policy.create",
            object_type="approval_policy",
            object_id=str(policy.pk),
            after=snapshot(policy),
        )
    return policy


def delete_policy(*, actor: User, policy_id: int) -> None:
    access.require_admin(actor, WHAT)
    with transaction.atomic():
        policy = ApprovalPolicy.objects.select_for_update().filter(pk=policy_id).first()
        if policy is None:
            raise ResourceDoesNotExist(f"Approval policy {policy_id} does not exist")
        gate.admit(actor=actor, action=gate.APPROVAL_POLICY, endpoint_name=_subject(policy), body={})
        audit.record(
            actor=actor,
            action="approval_policy.delete",
            object_type="approval_policy",
            object_id=str(policy.pk),
            before=snapshot(policy),
        )
        policy.delete()
