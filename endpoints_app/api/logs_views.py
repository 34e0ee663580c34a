"""The log-lines API: search, filter and page through the log lines the poller stored.

``GET /api/2.0/modelfleet/serving-endpoints/<name>/log-lines`` answers
``{"lines": [{"ts", "level", "served_model_name", "replica", "kind", "message"}], "next_page_token"}``
(``ts`` in epoch milliseconds; ``next_page_token`` null on the last page). The Databricks routes
``…/served-models/<name>/logs`` and ``/build-logs`` stay as they are: they read the files.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.http import QueryDict
from django.urls import URLPattern, path
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints_app.api.serializers import ms
from endpoints_app.api.views import ApiView
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import LogKind, LogLine, PermissionLevel
from endpoints_app.monitoring import logs

MAX_LIMIT = 2000
DEFAULT_LIMIT = 200
MAX_SEARCH_CHARS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LogLinesView(ApiView):
    def get(self, request: Request, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        page = logs.log_lines(endpoint=endpoint, query=parse_log_query(request.query_params))
        return Response(
            {"lines": [serialize_log_line(line) for line in page.lines], "next_page_token": page.next_page_token}
        )


def serialize_log_line(line: LogLine) -> dict[str, Any]:
    return {
        "ts": ms(line.ts),
        "level": line.level,
        "served_model_name": line.served_entity_name,
        "replica": line.replica,
        "kind": line.kind,
        "message": line.message,
    }


def parse_log_query(params: QueryDict) -> logs.LogQuery:
    """The query string as a ``LogQuery``; a bad value is a 400 naming its parameter."""
    descending = _choice(params, "order", ("desc", "asc"), "desc") == "desc"
    level = params.get("level") or None
    token = params.get("page_token") or None
    query = logs.LogQuery(
        kind=_choice(params, "kind", tuple(LogKind.values), LogKind.SERVER),
        served_model=params.get("served_model") or None,
        q=_search(params),
        min_level=_level(level) if level else None,
        since=_epoch_ms_param(params, "since"),
        until=_epoch_ms_param(params, "until"),
        limit=_limit(params),
        descending=descending,
        after=logs.decode_page_token(token, descending=descending) if token else None,
    )
    if query.since is not None and query.until is not None and query.until < query.since:
        raise InvalidParameterValue("until must not be before since")
    return query


def _choice(params: QueryDict, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name) or default
    if value not in allowed:
        raise InvalidParameterValue(f"{name} must be one of {', '.join(allowed)}, not '{value}'")
    return value


def _level(value: str) -> str:
    level = value.upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
    if level not in logs.LEVELS:
        raise InvalidParameterValue(f"level must be one of {', '.join(logs.LEVELS)}, not '{value}'")
    return level


def _search(params: QueryDict) -> str:
    q = params.get("q") or ""
    if len(q) > MAX_SEARCH_CHARS:
        raise InvalidParameterValue(f"q must be at most {MAX_SEARCH_CHARS} characters")
    return q


def _int_param(params: QueryDict, name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidParameterValue(f"{name} must be an integer, not '{value}'") from None


def _epoch_ms_param(params: QueryDict, name: str) -> datetime | None:
    ms = _int_param(params, name)
    if ms is None:
        return None
    try:
        if ms < 0:
            raise ValueError
        return _EPOCH + timedelta(milliseconds=ms)
    except (ValueError, OverflowError):
        raise InvalidParameterValue(f"{name} must be a time in epoch milliseconds, not '{ms}'") from None


def _limit(params: QueryDict) -> int:
    limit = _int_param(params, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameterValue(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit


urlpatterns: list[URLPattern] = [
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/log-lines", LogLinesView.as_view()),
]
