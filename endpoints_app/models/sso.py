"""Single sign-on: who a user is at the identity provider, and which provider groups give which role."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from endpoints_app.models.access import Role


class SsoIdentity(models.Model):
    """A user as the OpenID provider knows them: (issuer, subject) is the stable identity, never
    the user name (names can be reused or renamed at the provider). ``groups`` is what the last
    sign-in's groups claim said, so the next sign-in removes only memberships the provider gave."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    groups = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Sign-in looks the user up by (issuer, subject).
            models.UniqueConstraint(fields=["issuer", "subject"], name="unique_sso_identity"),
        ]

    def __str__(self) -> str:
        return f"{self.user} = {self.subject} at {self.issuer}"


class GroupRoleMapping(models.Model):
    """A provider group's role: globally (no ``workspace``), a user signing in gets the highest
    role among their groups'; in one workspace, each member gets a workspace grant owned by the
    mapping (``WorkspaceGrant.mapping``; never ``admin``, which is global only). Keyed by the group's
    name as the provider sends it, so it can be set before anyone signs in."""

    group_name = models.CharField(max_length=150)
    role = models.CharField(max_length=16, choices=[c for c in Role.choices if c[0]])
    workspace = models.ForeignKey(
        "Workspace", null=True, blank=True, on_delete=models.CASCADE, related_name="group_role_mappings"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["group_name"], condition=models.Q(workspace__isnull=True), name="unique_global_group_role"
            ),
            models.UniqueConstraint(
                fields=["group_name", "workspace"],
                condition=models.Q(workspace__isnull=False),
                name="unique_workspace_group_role",
            ),
        ]

    def __str__(self) -> str:
        where = f" in {self.workspace_id}" if self.workspace_id else ""
        return f"{self.group_name} → {self.role}{where}"
