"""The inference gateway: /serving-endpoints/<name>/invocations, beside Django in one ASGI app."""
