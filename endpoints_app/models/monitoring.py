"""What the pollers read and keep: poll targets and runs, metric time series, log lines, health,
alerts and logged payloads."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class PollKind(models.TextChoices):
    STATUS = "status"
    METRICS = "metrics"
    LOGS = "logs"


class PollTarget(models.Model):
    """One kind of polling for one endpoint; claimed through ``next_poll_at`` by the poll task."""

    # No index of its own: unique_poll_target (endpoint, kind) serves the endpoint's lookups, and
    # every poll updates the row twice (claim, schedule), each update writing every index.
    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="poll_targets", db_index=False)
    kind = models.CharField(max_length=16, choices=PollKind.choices)
    next_poll_at = models.DateTimeField()
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # Set on the first failure after a success, cleared by the next success ("failing since …").
    failing_since = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["endpoint", "kind"], name="unique_poll_target")]
        indexes = [
            # The beat fan-out: "targets of this kind that are due".
            models.Index(fields=["kind", "next_poll_at"], name="poll_target_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} poll of {self.endpoint_id}"


class PollRun(models.Model):
    """One poll of one target: what ran, whether it worked, how long it took."""

    # poll_run_target_idx (target, started_at) serves the target's lookups: no index of its own.
    target = models.ForeignKey(PollTarget, on_delete=models.CASCADE, related_name="runs", db_index=False)
    kind = models.CharField(max_length=16, choices=PollKind.choices)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    ok = models.BooleanField()
    error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            # Recent runs of a target (the endpoint page) and the retention job.
            models.Index(fields=["target", "started_at"], name="poll_run_target_idx"),
            models.Index(fields=["started_at"], name="poll_run_started_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} run at {self.started_at} ({'ok' if self.ok else 'failed'})"


class MetricCursor(models.Model):
    """The last cumulative counters read from one source, to turn the next read into deltas.

    ``source`` names one counter stream (the gateway's, or one replica process's). A counter
    lower than its last value means the source restarted: the new value is the delta.
    """

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="metric_cursors")
    served_entity_name = models.CharField(max_length=255)
    source = models.CharField(max_length=255)
    counters = models.JSONField(default=dict)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "served_entity_name", "source"], name="unique_metric_cursor")
        ]

    def __str__(self) -> str:
        return f"cursor {self.source} of {self.served_entity_name}"


class MetricPoint(models.Model):
    """One interval of one endpoint's (or one served entity's) time series.

    ``served_entity_name`` is "" for the endpoint as a whole. Counts are per interval (rates are
    count / resolution); ``latency_buckets`` holds the interval's histogram deltas so downsampling
    can merge intervals and recompute percentiles exactly.
    """

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="metric_points")
    served_entity_name = models.CharField(max_length=255, blank=True, default="")
    resolution = models.PositiveIntegerField()  # seconds: 15, 60, 3600
    ts = models.BigIntegerField()  # start of the interval, epoch seconds (bucketed in SQL by integer maths)
    request_count = models.FloatField(default=0)
    count_4xx = models.FloatField(default=0)
    count_5xx = models.FloatField(default=0)
    latency_sum_ms = models.FloatField(default=0)
    latency_buckets = models.JSONField(default=dict)  # {"le": count-in-interval}
    p50_ms = models.FloatField(null=True, blank=True)
    p90_ms = models.FloatField(null=True, blank=True)
    p99_ms = models.FloatField(null=True, blank=True)
    cpu_pct = models.FloatField(null=True, blank=True)
    mem_pct = models.FloatField(null=True, blank=True)
    gpu_pct = models.FloatField(null=True, blank=True)  # mean GPU utilisation, when replicas use GPUs
    replicas = models.FloatField(null=True, blank=True)
    concurrency = models.FloatField(null=True, blank=True)
    samples = models.PositiveIntegerField(default=1)  # gauge samples averaged into this point
    # A shadow's (gateway.shadow): predictions compared with the primary's, those that agreed, and
    # mirrors dropped (queue full, no ready replica). 0 for every other entity.
    shadow_compared = models.FloatField(default=0)
    shadow_agreed = models.FloatField(default=0)
    shadow_dropped = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "served_entity_name", "resolution", "ts"], name="unique_metric_point"
            )
        ]
        indexes = [
            # Chart reads: one endpoint, one resolution, a time range.
            models.Index(fields=["endpoint", "resolution", "ts"], name="metric_point_read_idx"),
            # Downsampling and pruning: one resolution, older than a cut-off.
            models.Index(fields=["resolution", "ts"], name="metric_point_prune_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint_id}/{self.served_entity_name or '*'} {self.resolution}s @ {self.ts}"


class MetricChunk(models.Model):
    """A chunk of one endpoint's metric series at one resolution, compressed (``monitoring.store``).

    ``data`` holds every series of the endpoint (each served entity and the endpoint total) for
    ``store.CHUNK_SLOTS[resolution]`` intervals from ``start``; only ``monitoring.store`` reads or
    writes it. The older, compact tier beside the hot ``MetricPoint`` rows.
    """

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="metric_chunks")
    resolution = models.PositiveIntegerField()  # seconds: 15, 60, 3600
    start = models.BigIntegerField()  # first interval of the chunk, epoch seconds
    data = models.BinaryField()

    class Meta:
        constraints = [
            # Chart reads (one endpoint, one resolution, a range of starts) and the packer's upsert.
            models.UniqueConstraint(fields=["endpoint", "resolution", "start"], name="unique_metric_chunk")
        ]
        indexes = [
            # Retention: one resolution, older than a cut-off; the packer's "already packed" check.
            models.Index(fields=["resolution", "start"], name="metric_chunk_prune_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint_id} {self.resolution}s chunk @ {self.start}"


class LogKind(models.TextChoices):
    SERVER = "server"
    BUILD = "build"


class LogCursor(models.Model):
    """How far the log poller has read one deployment's log file."""

    deployment = models.ForeignKey("Deployment", on_delete=models.CASCADE, related_name="log_cursors")
    kind = models.CharField(max_length=8, choices=LogKind.choices)
    offset = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "kind"], name="unique_log_cursor")]

    def __str__(self) -> str:
        return f"{self.kind} log of deployment {self.deployment_id} @ {self.offset}"


class LogLine(models.Model):
    """One line of a served model's server or build log."""

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="log_lines")
    deployment = models.ForeignKey("Deployment", null=True, on_delete=models.SET_NULL, related_name="+")
    served_entity_name = models.CharField(max_length=255)
    kind = models.CharField(max_length=8, choices=LogKind.choices)
    replica = models.IntegerField(null=True, blank=True)
    ts = models.DateTimeField()
    level = models.CharField(max_length=16, blank=True, default="")
    message = models.TextField()

    class Meta:
        indexes = [
            # Tail and time-range reads of one served model's log.
            models.Index(fields=["endpoint", "served_entity_name", "kind", "ts"], name="log_line_read_idx"),
            # Retention.
            models.Index(fields=["ts"], name="log_line_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.ts} {self.level} {self.message[:60]}"


class HealthStatus(models.TextChoices):
    NOT_POLLED = "NOT_POLLED", "Not polled yet"
    HEALTHY = "HEALTHY", "Healthy"
    DEGRADED = "DEGRADED", "Degraded"
    DOWN = "DOWN", "Down"
    SCALED_TO_ZERO = "SCALED_TO_ZERO", "Scaled to zero"


class HealthChange(models.Model):
    """History of an endpoint's health status (Endpoint.health holds the current one)."""

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="health_changes")
    at = models.DateTimeField()
    previous = models.CharField(max_length=16, choices=HealthStatus.choices)
    status = models.CharField(max_length=16, choices=HealthStatus.choices)
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["endpoint", "at"], name="health_change_idx")]

    def __str__(self) -> str:
        return f"{self.previous} → {self.status} at {self.at}"


class AlertMetric(models.TextChoices):
    ERROR_5XX_RATE_PCT = "error_5xx_rate_pct", "5xx responses, % of requests"
    ERROR_4XX_RATE_PCT = "error_4xx_rate_pct", "4xx responses, % of requests"
    P50_LATENCY_MS = "p50_latency_ms", "p50 latency, ms"
    P99_LATENCY_MS = "p99_latency_ms", "p99 latency, ms"
    REQUEST_RATE = "request_rate", "requests per second"
    CPU_PCT = "cpu_pct", "CPU %"
    MEM_PCT = "mem_pct", "memory %"


class AlertRule(models.Model):
    """Raise an alert when ``metric`` compared with ``threshold`` holds for ``for_seconds``."""

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="alert_rules")
    name = models.CharField(max_length=255)
    metric = models.CharField(max_length=32, choices=AlertMetric.choices)
    comparison = models.CharField(max_length=2, choices=[("gt", ">"), ("lt", "<")], default="gt")
    threshold = models.FloatField()
    for_seconds = models.PositiveIntegerField(default=300)
    enabled = models.BooleanField(default=True)
    notify_emails = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["endpoint", "name"], name="unique_alert_rule_name")]

    def __str__(self) -> str:
        return f"{self.name}: {self.metric} {self.comparison} {self.threshold} for {self.for_seconds}s"


class AlertEvent(models.Model):
    """One firing of a rule: raised when the condition has held long enough, resolved when it stops."""

    class State(models.TextChoices):
        FIRING = "FIRING"
        RESOLVED = "RESOLVED"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="events")
    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="alert_events")
    state = models.CharField(max_length=16, choices=State.choices, default=State.FIRING)
    started_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    message = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["endpoint", "started_at"], name="alert_event_idx")]

    def __str__(self) -> str:
        return f"{self.rule_id} {self.state} since {self.started_at}"


class PayloadLog(models.Model):
    """A sampled request/response pair of an endpoint with inference tables enabled."""

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="payload_logs")
    served_entity_name = models.CharField(max_length=255, blank=True, default="")
    ts = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField()
    client_request_id = models.CharField(max_length=255, blank=True, default="")
    request = models.TextField(null=True, blank=True)  # noqa: DJ001 - None (too large) differs from ""
    response = models.TextField(null=True, blank=True)  # noqa: DJ001 - as request
    too_large = models.BooleanField(default=False)
    user_id_hint = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["endpoint", "ts"], name="payload_log_read_idx"),
            models.Index(fields=["ts"], name="payload_log_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint_id} {self.status_code} at {self.ts}"
