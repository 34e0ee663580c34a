"""Who may do what: global roles and per-endpoint permissions."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


class Role(models.TextChoices):
    """Global roles. Without one a user only sees endpoints granted to them (an outsider)."""

    NONE = "", "none"
    VIEWER = "viewer"  # sees every endpoint
    EDITOR = "editor"  # … and creates endpoints (CAN_MANAGE on their own)
    APPROVER = "approver"  # … and approves change requests
    ADMIN = "admin"  # everything


class UserProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=16, choices=Role.choices, blank=True, default=Role.NONE)
    # The longest lifetime an admin allows this user's new personal access tokens (None: no limit).
    # A big integer: the longest allowed lifetime (100 years) is past a 32-bit column's range.
    max_token_lifetime_seconds = models.PositiveBigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.role or 'no role'})"


class PermissionLevel(models.TextChoices):
    CAN_VIEW = "CAN_VIEW"
    CAN_QUERY = "CAN_QUERY"
    CAN_MANAGE = "CAN_MANAGE"


class EndpointPermission(models.Model):
    """A direct grant on one endpoint, to a user or a group (exactly one of them)."""

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="permissions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    level = models.CharField(max_length=16, choices=PermissionLevel.choices)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True) | models.Q(user__isnull=True, group__isnull=False)
                ),
                name="endpoint_permission_one_principal",
            ),
            models.UniqueConstraint(
                fields=["endpoint", "user"], condition=models.Q(user__isnull=False), name="unique_endpoint_user_grant"
            ),
            models.UniqueConstraint(
                fields=["endpoint", "group"],
                condition=models.Q(group__isnull=False),
                name="unique_endpoint_group_grant",
            ),
        ]
        indexes = [
            # "Which endpoints may this user see": grants by user and by group.
            models.Index(fields=["user"], name="endpoint_permission_user_idx"),
            models.Index(fields=["group"], name="endpoint_permission_group_idx"),
        ]

    def __str__(self) -> str:
        who = self.user or self.group
        return f"{who}: {self.level} on {self.endpoint_id}"
