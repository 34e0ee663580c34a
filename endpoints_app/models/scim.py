"""What SCIM provisioning keeps about users and groups beyond Django's own columns."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


class ScimUser(models.Model):
    """A user's SCIM attributes that ``auth.User`` has no column for. Absent for users never
    provisioned over SCIM (then both are blank)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scim")
    # The identity provider's own id for the user; ``filter=externalId eq "…"`` looks it up.
    external_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    display_name = models.CharField(max_length=255, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"SCIM attributes of {self.user}"


class ScimGroup(models.Model):
    """A group's SCIM attributes that ``auth.Group`` has no column for."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="scim")
    external_id = models.CharField(max_length=255, blank=True, default="", db_index=True)  # filter by externalId
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"SCIM attributes of {self.group}"
