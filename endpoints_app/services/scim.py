"""SCIM provisioning (RFC 7643/7644): an identity provider's create, replace, patch and delete of
users and groups, read into plain values and applied through the user services (``users``), so
audit rows and revocation (sessions, tokens, ``access_generation``) stay in one place.

A PATCH is applied to the resource as SCIM shows it (``user_attributes``/``group_attributes``),
and the result is applied as a PUT would be: one set of rules reads both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import transaction

from endpoints_app import scim_filter
from endpoints_app.errors import DomainError
from endpoints_app.models import ScimGroup, ScimUser, ServicePrincipal
from endpoints_app.scim_schemas import GROUP_SCHEMA, PATCH_OP, SERVICE_PRINCIPAL_SCHEMA, USER_SCHEMA
from endpoints_app.services import service_principals as principal_services
from endpoints_app.services import users as user_services

MAX_OPERATIONS = 1000
MAX_MEMBERS = 10000


class ScimError(DomainError):
    """A SCIM error (RFC 7644 §3.12) with its ``scimType`` (``invalidValue``, ``mutability``, …)."""

    def __init__(self, message: str, *, status: int = 400, scim_type: str = "invalidValue") -> None:
        super().__init__(message, status=status)
        self.scim_type = scim_type


def _urn_stripped(name: str, urn: str) -> str:
    return name[len(urn) + 1 :] if name.lower().startswith(urn.lower() + ":") else name


# --- the resources as SCIM shows them -----------------------------------------------------------------


def _scim_user(user: User) -> ScimUser | None:
    try:
        return user.scim  # reverse one-to-one (select_related in lists)
    except ScimUser.DoesNotExist:
        return None


def _scim_group(group: Group) -> ScimGroup | None:
    try:
        return group.scim
    except ScimGroup.DoesNotExist:
        return None


def user_attributes(user: User) -> dict[str, Any]:
    """The user's writable attributes, as a SCIM body (unassigned ones absent)."""
    scim = _scim_user(user)
    body: dict[str, Any] = {"userName": user.get_username(), "active": user.is_active}
    name = {k: v for k, v in (("givenName", user.first_name), ("familyName", user.last_name)) if v}
    if name:
        body["name"] = name
    if scim is not None and scim.display_name:
        body["displayName"] = scim.display_name
    if user.email:
        body["emails"] = [{"value": user.email}]
    if scim is not None and scim.external_id:
        body["externalId"] = scim.external_id
    return body


def service_principal_attributes(principal: ServicePrincipal) -> dict[str, Any]:
    """A service principal's writable attributes, as a SCIM body."""
    body: dict[str, Any] = {
        "applicationId": str(principal.application_id),
        "displayName": principal.display_name,
        "active": principal.user.is_active,
    }
    scim = _scim_user(principal.user)
    if scim is not None and scim.external_id:
        body["externalId"] = scim.external_id
    return body


def group_attributes(group: Group) -> dict[str, Any]:
    scim = _scim_group(group)
    body: dict[str, Any] = {"displayName": group.name}
    members = [{"value": str(u.pk)} for u in sorted(group.user_set.all(), key=lambda u: u.pk)]
    if members:
        body["members"] = members
    if scim is not None and scim.external_id:
        body["externalId"] = scim.external_id
    return body


# --- reading bodies -----------------------------------------------------------------------------------


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise ScimError(f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise ScimError(f"{key} must be a string")
    if "\x00" in value:
        raise ScimError(f"{key} must not contain NUL characters")
    return value


def _boolean(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):  # Microsoft Entra sends "False"
        return value.lower() == "true"
    raise ScimError(f"{key} must be true or false")


def _object(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScimError(f"{key} must be an object")
    return value


def _values(value: object, key: str, limit: int) -> list[dict[str, Any]]:
    """A multi-valued complex attribute: a list of objects (one object is taken as a list of one)."""
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(v, dict) for v in items):
        raise ScimError(f"{key} must be a list of objects")
    if len(items) > limit:
        raise ScimError(f"{key} may hold at most {limit} values")
    return items


@dataclass(frozen=True)
class UserAttributes:
    user_name: str
    given_name: str
    family_name: str
    display_name: str
    email: str
    external_id: str
    active: bool


def read_user(body: object) -> UserAttributes:
    """A User body (POST, PUT, or a PATCH's result). Attributes this server does not keep
    (entitlements, roles, Databricks' extensions) are ignored."""
    body = _object(body, "the request body")
    name = _object(body.get("name") or {}, "name")
    emails = _values(body.get("emails") or [], "emails", 100)
    chosen = next((e for e in emails if e.get("primary") is True), emails[0] if emails else {})
    return UserAttributes(
        user_name=_string(body, "userName", required=True),
        given_name=_string(name, "givenName"),
        family_name=_string(name, "familyName"),
        display_name=_string(body, "displayName"),
        email=_string(chosen, "value"),
        external_id=_string(body, "externalId"),
        active=_boolean(body["active"], "active") if body.get("active") is not None else True,
    )


@dataclass(frozen=True)
class GroupAttributes:
    name: str
    external_id: str
    members: list[User]


_MEMBER_TYPES = {"user": "User", "serviceprincipal": "ServicePrincipal"}


def _member_users(members: list[dict[str, Any]]) -> list[User]:
    """The users (and service principals: user rows too) a members list names; a member whose
    ``type`` says User must be a person, ServicePrincipal a principal."""
    ids: set[int] = set()
    typed: dict[int, str] = {}
    for member in members:
        kind = member.get("type")
        if kind is not None and (not isinstance(kind, str) or kind.lower() not in _MEMBER_TYPES):
            raise ScimError(f"members: {str(kind)[:40]!r} members are not supported (groups do not nest)")
        value = member.get("value")
        if not isinstance(value, str) or not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise ScimError(f"members: {str(value)[:40]!r} is not a user id")
        ids.add(int(value))
        if kind is not None:
            typed[int(value)] = _MEMBER_TYPES[kind.lower()]
    found = list(get_user_model().objects.filter(pk__in=ids).select_related("service_principal"))
    missing = ids - {u.pk for u in found}
    if missing:
        raise ScimError(f"members: no user has the id {min(missing)}")
    for user in found:
        kind = typed.get(user.pk)
        if kind is not None and kind != member_type(user):
            raise ScimError(f"members: {user.pk} is not a {kind}")
    return found


def member_type(user: User) -> str:
    """A group member's SCIM resource type: ServicePrincipal for a principal's user row, else User
    (select_related or prefetch ``service_principal``: no query)."""
    try:
        user.service_principal  # noqa: B018 - reading the reverse one-to-one is the check
    except ServicePrincipal.DoesNotExist:
        return "User"
    return "ServicePrincipal"


def read_group(body: object) -> GroupAttributes:
    body = _object(body, "the request body")
    return GroupAttributes(
        name=_string(body, "displayName", required=True),
        external_id=_string(body, "externalId"),
        members=_member_users(_values(body.get("members") or [], "members", MAX_MEMBERS)),
    )


@dataclass(frozen=True)
class ServicePrincipalAttributes:
    application_id: uuid.UUID | None
    display_name: str
    active: bool
    external_id: str


def read_service_principal(body: object) -> ServicePrincipalAttributes:
    """A ServicePrincipal body (POST, PUT, or a PATCH's result). Databricks' entitlements, roles and
    groups are ignored (groups change on the group)."""
    body = _object(body, "the request body")
    text = _string(body, "applicationId")
    try:
        application_id = uuid.UUID(text) if text else None
    except ValueError:
        raise ScimError("applicationId must be a UUID") from None
    return ServicePrincipalAttributes(
        application_id=application_id,
        display_name=_string(body, "displayName", required=True),
        active=_boolean(body["active"], "active") if body.get("active") is not None else True,
        external_id=_string(body, "externalId"),
    )


# --- PATCH --------------------------------------------------------------------------------------------

# Per resource: its attribute names (lower case → as written), which are multi-valued, which complex.
_USER_ATTRIBUTES = {n.lower(): n for n in ("userName", "name", "displayName", "active", "emails", "externalId")}
_GROUP_ATTRIBUTES = {n.lower(): n for n in ("displayName", "members", "externalId")}
_SERVICE_PRINCIPAL_ATTRIBUTES = {n.lower(): n for n in ("applicationId", "displayName", "active", "externalId")}
_MULTI_VALUED = {"emails", "members"}
_COMPLEX = {"name": {"givenname": "givenName", "familyname": "familyName"}}
_READ_ONLY = {"id", "meta", "groups", "schemas"}
# Attributes a client may patch that this server does not keep: accepted, changing nothing, as a
# POST or PUT ignores them. Databricks' own (entitlements, roles), and the rest of RFC 7643's User
# that Microsoft Entra's and Okta's default mappings send (title, phoneNumbers[type eq "work"].value, …).
_IGNORED = {
    "entitlements",
    "roles",
    "nickname",
    "profileurl",
    "title",
    "usertype",
    "preferredlanguage",
    "locale",
    "timezone",
    "phonenumbers",
    "ims",
    "photos",
    "addresses",
    "x509certificates",
}
_IGNORED_NAME_PARTS = {"formatted", "middlename", "honorificprefix", "honorificsuffix"}


@dataclass(frozen=True)
class _Path:
    attribute: str  # as written in the resource ("emails")
    sub: str | None = None  # "givenName", "value"
    filter: tuple[str, str] | None = None  # ("value", "123"): entries whose sub-attribute equals it


def _parse_path(text: str, urn: str, names: dict[str, str]) -> _Path | None:
    """A PATCH path: ``attr``, ``attr.sub``, ``attr[sub eq "v"]`` or ``attr[sub eq "v"].sub``;
    None for attributes ignored on purpose."""
    if len(text) > 500:
        raise ScimError("the path is too long", scim_type="invalidPath")
    text = _urn_stripped(text.strip(), urn)
    if text.lower().startswith("urn:"):
        return None  # an extension's attribute (the enterprise User's department, manager): not kept
    flt = None
    if "[" in text:
        head, _, rest = text.partition("[")
        inner, closed, tail = rest.partition("]")
        if not closed:
            raise ScimError(f"the path {text[:100]!r} has no closing ]", scim_type="invalidPath")
        try:
            flt = scim_filter.parse_value_filter(inner)
        except scim_filter.InvalidFilter as exc:
            raise ScimError(f"the path's filter: {exc}", scim_type="invalidFilter") from None
        text = head + tail
    head, _, sub = text.partition(".")
    lowered = head.lower()
    if lowered in _IGNORED:
        return None
    if lowered in _READ_ONLY:
        raise ScimError(f"{head} is read-only", scim_type="mutability")
    if lowered not in names:
        raise ScimError(f"no attribute {head[:100]!r} to change", scim_type="invalidPath")
    attribute = names[lowered]
    if flt is not None and attribute not in _MULTI_VALUED:
        raise ScimError(f"{attribute} is not multi-valued", scim_type="invalidPath")
    if attribute == "name" and sub.lower() in _IGNORED_NAME_PARTS:
        return None
    if sub:
        subs = _COMPLEX.get(attribute, {"value": "value"} if attribute in _MULTI_VALUED else {})
        if sub.lower() not in subs:
            raise ScimError(f"no attribute {text[:100]!r} to change", scim_type="invalidPath")
        sub = subs[sub.lower()]
    return _Path(attribute, sub or None, flt)


def _matches(entry: dict[str, Any], flt: tuple[str, str]) -> bool:
    # Emails keep no type: any type filter ("work") names the one address kept.
    return flt[0] == "type" or str(entry.get(flt[0])) == flt[1]


def _apply(resource: dict[str, Any], op: str, path: _Path | None, value: Any) -> None:
    if path is None:
        return
    name = path.attribute
    if path.attribute in _MULTI_VALUED:
        entries: list[dict[str, Any]] = list(resource.get(name) or [])
        if path.filter is not None:
            selected = [e for e in entries if _matches(e, path.filter)]
            if op == "remove":
                entries = [e for e in entries if e not in selected] if path.sub is None else entries
            elif path.sub == "value":
                if not isinstance(value, str):
                    raise ScimError(f"{name}[…].value must be a string")
                entries = [e for e in entries if e not in selected] + [{"value": value}]
                if name == "emails":
                    entries = [{"value": value}]
            else:
                raise ScimError(f"{op} on a filtered {name} needs a path ending in .value", scim_type="invalidPath")
        elif op == "remove":
            if value is None:
                entries = []
            else:  # Entra: remove the listed values
                gone = {str(v.get("value")) for v in _values(value, name, MAX_MEMBERS)}
                entries = [e for e in entries if str(e.get("value")) not in gone]
        elif op == "add":
            seen = {str(e.get("value")) for e in entries}
            for item in _values(value, name, MAX_MEMBERS):
                if str(item.get("value")) not in seen:
                    entries.append(item)
                    seen.add(str(item.get("value")))
        else:
            entries = _values(value, name, MAX_MEMBERS)
        if entries:
            resource[name] = entries
        else:
            resource.pop(name, None)
    elif path.sub is not None:  # name.givenName
        complex_value = dict(resource.get(name) or {})
        if op == "remove":
            complex_value.pop(path.sub, None)
        else:
            complex_value[path.sub] = value
        resource[name] = complex_value
    elif op == "remove":
        resource.pop(name, None)
    elif name in _COMPLEX and op == "add":
        resource[name] = {**(resource.get(name) or {}), **_object(value, name)}
    else:
        resource[name] = value


def apply_patch(resource: dict[str, Any], body: object, *, urn: str, names: dict[str, str]) -> dict[str, Any]:
    """The resource after the PatchOp ``body``'s operations, in order (RFC 7644 §3.5.2)."""
    body = _object(body, "the request body")
    schemas = body.get("schemas")
    if schemas is not None and schemas != [PATCH_OP]:
        raise ScimError(f"schemas must be [{PATCH_OP!r}]", scim_type="invalidSyntax")
    operations = body.get("Operations")
    if not isinstance(operations, list) or not operations:
        raise ScimError("Operations must be a non-empty list", scim_type="invalidSyntax")
    if len(operations) > MAX_OPERATIONS:
        raise ScimError(f"at most {MAX_OPERATIONS} operations per request", scim_type="tooMany")
    result = dict(resource)
    for operation in operations:
        operation = _object(operation, "an operation")
        op = operation.get("op")
        if not isinstance(op, str) or op.lower() not in ("add", "replace", "remove"):
            raise ScimError("op must be add, replace or remove", scim_type="invalidSyntax")
        op = op.lower()
        path_text = operation.get("path")
        value = operation.get("value")
        if path_text is None or path_text == "":
            if op == "remove":
                raise ScimError("remove needs a path", scim_type="noTarget")
            for key, item in _object(value, "value").items():
                _apply(result, op, _parse_path(str(key), urn, names), item)
        elif not isinstance(path_text, str):
            raise ScimError("path must be a string", scim_type="invalidPath")
        else:
            if op != "remove" and value is None:
                raise ScimError(f"{op} needs a value", scim_type="invalidValue")
            _apply(result, op, _parse_path(path_text, urn, names), value)
    return result


# --- services -----------------------------------------------------------------------------------------


def _set_user(*, actor: User, user: User, attributes: UserAttributes) -> None:
    if attributes.user_name != user.get_username():
        raise ScimError("userName cannot be changed", scim_type="mutability")
    user_services.update_user(
        actor=actor,
        user=user,
        email=attributes.email,
        first_name=attributes.given_name,
        last_name=attributes.family_name,
        display_name=attributes.display_name,
        external_id=attributes.external_id,
    )
    if attributes.active != user.is_active:
        if user.pk == actor.pk:
            raise ScimError("You cannot deactivate yourself", scim_type="mutability")
        if attributes.active:
            user_services.activate(actor=actor, user=user)
        else:
            user_services.deactivate(actor=actor, user=user)


def create_user(*, actor: User, body: object) -> User:
    attributes = read_user(body)
    with transaction.atomic():
        user = user_services.create_user(actor=actor, username=attributes.user_name, email=attributes.email)
        _set_user(actor=actor, user=user, attributes=attributes)
    return user


def replace_user(*, actor: User, user: User, body: object) -> None:
    attributes = read_user(body)
    with transaction.atomic():
        _set_user(actor=actor, user=user, attributes=attributes)


def patch_user(*, actor: User, user: User, body: object) -> None:
    patched = apply_patch(user_attributes(user), body, urn=USER_SCHEMA, names=_USER_ATTRIBUTES)
    replace_user(actor=actor, user=user, body=patched)


def delete_user(*, actor: User, user: User) -> None:
    user_services.delete_user(actor=actor, user=user)


def _set_group(*, actor: User, group: Group, attributes: GroupAttributes) -> None:
    user_services.update_group(actor=actor, group=group, name=attributes.name, external_id=attributes.external_id)
    user_services.set_members(actor=actor, group=group, users=attributes.members)


def create_group(*, actor: User, body: object) -> Group:
    attributes = read_group(body)
    with transaction.atomic():
        group = user_services.create_group(actor=actor, name=attributes.name)
        _set_group(actor=actor, group=group, attributes=attributes)
    return group


def replace_group(*, actor: User, group: Group, body: object) -> None:
    attributes = read_group(body)
    with transaction.atomic():
        _set_group(actor=actor, group=group, attributes=attributes)


def patch_group(*, actor: User, group: Group, body: object) -> None:
    patched = apply_patch(group_attributes(group), body, urn=GROUP_SCHEMA, names=_GROUP_ATTRIBUTES)
    replace_group(actor=actor, group=group, body=patched)


def delete_group(*, actor: User, group: Group) -> None:
    user_services.delete_group(actor=actor, group=group)


def create_service_principal(*, actor: User, body: object) -> ServicePrincipal:
    """A principal provisioned by an identity provider: no secret yet (an admin creates one with
    ``modelfleet service-principals create-secret``), no global role."""
    attributes = read_service_principal(body)
    with transaction.atomic():
        principal, _ = principal_services.create_principal(
            actor=actor,
            display_name=attributes.display_name,
            application_id=attributes.application_id,
            with_secret=False,
        )
        _set_service_principal(actor=actor, principal=principal, attributes=attributes)
    return principal


def _set_service_principal(*, actor: User, principal: ServicePrincipal, attributes: ServicePrincipalAttributes) -> None:
    if attributes.application_id is not None and attributes.application_id != principal.application_id:
        raise ScimError("applicationId cannot be changed", scim_type="mutability")
    principal_services.update_principal(
        actor=actor,
        principal=principal,
        display_name=attributes.display_name,
        active=attributes.active,
        external=attributes.external_id,
    )


def replace_service_principal(*, actor: User, principal: ServicePrincipal, body: object) -> None:
    _set_service_principal(actor=actor, principal=principal, attributes=read_service_principal(body))


def patch_service_principal(*, actor: User, principal: ServicePrincipal, body: object) -> None:
    patched = apply_patch(
        service_principal_attributes(principal),
        body,
        urn=SERVICE_PRINCIPAL_SCHEMA,
        names=_SERVICE_PRINCIPAL_ATTRIBUTES,
    )
    replace_service_principal(actor=actor, principal=principal, body=patched)
