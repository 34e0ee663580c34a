"""The fleet list's reads: the endpoints that match a query, in its order, read a page at a time;
every row's recent numbers in one aggregate query; the filter form's choices.

The page's query budget, which these reads keep, is stated in pages/fleet.py's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import (
    BigIntegerField,
    Case,
    Exists,
    F,
    Max,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, NullIf
from django.http import QueryDict

from endpoints_app import access
from endpoints_app.errors import PermissionDenied, ResourceDoesNotExist
from endpoints_app.models import (
    ConfigUpdate,
    DeploymentState,
    Endpoint,
    EndpointTag,
    HealthStatus,
    MetricPoint,
    PermissionLevel,
    PollTarget,
    ServedEntity,
    Workspace,
)
from endpoints_app.models.workspaces import LOCAL_WORKSPACE

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

# The sparkline covers the last hour in 30 buckets of 2 minutes.
SPARK_SECONDS = 3600
SPARK_BUCKETS = 30
SPARK_STEP = SPARK_SECONDS // SPARK_BUCKETS
# The numbers in a row (request rate, error rate, p99) cover the last 10 minutes.
RECENT_SECONDS = 600
POINT_RESOLUTION = 15
ROLLUP_RESOLUTION = 60
# The newest buckets come from the 15 s points: they cover RECENT_SECONDS whatever the time
# within the newest bucket, and the minutes the 1 min rollup (every 60 s) has not reached.
FINE_BUCKETS = RECENT_SECONDS // SPARK_STEP + 1
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50

# State filter keys → the badge's words; the words of "updating" and "update failed" also say
# whether the active config still serves ("Ready (Updating)" or "Not ready (Updating)").
STATES = {
    "ready": "Ready",
    "updating": "Updating",
    "update_failed": "Update failed",
    "scaled_to_zero": "Scaled to zero",
    "down": "Down",
}
SORTS = {
    "name": "name",
    "workspace": "workspace__name",
    "state": "state_key",
    "owner": "creator__username",
    "health": "health",
    "updated": "updated_at",
    "polled": "last_polled_at",
    "requests": "recent_requests",
    "errors": "recent_error_ratio",
    "p99": "recent_p99",
}
METRIC_SORTS = ("requests", "errors", "p99")


@dataclass(frozen=True)
class FleetQuery:
    """The list's query string, parsed leniently: a page link with a stale value still works."""

    q: str = ""
    workspace: str = ""  # a workspace's name ("local": this installation's endpoints)
    state: str = ""
    tag: str = ""
    owner: str = ""
    health: str = ""
    sort: str = "name"
    descending: bool = False
    page: str = "1"
    per_page: int = DEFAULT_PAGE_SIZE

    @classmethod
    def parse(cls, params: QueryDict) -> FleetQuery:
        sort = params.get("sort", "name")
        descending = sort.startswith("-")
        sort = sort.lstrip("-")
        per_page = params.get("per_page", "")
        return cls(
            q=params.get("q", "").strip()[:200],
            workspace=params.get("workspace", "").strip()[:63],
            state=params.get("state", "") if params.get("state") in STATES else "",
            tag=params.get("tag", "").strip()[:300],
            owner=params.get("owner", "").strip()[:150],
            health=params.get("health", "") if params.get("health") in HealthStatus.values else "",
            sort=sort if sort in SORTS else "name",
            descending=descending and sort in SORTS,
            page=params.get("page", "1"),
            per_page=int(per_page) if per_page.isdigit() and int(per_page) in PAGE_SIZES else DEFAULT_PAGE_SIZE,
        )

    def querystring(self, **changes: Any) -> str:
        """This query with some values changed, as a query string without defaults."""
        values = {
            "q": self.q,
            "workspace": self.workspace,
            "state": self.state,
            "tag": self.tag,
            "owner": self.owner,
            "health": self.health,
            "sort": ("-" if self.descending else "") + self.sort,
            "per_page": str(self.per_page),
            "page": self.page,
        }
        values.update({k: str(v) for k, v in changes.items()})
        defaults = {"sort": "name", "per_page": str(DEFAULT_PAGE_SIZE), "page": "1"}
        out = QueryDict(mutable=True)
        for key, value in values.items():
            if value and value != defaults.get(key):
                out[key] = value
        return out.urlencode()

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.workspace or self.state or self.tag or self.owner or self.health)


def recent_window(now: float) -> tuple[int, int]:
    """[start, end) of the sparkline in epoch seconds: whole buckets, the newest one still filling."""
    end = (int(now) // SPARK_STEP + 1) * SPARK_STEP
    return end - SPARK_SECONDS, end


class StateColumns(TypedDict):
    """What ``annotate_state`` adds to each endpoint."""

    has_unready_entity: bool
    state_key: str
    serving: bool


class RowColumns(StateColumns):
    """What a row of ``FleetRows`` carries besides the endpoint's own fields."""

    last_polled_at: datetime | None


if TYPE_CHECKING:  # django-stubs' names for "an Endpoint with these annotations" exist for the checker only
    StatedEndpoint = WithAnnotations[Endpoint, StateColumns]
    FleetEndpoint = WithAnnotations[Endpoint, RowColumns]


def annotate_state(endpoints: QuerySet[Endpoint]) -> QuerySet[StatedEndpoint]:
    """``state_key`` (see STATES) and ``serving`` (every active served entity ready) in SQL.

    ``serving`` is selectors.endpoint_is_ready written as a subquery, so the list can filter
    and sort by state without loading every endpoint's entities.
    """
    # External models need no deployment: they serve as soon as their config is active.
    unready = ServedEntity.objects.filter(
        config_version=OuterRef("active_config"), external_model__isnull=True
    ).exclude(deployment__state=DeploymentState.READY)
    # A remote endpoint (issue 16) serves when its remote says it is ready: the poller's health.
    serving = Q(active_config__isnull=False) & (
        Q(workspace__isnull=True, has_unready_entity=False)
        | Q(workspace__isnull=False, health__in=(HealthStatus.HEALTHY, HealthStatus.DEGRADED))
    )
    return endpoints.annotate(has_unready_entity=Exists(unready)).annotate(
        state_key=Case(
            When(config_update=ConfigUpdate.IN_PROGRESS, then=Value("updating")),
            When(config_update=ConfigUpdate.UPDATE_FAILED, then=Value("update_failed")),
            When(health=HealthStatus.SCALED_TO_ZERO, then=Value("scaled_to_zero")),
            When(serving & ~Q(health=HealthStatus.DOWN), then=Value("ready")),
            default=Value("down"),
        ),
        serving=Case(When(serving, then=Value(True)), default=Value(False)),
    )


def _recent_points(since: int) -> QuerySet[MetricPoint]:
    # The unique (endpoint, served entity, resolution, ts) index serves each of these subqueries.
    return MetricPoint.objects.filter(
        endpoint=OuterRef("pk"), served_entity_name="", resolution=POINT_RESOLUTION, ts__gte=since
    ).order_by()


def _annotate_sort_metric(endpoints: QuerySet[Endpoint], sort: str, since: int) -> QuerySet[Endpoint]:
    """The one recent metric the list is sorted by, as a correlated aggregate (same window as the rows)."""
    points = _recent_points(since).values("endpoint")
    if sort == "requests":
        value = points.annotate(v=Sum("request_count")).values("v")
        return endpoints.annotate(recent_requests=Subquery(value[:1]))
    if sort == "errors":
        value = points.annotate(v=Sum("count_5xx") / NullIf(Sum("request_count"), 0.0)).values("v")
        return endpoints.annotate(recent_error_ratio=Subquery(value[:1]))
    value = points.annotate(v=Max("p99_ms")).values("v")
    return endpoints.annotate(recent_p99=Subquery(value[:1]))


def _rows_base() -> QuerySet[Endpoint]:
    """Endpoints with only the columns a row shows (loading whole rows and deployments costs more
    than the queries themselves), their tags and their served entities' names."""
    entities = ServedEntity.objects.only(
        "id", "config_version_id", "position", "name", "entity_name", "entity_version", "external_model"
    ).order_by("position")
    return (
        Endpoint.fleet.select_related("creator", "active_config", "pending_config", "workspace")
        .only(
            "id",
            "name",
            "workspace__name",
            "workspace__state",
            "workspace__status_message",
            "remote_state",
            "remote_seen_at",
            "remote_gone_at",
            "health",
            "health_reason",
            "config_update",
            "creator__username",
            "active_config__version",
            "active_config__traffic_config",
            "pending_config__version",
            "pending_config__traffic_config",
        )
        .prefetch_related(
            Prefetch("tags", queryset=EndpointTag.objects.order_by("key")),
            Prefetch("active_config__served_entities", queryset=entities),
            Prefetch("pending_config__served_entities", queryset=entities),
        )
    )


def _last_polled() -> Coalesce:
    # The index on endpoint serves it: a couple of rows (one per poll kind) per endpoint. A remote
    # endpoint has no poll targets: its workspace's sweep last saw it.
    polls = PollTarget.objects.filter(endpoint=OuterRef("pk")).values("endpoint").annotate(at=Max("last_polled_at"))
    return Coalesce(Subquery(polls.values("at")[:1]), F("remote_seen_at"))


def matching_endpoints(user: Any, query: FleetQuery, *, now: float) -> QuerySet[Endpoint]:
    """The visible endpoints that match ``query``, in its order, with only what the filters and
    the sort need: the page's rows are loaded in full afterwards (``FleetRows``)."""
    endpoints = access.visible_fleet_endpoints(user, Endpoint.fleet.all())
    if query.workspace == LOCAL_WORKSPACE:
        endpoints = endpoints.filter(workspace__isnull=True)
    elif query.workspace:
        endpoints = endpoints.filter(workspace__name=query.workspace)
    if query.state or query.sort == "state":
        stated = annotate_state(endpoints)
        endpoints = stated.filter(state_key=query.state) if query.state else stated
    if query.q:
        served = ServedEntity.objects.filter(config_version=OuterRef("active_config")).filter(
            Q(name__icontains=query.q) | Q(entity_name__icontains=query.q)
        )
        endpoints = endpoints.filter(Q(name__icontains=query.q) | Exists(served))
    if query.health:
        endpoints = endpoints.filter(health=query.health)
    if query.owner:
        endpoints = endpoints.filter(creator__username=query.owner)
    if query.tag:
        key, has_value, value = query.tag.partition("=")
        tags = EndpointTag.objects.filter(endpoint=OuterRef("pk"), key=key.strip())
        if has_value:
            tags = tags.filter(value=value.strip())
        endpoints = endpoints.filter(Exists(tags))
    if query.sort in METRIC_SORTS:
        endpoints = _annotate_sort_metric(endpoints, query.sort, int(now) - RECENT_SECONDS)
    if query.sort == "polled":
        endpoints = endpoints.annotate(last_polled_at=_last_polled())
    if query.sort == "name":  # the index on name serves it: no sort of the whole fleet
        # A name may be in several workspaces: the id keeps pages stable.
        return endpoints.order_by("-name", "-id") if query.descending else endpoints.order_by("name", "id")
    order = F(SORTS[query.sort])
    first = order.desc(nulls_last=True) if query.descending else order.asc(nulls_last=True)
    return endpoints.order_by(first, "name", "id")


class FleetRows:
    """The matching endpoints as the paginator sees them, read in two steps.

    Sorting by a computed column (state, a metric) makes the database compute it for every
    matching endpoint; the columns a row shows (state, last poll, tags, entities) are computed
    for the page's endpoints only: first the page's ids in order (a narrow query), then those
    endpoints in full.
    """

    def __init__(self, matching: QuerySet[Endpoint]) -> None:
        self.matching = matching

    def count(self) -> int:
        return self.matching.count()

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, window: slice) -> list[FleetEndpoint]:
        ids = list(self.matching.values_list("id", flat=True)[window])
        if not ids:
            return []
        full = annotate_state(_rows_base()).annotate(last_polled_at=_last_polled()).filter(id__in=ids)
        by_id = {e.id: e for e in full}
        return [by_id[i] for i in ids if i in by_id]


@dataclass
class RowMetrics:
    """One row's numbers: the sparkline's buckets and the recent totals."""

    buckets: list[float | None] = field(default_factory=lambda: [None] * SPARK_BUCKETS)
    recent_requests: float = 0.0
    recent_4xx: float = 0.0
    recent_5xx: float = 0.0
    recent_p99: float | None = None
    has_points: bool = False

    @property
    def request_rate(self) -> float | None:
        return self.recent_requests / RECENT_SECONDS if self.has_points else None

    @property
    def error_pct(self) -> float | None:
        return self.recent_5xx / self.recent_requests * 100 if self.recent_requests else None

    @property
    def client_error_pct(self) -> float | None:
        return self.recent_4xx / self.recent_requests * 100 if self.recent_requests else None


def page_metrics(endpoint_ids: list[str], *, now: float) -> dict[str, RowMetrics]:
    """Every row's sparkline and recent numbers in one aggregate query (grouped by endpoint, bucket).

    The hour is read from the 1 min rollups up to ``cutoff`` and from the 15 s points after it,
    which cover the recent window and what the rollup has not reached yet: a quarter of the
    rows a read of 15 s points alone would scan.
    """
    start, end = recent_window(now)
    cutoff = end - FINE_BUCKETS * SPARK_STEP
    recent = Q(resolution=POINT_RESOLUTION, ts__gte=int(now) - RECENT_SECONDS)
    bucket = Cast((F("ts") - Value(start)) / Value(SPARK_STEP), output_field=BigIntegerField())
    rows = (
        MetricPoint.objects.filter(endpoint_id__in=endpoint_ids, served_entity_name="")
        .filter(
            Q(resolution=ROLLUP_RESOLUTION, ts__gte=start, ts__lt=cutoff)
            | Q(resolution=POINT_RESOLUTION, ts__gte=cutoff, ts__lt=end)
        )
        .annotate(bucket=bucket)
        .values("endpoint_id", "bucket")
        .annotate(
            requests=Sum("request_count"),
            recent_requests=Sum("request_count", filter=recent),
            recent_4xx=Sum("count_4xx", filter=recent),
            recent_5xx=Sum("count_5xx", filter=recent),
            recent_p99=Max("p99_ms", filter=recent),
        )
        .order_by()
    )
    out: dict[str, RowMetrics] = {}
    for row in rows:
        metrics = out.setdefault(row["endpoint_id"], RowMetrics())
        metrics.has_points = True
        index = int(row["bucket"])
        if 0 <= index < SPARK_BUCKETS:
            metrics.buckets[index] = (row["requests"] or 0.0) / SPARK_STEP
        metrics.recent_requests += row["recent_requests"] or 0.0
        metrics.recent_4xx += row["recent_4xx"] or 0.0
        metrics.recent_5xx += row["recent_5xx"] or 0.0
        if row["recent_p99"] is not None:
            metrics.recent_p99 = max(metrics.recent_p99 or 0.0, row["recent_p99"])
    return out


def filter_choices(user: Any) -> tuple[list[str], list[str], list[str]]:
    """The filter form's owners, tags (``key`` or ``key=value``, at most 200) and workspaces
    (``local`` first) among what ``user`` may see: two queries (owners and workspaces in one)."""
    visible = access.visible_fleet_endpoints(user, Endpoint.fleet.all())
    owner_rows = (
        visible.exclude(creator=None)
        .order_by()
        .annotate(choice_kind=Value("owner"), choice=F("creator__username"))
        .values_list("choice_kind", "choice")
    )
    workspace_rows = (
        access.visible_workspaces(user, Workspace.objects.all())
        .order_by()
        .annotate(choice_kind=Value("workspace"), choice=F("name"))
        .values_list("choice_kind", "choice")
    )
    owners: set[str] = set()
    workspaces = {LOCAL_WORKSPACE}
    for kind, label in owner_rows.union(workspace_rows):
        if label:
            (owners if kind == "owner" else workspaces).add(label)
    tags = [
        f"{k}={v}" if v else k
        for k, v in EndpointTag.objects.filter(endpoint__in=visible)
        .values_list("key", "value")
        .distinct()
        .order_by("key", "value")[:200]
    ]
    return sorted(owners), tags, sorted(workspaces, key=lambda n: (n != LOCAL_WORKSPACE, n))


def fleet_endpoint(user: Any, workspace: str, name: str, *, manage: bool = False) -> Endpoint:
    """One endpoint of the fleet by workspace and name, with what its page shows, if the user may
    see it (404 otherwise): a local one as the local API finds it, a remote one if the user has a
    role in its workspace. ``manage`` (its alert rules): CAN_MANAGE on a local one, the editor role
    or higher in a remote one's workspace (403 otherwise)."""
    from_local = workspace == LOCAL_WORKSPACE
    manager = Endpoint.objects if from_local else Endpoint.fleet.filter(workspace__name=workspace)
    entities = ServedEntity.objects.select_related("deployment").order_by("position")
    endpoint = (
        manager.select_related("workspace", "creator", "active_config", "pending_config")
        .prefetch_related(
            Prefetch("tags", queryset=EndpointTag.objects.order_by("key")),
            Prefetch("active_config__served_entities", queryset=entities),
            Prefetch("pending_config__served_entities", queryset=entities),
        )
        .filter(name=name)
        .first()
    )
    if endpoint is None:
        raise ResourceDoesNotExist(f"Endpoint '{name[:255]}' does not exist in workspace '{workspace[:63]}'")
    if from_local:
        access.require(user, endpoint, PermissionLevel.CAN_MANAGE if manage else PermissionLevel.CAN_VIEW)
    elif access.require_remote_view(user, endpoint) not in access.CREATE_ROLES and manage:
        raise PermissionDenied(f"This needs the editor role or higher in workspace '{workspace}'")
    return endpoint
