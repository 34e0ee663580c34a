"""The remote poller: every remote workspace's endpoints, polled into the same tables as local ones.

One sweep per workspace (``tasks.sweep_workspace``), one ``databricks-sdk`` client per sweep
(``remote.client.workspace_client(for_poll=True)``), within a deadline:

1. ``serving_endpoints.list()`` once. A failure (unreachable, token refused, a 429, anything) is
   recorded on the workspace (``services.workspaces.record_check``: the error and since when) and
   the sweep stops there: its endpoints keep every row they had, shown stale
   (``is_stale``), and nothing is deleted. The next sweep is due after a growing backoff, or after
   the remote's Retry-After when it answered 429 (whichever is longer).
2. ``get(name)`` only for the endpoints that are new or changed since the last sweep (their
   ``last_updated_timestamp`` or ``state`` moved): config versions (the remote's
   ``config_version``), served entities, tags, AI gateway. An endpoint missing from a successful
   list is marked gone (``remote_gone_at``, health DOWN), never deleted; it comes back if it
   reappears.
3. Per endpoint, ``export_metrics(name)`` → the same 15 s ``MetricPoint`` series as local
   endpoints (cumulative counters turned into deltas with a ``MetricCursor`` of source
   ``remote``, so a restarted remote never makes a negative or spiking rate), and each served
   entity's server and build logs (``logs``, ``build_logs``) → ``LogLine`` rows, new lines only.
   The calls are made ``FETCH_THREADS`` at a time (``fetch_answers``; none starts after a 429 or
   past the deadline) and what they answered is stored in the sweep's thread, endpoint by endpoint.
4. Health from the remote's state and the new metrics → the same ``HealthChange`` history.

A 429 in steps 2-3 stops the sweep too (what was stored stays) and is waited out the same way.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from endpoints_app.errors import DomainError
from endpoints_app.gateway.metrics import BUCKET_LABELS
from endpoints_app.models import (
    ConfigUpdate,
    ConfigVersion,
    Endpoint,
    EndpointTag,
    HealthStatus,
    LogKind,
    LogLine,
    MetricCursor,
    ServedEntity,
    Workspace,
    WorkspaceKind,
    WorkspaceState,
)
from endpoints_app.monitoring import health as health_module
from endpoints_app.monitoring import logs as logs_module
from endpoints_app.monitoring import metrics as metrics_module
from endpoints_app.monitoring import store
from endpoints_app.remote import client as remote_client
from endpoints_app.remote.transport import RateLimited
from endpoints_app.services import workspaces as workspace_services

log = logging.getLogger(__name__)

REMOTE_SOURCE = "remote"  # MetricCursor.source of a remote's exported counters
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_LOG_LINES_PER_READ = 2000  # per served entity and kind per sweep: the newest ones
TAIL_HASHES = 200  # hashes kept of the lines at the cursor's newest timestamp


def interval_seconds() -> float:
    return float(settings.REMOTE_POLL_SECONDS)


def deadline_seconds() -> float:
    return float(settings.REMOTE_POLL_DEADLINE_SECONDS)


def max_backoff_seconds() -> float:
    return float(settings.POLL_MAX_BACKOFF_SECONDS)


def backoff_seconds(failures: int) -> float:
    if failures <= 0:
        return interval_seconds()
    return min(max_backoff_seconds(), interval_seconds() * 2 ** min(failures, 10))


def stale_after_seconds() -> float:
    """A remote endpoint no sweep has seen for this long is shown stale."""
    return 3 * interval_seconds() + deadline_seconds()


def is_stale(endpoint: Endpoint, workspace: Workspace | None = None) -> bool:
    """Whether a remote endpoint's data may be out of date (``stale_reason``)."""
    return bool(stale_reason(endpoint, workspace=workspace))


def stale_reason(endpoint: Endpoint, *, workspace: Workspace | None = None, now: datetime | None = None) -> str:
    """Why a remote endpoint's data may be out of date, "" when it is not (and for local ones): its
    workspace's last poll failed (with the error and since when), a successful list no longer has
    it, or no sweep has seen it for three intervals and a deadline."""
    if endpoint.workspace_id is None:
        return ""
    workspace = workspace or endpoint.workspace
    if endpoint.remote_gone_at is not None:
        return f"gone from the workspace's list since {endpoint.remote_gone_at:%Y-%m-%d %H:%M:%S} UTC"
    if workspace is not None and workspace.state == WorkspaceState.ERROR:
        since = f" since {workspace.status_since:%Y-%m-%d %H:%M:%S} UTC" if workspace.status_since else ""
        return f"stale: the workspace's last poll failed{since}: {workspace.status_message}"
    seen = endpoint.remote_seen_at
    if seen is None or ((now or timezone.now()) - seen).total_seconds() > stale_after_seconds():
        return "stale: no poll has seen it lately"
    return ""


# --- scheduling ---------------------------------------------------------------------------------


def due_workspaces(*, now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    return list(
        Workspace.objects.filter(kind=WorkspaceKind.REMOTE)
        .filter(Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now))
        .order_by("next_poll_at")
        .values_list("id", flat=True)
    )


def claim(workspace_id: int) -> Workspace | None:
    """Take the workspace for one sweep: ``next_poll_at`` pushed past the deadline as a lease (a
    second task for it finds nothing due and stops). None when not due or gone."""
    now = timezone.now()
    current = Workspace.objects.filter(id=workspace_id, kind=WorkspaceKind.REMOTE).only("next_poll_at").first()
    if current is None or (current.next_poll_at is not None and current.next_poll_at > now):
        return None
    lease = now + timedelta(seconds=deadline_seconds() + 30)
    claimed = Workspace.objects.filter(id=workspace_id, next_poll_at=current.next_poll_at).update(next_poll_at=lease)
    if claimed != 1:
        return None
    return Workspace.objects.get(id=workspace_id)


@dataclass
class SweepResult:
    ok: bool
    message: str
    endpoints: int = 0
    fetched: int = 0  # endpoints whose details were read (new or changed)
    retry_after: float | None = None


def run_sweep(workspace_id: int) -> SweepResult | None:
    """Claim and sweep one workspace, record its status and schedule the next sweep."""
    workspace = claim(workspace_id)
    if workspace is None:
        return None
    try:
        result = sweep(workspace)
    except Exception as exc:  # noqa: BLE001 - recorded on the workspace; the next sweep tries again
        log.exception("sweep of workspace %s failed", workspace.name)
        result = SweepResult(False, f"the poll failed: {type(exc).__name__}: {exc}")
    finish(workspace, result)
    return result


def finish(workspace: Workspace, result: SweepResult) -> None:
    workspace_services.record_check(
        workspace_id=workspace.id, result=remote_client.CheckResult(result.ok, result.message)
    )
    now = timezone.now()
    failures = 0 if result.ok else workspace.poll_failures + 1
    wait = backoff_seconds(failures)
    if result.retry_after is not None:
        wait = max(wait, result.retry_after)
    updates: dict[str, Any] = {"poll_failures": failures, "next_poll_at": now + timedelta(seconds=wait)}
    if result.ok:
        updates["last_sweep_ok_at"] = now
    Workspace.objects.filter(id=workspace.id).update(**updates)


# --- the sweep ----------------------------------------------------------------------------------


class _Deadline(Exception):
    pass


def sweep(workspace: Workspace) -> SweepResult:
    try:
        token = workspace_services.token_of(workspace)
    except DomainError:
        return SweepResult(False, "Its token is no longer in the secrets store: give it again (update)")
    deadline = time.monotonic() + deadline_seconds()
    try:
        client = remote_client.workspace_client(host=workspace.host, token=token, for_poll=True)
        listed = list(client.serving_endpoints.list())
    except Exception as exc:  # noqa: BLE001 - a status for the admin
        return _failure(workspace, token, exc)

    now = timezone.now()
    known = {e.name: e for e in Endpoint.fleet.filter(workspace=workspace)}
    seen: set[str] = set()
    fetched = 0
    problems: list[str] = []
    try:
        for summary in listed:
            name = summary.name or ""
            if not name or len(name) > 255 or name in seen:
                continue
            seen.add(name)
            endpoint = known.get(name)
            if endpoint is None or _changed(endpoint, summary):
                _check_deadline(deadline)
                detail = client.serving_endpoints.get(name)
                endpoint = store_detail(workspace, detail, now=now)
                known[name] = endpoint
                fetched += 1
            else:
                Endpoint.fleet.filter(id=endpoint.id).update(remote_seen_at=now, remote_gone_at=None)
                endpoint.remote_seen_at, endpoint.remote_gone_at = now, None
        _mark_gone(workspace, [e for n, e in known.items() if n not in seen], now=now)
        names = sorted(seen)
        entities = _entity_names_of([known[name] for name in names])
        # The remote's answers are read concurrently; what they hold is stored here, in order.
        answers = fetch_answers(client, [(known[name], entities.get(known[name].id, [])) for name in names], deadline)
        for name in names:
            endpoint = known[name]
            answer = answers[endpoint.id]
            if answer.limited is not None:
                raise answer.limited
            if answer.past_deadline:
                raise _Deadline
            try:
                if isinstance(answer.export, BaseException):
                    raise answer.export
                store_export(endpoint, answer.export or "")
            except Exception as exc:  # noqa: BLE001 - one endpoint's metrics; the others go on
                problems.append(f"metrics of {name}: {remote_client.masked(token, str(exc))[:200]}")
            for entity in entities.get(endpoint.id, []):
                try:
                    for kind in (LogKind.SERVER, LogKind.BUILD):
                        text = answer.logs.get((entity, kind), "")
                        if isinstance(text, BaseException):
                            raise text
                        store_logs(endpoint, entity, kind, text)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"logs of {name}/{entity}: {remote_client.masked(token, str(exc))[:200]}")
            health_module.record_health(endpoint, compute_health(endpoint, now=timezone.now()), now=timezone.now())
    except RateLimited as exc:
        return _failure(workspace, token, exc)
    except _Deadline:
        return SweepResult(
            False,
            f"{workspace.host}: the sweep ran past its {deadline_seconds():g} s deadline; the rest waits for the next one",
            endpoints=len(seen),
            fetched=fetched,
        )
    count = len(seen)
    message = f"{count} serving endpoint{'' if count == 1 else 's'}"
    if problems:
        message += f" ({len(problems)} read(s) failed: {'; '.join(problems)[:400]})"
    return SweepResult(True, remote_client.masked(token, message), endpoints=count, fetched=fetched)


def _failure(workspace: Workspace, token: str, exc: BaseException) -> SweepResult:
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    message = remote_client.masked(token, remote_client.describe_failure(workspace.host, exc))
    return SweepResult(False, message, retry_after=retry_after)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _Deadline


def _state_of(summary: Any) -> dict[str, Any]:
    state = summary.state
    return {
        "ready": state.ready.value if state is not None and state.ready is not None else "",
        "config_update": state.config_update.value if state is not None and state.config_update is not None else "",
    }


def _changed(endpoint: Endpoint, summary: Any) -> bool:
    """Whether the list shows a change since the details were read (or they never were)."""
    stored = endpoint.remote_state or {}
    if endpoint.active_config_id is None and endpoint.pending_config_id is None:
        return True
    return (
        stored.get("last_updated_timestamp") != summary.last_updated_timestamp
        or {k: stored.get(k, "") for k in ("ready", "config_update")} != _state_of(summary)
        or (endpoint.remote_id and summary.id and endpoint.remote_id != summary.id)
        or endpoint.remote_gone_at is not None
    )


def _mark_gone(workspace: Workspace, gone: list[Endpoint], *, now: datetime) -> None:
    """Endpoints a successful list no longer has: marked, kept (their history with them)."""
    for endpoint in gone:
        if endpoint.remote_gone_at is None:
            Endpoint.fleet.filter(id=endpoint.id).update(remote_gone_at=now)
            endpoint.remote_gone_at = now
        health_module.record_health(
            endpoint,
            health_module.Health(HealthStatus.DOWN, f"no longer in workspace {workspace.name}'s list"),
            now=now,
        )


# --- details: config versions, served entities, tags ----------------------------------------------

_CONFIG_UPDATES = set(ConfigUpdate.values)


def store_detail(workspace: Workspace, detail: Any, *, now: datetime) -> Endpoint:
    """Write one endpoint's details as the remote gave them (one transaction)."""
    state = _state_of(detail)
    config = detail.config
    pending = detail.pending_config
    remote_state = {
        **state,
        "last_updated_timestamp": detail.last_updated_timestamp,
        "creation_timestamp": detail.creation_timestamp,
        "creator": (detail.creator or "")[:255],
        "config_version": config.config_version if config is not None else None,
        "pending_config_version": pending.config_version if pending is not None else None,
        "task": detail.task or "",
        "endpoint_url": getattr(detail, "endpoint_url", None) or "",
    }
    config_update = state["config_update"] if state["config_update"] in _CONFIG_UPDATES else ConfigUpdate.NOT_UPDATING
    with transaction.atomic():
        endpoint, _ = Endpoint.fleet.select_for_update().get_or_create(workspace=workspace, name=detail.name)
        endpoint.remote_id = (detail.id or "")[:128]
        endpoint.description = detail.description or ""
        endpoint.route_optimized = bool(detail.route_optimized)
        endpoint.budget_policy_id = (detail.budget_policy_id or "")[:255]
        endpoint.ai_gateway = detail.ai_gateway.as_dict() if detail.ai_gateway is not None else None
        endpoint.config_update = config_update
        endpoint.remote_state = remote_state
        endpoint.remote_seen_at = now
        endpoint.remote_gone_at = None
        endpoint.active_config = _config_version(endpoint, config) if config is not None else None
        endpoint.pending_config = _config_version(endpoint, pending) if pending is not None else None
        endpoint.save()
        EndpointTag.objects.filter(endpoint=endpoint).delete()
        EndpointTag.objects.bulk_create(
            [
                EndpointTag(endpoint=endpoint, key=(t.key or "")[:255], value=(t.value or "")[:1024])
                for t in {t.key: t for t in (detail.tags or []) if t.key}.values()
            ]
        )
    return endpoint


def _config_version(endpoint: Endpoint, config: Any) -> ConfigVersion | None:
    """The row of the remote's config version (immutable once written, as local ones are); the
    entities' states are refreshed, the one thing that moves within a version."""
    version = config.config_version
    if not isinstance(version, int) or version < 0:
        return None
    entities = list(config.served_entities or []) or list(getattr(config, "served_models", None) or [])
    row = ConfigVersion.objects.filter(endpoint=endpoint, version=version).first()
    if row is None:
        traffic = config.traffic_config.as_dict() if getattr(config, "traffic_config", None) is not None else {}
        row = ConfigVersion.objects.create(
            endpoint=endpoint, version=version, traffic_config={"routes": traffic.get("routes") or []}
        )
        ServedEntity.objects.bulk_create(
            [_entity_row(row, position, entity) for position, entity in enumerate(entities) if entity.name]
        )
    else:
        for entity in entities:
            if entity.name:
                ServedEntity.objects.filter(config_version=row, name=entity.name).update(extra=_entity_extra(entity))
    return row


def _entity_extra(entity: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    state = getattr(entity, "state", None)
    if state is not None:
        extra["state"] = state.as_dict()
    foundation = getattr(entity, "foundation_model", None)
    if foundation is not None:
        extra["foundation_model"] = foundation.as_dict()
    return extra


def _entity_row(config: ConfigVersion, position: int, entity: Any) -> ServedEntity:
    external = getattr(entity, "external_model", None)
    # Provider, model and task only: the provider config names the remote's secrets.
    external_model = (
        {"provider": external.provider.value if external.provider else "", "name": external.name, "task": external.task}
        if external is not None
        else None
    )
    workload_type: Any = getattr(entity, "workload_type", None)
    type_text = str(getattr(workload_type, "value", None) or workload_type or "CPU")
    return ServedEntity(
        config_version=config,
        position=position,
        name=entity.name[:255],
        entity_name=(getattr(entity, "entity_name", None) or getattr(entity, "model_name", None) or "")[:512],
        entity_version=str(getattr(entity, "entity_version", None) or getattr(entity, "model_version", None) or "")[
            :64
        ],
        workload_size=(getattr(entity, "workload_size", None) or "")[:32],
        workload_type=type_text[:32],
        scale_to_zero_enabled=bool(getattr(entity, "scale_to_zero_enabled", False)),
        min_provisioned_concurrency=getattr(entity, "min_provisioned_concurrency", None),
        max_provisioned_concurrency=getattr(entity, "max_provisioned_concurrency", None),
        environment_vars={},  # the remote's, with its secrets' references: not copied
        extra=_entity_extra(entity),
        external_model=external_model,
    )


def _entity_names_of(endpoints: list[Endpoint]) -> dict[str, list[str]]:
    """``_entity_names`` of many endpoints in one query."""
    config_of: dict[int, str] = {}
    for endpoint in endpoints:
        for config_id in (endpoint.active_config_id, endpoint.pending_config_id):
            if config_id is not None:
                config_of[config_id] = endpoint.id
    names: dict[str, set[str]] = {}
    for config_id, name in ServedEntity.objects.filter(
        config_version_id__in=list(config_of), external_model__isnull=True
    ).values_list("config_version_id", "name"):
        names.setdefault(config_of[config_id], set()).add(name)
    return {eid: sorted(entity_names) for eid, entity_names in names.items()}


def _entity_names(endpoint: Endpoint) -> list[str]:
    """The served entities whose logs are read: the active config's and the pending one's."""
    ids = [i for i in (endpoint.active_config_id, endpoint.pending_config_id) if i is not None]
    names = ServedEntity.objects.filter(config_version_id__in=ids, external_model__isnull=True).values_list(
        "name", flat=True
    )
    return sorted(set(names))


# --- metrics ------------------------------------------------------------------------------------

_ENTITY_LABELS = ("served_entity", "served_entity_name", "served_model_name", "served_model")
_COUNTERS = {"request_count_total": "count", "request_4xx_count_total": "4xx", "request_5xx_count_total": "5xx"}
_GAUGES = {
    "cpu_usage_percentage": "cpu",
    "mem_usage_percentage": "mem",
    "gpu_usage_percentage": "gpu",
    "provisioned_concurrent_requests_total": "concurrency",
    "replicas": "replicas",
}


def _bucket_upper(label: str) -> float:
    try:
        return float("inf") if label in ("+Inf", "Inf", "inf") else float(label)
    except ValueError:
        return float("nan")


def parse_export(text: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """An export's cumulative counters (our ``COUNTER_FIELDS`` per served entity, per-bucket like
    the gateway's) and gauges per served entity ("" is the endpoint's unattributed requests)."""
    counters: dict[str, dict[str, float]] = {}
    cumulative: dict[str, list[tuple[float, float]]] = {}
    gauges: dict[str, dict[str, float]] = {}
    for name, labels, value in metrics_module.parse_prometheus(text):
        if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite: not a count
            continue
        entity = next((labels[k] for k in _ENTITY_LABELS if k in labels), "")[:255]
        if name in _COUNTERS:
            counters.setdefault(entity, {})[_COUNTERS[name]] = max(value, 0.0)
        elif name == "request_latency_ms_sum":
            counters.setdefault(entity, {})["sum"] = max(value, 0.0)
        elif name == "request_latency_ms_bucket" and "le" in labels:
            upper = _bucket_upper(labels["le"])
            if upper == upper:
                cumulative.setdefault(entity, []).append((upper, max(value, 0.0)))
        elif name in _GAUGES and entity:
            gauges.setdefault(entity, {})[_GAUGES[name]] = value
    for entity, pairs in cumulative.items():
        pairs.sort()
        out = counters.setdefault(entity, {})
        previous = 0.0
        for label in BUCKET_LABELS:
            upper = _bucket_upper(label)
            # The remote's cumulative count at the largest bound not above ours.
            at = max((count for bound, count in pairs if bound <= upper), default=0.0)
            out[f"b{label}"] = max(at - previous, 0.0)
            previous = max(at, previous)
    return counters, gauges


# How many of a workspace's calls (metrics exports, logs) a sweep has in flight at once.
FETCH_THREADS = 8


@dataclass
class Answers:
    """What the remote answered for one endpoint: its metrics export's text and each served
    entity's log texts by (entity, kind); an exception where the call failed."""

    export: str | BaseException | None = None
    logs: dict[tuple[str, str], str | BaseException] = field(default_factory=dict)
    past_deadline: bool = False  # not every call was made: the deadline passed
    limited: RateLimited | None = None  # not every call was made: the remote answered 429


def fetch_answers(client: Any, endpoints: list[tuple[Endpoint, list[str]]], deadline: float) -> dict[str, Answers]:
    """The metrics export and the logs of each endpoint, read ``FETCH_THREADS`` calls at a time
    (one endpoint's calls in order). After a 429 or past the deadline no further call starts:
    those endpoints' answers say so and the sweep stops at the first of them."""
    limited: list[RateLimited] = []  # the first 429: no call starts after it

    def log_call(call: Any, name: str, entity: str) -> Callable[[], str]:
        return lambda: call(name, entity).logs or ""

    def fetch(endpoint: Endpoint, entities: list[str]) -> Answers:
        answer = Answers()
        calls: list[tuple[tuple[str, str] | None, Callable[[], str]]] = [
            (None, functools.partial(export_text, client, endpoint))
        ]
        for entity in entities:
            calls.append(((entity, LogKind.SERVER), log_call(client.serving_endpoints.logs, endpoint.name, entity)))
            calls.append(
                ((entity, LogKind.BUILD), log_call(client.serving_endpoints.build_logs, endpoint.name, entity))
            )
        for key, call in calls:
            if limited:
                answer.limited = limited[0]
                return answer
            if time.monotonic() > deadline:
                answer.past_deadline = True
                return answer
            try:
                result: str | BaseException = call()
            except RateLimited as exc:
                limited.append(exc)
                answer.limited = exc
                return answer
            except Exception as exc:  # noqa: BLE001 - the caller records it
                result = exc
            if key is None:
                answer.export = result
            else:
                answer.logs[key] = result
        return answer

    if not endpoints:
        return {}
    with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(endpoints))) as pool:
        futures = {endpoint.id: pool.submit(fetch, endpoint, entities) for endpoint, entities in endpoints}
        return {eid: future.result() for eid, future in futures.items()}


def export_text(client: Any, endpoint: Endpoint) -> str:
    response = client.serving_endpoints.export_metrics(endpoint.name)
    contents = response.contents
    raw = contents.read() if contents is not None else b""
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def poll_metrics(client: Any, endpoint: Endpoint) -> None:
    """One export of the remote endpoint's metrics → one 15 s point per served entity and one for
    the endpoint, as ``metrics.poll_metrics`` writes for a local one."""
    store_export(endpoint, export_text(client, endpoint))


def store_export(endpoint: Endpoint, text: str) -> None:
    """Store one metrics export's text (``poll_metrics``)."""
    counters, gauges = parse_export(text)
    ts = int(time.time()) // metrics_module.BASE_RESOLUTION * metrics_module.BASE_RESOLUTION
    cursors = {c.served_entity_name: c for c in MetricCursor.objects.filter(endpoint=endpoint, source=REMOTE_SOURCE)}
    intervals: dict[str, metrics_module.Interval] = {}
    for entity in set(counters) | set(gauges):
        interval = metrics_module.Interval()
        current = counters.get(entity, {})
        previous = cursors[entity].counters if entity in cursors else None
        # The first read of a remote sets the cursor only: its counters hold all of its history.
        if previous is not None:
            interval.add_counts(metrics_module.counter_delta(previous, current))
        values = gauges.get(entity, {})
        interval.cpu = [values["cpu"]] if "cpu" in values else []
        interval.mem = [values["mem"]] if "mem" in values else []
        interval.gpu = [values["gpu"]] if "gpu" in values else []
        interval.replicas = values.get("replicas")
        interval.concurrency = values.get("concurrency")
        intervals[entity] = interval
    total = metrics_module.Interval()
    for interval in intervals.values():
        total.add_counts(metrics_module._as_delta(interval))
        total.cpu += interval.cpu
        total.mem += interval.mem
        total.gpu += interval.gpu
        if interval.replicas is not None:
            total.replicas = (total.replicas or 0.0) + interval.replicas
        if interval.concurrency is not None:
            total.concurrency = (total.concurrency or 0.0) + interval.concurrency
    now = timezone.now()
    with transaction.atomic():
        for entity, values in counters.items():
            MetricCursor.objects.update_or_create(
                endpoint=endpoint,
                served_entity_name=entity,
                source=REMOTE_SOURCE,
                defaults={"counters": values, "read_at": now},
            )
        points = [(entity, interval) for entity, interval in intervals.items() if entity] + [("", total)]
        store.write_points(
            [
                (endpoint.id, entity, metrics_module.BASE_RESOLUTION, ts, metrics_module.interval_values(interval))
                for entity, interval in points
            ]
        )


# --- logs ---------------------------------------------------------------------------------------


def _line_hash(line: logs_module.ParsedLine) -> str:
    return hashlib.sha256(f"{line.replica}|{line.level}|{line.message}".encode()).hexdigest()[:16]


def new_lines(text: str, cursor: dict[str, Any] | None) -> tuple[list[logs_module.ParsedLine], dict[str, Any] | None]:
    """The lines of a remote's log text not stored yet, and the cursor after them.

    A remote answers its recent log (not an offset), so the cursor is the newest timestamp stored
    and the hashes of the lines stored at it: later lines are new, lines at it are new unless
    their hash is known, older ones are not. Lines before the first timestamped one have no time
    and are skipped (the next answer starts later in the log anyway).
    """
    if not text.strip():
        return [], cursor
    parsed = [
        line
        for line in logs_module.parse_chunk(text.encode("utf-8", errors="replace"), previous=None, now=_EPOCH)
        if line.ts != _EPOCH
    ][-MAX_LOG_LINES_PER_READ:]
    since = logs_module.parse_timestamp(cursor["ts"]) if cursor and cursor.get("ts") else None
    known = set(cursor.get("tail") or []) if cursor else set()
    fresh = [
        line
        for line in parsed
        if since is None or line.ts > since or (line.ts == since and _line_hash(line) not in known)
    ]
    if not fresh:
        return [], cursor
    newest = max(line.ts for line in fresh)
    tail = [_line_hash(line) for line in parsed if line.ts == newest]
    if since is not None and newest == since:
        tail = list(known | set(tail))
    return fresh, {"ts": newest.isoformat(), "tail": tail[-TAIL_HASHES:]}


def poll_logs(client: Any, endpoint: Endpoint, entity: str) -> int:
    """New lines of one served entity's server and build logs → ``LogLine`` rows."""
    stored = 0
    for kind, call in (
        (LogKind.SERVER, client.serving_endpoints.logs),
        (LogKind.BUILD, client.serving_endpoints.build_logs),
    ):
        stored += store_logs(endpoint, entity, kind, call(endpoint.name, entity).logs or "")
    return stored


def store_logs(endpoint: Endpoint, entity: str, kind: str, text: str) -> int:
    """Store the new lines of one log's text as the remote answered it (``poll_logs``)."""
    key = f"{entity}/{kind}"
    cursors = dict(endpoint.remote_cursors or {})
    lines, cursor = new_lines(text, cursors.get(key))
    if not lines:
        return 0
    with transaction.atomic():
        locked = Endpoint.fleet.select_for_update().only("id", "remote_cursors").get(id=endpoint.id)
        if (locked.remote_cursors or {}).get(key) != cursors.get(key):
            return 0  # an overlapping sweep stored them first
        LogLine.objects.bulk_create(
            [
                LogLine(
                    endpoint_id=endpoint.id,
                    served_entity_name=entity,
                    kind=kind,
                    replica=line.replica,
                    ts=line.ts,
                    level=line.level,
                    message=line.message,
                )
                for line in lines
            ]
        )
        cursors[key] = cursor
        Endpoint.fleet.filter(id=endpoint.id).update(remote_cursors=cursors)
    endpoint.remote_cursors = cursors
    return len(lines)


# --- health -------------------------------------------------------------------------------------


def compute_health(endpoint: Endpoint, *, now: datetime) -> health_module.Health:
    """A remote endpoint's health from what its remote says and its newest metrics."""
    if endpoint.remote_gone_at is not None:
        return health_module.Health(HealthStatus.DOWN, "no longer in its workspace's list")
    state = endpoint.remote_state or {}
    ready, update = state.get("ready", ""), state.get("config_update", "")
    if ready != "READY":
        detail = f" (config update {update.lower().replace('_', ' ')})" if update and update != "NOT_UPDATING" else ""
        return health_module.Health(HealthStatus.DOWN, f"the remote says it is not ready{detail}")
    problems: list[str] = []
    if update == ConfigUpdate.UPDATE_FAILED:
        problems.append("the remote's last config update failed")
    problems += health_module._metric_problems(endpoint, now=now)
    if problems:
        return health_module.Health(HealthStatus.DEGRADED, "; ".join(problems))
    return health_module.Health(HealthStatus.HEALTHY, "")
