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

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Generator
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
from endpoints_app.monitoring import bulk
from endpoints_app.monitoring import health as health_module
from endpoints_app.monitoring import logs as logs_module
from endpoints_app.monitoring import metrics as metrics_module
from endpoints_app.remote import client as remote_client
from endpoints_app.remote.transport import RateLimited, ResponseTooLarge
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
    fetched: set[str] = set()  # names whose details were read this sweep
    unchanged: list[str] = []  # ids of the others
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
                fetched.add(name)
            else:
                unchanged.append(endpoint.id)
                endpoint.remote_seen_at, endpoint.remote_gone_at = now, None
        for part in _parts(unchanged, STORE_BATCH):
            Endpoint.fleet.filter(id__in=part).update(remote_seen_at=now, remote_gone_at=None)
        _mark_gone(workspace, [e for n, e in known.items() if n not in seen], now=now)
        names = sorted(seen)
        entities = _entity_names_of([known[name] for name in names])
        build = {known[name].id for name in names if name in fetched or build_logs_due(known[name], now=now)}
        # The remote's answers are read concurrently; what they hold is stored here, in bulk, in
        # the order of the names, up to the first endpoint a 429 or the deadline left unread.
        answers: dict[str, Answers] = {}
        complete: list[Endpoint] = []
        stop: BaseException | None = None
        reads = iter_answers(
            client, [(known[name], entities.get(known[name].id, [])) for name in names], deadline, build=build
        )
        with contextlib.closing(reads):  # on the way out, calls not started yet never start
            for endpoint, answer in reads:
                if answer.limited is not None or answer.past_deadline:
                    stop = answer.limited or _Deadline()
                    break
                answers[endpoint.id] = answer
                complete.append(endpoint)
                if len(complete) == STORE_BATCH:
                    problems += store_answers(complete, answers, entities, token=token)
                    complete, answers = [], {}
        problems += store_answers(complete, answers, entities, token=token)  # the last part, or all before a stop
        if stop is not None:
            raise stop
    except RateLimited as exc:
        return _failure(workspace, token, exc)
    except _Deadline:
        return SweepResult(
            False,
            f"{workspace.host}: the sweep ran past its {deadline_seconds():g} s deadline; the rest waits for the next one",
            endpoints=len(seen),
            fetched=len(fetched),
        )
    count = len(seen)
    message = f"{count} serving endpoint{'' if count == 1 else 's'}"
    if problems:
        message += f" ({len(problems)} read(s) failed: {'; '.join(problems)[:400]})"
    return SweepResult(True, remote_client.masked(token, message), endpoints=count, fetched=len(fetched))


def _failure(workspace: Workspace, token: str, exc: BaseException) -> SweepResult:
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    message = remote_client.masked(token, remote_client.describe_failure(workspace.host, exc))
    return SweepResult(False, message, retry_after=retry_after)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _Deadline


# Endpoints stored per transaction (and per bulk UPDATE) in a sweep.
STORE_BATCH = 500
# An endpoint's build logs are read once in this many sweeps (its turn set by its id), and in any
# sweep that read its details (new, or changed since the last): a build log only grows while the
# remote builds a served entity, which changes the endpoint's state.
BUILD_LOG_EVERY_SWEEPS = 20
# The longest metrics export read from a remote (the SDK streams that answer; see export_text).
MAX_EXPORT_BYTES = 8 * 1024 * 1024


def _parts(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def build_logs_due(endpoint: Endpoint, *, now: datetime) -> bool:
    """Whether this sweep reads the endpoint's build logs although its details did not change: its
    turn (once in ``BUILD_LOG_EVERY_SWEEPS`` sweeps), or its remote says it is not ready or is
    updating."""
    state = endpoint.remote_state or {}
    if state.get("ready") != "READY" or state.get("config_update") not in ("", "NOT_UPDATING"):
        return True
    sweep_number = int(now.timestamp() // interval_seconds())
    turn = int(hashlib.blake2b(endpoint.id.encode(), digest_size=4).hexdigest(), 16)
    return (sweep_number + turn) % BUILD_LOG_EVERY_SWEEPS == 0


def store_answers(
    endpoints: list[Endpoint], answers: dict[str, Answers], entities: dict[str, list[str]], *, token: str
) -> list[str]:
    """Store what the remote answered for these endpoints (metrics, logs, then their health) in
    bulk. Returns what could not be read or stored, a line per endpoint and served entity."""
    if not endpoints:
        return []
    problems: list[str] = []
    exports: list[tuple[Endpoint, str]] = []
    logs: list[tuple[Endpoint, str, str, str]] = []
    for endpoint in endpoints:
        answer = answers[endpoint.id]
        if isinstance(answer.export, BaseException):
            problems.append(f"metrics of {endpoint.name}: {remote_client.masked(token, str(answer.export))[:200]}")
        else:
            exports.append((endpoint, answer.export or ""))
        for entity in entities.get(endpoint.id, []):
            for kind in (LogKind.SERVER, LogKind.BUILD):
                text = answer.logs.get((entity, kind))
                if isinstance(text, BaseException):
                    problems.append(f"logs of {endpoint.name}/{entity}: {remote_client.masked(token, str(text))[:200]}")
                elif text is not None:  # None: not read in this sweep (build logs between turns)
                    logs.append((endpoint, entity, kind, text))
    problems += [remote_client.masked(token, problem)[:250] for problem in store_exports(exports)]
    store_logs_many(logs)
    now = timezone.now()
    health_module.record_health_batch(compute_healths(endpoints, now=now), now=now)
    return problems


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
    if not gone:
        return
    for part in _parts([e.id for e in gone if e.remote_gone_at is None], STORE_BATCH):
        Endpoint.fleet.filter(id__in=part).update(remote_gone_at=now)
    for endpoint in gone:
        endpoint.remote_gone_at = endpoint.remote_gone_at or now
    down = health_module.Health(HealthStatus.DOWN, f"no longer in workspace {workspace.name}'s list")
    health_module.record_health_batch([(endpoint, down) for endpoint in gone], now=now)


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


def fetch_answers(
    client: Any, endpoints: list[tuple[Endpoint, list[str]]], deadline: float, *, build: set[str] | None = None
) -> dict[str, Answers]:
    """``iter_answers`` all read, by endpoint id."""
    return {endpoint.id: answer for endpoint, answer in iter_answers(client, endpoints, deadline, build=build)}


def iter_answers(
    client: Any, endpoints: list[tuple[Endpoint, list[str]]], deadline: float, *, build: set[str] | None = None
) -> Generator[tuple[Endpoint, Answers]]:
    """The metrics export and the logs of each endpoint, read ``FETCH_THREADS`` calls at a time
    (one endpoint's calls in order), given in the endpoints' order as they come: the caller stores
    the first ones while the later ones are read. Build logs only of the endpoints in ``build``
    (by id; None: all). After a 429 or past the deadline no further call starts: those endpoints'
    answers say so and the sweep stops at the first of them."""
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
            if build is None or endpoint.id in build:
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
        return
    pool = ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(endpoints)))
    try:
        futures = [(endpoint, pool.submit(fetch, endpoint, entities)) for endpoint, entities in endpoints]
        for endpoint, future in futures:
            yield endpoint, future.result()
    finally:  # the caller stopped early: calls not started yet never start
        pool.shutdown(wait=True, cancel_futures=True)


def export_text(client: Any, endpoint: Endpoint) -> str:
    """The endpoint's metrics export, at most ``MAX_EXPORT_BYTES`` of it. The SDK hands this answer
    over unread (the transport's bound on answers does not apply to it), so a remote cannot fill
    the worker's memory with it."""
    response = client.serving_endpoints.export_metrics(endpoint.name)
    contents = response.contents
    raw = contents.read(MAX_EXPORT_BYTES + 1) if contents is not None else b""
    if len(raw) > MAX_EXPORT_BYTES:
        raise ResponseTooLarge(f"its metrics export is longer than {MAX_EXPORT_BYTES} bytes")
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def store_exports(items: list[tuple[Endpoint, str]]) -> list[str]:
    """Store metrics exports' texts: one 15 s point per served entity and one for the endpoint,
    as ``metrics.poll_metrics_batch`` writes for local ones, for any number of endpoints in one
    cursor query and one transaction. Returns what could not be stored, a line per endpoint."""
    if not items:
        return []
    ts = int(time.time()) // metrics_module.BASE_RESOLUTION * metrics_module.BASE_RESOLUTION
    cursors: dict[tuple[str, str], dict[str, float]] = {
        (eid, entity): counters
        for eid, entity, counters in MetricCursor.objects.filter(
            **bulk.in_ids("endpoint_id", [e.id for e, _ in items], "varchar"), source=REMOTE_SOURCE
        ).values_list("endpoint_id", "served_entity_name", "counters")
    }
    now = timezone.now()
    cursor_rows: list[list[Any]] = []
    points: list[tuple[str, str, int, int, dict[str, Any]]] = []
    problems: list[str] = []
    for endpoint, text in items:
        try:
            counters, gauges = parse_export(text)
        except Exception as exc:  # noqa: BLE001 - one endpoint's export; the others go on
            problems.append(f"metrics of {endpoint.name}: {type(exc).__name__}: {exc}")
            continue
        cursor_rows += [[endpoint.id, entity, REMOTE_SOURCE, values, now] for entity, values in counters.items()]
        points += [
            (endpoint.id, entity, metrics_module.BASE_RESOLUTION, ts, metrics_module.interval_values(interval))
            for entity, interval in _export_intervals(endpoint.id, counters, gauges, cursors)
        ]

    metrics_module.store_cursors_and_points(cursor_rows, points, [e.id for e, _ in items])
    return problems


def _export_intervals(
    endpoint_id: str,
    counters: dict[str, dict[str, float]],
    gauges: dict[str, dict[str, float]],
    cursors: dict[tuple[str, str], dict[str, float]],
) -> list[tuple[str, metrics_module.Interval]]:
    """One export's intervals: each served entity's (counts since its cursor, gauges) and the
    endpoint's total ("")."""
    intervals: dict[str, metrics_module.Interval] = {}
    for entity in set(counters) | set(gauges):
        interval = metrics_module.Interval()
        previous = cursors.get((endpoint_id, entity))
        # The first read of a remote sets the cursor only: its counters hold all of its history.
        if previous is not None:
            interval.add_counts(metrics_module.counter_delta(previous, counters.get(entity, {})))
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
    return [(entity, interval) for entity, interval in intervals.items() if entity] + [("", total)]


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


_LINE_COLUMNS = ("endpoint_id", "served_entity_name", "kind", "replica", "ts", "level", "message")


def store_logs(endpoint: Endpoint, entity: str, kind: str, text: str) -> int:
    """Store the new lines of one log's text as the remote answered it (``store_logs_many``)."""
    return store_logs_many([(endpoint, entity, kind, text)])


def store_logs_many(items: list[tuple[Endpoint, str, str, str]]) -> int:
    """Store the new lines of log texts ``(endpoint, served entity, kind, text)`` as the remote
    answered them: one transaction for all, the cursors (``Endpoint.remote_cursors``) of the
    endpoints with new lines locked and compared first (what an overlapping sweep stored first is
    not stored twice). Returns the number of lines stored."""
    read: dict[str, dict[str, Any]] = {}  # endpoint id -> its cursors as read
    fresh: dict[str, dict[str, tuple[list[logs_module.ParsedLine], dict[str, Any] | None]]] = {}
    endpoints: dict[str, Endpoint] = {}
    for endpoint, entity, kind, text in items:
        key = f"{entity}/{kind}"
        cursors = read.setdefault(endpoint.id, dict(endpoint.remote_cursors or {}))
        lines, cursor = new_lines(text, cursors.get(key))
        if lines:
            fresh.setdefault(endpoint.id, {})[key] = (lines, cursor)
            endpoints[endpoint.id] = endpoint
    if not fresh:
        return 0
    stored = 0
    with transaction.atomic():
        locked = dict(
            Endpoint.fleet.select_for_update(no_key=True)  # see health.record_health_batch
            .filter(id__in=sorted(fresh))
            .order_by("id")
            .values_list("id", "remote_cursors")
        )
        rows: list[list[Any]] = []
        moved: list[list[Any]] = []  # endpoint id, its cursors after
        for eid, keys in fresh.items():
            if eid not in locked:
                continue  # deleted meanwhile
            current = dict(locked[eid] or {})
            for key, (lines, cursor) in keys.items():
                if current.get(key) != read[eid].get(key):
                    continue  # an overlapping sweep stored them first
                entity, _, kind = key.rpartition("/")
                rows += [[eid, entity, kind, line.replica, line.ts, line.level, line.message] for line in lines]
                current[key] = cursor
            endpoints[eid].remote_cursors = current
            moved.append([eid, current])
        bulk.insert_rows(LogLine._meta.db_table, _LINE_COLUMNS, rows)
        bulk.update_rows(
            Endpoint._meta.db_table, [("id", "varchar"), ("cursors", "jsonb")], moved, "remote_cursors = v.cursors"
        )
        stored = len(rows)
    return stored


# --- health -------------------------------------------------------------------------------------


def compute_health(endpoint: Endpoint, *, now: datetime) -> health_module.Health:
    """A remote endpoint's health from what its remote says and its newest metrics."""
    return compute_healths([endpoint], now=now)[0][1]


def compute_healths(endpoints: list[Endpoint], *, now: datetime) -> list[tuple[Endpoint, health_module.Health]]:
    """``compute_health`` of many endpoints, their metrics read in two queries."""
    metric_problems = health_module._metric_problems_of([e.id for e in endpoints], now=now)
    return [(endpoint, _health_of(endpoint, metric_problems.get(endpoint.id, []))) for endpoint in endpoints]


def _health_of(endpoint: Endpoint, metric_problems: list[str]) -> health_module.Health:
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
    problems += metric_problems
    if problems:
        return health_module.Health(HealthStatus.DEGRADED, "; ".join(problems))
    return health_module.Health(HealthStatus.HEALTHY, "")
