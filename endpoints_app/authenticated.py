"""Request types for the views only signed-in users reach, so the type checker knows who acts.

django-stubs types ``request.user`` as ``User | AnonymousUser``. Behind ``login_required`` (the
pages) and DRF's default ``IsAuthenticated`` (every ``ApiView`` except the ones that say
``AllowAny``) it is always a ``User``: a view annotated with these classes can hand
``request.user`` to a service as the actor without a cast at each call.

They are annotations only: Django and DRF still build plain ``HttpRequest`` and ``Request``
objects; nothing here is instantiated or checked at run time (django-stubs' documented pattern).
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from rest_framework.request import Request


class AuthenticatedHttpRequest(HttpRequest):
    """A page's request after ``login_required``."""

    user: User


class AuthenticatedRequest(Request):
    """An API request after DRF authenticated it (``IsAuthenticated``)."""

    user: User
