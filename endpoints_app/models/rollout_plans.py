"""Rollout plans: a new version moved onto an endpoint step by step while its metrics stay as good
as the current version's, rolled back by the platform when they are not (``services.rollout_plans``)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class RolloutPlanState(models.TextChoices):
    PENDING_APPROVAL = "PENDING_APPROVAL"  # its change request waits for an approver
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"  # by a person, or by a manual change to the endpoint (``reason`` says which)
    SUCCEEDED = "SUCCEEDED"  # the new version serves all traffic
    ROLLED_BACK = "ROLLED_BACK"  # a gate failed: traffic went back to the previous version
    ABORTED = "ABORTED"  # stopped by a person: traffic went back to the previous version
    FAILED = "FAILED"  # a step could not be applied (e.g. the new version did not deploy)
    REJECTED = "REJECTED"  # its change request was rejected


class RolloutPlan(models.Model):
    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="rollout_plans")
    endpoint_name = models.CharField(max_length=255)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=20, choices=RolloutPlanState.choices, default=RolloutPlanState.RUNNING)
    # Open until it succeeds, is rejected, or is closed after a rollback / abort / failure (which
    # removes the new version): at most one open plan per endpoint.
    is_open = models.BooleanField(default=True)
    spec = models.JSONField(default=dict)  # the request body as given (entity or config, steps, gates)
    target_config = models.JSONField(default=dict)  # the config once promoted (served_entities, traffic_config)
    new_entity_names = models.JSONField(default=list)
    steps = models.JSONField(default=list)  # traffic percentages of the new version, increasing, ending at 100
    bake_seconds = models.PositiveIntegerField(default=300)
    gates = models.JSONField(default=dict)
    change_request = models.ForeignKey(
        "ChangeRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="rollout_plans"
    )
    current_step = models.IntegerField(default=-1)  # index into steps; -1 before the first is applied
    step_config_version = models.PositiveIntegerField(null=True, blank=True)  # the config version of that step
    step_started_at = models.DateTimeField(null=True, blank=True)  # when that version became active (baking)
    step_baseline = models.JSONField(default=dict)  # the gateway's counters then, by served entity
    readings = models.JSONField(default=dict)  # the last evaluation's gate readings
    history = models.JSONField(default=list)  # steps taken, with the readings that allowed each
    reason = models.TextField(blank=True, default="")  # why it paused, rolled back, failed or was aborted
    next_evaluation_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint"], condition=Q(is_open=True), name="one_open_rollout_plan")
        ]
        indexes = [models.Index(fields=["state"], name="rollout_plan_state_idx")]

    def __str__(self) -> str:
        return f"rollout plan #{self.pk} of {self.endpoint_name} ({self.state})"
