"""The demo workspace's phone numbers: fictional loopback numbers, so its voice scenarios call the
demo receptionist through the loopback telephony without any account."""

from __future__ import annotations

from assure.models import Workspace
from scenarios.demo import DEMO_OUTBOUND_NUMBER
from telephony.models import PhoneNumber, Provider

DEMO_INBOUND_NUMBERS = ("+15550160", "+15550161")


def demo_numbers_seed(*, workspace: Workspace) -> None:
    """Idempotent: the caller ID the demo agent dials from and two lines inbound runs arm."""
    for number, direction, label in (
        (DEMO_OUTBOUND_NUMBER, PhoneNumber.Direction.OUTBOUND, "Demo caller ID"),
        *((n, PhoneNumber.Direction.INBOUND, "Demo inbound line") for n in DEMO_INBOUND_NUMBERS),
    ):
        PhoneNumber.objects.get_or_create(provider=Provider.LOOPBACK, number=number, defaults={
            "workspace": workspace, "direction": direction, "label": label})
