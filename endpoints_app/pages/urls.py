"""All dashboard page routes, gathered from the page modules."""

from __future__ import annotations

from endpoints_app.pages import (
    account,
    ai_gateway,
    approvals,
    audit,
    edit,
    endpoint,
    fleet,
    models,
    remote_endpoint,
    rollout_plans,
    secrets,
    service_principals,
    sso,
    workspaces,
)

urlpatterns = (
    account.urlpatterns
    + fleet.urlpatterns
    + endpoint.urlpatterns
    + edit.urlpatterns
    + ai_gateway.urlpatterns
    + models.urlpatterns
    + approvals.urlpatterns
    + audit.urlpatterns
    + secrets.urlpatterns
    + service_principals.urlpatterns
    + sso.urlpatterns
    + workspaces.urlpatterns
    + remote_endpoint.urlpatterns
    + rollout_plans.urlpatterns
)
