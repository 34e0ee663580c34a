"""The Django project: settings from the environment, URLs, ASGI entry and the Celery app."""

from dashboard.celery import app as celery_app

__all__ = ["celery_app"]
