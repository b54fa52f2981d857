from django.conf import settings
from django.db import transaction
from django.core.management.base import BaseCommand

from scenarios.demo import demo_seed
from telephony.demo import demo_numbers_seed

# This command lives in telephony, the app every other depends on below it, because the demo spans
# them all: scenarios (targets, agent, scenarios, paths) and telephony (its loopback numbers).


class Command(BaseCommand):
    help = (
        "Create or refresh the demo workspace (slug 'demo'): demo targets, an agent, three "
        "scenarios (chat, outbound and inbound voice) and loopback phone numbers. On the embedded default it also creates the user demo / demo."
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
        with transaction.atomic():
            workspace = demo_seed(password=password)
            demo_numbers_seed(workspace=workspace)
        if password is None:
            self.stdout.write(
                f"Seeded workspace '{workspace.slug}' without a demo user (DATABASE_URL is set); "
                "pass --password to create one."
            )
        else:
            self.stdout.write(f"Seeded workspace '{workspace.slug}'; sign in as demo.")
