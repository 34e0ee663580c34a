"""The approval gate: whether a change applies now or waits for an approver.

Every service that changes what the fleet serves or who may touch it (``services.endpoints``:
create, config and traffic split, tags, delete, email notifications, telemetry;
``services.ai_gateway``: its settings and the legacy rate limits; ``services.permissions``;
``services.approval_policies``) checks access and then calls ``admit`` once, before it writes.
No interface asks the gate on its own: the API, the pages and approved change requests reach it
only through those services (pages ask ``approval_required`` to show a notice, never to decide).

The rule: a change to an endpoint that an approval policy covers (by name, or by one of its tags)
must be approved, unless its author is an approver or an admin. When it must, the caller chose
what happens: ``"refuse"`` (the API: 403 naming the change request to propose instead) or
``"propose"`` (the dashboard: the change request is opened and the page sends the user to it).
Permission, approval-policy, notification and telemetry changes are not covered by any policy
(policies guard what an endpoint serves, and only admins set them), but pass the same gate so a
rule for them would land here. An approved change request stands in for the gate: ``changes.approve`` claimed it after
checking its approver's role, so applying it does not ask again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, cast

from django.contrib.auth.models import User
from django.db.models import Q

from endpoints_app import access
from endpoints_app.errors import PermissionDenied
from endpoints_app.models import ApprovalPolicy, ChangeRequest, ChangeRequestStatus, Endpoint, Workspace, WorkspaceKind
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.services import proposals

OnApprovalNeeded = Literal["refuse", "propose"]
PERMISSIONS = "permissions"
APPROVAL_POLICY = "approval_policy"
# The changes a policy can cover: exactly those a change request can carry.
GOVERNED = frozenset(ChangeRequest.Action.values)
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a governed change did: applied now (``value``: what it wrote), or opened
    ``change_request`` for an approver (only for a caller that asked to propose)."""

    value: T | None = None
    change_request: ChangeRequest | None = None

    @property
    def proposed(self) -> bool:
        return self.change_request is not None

    def applied(self) -> T:
        """The value of a change that applied. A caller that refuses rather than proposes gets
        nothing else, so this only fails for a caller that mixed the two up."""
        if self.change_request is not None:
            raise RuntimeError(f"change request #{self.change_request.pk} was opened; nothing was applied")
        return cast(T, self.value)


def _in_workspace(workspace: Workspace | None) -> Q:
    """The policies of a workspace; a policy naming none is ``local``'s (see ``ApprovalPolicy``)."""
    if workspace is None or workspace.is_local:
        return Q(workspace__isnull=True) | Q(workspace__kind=WorkspaceKind.LOCAL)
    return Q(workspace=workspace)


def policy_covers(
    *, endpoint_name: str, tags: dict[str, str] | None = None, workspace: Workspace | None = None
) -> bool:
    """Whether a policy of the endpoint's workspace (``local`` unless given) covers it: one for the
    whole workspace, by its name, or by one of ``tags`` (its current tags when not given)."""
    if tags is None:
        manager = Endpoint.objects if workspace is None or workspace.is_local else Endpoint.fleet
        found = manager.filter(name=endpoint_name, workspace=None if manager is Endpoint.objects else workspace)
        endpoint = found.prefetch_related("tags").first()
        tags = {t.key: t.value for t in endpoint.tags.all()} if endpoint else {}
    tag_match = Q()
    for key, value in tags.items():
        tag_match |= Q(tag_key=key, tag_value=value)
    whole_workspace = Q(endpoint_name="", tag_key="")
    return (
        ApprovalPolicy.objects.filter(_in_workspace(workspace))
        .filter(Q(endpoint_name=endpoint_name) | whole_workspace | (tag_match if tags else Q(pk__in=[])))
        .exists()
    )


def approval_required(
    *,
    actor: User | None,
    action: str,
    endpoint_name: str,
    tags: dict[str, str] | None = None,
    workspace: Workspace | None = None,
) -> bool:
    """Whether ``actor``'s ``action`` on the endpoint must wait for an approver (one in the
    endpoint's workspace decides it)."""
    where = workspace.name if workspace is not None else LOCAL_WORKSPACE
    if action not in GOVERNED or access.may_approve(actor, where):
        return False
    return policy_covers(endpoint_name=endpoint_name, tags=tags, workspace=workspace)


def refusal(*, endpoint_name: str, action: str, workspace: Workspace | None = None) -> PermissionDenied:
    """The API's 403 for a change that needs approval, naming how to propose it instead."""
    if workspace is not None and not workspace.is_local:
        return PermissionDenied(
            f"Changes to endpoint '{endpoint_name}' of workspace '{workspace.name}' need approval. Propose it "
            f"instead: POST /api/2.0/modelfleet/change-requests with workspace '{workspace.name}' and action "
            f"'{action}', or `modelfleet change-requests propose {endpoint_name} --workspace {workspace.name} "
            f"--action {action.replace('_', '-')}`; an approver of the workspace then approves it."
        )
    if action not in GOVERNED:
        return PermissionDenied(f"Changing {action.replace('_', ' ')} of '{endpoint_name}' needs approval")
    verb = action.replace("_", "-")
    body = {"tags": " --json @tags.json", "delete": "", "ai-gateway": " --json @ai-gateway.json"}.get(
        verb, " --json @config.json"
    )
    return PermissionDenied(
        f"Changes to endpoint '{endpoint_name}' need approval. Propose it instead: "
        f"POST /api/2.0/modelfleet/change-requests with action '{action}', or "
        f"`modelfleet change-requests propose {endpoint_name} --action {verb}{body}`; "
        "an approver then approves it."
    )


def _check_approved(
    request: ChangeRequest, *, action: str, endpoint_name: str, workspace: Workspace | None = None
) -> None:
    """An approved change request stands in for the gate only for the change it carries; an
    approved rollout plan carries each config change of its steps (``services.rollout_plans``)."""
    carries = request.action == action or (
        request.action == ChangeRequest.Action.ROLLOUT_PLAN and action == ChangeRequest.Action.UPDATE_CONFIG
    )
    if (
        request.status != ChangeRequestStatus.APPLIED
        or request.decided_by_id is None
        or not carries
        or request.endpoint_name != endpoint_name
        or request.workspace_id != (workspace.pk if workspace is not None and not workspace.is_local else None)
    ):
        raise PermissionDenied(f"Change request #{request.pk} is not an approved {action} of '{endpoint_name}'")


def admit(
    *,
    actor: User | None,
    action: str,
    endpoint_name: str,
    body: object,
    tag_sets: tuple[dict[str, str] | None, ...] = (None,),
    on_approval_needed: OnApprovalNeeded = "refuse",
    approved: ChangeRequest | None = None,
    if_match: str | None = None,
    workspace: Workspace | None = None,
) -> ChangeRequest | None:
    """Pass the gate: None when the change applies now, else the change request opened instead
    (``"propose"``), or the refusal raised (``"refuse"``, and for changes no request can carry).

    ``tag_sets``: the endpoint's tags to judge by; a tag change is judged on the tags it has and
    on those it would have (``services.endpoints.patch_endpoint_tags`` says why). ``body`` is what
    a change request would carry; ``if_match`` the ETag the proposal must still match; ``workspace``
    the remote workspace of the endpoint (``services.remote_changes``; none: ``local``)."""
    if approved is not None:
        _check_approved(approved, action=action, endpoint_name=endpoint_name, workspace=workspace)
        return None
    if not any(
        approval_required(actor=actor, action=action, endpoint_name=endpoint_name, tags=tags, workspace=workspace)
        for tags in tag_sets
    ):
        return None
    if on_approval_needed == "refuse" or action not in GOVERNED or actor is None:
        raise refusal(endpoint_name=endpoint_name, action=action, workspace=workspace)
    return proposals.propose(
        actor=actor, endpoint_name=endpoint_name, action=action, body=body, if_match=if_match, workspace=workspace
    )
