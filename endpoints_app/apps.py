from django.apps import AppConfig


class EndpointsAppConfig(AppConfig):
    name = "endpoints_app"
    verbose_name = "Serving endpoints"
    default_auto_field = "django.db.models.BigAutoField"
