"""Creating, editing and deleting an endpoint from the dashboard.

Each save builds the JSON body the API takes and calls the same service with
``on_approval_needed="propose"``: the change applies directly, or — when an approval policy covers
the endpoint and the user may not skip approval — the service opens a change request and the page
sends the user to it. Edits and deletes carry the ETag read when the form was
rendered, so a change made meanwhile is refused instead of silently overwritten.

A served entity is a registered model version or an external model; an external model's
credentials are picked from the secrets the user may read (``services.secrets``), or typed into a
password input that is never rendered back. The services check again that the user may read
every secret the config refers to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied as Forbidden
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods

from endpoints_app import access, registry, selectors, validation
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError, PermissionDenied, ResourceDoesNotExist
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import iter_secret_fields
from endpoints_app.models import ChangeRequest, ConfigUpdate, Endpoint, PermissionLevel
from endpoints_app.pages.forms.common import STALE_FORM_MESSAGE
from endpoints_app.pages.forms.endpoint import EXTERNAL, EndpointEditor, entity_initial, model_version_choices
from endpoints_app.services import checks, gate, secrets
from endpoints_app.services import endpoints as endpoint_services

# Buttons that re-render the form on the server without saving (the form without JavaScript).
RE_RENDER_ACTIONS = ("add_env", "refresh")


def endpoint_page(name: str) -> str:
    return f"/endpoints/{name}/"


def _managed_endpoint(user: User, name: str) -> Endpoint:
    """The endpoint if the user may change it: 404 when they cannot see it, 403 when they cannot manage it."""
    try:
        endpoint = selectors.endpoint_by_name(name)
        access.require(user, endpoint, PermissionLevel.CAN_MANAGE)
    except ResourceDoesNotExist:
        raise Http404(f"Endpoint '{name}' does not exist") from None
    except PermissionDenied as exc:
        raise Forbidden(exc.message) from None
    return endpoint


def shows_approval_notice(user: User, endpoint_name: str) -> bool:
    """Whether the form should say that saving proposes a change request. Only a notice: saving
    asks the service, which decides with the same gate."""
    return gate.approval_required(actor=user, action=ChangeRequest.Action.UPDATE_CONFIG, endpoint_name=endpoint_name)


def proposed(request: HttpRequest, change: ChangeRequest, what: str) -> HttpResponse:
    """Send the user to the change request their save opened instead of applying."""
    messages.info(request, f"{what}: change request #{change.pk} now waits for an approver.")
    return redirect("change_request_detail", request_id=change.pk)


def _secret_choices(user: User, in_use: Iterable[str] = ()) -> list[tuple[str, list[tuple[str, str]]]]:
    """The secret picker's options: ``{{secrets/scope/key}}`` of every secret the user may READ
    (grouped by scope), then the references the endpoint uses now that are not among them (a
    credential stored from plaintext, a scope shared by someone else), so saving keeps them."""
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    offered: set[str] = set()
    for scope in secrets.list_scopes(user=user):
        try:
            keys = secrets.list_secrets(user=user, scope=scope.name)
        except DomainError:  # a scope the user sees (global role) without READ on it
            continue
        options = [(secrets.reference(scope.name, k.key), f"{scope.name} / {k.key}") for k in keys]
        offered.update(value for value, _ in options)
        if options:
            groups.append((scope.name, options))
    kept = [(ref, ref) for ref in dict.fromkeys(in_use) if ref not in offered]
    if kept:
        groups.append(("In use by this endpoint", kept))
    return groups


def _references_in_use(served: list[Any]) -> list[str]:
    """The ``{{secrets/…}}`` references the endpoint's external models use now."""
    found = []
    for entity in served:
        external = entity.external_model
        provider = PROVIDERS.get(external.get("provider") or "") if external else None
        block = external.get(provider.config_key) if provider is not None else None
        if provider is None or not isinstance(block, dict):
            continue
        for _path, holder, name in iter_secret_fields(provider.fields, block):
            if isinstance(holder.get(name), str):
                found.append(holder[name])
    return found


def _registered_models() -> list[dict[str, Any]]:
    try:
        return registry.list_registered_models()
    except Exception:  # the registry is down: the form still shows the endpoint's own versions
        return []


def _render_editor(
    request: AuthenticatedHttpRequest, editor: EndpointEditor, *, endpoint: Endpoint | None, status: int = 200, **extra: Any
) -> HttpResponse:
    forms = editor.entities.forms
    total = sum(f.traffic_value() for f in forms if not f["DELETE"].value())
    context = {
        "nav": "endpoints",
        "editor": editor,
        "endpoint": endpoint,
        "creating": endpoint is None,
        "split": [
            {"form": f, "name": f.display_name(), "share": f.traffic_value(), "index": i} for i, f in enumerate(forms)
        ],
        "split_total": total,
        **extra,
    }
    return render(request, "dashboard/edit.html", context, status=status)


def _status_for(editor: EndpointEditor, exc: DomainError | None) -> int:
    if exc is not None:
        return exc.status
    return 400 if editor.has_errors() else 200


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    try:
        access.require_create(request.user)
    except PermissionDenied as exc:
        raise Forbidden(exc.message) from None
    models = _registered_models()
    choices = model_version_choices(models)
    secret_choices = _secret_choices(request.user)
    if request.method == "GET":
        first = choices[0][1][0][0] if choices else ""
        row = {"entity": first, "workload_size": "Small", "workload_type": "CPU", "traffic": 100}
        if not choices:  # nothing registered yet: an external model is what can be served
            row["kind"] = EXTERNAL
        editor = EndpointEditor(
            creating=True, entity_choices=choices, secret_choices=secret_choices, initial_entities=[row]
        )
        return _render_editor(request, editor, endpoint=None, no_models=not choices)

    editor = EndpointEditor(creating=True, entity_choices=choices, secret_choices=secret_choices, data=request.POST)
    if request.POST.get("edit_action") == "add_entity":
        editor.add_entity_row()
        return _render_editor(request, editor, endpoint=None)
    if request.POST.get("edit_action") in RE_RENDER_ACTIONS or not editor.is_valid():
        return _render_editor(request, editor, endpoint=None, status=_status_for(editor, None))

    body = {"name": editor.name, "config": editor.config_body()}
    try:
        outcome = endpoint_services.create_endpoint(actor=request.user, body=body, on_approval_needed="propose")
    except DomainError as exc:
        editor.add_domain_error(exc)
        return _render_editor(request, editor, endpoint=None, status=_status_for(editor, exc))
    if outcome.change_request is not None:
        return proposed(request, outcome.change_request, f"Creating endpoint {editor.name} needs approval")
    messages.success(request, f"Endpoint {editor.name} created; its first config is deploying.")
    return redirect(endpoint_page(editor.name))


def _tolerances(config: Any) -> dict[str, float]:
    """The agreement tolerances of the current shadows (the form does not show them): kept on save."""
    if config is None:
        return {}
    return {n: s["agreement_tolerance"] for n, s in validation.stored_shadows(config.traffic_config).items()}


def _extras(
    endpoint: Endpoint,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, dict[str, dict[str, str]]]:
    """What the form does not show, kept when saving: per-entity pass-through fields, auto-capture,
    and the stored environment variables (the form shows plain values as ``[REDACTED]``)."""
    config = endpoint.active_config or endpoint.pending_config
    if config is None:
        return {}, None, {}
    served = list(config.served_entities.all())
    return (
        {e.name: dict(e.extra or {}) for e in served},
        config.auto_capture_config,
        {e.name: dict(e.environment_vars or {}) for e in served},
    )


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_edit(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    endpoint = _managed_endpoint(request.user, name)
    needs_approval = shows_approval_notice(request.user, name)
    config = endpoint.active_config or endpoint.pending_config
    served = list(config.served_entities.all()) if config else []
    custom = [(e.entity_name, e.entity_version) for e in served if e.external_model is None]
    choices = model_version_choices(_registered_models(), custom)
    secret_choices = _secret_choices(request.user, _references_in_use(served))
    page: dict[str, Any] = {
        "endpoint": endpoint,
        "needs_approval": needs_approval,
        "updating": endpoint.config_update == ConfigUpdate.IN_PROGRESS,
    }

    if request.method == "GET":
        shares = {
            r.get("served_model_name"): r.get("traffic_percentage")
            for r in (config.traffic_config if config else {}).get("routes", [])
        }
        shadows = {
            n: s["percentage"] for n, s in validation.stored_shadows(config.traffic_config if config else None).items()
        }
        editor = EndpointEditor(
            creating=False,
            entity_choices=choices,
            secret_choices=secret_choices,
            initial_entities=[entity_initial(e, shares.get(e.name), shadows.get(e.name)) for e in served],
            etag=checks.etag(endpoint),
        )
        return _render_editor(request, editor, **page)

    editor = EndpointEditor(creating=False, entity_choices=choices, secret_choices=secret_choices, data=request.POST)
    if request.POST.get("edit_action") == "add_entity":
        editor.add_entity_row()
        return _render_editor(request, editor, **page)
    if request.POST.get("edit_action") in RE_RENDER_ACTIONS or not editor.is_valid():
        return _render_editor(request, editor, status=_status_for(editor, None), **page)

    extras, auto_capture, stored_env = _extras(endpoint)
    body = editor.config_body(extras=extras, stored_env=stored_env, tolerances=_tolerances(config))
    if auto_capture is not None:
        body["auto_capture_config"] = auto_capture
    try:
        validation.parse_core_config(body, where="config")  # errors next to their fields, before anything else
        outcome = endpoint_services.update_endpoint_config(
            actor=request.user, name=name, body=body, if_match=editor.etag, on_approval_needed="propose"
        )
    except DomainError as exc:
        editor.add_domain_error(exc)
        return _render_editor(request, editor, status=_status_for(editor, exc), **page)
    if outcome.change_request is not None:
        return proposed(request, outcome.change_request, f"Changes to {name} need approval")
    messages.success(request, f"Saved: {name} is rolling out its new config; the current one serves until it is ready.")
    return redirect(endpoint_page(name))


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_delete(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    endpoint = _managed_endpoint(request.user, name)
    needs_approval = shows_approval_notice(request.user, name)
    context: dict[str, Any] = {"nav": "endpoints", "endpoint": endpoint, "needs_approval": needs_approval}
    if request.method == "GET":
        context["etag"] = checks.etag(endpoint)
        return render(request, "dashboard/edit_delete.html", context)

    etag = request.POST.get("etag", "")
    try:
        outcome = endpoint_services.delete_endpoint(
            actor=request.user, name=name, if_match=etag, on_approval_needed="propose"
        )
    except DomainError as exc:
        context["etag"] = etag
        context["error"] = STALE_FORM_MESSAGE if exc.status == 412 else exc.message
        return render(request, "dashboard/edit_delete.html", context, status=exc.status)
    if outcome.change_request is not None:
        return proposed(request, outcome.change_request, f"Deleting {name} needs approval")
    messages.success(request, f"Endpoint {name} deleted; its replicas drain and stop in the background.")
    return redirect("/")


urlpatterns = [
    path("endpoints/new", endpoint_new, name="endpoint_new"),
    path("endpoints/<str:name>/edit", endpoint_edit, name="endpoint_edit"),
    path("endpoints/<str:name>/delete", endpoint_delete, name="endpoint_delete"),
]
