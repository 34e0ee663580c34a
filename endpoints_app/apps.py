from django.apps import AppConfig


class EndpointsAppConfig(AppConfig):
    name = "endpoints_app"
    verbose_name = "Serving endpoints"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect signal receivers. Their modules import the models, which exist only from here
        on: this is one of the declared entry points that import inside a function."""
        from django.contrib.auth.signals import user_login_failed

        from endpoints_app import auth_throttle

        user_login_failed.connect(auth_throttle.on_failed_login, dispatch_uid="modelfleet-audit-failed-login")
