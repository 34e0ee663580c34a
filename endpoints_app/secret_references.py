"""``{{secrets/<scope>/<key>}}``: how a config names a secret without holding its value.

Validation reads references in environment variables and external-model credentials, the secrets
service resolves and checks them, the runtime agent and the gateway resolve them at use. They all
read them here, one way (spaces are allowed inside the braces; anything else is plain text, as in
Databricks' ``environment_vars``).
"""

from __future__ import annotations

import re

_REFERENCE_RE = re.compile(r"\{\{\s*secrets\s*/\s*([A-Za-z0-9_.-]{1,128})\s*/\s*([A-Za-z0-9_.-]{1,128})\s*\}\}")


def parse_reference(text: str) -> tuple[str, str] | None:
    """``(scope, key)`` for ``{{secrets/<scope>/<key>}}``, else None."""
    if not isinstance(text, str):
        return None
    match = _REFERENCE_RE.fullmatch(text)
    return (match[1], match[2]) if match else None


def reference(scope: str, key: str) -> str:
    return f"{{{{secrets/{scope}/{key}}}}}"
