"""The token in an ``Authorization`` header: ``Bearer <token>``, or Basic with the token as the
password (Databricks' curl examples use ``-u token:$TOKEN``).

Read the same way by the REST API (DRF), the inference gateway (Starlette) and the request-body
limit (plain ASGI), so this module depends on none of their frameworks: the gateway must not
import DRF to authenticate a query.
"""

from __future__ import annotations

import base64
import binascii


def token_from_header(header: str | None) -> str | None:
    """The raw token in an Authorization header value, or None if there is none."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, _, password = decoded.partition(":")
        return password or None
    return None
