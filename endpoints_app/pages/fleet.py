"""The fleet list: every endpoint the user may see, searched, filtered, sorted and paginated in SQL.

A page costs the same dozen queries whatever the fleet's size or the page size:

1. the count, then the page's endpoint ids in order: narrow queries that carry only what the
   filters and the sort need (state, a recent metric, the last poll: correlated subqueries);
2. those endpoints in full (state and last poll annotated), with one prefetch each for tags and
   the served entities of the active and pending configs;
3. one aggregate query for every row's sparkline and its recent request rate, error rate and
   p99 latency (1 min rollups for the older part of the hour, 15 s points for the rest);
4. the owner and workspace choices (one query) and the tag choices of the filter form (full page only).

Every workspace's endpoints are listed (issue 16): remote ones, polled by ``monitoring.remote``,
show their workspace, a "stale" badge when their data may be out of date, and link to their page
under ``/workspaces/<name>/endpoints/``; a user sees the workspaces granted to them only.

The results table is also served alone (``HX-Target: fleet-results``), so htmx can refresh it
every few seconds while the tab is visible without re-rendering the filters.

The queries are in ``selectors.fleet``, the rows' cells in ``fleet_render``; this module is the view.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, path, reverse

from endpoints_app import access
from endpoints_app.models import HealthStatus
from endpoints_app.pages import fleet_render
from endpoints_app.selectors.fleet import (
    PAGE_SIZES,
    RECENT_SECONDS,
    SPARK_STEP,
    STATES,
    FleetQuery,
    FleetRows,
    filter_choices,
    matching_endpoints,
    page_metrics,
)

if TYPE_CHECKING:
    from endpoints_app.selectors.fleet import FleetEndpoint


def _create_url(user: Any) -> str | None:
    """The create form's address, for those who may create (the form lives in edit.py)."""
    if access.role_of(user) not in access.CREATE_ROLES:
        return None
    try:
        return reverse("endpoint_new")
    except NoReverseMatch:
        return None


@login_required
def endpoint_list(request: HttpRequest) -> HttpResponse:
    now = time.time()
    moment = datetime.fromtimestamp(now, tz=UTC)
    query = FleetQuery.parse(request.GET)
    rows_in_order = FleetRows(matching_endpoints(request.user, query, now=now))
    paginator: Paginator[FleetEndpoint] = Paginator(
        rows_in_order,  # type: ignore[arg-type]  # Paginator only counts and slices it; the stub also wants iteration
        query.per_page,
    )
    page = paginator.get_page(query.page)
    rows = list(page.object_list)
    metrics = page_metrics([e.id for e in rows], now=now) if rows else {}
    context: dict[str, Any] = {
        "nav": "endpoints",
        "query": query,
        "rows": [fleet_render.row(e, metrics.get(e.id), now=moment) for e in rows],
        "page": page,
        "pages": fleet_render.page_links(page, query) if page.paginator.num_pages > 1 else [],
        "columns": fleet_render.columns(query),
        "self_url": "?" + query.querystring(),
        "refresh_seconds": 15,
        "recent_minutes": RECENT_SECONDS // 60,
        "spark_step_minutes": SPARK_STEP // 60,
        "create_url": _create_url(request.user),
    }
    response: HttpResponse
    if request.headers.get("HX-Target") == "fleet-results":
        response = render(request, "dashboard/_fleet_results.html", context)
    else:
        owners, tags, workspaces = filter_choices(request.user)
        context.update(
            {
                "states": STATES.items(),
                "healths": HealthStatus.choices,
                "owners": owners,
                "tags": tags,
                "page_sizes": PAGE_SIZES,
                "workspaces": workspaces,
            }
        )
        response = render(request, "dashboard/endpoint_list.html", context)
    response["Vary"] = "HX-Request, HX-Target, Cookie"
    return response


urlpatterns = [path("", endpoint_list, name="endpoint_list")]
