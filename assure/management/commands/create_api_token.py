from django.core.management.base import BaseCommand, CommandError

from assure.models import Workspace
from assure.services import api_token_create


class Command(BaseCommand):
    help = "Create a workspace API token and print its key once (only a hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("workspace", help="The workspace's slug.")
        parser.add_argument("--name", required=True, help="What uses the token, e.g. 'CI pipeline'.")

    def handle(self, *args, workspace, name, **options):
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            known = ", ".join(Workspace.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none"
            raise CommandError(f"No workspace with slug {workspace!r}. Known workspaces: {known}.")
        try:
            token, key = api_token_create(workspace=ws, name=name)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        # The key alone on stdout, so scripts can capture it; the explanation goes to stderr.
        self.stderr.write(
            f"Created API token {token.name!r} for workspace {ws.slug}. Copy the key now; it will not be shown again. "
            "Use it as 'Authorization: Token <key>'."
        )
        self.stdout.write(key)
