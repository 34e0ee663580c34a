"""Writes: one keyword-only function per state change, shared by the API, pages, CLI and tasks."""
