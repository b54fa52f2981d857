from django.apps import AppConfig


class AssureConfig(AppConfig):
    name = "assure"
    verbose_name = "Workspaces"
