"""Django admin's user and group pages, which write rights straight to the database.

Every other path changes rights through a service that bumps the access generation
(``access_generation.bump``). These built-in pages save with the ORM, so they bump it themselves
after each save or delete: a user deactivated, made superuser, moved between groups or deleted
here, or a group deleted here, takes effect in every gateway process within a second too.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group

from endpoints_app import access_generation


class _AnnouncesAccessChanges(admin.ModelAdmin):
    """Bumps the access generation (on commit: admin views are atomic) after every write.

    A ``ModelAdmin`` itself so its ``super()`` calls are typed; listed before ``UserAdmin`` or
    ``GroupAdmin``, it still runs before theirs (``ModelAdmin`` comes last in the MRO)."""

    def save_model(self, *args: Any, **kwargs: Any) -> None:
        super().save_model(*args, **kwargs)
        access_generation.bump()

    def save_related(self, *args: Any, **kwargs: Any) -> None:  # group memberships, user's groups
        super().save_related(*args, **kwargs)
        access_generation.bump()

    def delete_model(self, *args: Any, **kwargs: Any) -> None:
        super().delete_model(*args, **kwargs)
        access_generation.bump()

    def delete_queryset(self, *args: Any, **kwargs: Any) -> None:  # the "delete selected" action
        super().delete_queryset(*args, **kwargs)
        access_generation.bump()


class ModelfleetUserAdmin(_AnnouncesAccessChanges, UserAdmin):
    pass


class ModelfleetGroupAdmin(_AnnouncesAccessChanges, GroupAdmin):
    pass


User = get_user_model()
for model, model_admin in ((User, ModelfleetUserAdmin), (Group, ModelfleetGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
