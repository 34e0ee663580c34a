"""Users, groups and service principals in SCIM's wire shape (RFC 7643 §4), as ``/api/2.0/preview/scim/v2/`` serves them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User

from endpoints_app.scim_schemas import GROUP_SCHEMA, SERVICE_PRINCIPAL_SCHEMA, USER_SCHEMA
from endpoints_app.services.scim import group_attributes, member_type, service_principal_attributes, user_attributes

SCIM_ROOT = "/api/2.0/preview/scim/v2"


def user_location(base_url: str, user_id: int) -> str:
    return f"{base_url}{SCIM_ROOT}/Users/{user_id}"


def group_location(base_url: str, group_id: int) -> str:
    return f"{base_url}{SCIM_ROOT}/Groups/{group_id}"


def serialize_user(user: User, base_url: str) -> dict[str, Any]:
    """The user (prefetch ``scim`` and ``groups`` for a list)."""
    body: dict[str, Any] = {"schemas": [USER_SCHEMA], "id": str(user.pk), **user_attributes(user)}
    groups = sorted(user.groups.all(), key=lambda g: g.pk)
    if groups:
        body["groups"] = [
            {"value": str(g.pk), "$ref": group_location(base_url, g.pk), "display": g.name} for g in groups
        ]
    body["meta"] = {
        "resourceType": "User",
        "created": user.date_joined.isoformat(),
        "location": user_location(base_url, user.pk),
    }
    return body


def service_principal_location(base_url: str, user_id: int) -> str:
    return f"{base_url}{SCIM_ROOT}/ServicePrincipals/{user_id}"


def serialize_service_principal(user: User, base_url: str) -> dict[str, Any]:
    """A service principal: its user row (select_related ``service_principal``, prefetch ``groups``
    for a list), whose id it shares, as Databricks' ids are one namespace."""
    principal = user.service_principal
    body: dict[str, Any] = {
        "schemas": [SERVICE_PRINCIPAL_SCHEMA],
        "id": str(user.pk),
        **service_principal_attributes(principal),
    }
    groups = sorted(user.groups.all(), key=lambda g: g.pk)
    if groups:
        body["groups"] = [
            {"value": str(g.pk), "$ref": group_location(base_url, g.pk), "display": g.name} for g in groups
        ]
    body["meta"] = {
        "resourceType": "ServicePrincipal",
        "created": principal.created_at.isoformat(),
        "location": service_principal_location(base_url, user.pk),
    }
    return body


def _member(value: str, kind: str, base_url: str) -> dict[str, Any]:
    if kind == "ServicePrincipal":
        return {"value": value, "$ref": service_principal_location(base_url, int(value)), "type": kind}
    return {"value": value, "$ref": user_location(base_url, int(value)), "type": kind}


def serialize_group(group: Group, base_url: str) -> dict[str, Any]:
    """The group (prefetch ``scim`` and ``user_set__service_principal`` for a list): its members
    are users and service principals, each with its own type."""
    body: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "id": str(group.pk), **group_attributes(group)}
    if "members" in body:
        kinds = {str(u.pk): member_type(u) for u in group.user_set.all()}
        body["members"] = [_member(m["value"], kinds.get(m["value"], "User"), base_url) for m in body["members"]]
    body["meta"] = {"resourceType": "Group", "location": group_location(base_url, group.pk)}
    return body


def select_attributes(body: dict[str, Any], attributes: list[str], excluded: list[str]) -> dict[str, Any]:
    """``attributes`` / ``excludedAttributes`` (RFC 7644 §3.4.2.5) on top-level attributes (a
    sub-attribute path names its parent); ``id``, ``schemas`` and ``meta`` are always returned."""
    always = {"id", "schemas", "meta"}
    if attributes:
        wanted = {_top(a) for a in attributes} | always
        return {k: v for k, v in body.items() if k.lower() in wanted}
    if excluded:
        unwanted = {_top(a) for a in excluded} - always
        return {k: v for k, v in body.items() if k.lower() not in unwanted}
    return body


def _top(path: str) -> str:
    """``urn:…:User:name.givenName`` → ``name``."""
    if path.lower().startswith("urn:"):
        path = path.rsplit(":", 1)[-1]
    return path.split(".")[0].strip().lower()
