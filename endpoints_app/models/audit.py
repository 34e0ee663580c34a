"""The audit log: one append-only row per mutating action, written in the same transaction."""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models


class AppendOnlyError(Exception):
    """Audit rows are never updated or deleted by the application."""


class AuditQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("audit events are append-only")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("audit events are append-only")


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=255, blank=True, default="")  # kept when the user is gone
    source = models.CharField(max_length=64, blank=True, default="")  # client address
    action = models.CharField(max_length=64)  # e.g. "endpoint.create", "permissions.set", "auth.failed"
    object_type = models.CharField(max_length=32, blank=True, default="")
    object_id = models.CharField(max_length=64, blank=True, default="")
    object_name = models.CharField(max_length=255, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # Filters of the audit API: by time, by object, by actor, by action.
            models.Index(fields=["at"], name="audit_at_idx"),
            models.Index(fields=["object_type", "object_id", "at"], name="audit_object_idx"),
            models.Index(fields=["actor", "at"], name="audit_actor_idx"),
            models.Index(fields=["action", "at"], name="audit_action_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.at} {self.actor_name or 'system'} {self.action} {self.object_type}:{self.object_name}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("audit events are append-only")
