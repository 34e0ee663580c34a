"""A real OpenID Connect provider for the single sign-on tests: django-oauth-toolkit's OIDC
support in a Django project of its own, run as a separate process on loopback (``python -m
tests.oidc_provider``), with its own SQLite database and an RSA signing key made at start.

It is a stand-in for Okta, Entra ID or Keycloak, not part of Modelfleet: Modelfleet only sees its
discovery document, its JWKS, its authorization and token endpoints and the ID tokens it signs.
"""
