"""ASGI entry: the inference gateway mounted beside Django (see endpoints_app.gateway.app), both
behind the request-body size limits (endpoints_app.http_limits), which refuse an oversized body
before Django spools it or the gateway reads it."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from endpoints_app.gateway.app import mount  # noqa: E402
from endpoints_app.http_limits import limit_bodies  # noqa: E402

application = limit_bodies(mount(django_application))

from dashboard.heap import freeze_startup_objects  # noqa: E402

freeze_startup_objects()  # last: everything loaded so far lives as long as the process
