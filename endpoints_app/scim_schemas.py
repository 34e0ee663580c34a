"""What the SCIM API publishes about itself (RFC 7643 §5–§8.7, RFC 7644 §4): the User and Group
schemas it serves, the three discovery schemas, the resource types and the service provider config.

The User and Group schemas name only the attributes this server stores and gives back as sent;
a client that reads them (scim2-tester does, and so can an identity provider) writes nothing it
would not read back. What Databricks' SCIM carries beyond them (entitlements, roles, workspace
extensions) is accepted in a request and ignored, and never returned.
"""

from __future__ import annotations

from typing import Any

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
SERVICE_PRINCIPAL_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServicePrincipal"  # Databricks'
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SERVICE_PROVIDER_CONFIG_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"

MAX_PAGE_SIZE = 1000  # the databricks-sdk asks for 10 000 and pages on by startIndex


def attribute(
    name: str,
    type_: str = "string",
    *,
    description: str = "",
    multi: bool = False,
    required: bool = False,
    mutability: str = "readOnly",
    case_exact: bool = False,
    canonical: list[str] | None = None,
    reference_types: list[str] | None = None,
    sub: list[dict[str, Any]] | None = None,
    uniqueness: str = "none",
) -> dict[str, Any]:
    """One attribute definition (RFC 7643 §7)."""
    definition: dict[str, Any] = {
        "name": name,
        "type": type_,
        "multiValued": multi,
        "description": description or name,
        "required": required,
        "caseExact": case_exact,
        "mutability": mutability,
        "returned": "default",
        "uniqueness": uniqueness,
    }
    if canonical:
        definition["canonicalValues"] = canonical
    if reference_types:
        definition["referenceTypes"] = reference_types
    if sub is not None:
        definition["subAttributes"] = sub
    return definition


RW = "readWrite"

USER = {
    "id": USER_SCHEMA,
    "name": "User",
    "description": "A Modelfleet user",
    "attributes": [
        attribute(
            "userName",
            description="The user's sign-in name; unique, and set once (a change is refused)",
            required=True,
            mutability="immutable",
            uniqueness="server",
        ),
        attribute(
            "name",
            "complex",
            description="The user's name",
            mutability=RW,
            sub=[
                attribute("givenName", description="Given name", mutability=RW),
                attribute("familyName", description="Family name", mutability=RW),
            ],
        ),
        attribute("displayName", description="The name shown for the user", mutability=RW),
        attribute(
            "active",
            "boolean",
            description="false deactivates the user: sign-in, sessions and every token end at once",
            required=True,
            mutability=RW,
        ),
        attribute(
            "emails",
            "complex",
            description="Email addresses; one is kept (the primary one, else the first)",
            multi=True,
            mutability=RW,
            sub=[attribute("value", description="The address", mutability=RW)],
        ),
        attribute(
            "groups",
            "complex",
            description="The groups the user belongs to (change them on the group)",
            multi=True,
            sub=[
                attribute("value", description="The group's id"),
                attribute("$ref", "reference", description="The group's URI", reference_types=["Group"]),
                attribute("display", description="The group's name"),
            ],
        ),
    ],
}

GROUP = {
    "id": GROUP_SCHEMA,
    "name": "Group",
    "description": "A Modelfleet group: endpoint grants and secret ACLs name groups",
    "attributes": [
        attribute(
            "displayName", description="The group's name; unique", required=True, mutability=RW, uniqueness="server"
        ),
        attribute(
            "members",
            "complex",
            description="The users and service principals in the group (groups do not nest)",
            multi=True,
            mutability=RW,
            sub=[
                attribute("value", description="The member's id", mutability="immutable"),
                attribute(
                    "$ref",
                    "reference",
                    description="The member's URI",
                    mutability="immutable",
                    reference_types=["User", "ServicePrincipal"],
                ),
                attribute(
                    "type",
                    description="The member's resource type",
                    mutability="immutable",
                    canonical=["User", "ServicePrincipal"],
                ),
            ],
        ),
    ],
}

SERVICE_PRINCIPAL = {
    "id": SERVICE_PRINCIPAL_SCHEMA,
    "name": "ServicePrincipal",
    "description": "An identity for automation that signs in with OAuth client credentials (Databricks' resource)",
    "attributes": [
        attribute(
            "applicationId",
            description="Its OAuth client id (a UUID) and its service_principal_name in permissions; assigned by "
            "the server unless the create gives one",
            case_exact=True,
            uniqueness="server",
        ),
        attribute("displayName", description="The name shown for it", required=True, mutability=RW),
        attribute(
            "active",
            "boolean",
            description="false deactivates it: every token it holds stops at once",
            required=True,
            mutability=RW,
        ),
        attribute(
            "groups",
            "complex",
            description="The groups it belongs to",
            multi=True,
            sub=[
                attribute("value", description="The group's id"),
                attribute("$ref", "reference", description="The group's URI", reference_types=["Group"]),
                attribute("display", description="The group's name"),
            ],
        ),
    ],
}

_TYPES = ["string", "complex", "boolean", "decimal", "integer", "dateTime", "reference", "binary"]


def _attribute_definition_attributes(*, with_sub: bool) -> list[dict[str, Any]]:
    """The attributes of an attribute definition (RFC 7643 §7), nested once for subAttributes."""
    listed = [
        attribute("name", description="The attribute's name", required=True, case_exact=True),
        attribute("type", description="The attribute's data type", required=True, canonical=_TYPES),
        attribute("multiValued", "boolean", description="Whether the attribute is plural", required=True),
        attribute("description", description="The attribute's description", case_exact=True),
        attribute("required", "boolean", description="Whether the attribute is required"),
        attribute("canonicalValues", description="Suggested values", multi=True, case_exact=True),
        attribute("caseExact", "boolean", description="Whether a string attribute is case sensitive"),
        attribute(
            "mutability",
            description="When the value can be set",
            case_exact=True,
            canonical=["readOnly", "readWrite", "immutable", "writeOnly"],
        ),
        attribute(
            "returned",
            description="When the value is returned",
            case_exact=True,
            canonical=["always", "never", "default", "request"],
        ),
        attribute(
            "uniqueness",
            description="How the value is unique",
            case_exact=True,
            canonical=["none", "server", "global"],
        ),
        attribute("referenceTypes", description="The resource types a reference names", multi=True, case_exact=True),
    ]
    if with_sub:
        listed.append(
            attribute(
                "subAttributes",
                "complex",
                description="The sub-attributes of a complex attribute",
                multi=True,
                sub=_attribute_definition_attributes(with_sub=False),
            )
        )
    return listed


SCHEMA = {
    "id": SCHEMA_SCHEMA,
    "name": "Schema",
    "description": "Schema",
    "attributes": [
        attribute("id", description="The unique URI of the schema", required=True),
        attribute("name", description="The schema's name", required=True),
        attribute("description", description="The schema's description"),
        attribute(
            "attributes",
            "complex",
            description="The schema's attributes",
            multi=True,
            required=True,
            sub=_attribute_definition_attributes(with_sub=True),
        ),
    ],
}

RESOURCE_TYPE = {
    "id": RESOURCE_TYPE_SCHEMA,
    "name": "ResourceType",
    "description": "ResourceType",
    "attributes": [
        attribute("id", description="The resource type's id"),
        attribute("name", description="The resource type's name", required=True, case_exact=True),
        attribute("description", description="The resource type's description"),
        attribute(
            "endpoint", "reference", description="Its endpoint", required=True, case_exact=True, reference_types=["uri"]
        ),
        attribute(
            "schema", "reference", description="Its schema", required=True, case_exact=True, reference_types=["uri"]
        ),
        attribute(
            "schemaExtensions",
            "complex",
            description="Its schema extensions",
            multi=True,
            sub=[
                attribute(
                    "schema",
                    "reference",
                    description="An extension",
                    required=True,
                    case_exact=True,
                    reference_types=["uri"],
                ),
                attribute("required", "boolean", description="Whether it is required", required=True),
            ],
        ),
    ],
}


def _supported(name: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return attribute(
        name,
        "complex",
        description=f"{name} support",
        required=True,
        sub=[attribute("supported", "boolean", description="Whether it is supported", required=True), *extra],
    )


SERVICE_PROVIDER_CONFIG = {
    "id": SERVICE_PROVIDER_CONFIG_SCHEMA,
    "name": "ServiceProviderConfig",
    "description": "ServiceProviderConfig",
    "attributes": [
        attribute("documentationUri", "reference", description="Help", case_exact=True, reference_types=["external"]),
        _supported("patch"),
        _supported(
            "bulk",
            attribute("maxOperations", "integer", description="Most operations", required=True),
            attribute("maxPayloadSize", "integer", description="Largest payload", required=True),
        ),
        _supported("filter", attribute("maxResults", "integer", description="Most results", required=True)),
        _supported("changePassword"),
        _supported("sort"),
        _supported("etag"),
        attribute(
            "authenticationSchemes",
            "complex",
            description="How to authenticate",
            multi=True,
            required=True,
            sub=[
                attribute(
                    "type",
                    description="The scheme",
                    required=True,
                    canonical=["oauth", "oauth2", "oauthbearertoken", "httpbasic", "httpdigest"],
                ),
                attribute("name", description="Its name", required=True),
                attribute("description", description="What it is", required=True),
                attribute("primary", "boolean", description="Whether it is the primary one"),
            ],
        ),
    ],
}

SCHEMAS = [USER, GROUP, SERVICE_PRINCIPAL, SCHEMA, RESOURCE_TYPE, SERVICE_PROVIDER_CONFIG]

RESOURCE_TYPES = [
    {"id": "User", "name": "User", "description": "Users", "endpoint": "/Users", "schema": USER_SCHEMA},
    {"id": "Group", "name": "Group", "description": "Groups", "endpoint": "/Groups", "schema": GROUP_SCHEMA},
    {
        "id": "ServicePrincipal",
        "name": "ServicePrincipal",
        "description": "Service principals",
        "endpoint": "/ServicePrincipals",
        "schema": SERVICE_PRINCIPAL_SCHEMA,
    },
]

SERVICE_PROVIDER = {
    "schemas": [SERVICE_PROVIDER_CONFIG_SCHEMA],
    "patch": {"supported": True},
    "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
    "filter": {"supported": True, "maxResults": MAX_PAGE_SIZE},
    "changePassword": {"supported": False},
    "sort": {"supported": True},
    "etag": {"supported": False},
    "authenticationSchemes": [
        {
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "A personal access token or an OAuth token of an admin, in Authorization: Bearer",
            "primary": True,
        }
    ],
}
