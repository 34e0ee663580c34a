"""OpenTelemetry traces of requests through the web process and its calls to replicas, only when an
OTLP endpoint is configured.

Off by default: unless ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set (OpenTelemetry's own variables; ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME`` and the
others are honoured by its SDK), no OpenTelemetry SDK is loaded, no span is made, no header is
added and nothing is sent anywhere. When one is set, the web process:

1. opens a SERVER span for each HTTP request (``GET /serving-endpoints/{name}/invocations``, the
   endpoint's name an attribute, not part of the span name), continuing the caller's
   ``traceparent`` when it sends one, with the request id and the status code as attributes;
2. opens a CLIENT span for each call the gateway makes to a replica (``POST replica``), a child of
   the request's span, and sends the replica a ``traceparent`` naming it, so a model that traces
   joins the same trace;
3. exports the spans in batches over OTLP/HTTP (``opentelemetry-exporter-otlp-proto-http``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from endpoints_app.observability import requestid
from endpoints_app.observability.requestid import ASGIApp, Message, Receive, Scope, Send

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_GATEWAY_PATH = re.compile(r"^/serving-endpoints/([^/]+)(/.*)?$")
_API_ENDPOINT_PATH = re.compile(r"^/api/2\.0/serving-endpoints/([^/]+)(/.*)?$")

# Our own provider, not OpenTelemetry's global one (which MLflow's tracing may also set).
_provider: Any = None
_tracer: Any = None  # the SDK's tracer once set up; None while tracing is off


def configured() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    return _tracer is not None


def setup(service_name: str) -> bool:
    """Start exporting this process's spans when an OTLP endpoint is configured; True if so."""
    global _provider, _tracer
    if _tracer is not None or not configured():
        return _tracer is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("modelfleet")
    return True


def shutdown() -> None:
    """Export what is pending and stop (at a process's exit; tests turn tracing off again with it)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def route_of(path: str) -> tuple[str, str | None]:
    """The span's route (the endpoint's name replaced by ``{name}``) and the endpoint's name."""
    for pattern, prefix in ((_GATEWAY_PATH, "/serving-endpoints"), (_API_ENDPOINT_PATH, "/api/2.0/serving-endpoints")):
        match = pattern.match(path)
        if match:
            return f"{prefix}/{{name}}{match.group(2) or ''}", match.group(1)
    return path if path.count("/") <= 3 else "/".join(path.split("/")[:4]) + "/…", None


class TracingMiddleware:
    """A SERVER span around each HTTP request (wrap it inside RequestIdMiddleware, which sets the id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate, trace

        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers") or ()
        }
        route, endpoint = route_of(scope["path"])
        attributes: dict[str, Any] = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "http.route": route,
            "modelfleet.request_id": requestid.current() or "",
        }
        if endpoint is not None:
            attributes["modelfleet.endpoint"] = endpoint
        with _tracer.start_as_current_span(
            f"{scope['method']} {route}",
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        ) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(trace.Status(trace.StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_with_status)


class ReplicaCall:
    """What a call to a replica adds to its request: a ``traceparent`` line (empty while off)."""

    def __init__(self, headers: str, span: Any) -> None:
        self.headers = headers
        self.span = span

    def status(self, code: int) -> None:
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", code)


@contextmanager
def replica_call(host: str, port: int, path: str) -> Iterator[ReplicaCall]:
    """A CLIENT span around one call to a replica; its ``headers`` carry the trace to the replica."""
    if _tracer is None:
        yield ReplicaCall("", None)
        return
    from opentelemetry import propagate, trace

    attributes = {"http.request.method": "POST", "server.address": host, "server.port": port, "url.path": path}
    with _tracer.start_as_current_span("POST replica", kind=trace.SpanKind.CLIENT, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        lines = "".join(f"{name}: {value}\r\n" for name, value in carrier.items() if "\r" not in value + name)
        yield ReplicaCall(lines, span)
