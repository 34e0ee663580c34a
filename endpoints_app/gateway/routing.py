"""Route tables: which replicas serve which served entity of an endpoint, and how to pick one."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from endpoints_app.backends import get_backend
from endpoints_app.errors import DomainError
from endpoints_app.gateway import guardrails, ratelimit
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import iter_secret_fields
from endpoints_app.gateway.shadow import ShadowRoute
from endpoints_app.models import ConfigUpdate, Endpoint, ServedEntity
from endpoints_app.runtime.credentials import ReplicaTarget
from endpoints_app.secret_references import parse_reference
from endpoints_app.services import secrets


@dataclass
class ExternalTarget:
    """An external model to forward to, with its credentials resolved from the secrets store."""

    provider: str
    model: str
    task: str
    config: dict[str, Any]  # the provider's config block; secret fields hold {{secrets/...}} references
    credentials: dict[str, str] = field(default_factory=dict, repr=False)  # field path → value
    # Why a credential could not be read (names the reference, never a value); "" when all were.
    credential_error: str = ""


@dataclass
class EntityRoute:
    name: str
    weight: int
    replicas: list[ReplicaTarget]  # ready replicas: base URL ("http://127.0.0.1:41234") and credential
    deployment_id: int | None = None
    # No ready replica now, but one is coming (scaled to zero: a query wakes it; or starting or
    # recovering): a query waits for it instead of failing.
    coming_up: bool = False
    # Set for an external model: the gateway forwards to the provider instead of a replica.
    external: ExternalTarget | None = None


@dataclass(frozen=True)
class GatewayPolicy:
    """An endpoint's ``ai_gateway`` settings, parsed once per route-table load."""

    limits: tuple[ratelimit.Limit, ...] = ()
    input_guardrail: guardrails.Guardrail | None = None
    output_guardrail: guardrails.Guardrail | None = None
    usage_tracking: bool = False
    fallback: bool = False

    @classmethod
    def from_config(cls, config: Any) -> GatewayPolicy | None:
        if not isinstance(config, dict) or not config:
            return None
        rails = config.get("guardrails") or {}
        policy = cls(
            limits=ratelimit.parse(config.get("rate_limits")),
            input_guardrail=guardrails.Guardrail.from_config(rails.get("input")),
            output_guardrail=guardrails.Guardrail.from_config(rails.get("output")),
            usage_tracking=bool((config.get("usage_tracking_config") or {}).get("enabled")),
            fallback=bool((config.get("fallback_config") or {}).get("enabled")),
        )
        return policy if policy != cls() else None


@dataclass
class RouteTable:
    endpoint_name: str
    exists: bool
    entities: list[EntityRoute] = field(default_factory=list)
    endpoint_id: str = ""
    # Share of requests whose payloads are logged (inference tables); None when disabled.
    payload_sample_rate: float | None = None
    # Why there is nothing to route to, when that is the case (shown in the 503).
    not_ready_reason: str = ""
    # The task of an endpoint serving external models ("llm/v1/chat", ...); "" for custom models.
    task: str = ""
    # Rate limits, guardrails, usage tracking and fallbacks (``ai_gateway``); None when none are set.
    policy: GatewayPolicy | None = None
    # Served entities that get a mirrored copy of a share of the queries (``traffic_config.shadow``).
    shadows: list[ShadowRoute] = field(default_factory=list)

    def entity(self, name: str) -> EntityRoute | None:
        return next((e for e in self.entities if e.name == name), None)

    def pick_entity(self, rng: random.Random) -> EntityRoute | None:
        """A served entity chosen by the route percentages."""
        weighted = [e for e in self.entities if e.weight > 0]
        if len(weighted) <= 1:  # the common case, no draw needed
            return weighted[0] if weighted else None
        return rng.choices(weighted, weights=[e.weight for e in weighted], k=1)[0]


def load_route_table(endpoint_name: str) -> RouteTable:
    """Read the active config's routes, and its ready replicas from the backend (small indexed queries)."""
    endpoint = (
        Endpoint.objects.filter(name=endpoint_name)
        .select_related("active_config")
        .only(
            "id",
            "active_config_id",
            "config_update",
            "ai_gateway",
            "telemetry_config",
            "active_config__auto_capture_config",
        )
        .first()
    )
    if endpoint is None:
        return RouteTable(endpoint_name, exists=False)
    sample_rate = payload_sample_rate(endpoint)
    if endpoint.active_config_id is None:
        reason = (
            "its first config is still being deployed"
            if endpoint.config_update == ConfigUpdate.IN_PROGRESS
            else "it has no config that deployed successfully"
        )
        return RouteTable(
            endpoint_name,
            exists=True,
            not_ready_reason=reason,
            endpoint_id=endpoint.id,
            policy=GatewayPolicy.from_config(endpoint.ai_gateway),
        )
    entities = list(
        ServedEntity.objects.filter(config_version_id=endpoint.active_config_id).values(
            "name", "deployment_id", "external_model", "config_version__traffic_config"
        )
    )
    weights: dict[str, int] = {}
    shadows: list[ShadowRoute] = []
    if entities:
        traffic = entities[0]["config_version__traffic_config"] or {}
        for route in traffic.get("routes", []):
            target = route.get("served_model_name") or route.get("served_entity_name")
            weights[target] = int(route.get("traffic_percentage", 0))
        served = {e["name"] for e in entities if not e["external_model"]}  # only replicas are mirrored to
        for shadow in traffic.get("shadow") or []:
            if shadow.get("served_entity_name") in served and shadow.get("percentage", 0) > 0:
                shadows.append(
                    ShadowRoute(
                        shadow["served_entity_name"],
                        int(shadow["percentage"]),
                        float(shadow.get("agreement_tolerance") or 0.0),
                    )
                )
    backend = get_backend()
    deployment_ids = [e["deployment_id"] for e in entities if e["deployment_id"]]
    replicas = backend.ready_replicas(deployment_ids=deployment_ids)
    coming = backend.coming_up(deployment_ids=[d for d in deployment_ids if not replicas.get(d)])
    table = RouteTable(
        endpoint_name,
        exists=True,
        endpoint_id=endpoint.id,
        payload_sample_rate=sample_rate,
        policy=GatewayPolicy.from_config(endpoint.ai_gateway),
        shadows=shadows,
    )
    for e in entities:
        external = external_target(e["external_model"]) if e["external_model"] else None
        if external is not None:
            table.task = external.task
        table.entities.append(
            EntityRoute(
                e["name"],
                weights.get(e["name"], 0),
                replicas.get(e["deployment_id"], []),
                deployment_id=e["deployment_id"],
                coming_up=e["deployment_id"] in coming,
                external=external,
            )
        )
    return table


def external_target(external_model: dict[str, Any]) -> ExternalTarget:
    """The stored external model with its secret references resolved (``secrets.resolve`` is cached)."""
    provider = PROVIDERS[external_model["provider"]]
    config = external_model.get(provider.config_key) or {}
    target = ExternalTarget(
        provider=provider.name, model=external_model["name"], task=external_model["task"], config=config
    )
    problems = []
    for path, holder, name in iter_secret_fields(provider.fields, config):
        reference = holder.get(name)
        parsed = parse_reference(reference) if isinstance(reference, str) else None
        if parsed is None:
            continue
        try:
            target.credentials[path] = secrets.resolve(scope=parsed[0], key=parsed[1])
        except DomainError as exc:
            problems.append(f"{path} ({reference}): {exc.message}")
    target.credential_error = "; ".join(problems)
    return target


def payload_sample_rate(endpoint: Endpoint) -> float | None:
    """The inference-table sampling share of an endpoint, or None when payload logging is off.

    Enabled by ``ai_gateway.inference_table_config.enabled`` or the legacy
    ``auto_capture_config.enabled``; ``telemetry_config.inference_table_config.sampling_fraction``
    (0.0–1.0) sets the share, else every request is logged.
    """
    gateway_cfg = (
        ((endpoint.ai_gateway or {}).get("inference_table_config") or {})
        if isinstance(endpoint.ai_gateway, dict)
        else {}
    )
    capture: dict[str, Any] = {}
    if endpoint.active_config_id and endpoint.active_config is not None:
        capture = endpoint.active_config.auto_capture_config or {}
    if not (gateway_cfg.get("enabled") is True or capture.get("enabled") is True):
        return None
    telemetry = (endpoint.telemetry_config or {}) if isinstance(endpoint.telemetry_config, dict) else {}
    fraction = (telemetry.get("inference_table_config") or {}).get("sampling_fraction")
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 <= fraction <= 1.0:
        return float(fraction)
    return 1.0
