"""All dashboard page routes, gathered from the page modules."""

from __future__ import annotations

from endpoints_app.pages import account, approvals, audit, edit, endpoint, fleet, models

urlpatterns = (
    account.urlpatterns
    + fleet.urlpatterns
    + endpoint.urlpatterns
    + edit.urlpatterns
    + models.urlpatterns
    + approvals.urlpatterns
    + audit.urlpatterns
)
