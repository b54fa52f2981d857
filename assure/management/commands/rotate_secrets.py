from django.core.management.base import BaseCommand, CommandError

from assure.services import secrets_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret with the first key of ASSURE_SECRET_KEYS. Put the new key first, "
        "restart every process, run this, then drop the old key. Safe to run again."
    )

    def handle(self, *args, **options):
        report = secrets_rotate()
        for rotation in report:
            line = f"{rotation.label}: {rotation.reencrypted} re-encrypted, {rotation.current} already current"
            if rotation.unreadable:
                line += f", {len(rotation.unreadable)} unreadable"
            self.stdout.write(line)
        reencrypted = sum(rotation.reencrypted for rotation in report)
        current = sum(rotation.current for rotation in report)
        self.stdout.write(f"Total: {reencrypted} re-encrypted, {current} already current.")
        unreadable = [(rotation.label, pk) for rotation in report for pk in rotation.unreadable]
        if unreadable:
            listed = ", ".join(f"{label} of {pk}" for label, pk in unreadable[:10])
            raise CommandError(
                f"{len(unreadable)} stored secrets cannot be decrypted with any key in ASSURE_SECRET_KEYS ({listed}): "
                "add back the key they were encrypted with and run this again."
            )
