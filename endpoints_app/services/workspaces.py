"""The workspace registry: remote workspaces an admin registers by name, host and token.

Who may do what is ``access``'s: every user with a global role reads the registry, others the
workspaces granted to them and ``local``; admins change it (``access.visible_workspaces``,
``access.require_admin``). Roles within a workspace are ``services.workspace_grants``'.

A registration is checked before it is stored, because a typo in a host or a pasted-wrong token
is best told at once rather than at the first poll:

1. The inputs: the name as endpoint names are (1-63 letters, digits, dashes, underscores), the
   host an ``https://`` URL with no path, query or credentials (plain ``http://`` only to a host an
   admin allowed with ``MODELFLEET_EGRESS_ALLOW``), the token a string of at most 4 KiB with no
   white space. Then the egress policy, as for an external model's URL (``egress.check_url``):
   loopback, private, link-local and metadata addresses are refused, naming the rule.
2. The remote, asked for its serving endpoints with the token (``remote.client.check``), outside
   any transaction (a dead remote costs seconds). With ``validate`` (the default) a failure refuses
   the change with a 400 saying what the remote said, and nothing is stored; with
   ``validate=False`` the change is stored anyway and the workspace's status records the failure,
   with the time it started.
3. One short transaction: the row, the token in the managed secret scope ``modelfleet-workspaces``
   (encrypted; ``token_reference`` names it), the status, and an audit row whose snapshots carry a
   hint of the token (``…`` and its last four characters), never the token.

Changing the host needs the token again, and no endpoint may refer to the token as a secret (an
external model's key, an environment variable; ``access.check_can_read``): the stored token is
only ever sent to the host it was given for, so an admin account cannot be used to send it
somewhere else and read it there.
Deleting a workspace deletes its token from the secrets store in the same transaction.

``record_check`` is the one place a status changes after registration (the poller's, later):
``status_since`` moves only when the state or message changes, so "unreachable since 10:02"
stays true across failed polls.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from endpoints_app import access, access_generation, audit, egress
from endpoints_app.errors import (
    DomainError,
    InvalidParameterValue,
    ResourceAlreadyExists,
    ResourceConflict,
    ResourceDoesNotExist,
)
from endpoints_app.models import Workspace, WorkspaceKind, WorkspaceState
from endpoints_app.models.workspaces import LOCAL_WORKSPACE, WORKSPACE_TOKEN_SCOPE
from endpoints_app.remote import client as remote
from endpoints_app.secret_references import parse_reference
from endpoints_app.services import secrets as secret_services
from endpoints_app.validation import validate_name

WHAT = "Workspaces"
TOKEN_SCOPE = WORKSPACE_TOKEN_SCOPE  # a managed scope (secret_services.RESERVED_PREFIX): no user owns it
MAX_HOST_LENGTH = 512
MAX_TOKEN_LENGTH = 4096
HINT_MIN_TOKEN_LENGTH = 20  # shorter tokens get no suffix in their hint: four characters would be too much of them


# -- reads ------------------------------------------------------------------------------------


def ensure_local() -> Workspace:
    """The row for this installation, created when missing (the migration creates it; a database
    flushed by tests or restored without it gets it back on the next read)."""
    found = Workspace.objects.filter(name=LOCAL_WORKSPACE).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return Workspace.objects.create(
                name=LOCAL_WORKSPACE, kind=WorkspaceKind.LOCAL, state=WorkspaceState.OK, status_since=timezone.now()
            )
    except IntegrityError:  # created meanwhile
        return Workspace.objects.get(name=LOCAL_WORKSPACE)


def list_workspaces(*, user: User | None) -> list[Workspace]:
    """The workspaces the user may see: ``local`` first, then by name."""
    ensure_local()
    rows = access.visible_workspaces(user, Workspace.objects.select_related("creator").order_by("name"))
    return sorted(rows, key=lambda w: (not w.is_local, w.name))


def get_workspace(*, user: User | None, name: object) -> Workspace:
    """One workspace by name, if the user may see it (404 otherwise, also for a malformed name)."""
    if name == LOCAL_WORKSPACE:
        ensure_local()
    found = None
    if isinstance(name, str) and len(name) <= 63:
        found = access.visible_workspaces(user, Workspace.objects.select_related("creator")).filter(name=name).first()
    if found is None:
        raise ResourceDoesNotExist(f"Workspace '{str(name)[:63]}' does not exist")
    return found


def token_of(workspace: Workspace) -> str:
    """The remote's token, decrypted (for the client; never shown, logged or audited)."""
    parsed = parse_reference(workspace.token_reference)
    if parsed is None:
        raise ResourceDoesNotExist(f"Workspace '{workspace.name}' has no token")
    return secret_services.resolve(scope=parsed[0], key=parsed[1])


# -- validation -------------------------------------------------------------------------------


def _host(value: object) -> str:
    """The host as a normalised base URL (``https://name[:port]``), checked against the egress policy."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterValue("host is required and must be a string: the workspace's URL, https://…")
    text = value.strip()
    if len(text) > MAX_HOST_LENGTH or any(ord(c) < 0x21 or c == "\x7f" for c in text):
        raise InvalidParameterValue(f"host must be a URL of at most {MAX_HOST_LENGTH} characters, without spaces")
    try:
        egress.check_url(text)
    except egress.EgressRefused as exc:
        raise InvalidParameterValue(f"host '{text[:200]}' {_refusal_text(exc)}") from None
    url = httpx.URL(text)
    if url.path not in ("", "/") or url.query or url.fragment:
        raise InvalidParameterValue(
            f"host '{text[:200]}' must be the workspace's base URL, with no path, query or fragment"
        )
    host = url.raw_host.decode("ascii")
    port = url.port or egress.SCHEMES[url.scheme]
    if url.scheme != "https" and not _admin_allowed(host, port):
        raise InvalidParameterValue(
            f"host '{text[:200]}' must be an https:// URL: the token would cross the network in clear "
            f"(plain http only to a host an admin allowed with {egress.SETTING})"
        )
    shown = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{shown.lower()}" + (f":{url.port}" if url.port else "")


def _refusal_text(exc: egress.EgressRefused) -> str:
    """``check_url``'s reason as the rest of a sentence starting with the host."""
    text = str(exc)
    return text if text.startswith(("is ", "must ", "has ", "resolves ")) else f"is refused: {text}"


def _admin_allowed(host: str, port: int) -> bool:
    """Whether a ``MODELFLEET_EGRESS_ALLOW`` entry names this host (its name, or its address)."""
    entries = egress.allow_list()
    address = egress.literal_address(host)
    if address is not None:
        return any(e.allows_address(address, port) for e in entries)
    return any(e.allows_name(host.lower().rstrip("."), port) for e in entries)


def _token(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParameterValue("token is required and must be a string: a personal access token of the workspace")
    if len(value) > MAX_TOKEN_LENGTH or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in value):
        # The message never repeats the token.
        raise InvalidParameterValue(
            f"token must be at most {MAX_TOKEN_LENGTH} characters with no spaces, line breaks or control characters"
        )
    return value


def _hint(token: str) -> str:
    return "…" + token[-4:] if len(token) >= HINT_MIN_TOKEN_LENGTH else "…"


def _validate_flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidParameterValue("validate must be true or false")


def _known_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise InvalidParameterValue(f"Unknown field '{str(unknown[0])[:64]}': a workspace takes {', '.join(allowed)}")


# -- snapshots for the audit log (never the token) -----------------------------------------------


def snapshot(workspace: Workspace) -> dict[str, Any]:
    return {
        "name": workspace.name,
        "kind": workspace.kind,
        "host": workspace.host,
        "token_hint": workspace.token_hint,
        "state": workspace.state,
        "status_message": workspace.status_message,
    }


def _audit(actor: User | None, action: str, workspace: Workspace, **values: Any) -> None:
    audit.record(
        actor=actor,
        action=action,
        object_type="workspace",
        object_id=str(workspace.pk),
        object_name=workspace.name,
        **values,
    )


def _apply_check(workspace: Workspace, result: remote.CheckResult, now: datetime) -> None:
    """Set the status fields from a check (``status_since`` only moves when the status changes)."""
    state = WorkspaceState.OK if result.ok else WorkspaceState.ERROR
    message = result.message[:1000]
    if workspace.state != state or workspace.status_message != message or workspace.status_since is None:
        workspace.status_since = now
    workspace.state, workspace.status_message, workspace.checked_at = state, message, now


def _refuse_failed_check(name: str, result: remote.CheckResult) -> None:
    raise InvalidParameterValue(
        f"Workspace '{name}' did not pass its check: {result.message}. Nothing was changed; "
        "fix the host or token, or store it anyway with validate=false."
    )


# -- changes ----------------------------------------------------------------------------------


def create_workspace(*, actor: User, body: object, validate: object = True) -> Workspace:
    """Register a remote workspace from ``{"name", "host", "token"}`` (admins; see the module docstring)."""
    access.require_admin(actor, WHAT)
    if not isinstance(body, dict):
        raise InvalidParameterValue("The request body must be a JSON object with name, host and token")
    _known_fields(body, ("name", "host", "token"))
    name = validate_name(body.get("name"), "Workspace name")
    host, token, must_pass = _host(body.get("host")), _token(body.get("token")), _validate_flag(validate)
    if name == LOCAL_WORKSPACE or Workspace.objects.filter(name=name).exists():
        raise ResourceAlreadyExists(f"Workspace '{name}' already exists")
    result = remote.check(host=host, token=token)  # outside any transaction: it may take seconds
    if must_pass and not result.ok:
        _refuse_failed_check(name, result)
    now = timezone.now()
    try:
        with transaction.atomic():
            workspace = Workspace(
                name=name, kind=WorkspaceKind.REMOTE, host=host, token_hint=_hint(token), creator=actor
            )
            _apply_check(workspace, result, now)
            workspace.save()
            workspace.token_reference = secret_services.store_plaintext(
                user=actor, scope=TOKEN_SCOPE, key=f"workspace-{workspace.pk}", value=token
            )
            workspace.save(update_fields=["token_reference"])
            _audit(actor, "workspace.create", workspace, after=snapshot(workspace))
    except IntegrityError:
        raise ResourceAlreadyExists(f"Workspace '{name}' already exists") from None
    return workspace


def update_workspace(*, actor: User, name: object, body: object, validate: object = True) -> Workspace:
    """Change a remote's host and/or token (``{"host"?, "token"?}``; admins). A new host needs the
    token too. ``local`` cannot be changed."""
    access.require_admin(actor, WHAT)
    current = get_workspace(user=actor, name=name)
    if current.is_local:
        raise InvalidParameterValue(
            f"Workspace '{LOCAL_WORKSPACE}' is this installation: it has no host or token to change"
        )
    if not isinstance(body, dict):
        raise InvalidParameterValue("The request body must be a JSON object with host and/or token")
    _known_fields(body, ("name", "host", "token"))
    if "name" in body and body["name"] != current.name:
        raise InvalidParameterValue("A workspace cannot be renamed: register it under the new name and remove this one")
    if body.get("host") is None and body.get("token") is None:
        raise InvalidParameterValue("Give host, token or both")
    host = _host(body["host"]) if body.get("host") is not None else current.host
    if host != current.host and body.get("token") is None:
        raise InvalidParameterValue(
            "A new host needs its token too: the stored token is only ever sent to the host it was given for"
        )
    token = _token(body["token"]) if body.get("token") is not None else token_of(current)
    must_pass = _validate_flag(validate)
    result = remote.check(host=host, token=token)
    if must_pass and not result.ok:
        _refuse_failed_check(current.name, result)
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=current.pk)
        if (workspace.host, workspace.token_hint, workspace.token_reference) != (
            current.host,
            current.token_hint,
            current.token_reference,
        ):
            raise ResourceConflict(f"Workspace '{workspace.name}' changed while it was being checked; try again")
        before = snapshot(workspace)
        workspace.host = host
        if body.get("token") is not None:
            workspace.token_hint = _hint(token)
            workspace.token_reference = secret_services.store_plaintext(
                user=actor, scope=TOKEN_SCOPE, key=f"workspace-{workspace.pk}", value=token
            )
        _apply_check(workspace, result, timezone.now())
        workspace.save()
        _audit(actor, "workspace.update", workspace, before=before, after=snapshot(workspace))
    return workspace


def delete_workspace(*, actor: User, name: object) -> None:
    """Remove a remote workspace and its token from the secrets store (admins); not ``local``."""
    access.require_admin(actor, WHAT)
    current = get_workspace(user=actor, name=name)
    if current.is_local:
        raise InvalidParameterValue(f"Workspace '{LOCAL_WORKSPACE}' is this installation: it cannot be removed")
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().filter(pk=current.pk).first()
        if workspace is None:
            raise ResourceDoesNotExist(f"Workspace '{current.name}' does not exist")
        _audit(actor, "workspace.delete", workspace, before=snapshot(workspace))
        if workspace.token_reference:
            secret_services.delete_managed(actor=actor, references={workspace.token_reference})
        workspace.delete()
        access_generation.bump()  # the roles granted in it went with it


def record_check(*, workspace_id: int, result: remote.CheckResult) -> Workspace | None:
    """Record what a check of a remote found (for the poller): one short transaction, no audit row
    (a status is an observation, not a change anyone made). None when the workspace was removed."""
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().filter(pk=workspace_id, kind=WorkspaceKind.REMOTE).first()
        if workspace is None:
            return None
        _apply_check(workspace, result, timezone.now())
        workspace.save(update_fields=["state", "status_message", "status_since", "checked_at", "updated_at"])
    return workspace


def check_workspace(*, workspace_id: int) -> Workspace | None:
    """Ask the remote now, with its stored host and token, and record the outcome."""
    workspace = Workspace.objects.filter(pk=workspace_id, kind=WorkspaceKind.REMOTE).first()
    if workspace is None:
        return None
    try:
        token = token_of(workspace)
    except DomainError:  # deleted through the secrets API, or undecryptable with this key
        result = remote.CheckResult(False, "Its token is no longer in the secrets store: give it again (update)")
    else:
        result = remote.check(host=workspace.host, token=token)
    return record_check(workspace_id=workspace_id, result=result)
