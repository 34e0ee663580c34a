"""Workspaces: this installation (``local``) and the remote ones a fleet spans.

A remote workspace speaks the Databricks serving-endpoints API (a Databricks workspace, or another
Modelfleet) and is reached with the official ``databricks-sdk`` at ``host`` with a personal access
token. The token is kept only in the encrypted secrets store (``token_reference`` names it, in a
managed scope); this table holds a hint of it (its last characters), never the token.

``local`` is a row too, so that what later hangs off a workspace (endpoints polled from it,
per-workspace grants, approval policies naming one) can point at ``local`` the same way; it has
no host and no token, and cannot be changed or removed.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

LOCAL_WORKSPACE = "local"
# The managed secret scope holding remote workspaces' tokens. No endpoint may refer to a secret in
# it, admins' included (``access.check_can_read``): a token goes only to the host it was given for.
WORKSPACE_TOKEN_SCOPE = "modelfleet-workspaces"


class WorkspaceKind(models.TextChoices):
    LOCAL = "LOCAL"  # this installation
    REMOTE = "REMOTE"  # reached with the databricks-sdk


class WorkspaceState(models.TextChoices):
    """What the last check of a remote said (``status_message`` says more)."""

    UNKNOWN = "UNKNOWN"  # not checked yet
    OK = "OK"  # it answered the serving-endpoints API with this token
    ERROR = "ERROR"  # unreachable, refused the token, or answered something else


class Workspace(models.Model):
    name = models.CharField(max_length=63, unique=True)
    kind = models.CharField(max_length=8, choices=WorkspaceKind.choices, default=WorkspaceKind.REMOTE)
    # The remote's base URL, normalised (scheme://host[:port], no path, no trailing slash); "" for local.
    host = models.CharField(max_length=512, blank=True, default="")
    # ``{{secrets/<managed scope>/<key>}}``: where the token is, encrypted; "" for local.
    token_reference = models.CharField(max_length=300, blank=True, default="")
    # Shown instead of the token: "…" and its last four characters (only those of a long token).
    token_hint = models.CharField(max_length=8, blank=True, default="")
    state = models.CharField(max_length=8, choices=WorkspaceState.choices, default=WorkspaceState.UNKNOWN)
    status_message = models.CharField(max_length=1000, blank=True, default="")
    # When ``state`` (and its message) last changed: "unreachable since …".
    status_since = models.DateTimeField(null=True, blank=True)
    # When the remote was last asked, whatever it said.
    checked_at = models.DateTimeField(null=True, blank=True)
    # The remote poller's schedule (``monitoring.remote``): when the next sweep is due (null: now),
    # how many sweeps in a row failed (the backoff grows with it), when one last completed.
    next_poll_at = models.DateTimeField(null=True, blank=True)
    poll_failures = models.PositiveIntegerField(default=0)
    last_sweep_ok_at = models.DateTimeField(null=True, blank=True)
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name

    @property
    def is_local(self) -> bool:
        return self.kind == WorkspaceKind.LOCAL


class WorkspaceRole(models.TextChoices):
    """The roles a workspace grant gives, the global roles' names and meanings within one workspace.
    ``admin`` is global only: administering the fleet is never scoped to a workspace."""

    VIEWER = "viewer"
    EDITOR = "editor"
    APPROVER = "approver"


class WorkspaceGrant(models.Model):
    """A role in one workspace, for a user or a group (exactly one of them), on top of the global role.

    ``mapping`` is set on the grants single sign-on gives: a user's grant from a per-workspace
    group → role mapping (``services.sso``), replaced at each sign-in and removed with the mapping.
    A grant an admin sets has none; a user may hold both on one workspace (the higher counts).
    """

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="workspace_grants"
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="workspace_grants"
    )
    role = models.CharField(max_length=16, choices=WorkspaceRole.choices)
    mapping = models.ForeignKey(
        "GroupRoleMapping", null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=False, mapping__isnull=True)
                ),
                name="workspace_grant_one_principal",
            ),
            models.UniqueConstraint(
                fields=["workspace", "user"],
                condition=models.Q(user__isnull=False, mapping__isnull=True),
                name="unique_workspace_user_grant",
            ),
            models.UniqueConstraint(
                fields=["workspace", "group"],
                condition=models.Q(group__isnull=False),
                name="unique_workspace_group_grant",
            ),
            models.UniqueConstraint(
                fields=["user", "mapping"], condition=models.Q(mapping__isnull=False), name="unique_mapped_grant"
            ),
        ]
        indexes = [
            # "Which workspaces may this user see, with which role" (access.workspace_roles): by user and by group.
            models.Index(fields=["user"], name="workspace_grant_user_idx"),
            models.Index(fields=["group"], name="workspace_grant_group_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.user or self.group}: {self.role} in {self.workspace_id}"
