from django.apps import AppConfig


class EndpointsAppConfig(AppConfig):
    name = "endpoints_app"
    verbose_name = "Serving endpoints"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_login_failed

        from endpoints_app import audit

        user_login_failed.connect(audit.on_failed_login, dispatch_uid="modelfleet-audit-failed-login")
