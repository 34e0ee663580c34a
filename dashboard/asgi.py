"""ASGI entry: the inference gateway mounted beside Django (see endpoints_app.gateway.app)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from endpoints_app.gateway.app import mount  # noqa: E402

application = mount(django_application)

from dashboard.heap import freeze_startup_objects  # noqa: E402

freeze_startup_objects()  # last: everything loaded so far lives as long as the process
