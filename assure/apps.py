from django.apps import AppConfig


class AssureConfig(AppConfig):
    name = "assure"
    verbose_name = "Workspaces"

    def ready(self) -> None:
        from assure import schema  # noqa: F401  registers the OpenAPI extension
