from __future__ import annotations

from django.contrib import admin
from django.urls import path

from endpoints_app.api import (
    ai_gateway_views,
    alerts_views,
    audit_views,
    changes_views,
    endpoint_settings_views,
    fleet_views,
    logs_views,
    metrics_views,
    oauth_views,
    openapi_views,
    payloads_views,
    permissions_views,
    remote_changes_views,
    rollout_plans_views,
    scim_views,
    secrets_views,
    service_principals_views,
    sso_views,
    usage_views,
    users_views,
    workspaces_views,
)
from endpoints_app.api import views as api
from endpoints_app.pages import urls as pages

# JSON for /api/ and /serving-endpoints/, the dashboard's error page for everything else.
handler400 = "endpoints_app.pages.errors.bad_request_handler"
handler403 = "endpoints_app.pages.errors.forbidden_handler"
handler404 = "endpoints_app.pages.errors.not_found_handler"
handler500 = "endpoints_app.pages.errors.server_error_handler"

EP = "api/2.0/serving-endpoints"

urlpatterns = [
    path("admin/", admin.site.urls),
    path(".well-known/databricks-config", api.WellKnownConfigView.as_view()),
    path(EP, api.EndpointListView.as_view()),
    path(f"{EP}/", api.EndpointListView.as_view()),  # mlflow's deployment client adds the slash
    path(f"{EP}/<str:name>", api.EndpointDetailView.as_view()),  # POST …/pt: provisioned throughput, refused
    path(f"{EP}/pt/<str:name>/config", api.ProvisionedThroughputConfigView.as_view()),
    path("api/2.0/external-function", api.ExternalFunctionView.as_view()),
    path(f"{EP}/<str:name>/config", api.EndpointConfigView.as_view()),
    path(f"{EP}/<str:name>/tags", api.EndpointTagsView.as_view()),
    path(f"{EP}/<str:name>/openapi", api.EndpointOpenApiView.as_view()),
    path(f"{EP}/<str:name>/served-models/<str:served_model_name>/logs", api.ServedModelLogsView.as_view()),
    path(f"{EP}/<str:name>/served-models/<str:served_model_name>/build-logs", api.ServedModelBuildLogsView.as_view()),
    path("api/2.0/modelfleet/registered-models", api.RegisteredModelListView.as_view()),
    path("api/2.0/modelfleet/registered-models/upload", api.RegisteredModelUploadView.as_view()),
]
urlpatterns += (
    pages.urlpatterns
    + changes_views.urlpatterns
    + users_views.urlpatterns
    + audit_views.urlpatterns
    + permissions_views.urlpatterns
    + metrics_views.urlpatterns
    + logs_views.urlpatterns
    + alerts_views.urlpatterns
    + payloads_views.urlpatterns
    + secrets_views.urlpatterns
    + service_principals_views.urlpatterns
    + usage_views.urlpatterns
    + ai_gateway_views.urlpatterns
    + openapi_views.urlpatterns
    + endpoint_settings_views.urlpatterns
    + oauth_views.urlpatterns
    + scim_views.urlpatterns
    + sso_views.urlpatterns
    + workspaces_views.urlpatterns
    + fleet_views.urlpatterns
    + remote_changes_views.urlpatterns
    + rollout_plans_views.urlpatterns
)
