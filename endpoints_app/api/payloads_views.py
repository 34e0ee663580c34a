"""API views for payloads (monitoring)."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
