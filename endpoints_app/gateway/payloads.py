"""Payload logging from the gateway (to be written): sampled request/response pairs → PayloadLog."""

from __future__ import annotations

from endpoints_app.gateway.routing import RouteTable


class PayloadLogger:
    """Called by the gateway after every answered query; must never block or raise."""

    def maybe_log(
        self,
        *,
        table: RouteTable,
        served_entity_name: str,
        status: int,
        latency_ms: float,
        request_body: bytes,
        response_body: bytes,
        client_request_id: str,
    ) -> None:
        return None
