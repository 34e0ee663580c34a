"""Change requests: a change that needs a second person's approval before it is applied."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApprovalPolicy(models.Model):
    """Changes to matching endpoints need approval: one endpoint by name, or every endpoint with a tag,
    within one workspace; or every endpoint of a workspace (``workspace`` and nothing else).

    ``workspace`` null means ``local`` (the policies made before remote changes were all local ones)."""

    endpoint_name = models.CharField(max_length=255, blank=True, default="")
    tag_key = models.CharField(max_length=255, blank=True, default="")
    tag_value = models.CharField(max_length=1024, blank=True, default="")
    workspace = models.ForeignKey(
        "Workspace", null=True, blank=True, on_delete=models.CASCADE, related_name="approval_policies"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"approval for {self.endpoint_name or f'{self.tag_key}={self.tag_value}'}"


class ChangeRequestStatus(models.TextChoices):
    PENDING = "PENDING"
    APPLIED = "APPLIED"
    REJECTED = "REJECTED"
    STALE = "STALE"  # the endpoint changed after the proposal: re-propose
    FAILED = "FAILED"  # approved, but applying it failed (the error says why)


class ChangeRequest(models.Model):
    class Action(models.TextChoices):
        CREATE = "create"
        UPDATE_CONFIG = "update_config"
        AI_GATEWAY = "ai_gateway"  # PUT …/ai-gateway settings
        TAGS = "tags"  # PATCH …/tags (tags decide which approval policies cover the endpoint)
        DELETE = "delete"
        ROLLOUT_PLAN = "rollout_plan"  # a whole rollout plan, approved once (services.rollout_plans)

    endpoint_name = models.CharField(max_length=255)
    action = models.CharField(max_length=16, choices=Action.choices)
    proposed = models.JSONField(default=dict)  # the request body the change will apply
    diff = models.TextField(blank=True, default="")
    # The endpoint's ETag when proposed; a different one when approving means the request is stale.
    base_etag = models.CharField(max_length=64, blank=True, default="")
    # A change to a remote workspace's endpoint (null: this installation's, ``local``), and the
    # remote's ``config_version`` when it was proposed: another one at approval makes it stale.
    workspace = models.ForeignKey(
        "Workspace", null=True, blank=True, on_delete=models.CASCADE, related_name="change_requests"
    )
    base_config_version = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ChangeRequestStatus.choices, default=ChangeRequestStatus.PENDING)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="change_request_status_idx")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.endpoint_name} ({self.status})"
