"""The query parameters of the Secrets API's reads (reference §7): each names a scope, and the
lookups a key or a principal in it. Missing ones are a 400 naming the parameter."""

from __future__ import annotations

from endpoints_app.filters.fields import FilterSet, RequiredParamField


class SecretScopeFilterSet(FilterSet):
    """``…/secrets/list`` and ``…/secrets/acls/list``: the scope whose secrets or ACLs to list."""

    scope = RequiredParamField(label="Scope")


class SecretKeyFilterSet(SecretScopeFilterSet):
    """``…/secrets/get``: one secret of the scope."""

    key = RequiredParamField(label="Key")


class SecretAclFilterSet(SecretScopeFilterSet):
    """``…/secrets/acls/get``: one principal's ACL on the scope."""

    principal = RequiredParamField(label="Principal")
