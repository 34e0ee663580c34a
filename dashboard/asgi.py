"""ASGI entry: the inference gateway mounted beside Django (see endpoints_app.gateway.app), both
behind the request-body size limits (endpoints_app.http_limits), which refuse an oversized body
before Django spools it or the gateway reads it; /healthz, /readyz and /metrics answered in front
of them (endpoints_app.api.operations); every answer with an X-Request-Id, which every log line
written meanwhile carries (endpoints_app.observability.requestid); OpenTelemetry spans when an OTLP
endpoint is configured (endpoints_app.observability.tracing). The process's heartbeat (resource
use, for the fleet's /metrics) starts here."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from endpoints_app.api import operations  # noqa: E402
from endpoints_app.gateway.app import mount  # noqa: E402
from endpoints_app.http_limits import limit_bodies  # noqa: E402
from endpoints_app.observability import processes, tracing  # noqa: E402
from endpoints_app.observability.requestid import RequestIdMiddleware  # noqa: E402

_served = operations.mount(limit_bodies(mount(django_application)))
# Spans only when an OTLP endpoint is configured (endpoints_app.observability.tracing); else nothing.
application = RequestIdMiddleware(tracing.TracingMiddleware(_served) if tracing.setup("modelfleet") else _served)
processes.start("web")

from dashboard.heap import freeze_startup_objects  # noqa: E402

freeze_startup_objects()  # last: everything loaded so far lives as long as the process
