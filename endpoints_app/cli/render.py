"""Turn API responses into what the CLI prints.

JSON is the response, pretty-printed (lists as a JSON array, like the Databricks CLI). Tables and
summary blocks are for people (``-o table``, and ``text`` for Modelfleet's own commands);
timestamps (epoch milliseconds on the wire) are shown there as UTC ISO-8601. Functions here return
strings and never print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

MISSING = "-"


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def timestamp(value: Any) -> str:
    """Epoch milliseconds (int or numeric string, as the API sends them) as UTC ISO-8601."""
    if value in (None, ""):
        return MISSING
    try:
        millis = int(value)
    except (TypeError, ValueError):
        return str(value)
    try:
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(value)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, indent: str = "") -> str:
    """A left-aligned table with two spaces between columns; trailing spaces trimmed."""
    cells = [list(headers), *([MISSING if c in (None, "") else str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


# -- served entities --------------------------------------------------------------------------


def served_entities(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Served entities of a config, in either the current or the legacy ``served_models`` form."""
    if not config:
        return []
    return list(config.get("served_entities") or config.get("served_models") or [])


def entity_ref(entity: dict[str, Any]) -> str:
    """What a served entity serves: ``catalog.schema.model v3``, ``external: openai/gpt-4o``…"""
    external = entity.get("external_model")
    if external:
        return f"external: {external.get('provider', '?')}/{external.get('name', '?')}"
    foundation = entity.get("foundation_model")
    if foundation:
        return f"foundation: {foundation.get('name', '?')}"
    model = entity.get("entity_name") or entity.get("model_name")
    version = entity.get("entity_version") or entity.get("model_version")
    if not model:
        return MISSING
    return f"{model} v{version}" if version else str(model)


def entity_label(entity: dict[str, Any]) -> str:
    """``name (entity_name v1)``, as in the list table."""
    return f"{entity.get('name', '?')} ({entity_ref(entity)})"


def _sizing(entity: dict[str, Any]) -> str:
    parts = []
    if entity.get("workload_size"):
        parts.append(str(entity["workload_size"]))
    elif entity.get("min_provisioned_concurrency") is not None or entity.get("max_provisioned_concurrency") is not None:
        low = entity.get("min_provisioned_concurrency", 0)
        high = entity.get("max_provisioned_concurrency", low)
        parts.append(f"concurrency {low}-{high}")
    if entity.get("provisioned_model_units"):
        parts.append(f"{entity['provisioned_model_units']} PMU")
    if entity.get("workload_type"):
        parts.append(str(entity["workload_type"]))
    if entity.get("scale_to_zero_enabled"):
        parts.append("scale-to-zero")
    return " ".join(parts)


def _entity_state(entity: dict[str, Any]) -> tuple[str, str]:
    state = entity.get("state") or {}
    return state.get("deployment") or MISSING, state.get("deployment_state_message") or ""


def _entities_table(entities: list[dict[str, Any]], indent: str) -> str:
    rows = [[e.get("name"), entity_ref(e), _sizing(e), *_entity_state(e)] for e in entities]
    return table(["NAME", "ENTITY", "SIZE", "DEPLOYMENT", "MESSAGE"], rows, indent=indent)


def _traffic_lines(config: dict[str, Any], indent: str) -> list[str]:
    routes = (config.get("traffic_config") or {}).get("routes") or []
    rows = [
        [r.get("served_model_name") or r.get("served_entity_name"), f"{r.get('traffic_percentage', 0)}%"]
        for r in routes
    ]
    return table(["SERVED ENTITY", "TRAFFIC"], rows, indent=indent).splitlines() if rows else []


def deploying_summary(endpoint: dict[str, Any]) -> str:
    """``churn-1 DEPLOYMENT_CREATING, churn-2 DEPLOYMENT_READY`` for the pending config."""
    entities = served_entities(endpoint.get("pending_config"))
    return ", ".join(f"{e.get('name', '?')} {_entity_state(e)[0]}" for e in entities)


# -- endpoints --------------------------------------------------------------------------------


def _state(endpoint: dict[str, Any]) -> dict[str, Any]:
    return endpoint.get("state") or {}


def endpoint_table(endpoints: list[dict[str, Any]]) -> str:
    rows = [
        [
            e.get("name"),
            _state(e).get("ready"),
            _state(e).get("config_update"),
            ", ".join(entity_label(s) for s in served_entities(e.get("config"))),
            e.get("creator"),
        ]
        for e in endpoints
    ]
    return table(["NAME", "STATE", "CONFIG UPDATE", "SERVED ENTITIES", "CREATOR"], rows)


def endpoint_summary(endpoint: dict[str, Any]) -> str:
    """The text form of ``get``/``create``/``update-config``: one block with what matters most first."""
    state = _state(endpoint)
    fields: list[tuple[str, Any]] = [
        ("Name", endpoint.get("name")),
        ("ID", endpoint.get("id")),
        ("State", f"{state.get('ready', MISSING)} (config update: {state.get('config_update', MISSING)})"),
    ]
    if state.get("config_update_message"):
        fields.append(("Update message", state["config_update_message"]))
    fields += [
        ("Creator", endpoint.get("creator")),
        ("Created", timestamp(endpoint.get("creation_timestamp"))),
        ("Last updated", timestamp(endpoint.get("last_updated_timestamp"))),
    ]
    for label, key in (("Description", "description"), ("Task", "task"), ("Endpoint URL", "endpoint_url")):
        if endpoint.get(key):
            fields.append((label, endpoint[key]))
    if endpoint.get("route_optimized"):
        fields.append(("Route optimized", "yes"))
    if endpoint.get("budget_policy_id"):
        fields.append(("Budget policy", endpoint["budget_policy_id"]))
    config = endpoint.get("config") or {}
    fields.append(("Config version", config.get("config_version", MISSING)))

    lines = [f"{label + ':':<16}{MISSING if value in (None, '') else value}" for label, value in fields]
    lines += _config_lines(config, indent="  ")

    pending = endpoint.get("pending_config")
    if pending:
        started = f", started {timestamp(pending['start_time'])}" if pending.get("start_time") else ""
        lines.append(f"Pending config: version {pending.get('config_version', MISSING)}{started}")
        lines += _config_lines(pending, indent="    ", heading_indent="  ")

    tags = endpoint.get("tags") or []
    if tags:
        lines.append(f"{'Tags:':<16}{tags_inline(tags)}")
    return "\n".join(lines)


def _config_lines(config: dict[str, Any], *, indent: str, heading_indent: str = "") -> list[str]:
    lines = []
    entities = served_entities(config)
    if entities:
        lines.append(f"{heading_indent}Served entities:")
        lines += _entities_table(entities, indent).splitlines()
    traffic = _traffic_lines(config, indent)
    if traffic:
        lines.append(f"{heading_indent}Traffic:")
        lines += traffic
    return lines


def tags_inline(tags: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{t.get('key')}={t.get('value', '')}" if t.get("value") is not None else str(t.get("key")) for t in tags
    )


def tags_table(tags: list[dict[str, Any]]) -> str:
    return table(["KEY", "VALUE"], [[t.get("key"), t.get("value")] for t in tags])


def endpoint_status(endpoint: dict[str, Any]) -> dict[str, Any]:
    """The ``get-status`` document: endpoint state plus each served entity's state.

    Entities of the active config come first, then those only in the pending config.
    """
    seen: set[str] = set()
    entities = []
    for entity in served_entities(endpoint.get("config")) + served_entities(endpoint.get("pending_config")):
        name = entity.get("name", "")
        if name in seen:
            continue
        seen.add(name)
        entities.append({"name": name, "state": entity.get("state") or {}})
    return {"name": endpoint.get("name"), "state": _state(endpoint), "served_entities": entities}


def status_text(status: dict[str, Any]) -> str:
    state = status["state"]
    lines = [f"{state.get('ready', MISSING)}  {state.get('config_update', MISSING)}"]
    if state.get("config_update_message"):
        lines.append(state["config_update_message"])
    rows = [
        [e["name"], e["state"].get("deployment"), e["state"].get("deployment_state_message")]
        for e in status["served_entities"]
    ]
    if rows:
        lines.append(table(["SERVED ENTITY", "DEPLOYMENT", "MESSAGE"], rows))
    return "\n".join(lines)


# -- registered models ------------------------------------------------------------------------


def models_table(models: list[dict[str, Any]]) -> str:
    rows: list[list[Any]] = []
    for model in models:
        versions = model.get("versions") or []
        if not versions:
            rows.append([model.get("name"), MISSING, MISSING, timestamp(model.get("creation_timestamp"))])
        for version in versions:
            rows.append(
                [
                    model.get("name"),
                    version.get("version"),
                    version.get("status"),
                    timestamp(version.get("creation_timestamp")),
                ]
            )
    return table(["MODEL", "VERSION", "STATUS", "CREATED"], rows)
