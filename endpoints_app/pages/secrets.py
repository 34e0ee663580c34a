"""The secrets pages: the scopes a user may see, and per scope its keys and ACLs — never a value.

Every change goes through ``services.secrets`` (the functions the Secrets API and the CLI call),
which decides who may do what and writes the audit rows. The pages only hide what the user could
not do anyway: putting and deleting secrets need WRITE, ACLs and deleting the scope MANAGE,
creating a scope the editor role or above. A scope the user may not see is a 404 page; one they
see without the permission an action needs is a 403 page.

A secret's value is typed into a password input that never renders what was typed, also when the
form is shown again with an error; no message here repeats it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group, User
from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods

from endpoints_app import access
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError, InvalidParameterValue, PermissionDenied
from endpoints_app.models import SecretPermission, SecretScope
from endpoints_app.pages.errors import error_page
from endpoints_app.pages.forms.secrets import SecretAclForm, SecretPutForm, SecretScopeForm
from endpoints_app.services import secrets

# What each action of the scope page needs (the services decide; the page refuses early and hides).
ACTIONS = {
    "put_secret": SecretPermission.WRITE,
    "put_acl": SecretPermission.MANAGE,
    "delete_acl": SecretPermission.MANAGE,
}


def _may(permission: str | None, needed: str) -> bool:
    return access.scope_allows(permission, needed)


def _scope(user: User, name: str, needed: str = SecretPermission.READ) -> tuple[SecretScope, str | None]:
    """The scope and the user's permission on it: the services' 404 when they cannot see it, 403
    when they may not list its keys (READ) or lack what ``needed`` asks."""
    secrets.list_secrets(user=user, scope=name)  # the services' own check: 404, or 403 without READ
    scope = SecretScope.objects.get(name=name)
    return scope, access.require_scope(user, scope, name, needed)


# --- the scopes ----------------------------------------------------------------------------------


def _scopes_page(
    request: AuthenticatedHttpRequest, *, form: SecretScopeForm | None = None, error: str = "", status: int = 200
) -> HttpResponse:
    user = request.user
    scopes = list(secrets.list_scopes(user=user).annotate(key_count=Count("secrets", distinct=True)))
    permissions = access.scope_permissions(user, scopes)  # the access rule, in one read for all
    rows = [
        {
            "scope": scope,
            "permission": permissions[scope.pk],
            "can_read": _may(permissions[scope.pk], SecretPermission.READ),
        }
        for scope in scopes
    ]
    context = {
        "nav": "secrets",
        "rows": rows,
        "can_create": access.role_of(user) in access.CREATE_ROLES,
        "form": form or SecretScopeForm(),
        "error": error,
    }
    return render(request, "dashboard/secrets.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def secret_scopes(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _scopes_page(request)
    form = SecretScopeForm(request.POST)
    if not form.is_valid():
        return _scopes_page(request, form=form, status=400)
    try:
        scope = secrets.create_scope(
            actor=request.user,
            scope=form.cleaned_data["scope"].strip(),
            initial_manage_principal=secrets.ALL_USERS if form.cleaned_data["everyone_manages"] else None,
        )
    except PermissionDenied as exc:
        return error_page(request, 403, exc.message)
    except DomainError as exc:
        form.add_error("scope", exc.message)
        return _scopes_page(request, form=form, status=exc.status)
    messages.success(request, f"Scope {scope.name} created.")
    return redirect("secret_scope", scope=scope.name)


# --- one scope -----------------------------------------------------------------------------------


def _principals() -> list[str]:
    """Suggestions for the ACL form: ``users`` and the groups (it takes any user name too; the
    service checks that the principal exists). User names are not listed to every scope manager."""
    return [secrets.ALL_USERS, *Group.objects.order_by("name").values_list("name", flat=True)]


def _scope_page(
    request: AuthenticatedHttpRequest,
    name: str,
    *,
    put_form: SecretPutForm | None = None,
    acl_form: SecretAclForm | None = None,
    status: int = 200,
) -> HttpResponse:
    scope, permission = _scope(request.user, name)
    can_manage = _may(permission, SecretPermission.MANAGE)
    context: dict[str, Any] = {
        "nav": "secrets",
        "scope": scope,
        "permission": permission,
        "keys": [
            {"key": k.key, "updated": datetime.fromtimestamp(k.last_updated_timestamp / 1000, tz=UTC)}
            for k in secrets.list_secrets(user=request.user, scope=name)
        ],
        "can_write": _may(permission, SecretPermission.WRITE),
        "can_manage": can_manage,
        # ACLs only to MANAGE holders, as the Secrets API.
        "acls": secrets.list_acls(user=request.user, scope=name) if can_manage else [],
        "principals": _principals() if can_manage else [],
        "put_form": put_form or SecretPutForm(),
        "acl_form": acl_form or SecretAclForm(),
        "reference_example": secrets.reference(scope.name, "<key>"),
    }
    return render(request, "dashboard/secrets_scope.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def secret_scope(request: AuthenticatedHttpRequest, scope: str) -> HttpResponse:
    if request.method == "GET":
        return _scope_page(request, scope)
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        return error_page(request, 400, "Unknown action.")
    _scope(request.user, scope, ACTIONS[action])  # refuse before reading the form; the service checks again
    if action == "put_secret":
        form = SecretPutForm(request.POST)
        if not form.is_valid():
            return _scope_page(request, scope, put_form=form, status=400)
        key = form.cleaned_data["key"].strip()
        try:
            secrets.put_secret(actor=request.user, scope=scope, key=key, string_value=form.cleaned_data["value"])
        except (InvalidParameterValue, secrets.ResourceLimitExceeded) as exc:
            # The services' messages name the key or describe the value; they never repeat it.
            field = "key" if exc.message.startswith("Secret key") else "value"
            form.add_error(None if isinstance(exc, secrets.ResourceLimitExceeded) else field, exc.message)
            return _scope_page(request, scope, put_form=form, status=exc.status)
        messages.success(request, f"Secret {key} stored in {scope}; refer to it as {secrets.reference(scope, key)}.")
        return redirect("secret_scope", scope=scope)
    if action == "put_acl":
        acl_form = SecretAclForm(request.POST)
        if not acl_form.is_valid():
            return _scope_page(request, scope, acl_form=acl_form, status=400)
        principal = acl_form.cleaned_data["principal"].strip()
        try:
            secrets.put_acl(
                actor=request.user, scope=scope, principal=principal, permission=acl_form.cleaned_data["permission"]
            )
        except InvalidParameterValue as exc:
            acl_form.add_error("principal", exc.message)
            return _scope_page(request, scope, acl_form=acl_form, status=exc.status)
        messages.success(request, f"{principal} now has {acl_form.cleaned_data['permission']} on {scope}.")
        return redirect("secret_scope", scope=scope)
    principal = request.POST.get("principal", "")  # delete_acl
    secrets.delete_acl(actor=request.user, scope=scope, principal=principal)
    messages.success(request, f"{principal} no longer has an ACL on {scope}.")
    return redirect("secret_scope", scope=scope)


@login_required
@require_http_methods(["GET", "POST"])
def secret_delete(request: AuthenticatedHttpRequest, scope: str, key: str) -> HttpResponse:
    _scope(request.user, scope, SecretPermission.WRITE)
    if request.method == "POST":
        secrets.delete_secret(actor=request.user, scope=scope, key=key)
        messages.success(request, f"Secret {key} deleted from {scope}.")
        return redirect("secret_scope", scope=scope)
    if not any(k.key == key for k in secrets.list_secrets(user=request.user, scope=scope)):
        return error_page(request, 404, f"Secret {key} does not exist in scope {scope}!")
    return render(
        request,
        "dashboard/secrets_confirm.html",
        {"nav": "secrets", "scope": scope, "key": key, "reference": secrets.reference(scope, key)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def secret_scope_delete(request: AuthenticatedHttpRequest, scope: str) -> HttpResponse:
    found, _ = _scope(request.user, scope, SecretPermission.MANAGE)
    if request.method == "POST":
        secrets.delete_scope(actor=request.user, scope=scope)
        messages.success(request, f"Scope {scope} deleted with its secrets and ACLs.")
        return redirect("secret_scopes")
    return render(
        request,
        "dashboard/secrets_confirm.html",
        {"nav": "secrets", "scope": scope, "key_count": found.secrets.count()},
    )


urlpatterns = [
    path("secrets/", secret_scopes, name="secret_scopes"),
    path("secrets/<str:scope>/", secret_scope, name="secret_scope"),
    path("secrets/<str:scope>/delete", secret_scope_delete, name="secret_scope_delete"),
    path("secrets/<str:scope>/keys/<str:key>/delete", secret_delete, name="secret_delete"),
]
