"""Serving endpoints and their immutable config versions."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def _new_endpoint_id() -> str:
    return uuid.uuid4().hex


class ConfigUpdate(models.TextChoices):
    """``state.config_update`` of an endpoint (reference §2.6)."""

    NOT_UPDATING = "NOT_UPDATING"
    IN_PROGRESS = "IN_PROGRESS"
    UPDATE_FAILED = "UPDATE_FAILED"
    UPDATE_CANCELED = "UPDATE_CANCELED"


class LocalEndpointManager(models.Manager["Endpoint"]):
    """``Endpoint.objects``: this installation's endpoints only (``workspace`` is null).

    Everything that serves, routes, rolls out or answers the Databricks-compatible API by name
    reads through it, so an endpoint polled from a remote workspace can never be queried, changed
    or shadow a local one of the same name there. ``Endpoint.fleet`` holds every endpoint (the
    fleet list, the pollers' writes, charts and logs of remote ones) and is the default manager,
    so related managers, forms and the admin see every row.
    """

    use_in_migrations = True  # a data migration's ``Endpoint.objects`` means what it means here

    def get_queryset(self) -> models.QuerySet[Endpoint]:
        return super().get_queryset().filter(workspace__isnull=True)


class Endpoint(models.Model):
    """A serving endpoint: a name that routes queries to the served entities of its active config.

    ``active_config`` is what serves traffic; ``pending_config`` is the version being rolled out
    (or the version whose rollout failed, while ``config_update`` is UPDATE_FAILED). Config
    versions are immutable rows; changing the endpoint means pointing at another version.

    An endpoint of a remote workspace (``workspace`` set; issue 16) is a copy the remote poller
    keeps (``monitoring.remote``): its config versions are the remote's (``version`` is the remote's
    ``config_version``), its served entities have no deployment, and ``remote_*`` hold what the
    remote said. Its name is unique within its workspace; local names are unique among local ones.
    """

    id = models.CharField(primary_key=True, max_length=32, default=_new_endpoint_id, editable=False)
    name = models.CharField(max_length=255)
    # Null for this installation's endpoints (``objects``); the remote workspace otherwise.
    workspace = models.ForeignKey(
        "Workspace", null=True, blank=True, on_delete=models.CASCADE, related_name="endpoints"
    )
    # What the remote's last successful poll said: its id, its ``state`` (ready, config_update),
    # when it was seen, and when a successful list no longer had it (kept, marked gone).
    remote_id = models.CharField(max_length=128, blank=True, default="")
    remote_state = models.JSONField(null=True, blank=True)
    remote_seen_at = models.DateTimeField(null=True, blank=True)
    remote_gone_at = models.DateTimeField(null=True, blank=True)
    # Log positions of the remote poller: {"<served entity>/<kind>": {"ts": iso, "tail": [hashes]}}.
    remote_cursors = models.JSONField(default=dict, blank=True)
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    description = models.TextField(blank=True, default="")
    route_optimized = models.BooleanField(default=False)
    budget_policy_id = models.CharField(max_length=255, blank=True, default="")
    ai_gateway = models.JSONField(null=True, blank=True)
    email_notifications = models.JSONField(null=True, blank=True)
    telemetry_config = models.JSONField(null=True, blank=True)
    rate_limits = models.JSONField(null=True, blank=True)

    config_update = models.CharField(max_length=32, choices=ConfigUpdate.choices, default=ConfigUpdate.NOT_UPDATING)
    # Why the last update failed, shown to the user in `get` and in the CLI.
    config_update_message = models.TextField(blank=True, default="")
    active_config = models.ForeignKey(
        "ConfigVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    pending_config = models.ForeignKey(
        "ConfigVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # When the rollout of pending_config started and when it gives up.
    rollout_started_at = models.DateTimeField(null=True, blank=True)
    rollout_deadline = models.DateTimeField(null=True, blank=True)
    # Claimed by each rollout check (conditional UPDATE), so that at most one task chain drives a
    # rollout even when the sweeper re-enqueues one that looked lost.
    rollout_next_check_at = models.DateTimeField(null=True, blank=True)
    # Health from the pollers (endpoints_app.monitoring.health); history in HealthChange.
    health = models.CharField(max_length=16, default="NOT_POLLED")
    health_reason = models.TextField(blank=True, default="")
    health_changed_at = models.DateTimeField(null=True, blank=True)

    objects = LocalEndpointManager()
    fleet = models.Manager()  # noqa: DJ012 - a manager (ruff reads any models.X() as a field)

    class Meta:
        ordering = ["name"]
        default_manager_name = "fleet"
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(workspace__isnull=True), name="unique_local_endpoint_name"
            ),
            models.UniqueConstraint(fields=["workspace", "name"], name="unique_workspace_endpoint_name"),
        ]
        indexes = [
            # The rollout sweeper: "endpoints whose update is in progress".
            models.Index(fields=["config_update"], name="endpoint_config_update_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_remote(self) -> bool:
        return self.workspace_id is not None


class EndpointTag(models.Model):
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="tags")
    key = models.CharField(max_length=255)
    value = models.CharField(max_length=1024, blank=True, default="")

    class Meta:
        ordering = ["key"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "key"], name="unique_endpoint_tag_key")]

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


class ConfigVersion(models.Model):
    """One immutable version of an endpoint's core config (served entities + traffic)."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="config_versions")
    version = models.PositiveIntegerField()
    traffic_config = models.JSONField()  # {"routes": [{served_model_name, served_entity_name, traffic_percentage}]}
    auto_capture_config = models.JSONField(null=True, blank=True)
    # True when the config came in as legacy `served_models`; output mirrors the input form.
    legacy_served_models = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["endpoint", "version"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "version"], name="unique_config_version")]

    def __str__(self) -> str:
        return f"{self.endpoint.name} v{self.version}"


class ServedEntity(models.Model):
    """A served entity of one config version, pointing at the runtime deployment that serves it.

    Identical entities in consecutive versions point at the same deployment, so an update that
    leaves an entity unchanged does not restart its replicas.
    """

    config_version = models.ForeignKey(ConfigVersion, on_delete=models.CASCADE, related_name="served_entities")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=255)
    entity_name = models.CharField(max_length=512)
    entity_version = models.CharField(max_length=64)
    workload_size = models.CharField(max_length=32, blank=True, default="")
    workload_type = models.CharField(max_length=32, default="CPU")
    scale_to_zero_enabled = models.BooleanField(default=False)
    min_provisioned_concurrency = models.PositiveIntegerField(null=True, blank=True)
    max_provisioned_concurrency = models.PositiveIntegerField(null=True, blank=True)
    environment_vars = models.JSONField(default=dict, blank=True)
    # Every other input field as given (instance_profile_arn, burst_scaling_enabled, ...), echoed back.
    extra = models.JSONField(default=dict, blank=True)
    # An external model served through the gateway (reference §2.8): {"provider", "name", "task",
    # "<provider>_config"}, its credentials as {{secrets/...}} references only. Such an entity has
    # no deployment and no replicas; entity_name/entity_version are empty.
    external_model = models.JSONField(null=True, blank=True)
    deployment = models.ForeignKey("Deployment", null=True, on_delete=models.SET_NULL, related_name="served_entities")
    created_at = models.DateTimeField(auto_now_add=True)
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["config_version", "position"]
        constraints = [
            models.UniqueConstraint(fields=["config_version", "name"], name="unique_served_entity_name"),
        ]

    def __str__(self) -> str:
        if self.external_model:
            return f"{self.name} ({self.external_model.get('provider')} {self.external_model.get('name')})"
        return f"{self.name} ({self.entity_name} v{self.entity_version})"
