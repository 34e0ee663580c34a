"""Dashboard pages: approvals."""

from __future__ import annotations

urlpatterns: list = []
