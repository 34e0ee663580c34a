"""Usage of AI-gateway endpoints: requests and tokens per endpoint, caller, served entity and minute."""

from __future__ import annotations

from django.db import models


class UsageRecord(models.Model):
    """One minute of one caller's use of one served entity.

    Written by every gateway process as ``INSERT … ON CONFLICT … DO UPDATE SET n = n + excluded.n``
    (endpoints_app.gateway.usage), so concurrent processes add up instead of overwriting.
    """

    endpoint = models.ForeignKey("Endpoint", on_delete=models.CASCADE, related_name="usage")
    user_name = models.CharField(max_length=150)
    served_entity = models.CharField(max_length=255)
    minute = models.BigIntegerField()  # epoch seconds, a multiple of 60
    requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "user_name", "served_entity", "minute"], name="usage_record_unique_minute"
            )
        ]
        # The usage API reads one endpoint over a time range.
        indexes = [models.Index(fields=["endpoint", "minute"], name="usage_endpoint_minute_idx")]

    def __str__(self) -> str:
        return f"{self.user_name}@{self.served_entity} {self.minute}: {self.requests} req"
