from __future__ import annotations

from django.db import models

from assure.models import WorkspaceOwned
from scenarios.validators import validate_e164


class PhoneNumber(WorkspaceOwned):
    """A number provisioned with a provider: dialled from (outbound) or reserved for inbound runs."""

    class Provider(models.TextChoices):
        TWILIO = "twilio", "Twilio"
        LOOPBACK = "loopback", "Loopback (offline)"

    number = models.CharField(max_length=16, validators=[validate_e164])
    provider = models.CharField(max_length=10, choices=Provider.choices, default=Provider.TWILIO)
    provider_sid = models.CharField(max_length=64, blank=True, help_text="The provider's id, e.g. Twilio's PN… sid.")
    label = models.CharField(max_length=100, blank=True)
    # An inbound run reserves a number while it is armed, so the call that arrives on it is matched
    # to exactly one run.
    reserved_by = models.OneToOneField(
        "runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="reserved_number"
    )
    reserved_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "number"], name="phone_number_unique_per_provider"),
        ]
        indexes = [models.Index(fields=["workspace", "reserved_by"], name="phone_number_ws_reserved")]

    def __str__(self) -> str:
        return f"{self.number}{f' ({self.label})' if self.label else ''}"
