from django.conf import settings
from django.core.management.base import BaseCommand

from scenarios.demo import demo_seed


class Command(BaseCommand):
    help = (
        "Create or refresh the demo workspace (slug 'demo'): demo targets, an agent and two "
        "scenarios. On the embedded default it also creates the user demo / demo."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--password",
            help="Create the user 'demo' with this password. The default 'demo' is used only on the "
            "embedded SQLite default, never on a real database.",
        )

    def handle(self, *args, password=None, **options):
        if password is None and settings.EMBEDDED_DATABASE:
            password = "demo"
        workspace = demo_seed(password=password)
        if password is None:
            self.stdout.write(
                f"Seeded workspace '{workspace.slug}' without a demo user (DATABASE_URL is set); "
                "pass --password to create one."
            )
        else:
            self.stdout.write(f"Seeded workspace '{workspace.slug}'; sign in as demo.")
