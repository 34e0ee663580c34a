"""Reads: querysets shaped for the pages and the API, with the prefetching they need.

One module per area: endpoints, change requests, the audit log, and the fleet list. The first three
serve the pages, the API and the CLI alike, and this package re-exports their reads, so callers write
``selectors.endpoint_list()`` wherever it lives; the fleet list's reads come with the query and row
types its page shares with them, and are imported from ``selectors.fleet``."""

from endpoints_app.selectors.audit import audit_event_export, audit_event_page
from endpoints_app.selectors.changes import change_request_for, change_requests_for
from endpoints_app.selectors.endpoints import (
    endpoint_by_name,
    endpoint_detail,
    endpoint_is_ready,
    endpoint_list,
    served_entity_for_logs,
)

__all__ = [
    "audit_event_export",
    "audit_event_page",
    "change_request_for",
    "change_requests_for",
    "endpoint_by_name",
    "endpoint_detail",
    "endpoint_is_ready",
    "endpoint_list",
    "served_entity_for_logs",
]
