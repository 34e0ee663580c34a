"""Filter sets: one per list that the API serves, shared with the page that shows the same list
(NetBox's habit), so that the two take the same parameter names, parse them the same way and pick
the same rows. No view parses a query parameter by hand.

A filter set is a Django form (``fields.FilterSet``). The page renders it (each field with its label
and inline error); the API binds it to the query string and answers the first error as
INVALID_PARAMETER_VALUE, ``"<parameter>: <message>"``. Either way a parameter that did not parse
is left out (``value`` gives its default). One module per area; this package re-exports the filter
sets, so callers write ``from endpoints_app.filters import AuditEventFilterSet``.
"""

from endpoints_app.filters.alerts import AlertEventFilterSet, HealthHistoryFilterSet
from endpoints_app.filters.audit import AuditEventFilterSet, AuditEventListFilterSet, AuditPageFilterSet
from endpoints_app.filters.changes import ChangeRequestFilterSet
from endpoints_app.filters.logs import LogLineFilterSet
from endpoints_app.filters.metrics import MetricSeriesFilterSet, ScalingDecisionFilterSet
from endpoints_app.filters.payloads import PayloadFilterSet
from endpoints_app.filters.secrets import SecretAclFilterSet, SecretKeyFilterSet, SecretScopeFilterSet
from endpoints_app.filters.tokens import TokenFilterSet
from endpoints_app.filters.usage import UsageFilterSet

__all__ = [
    "AlertEventFilterSet",
    "AuditEventFilterSet",
    "AuditEventListFilterSet",
    "AuditPageFilterSet",
    "ChangeRequestFilterSet",
    "HealthHistoryFilterSet",
    "LogLineFilterSet",
    "MetricSeriesFilterSet",
    "PayloadFilterSet",
    "ScalingDecisionFilterSet",
    "SecretAclFilterSet",
    "SecretKeyFilterSet",
    "SecretScopeFilterSet",
    "TokenFilterSet",
    "UsageFilterSet",
]
