"""What the local runtime backend deploys: deployments (one per distinct served entity) and replicas.

The control plane writes a deployment's desired state through the backend interface; the runtime
agent on the host reconciles running model-server processes with it and writes back replica rows
and the deployment's state.
"""

from __future__ import annotations

from django.db import models


class DeploymentState(models.TextChoices):
    """Mirrors ``ServedModelStateDeployment`` (reference §2.3), plus STOPPED for removed ones."""

    CREATING = "DEPLOYMENT_CREATING"
    READY = "DEPLOYMENT_READY"
    FAILED = "DEPLOYMENT_FAILED"
    RECOVERING = "DEPLOYMENT_RECOVERING"
    ABORTED = "DEPLOYMENT_ABORTED"
    STOPPED = "DEPLOYMENT_STOPPED"


class Deployment(models.Model):
    """One served entity's model servers on the runtime: the unit that is built, started and removed."""

    endpoint = models.ForeignKey("Endpoint", null=True, on_delete=models.SET_NULL, related_name="deployments")
    endpoint_name = models.CharField(max_length=255)
    served_entity_name = models.CharField(max_length=255)
    # Hash of everything that makes a model server different (model, version, size, env vars...).
    spec_hash = models.CharField(max_length=64)
    spec = models.JSONField()
    model_name = models.CharField(max_length=512)
    model_version = models.CharField(max_length=64)
    desired_replicas = models.PositiveIntegerField(default=1)
    # The autoscaler moves desired_replicas between these (from the workload size, capacity.py).
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=1)
    scale_to_zero_enabled = models.BooleanField(default=False)
    # Set when the autoscaler stopped every replica for lack of traffic; cleared on wake-up.
    scaled_to_zero_at = models.DateTimeField(null=True, blank=True)
    # Set by the gateway when a query arrives for a scaled-to-zero deployment.
    wake_requested_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=32, choices=DeploymentState.choices, default=DeploymentState.CREATING)
    state_message = models.TextField(blank=True, default="")
    # Set by the backend's remove(): the agent drains, stops the replicas, then sets stopped_at.
    remove_requested_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    built_at = models.DateTimeField(null=True, blank=True)
    model_path = models.CharField(max_length=1024, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The agent's reconcile loop: "deployments not stopped yet".
            models.Index(fields=["stopped_at"], name="deployment_stopped_idx"),
            # Reuse lookup in apply(): same endpoint, same entity, same spec, still live.
            models.Index(fields=["endpoint", "served_entity_name", "spec_hash"], name="deployment_reuse_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint_name}/{self.served_entity_name} #{self.pk}"


class ReplicaState(models.TextChoices):
    STARTING = "STARTING"
    READY = "READY"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class Replica(models.Model):
    """One model-server process, written by the agent that runs it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    agent_id = models.CharField(max_length=255)
    index = models.PositiveIntegerField()
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    pid = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=ReplicaState.choices, default=ReplicaState.STARTING)
    message = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            # The gateway's route table: "ready replicas of these deployments".
            models.Index(fields=["deployment", "state"], name="replica_deployment_state_idx"),
        ]

    def __str__(self) -> str:
        return f"replica {self.index} of deployment {self.deployment_id} ({self.host}:{self.port})"


class ScalingDecision(models.Model):
    """One autoscaler decision: why a deployment's desired replicas changed."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="scaling_decisions")
    at = models.DateTimeField()
    from_replicas = models.PositiveIntegerField()
    to_replicas = models.PositiveIntegerField()
    reason = models.TextField()

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["deployment", "at"], name="scaling_decision_idx")]

    def __str__(self) -> str:
        return f"{self.from_replicas} → {self.to_replicas} at {self.at}: {self.reason}"


class RuntimeHost(models.Model):
    """A runtime agent's host and what it can hold, refreshed by the agent's heartbeat."""

    agent_id = models.CharField(max_length=255, unique=True)
    memory_mb = models.PositiveIntegerField()
    cpus = models.PositiveIntegerField()
    gpus = models.JSONField(default=list, blank=True)  # [{"index": "0", "name": "NVIDIA H100", "memory_mb": 81559}]
    heartbeat_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.agent_id} ({self.cpus} CPUs, {self.memory_mb} MB, {len(self.gpus)} GPUs)"
