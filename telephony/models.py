from __future__ import annotations

from django.db import models

from assure.models import WorkspaceOwned
from scenarios.validators import validate_e164


class Provider(models.TextChoices):
    TWILIO = "twilio", "Twilio"
    LOOPBACK = "loopback", "Loopback (offline)"


class PhoneNumber(WorkspaceOwned):
    """A number provisioned with a provider: dialled from (outbound) or reserved for inbound runs."""

    class Direction(models.TextChoices):
        OUTBOUND = "outbound", "Outbound (we dial from it)"
        INBOUND = "inbound", "Inbound (the target dials it)"

    Provider = Provider

    number = models.CharField(max_length=16, validators=[validate_e164])
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.OUTBOUND)
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
        indexes = [
            models.Index(fields=["workspace", "reserved_by"], name="phone_number_ws_reserved"),
            models.Index(fields=["workspace", "direction", "provider"], name="phone_number_ws_direction"),
        ]

    def __str__(self) -> str:
        return f"{self.number}{f' ({self.label})' if self.label else ''}"


FINAL_CALL_STATUSES = ("completed", "busy", "no-answer", "failed", "canceled")


class Call(WorkspaceOwned):
    """The phone call of one voice run. Written before dialling: a retried or redelivered start
    finds it and never dials twice."""

    class Status(models.TextChoices):
        PLACING = "placing", "Placing"          # written, the provider not yet asked
        ARMED = "armed", "Armed"                # inbound: waiting for the target to dial in
        QUEUED = "queued", "Queued"
        RINGING = "ringing", "Ringing"
        IN_PROGRESS = "in-progress", "In progress"
        COMPLETED = "completed", "Completed"
        BUSY = "busy", "Busy"
        NO_ANSWER = "no-answer", "No answer"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    class Direction(models.TextChoices):
        OUTBOUND = "outbound", "Outbound"
        INBOUND = "inbound", "Inbound"

    class HungUpBy(models.TextChoices):
        CALLER = "caller", "Our caller"
        TARGET = "target", "The target"
        PLATFORM = "platform", "AssureAgent (cancel, cap or failure)"

    run = models.OneToOneField("runs.Run", on_delete=models.CASCADE, related_name="call")
    provider = models.CharField(max_length=10, choices=Provider.choices)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    sid = models.CharField(max_length=64, null=True, blank=True, unique=True, help_text="The provider's call sid (CA…).")
    from_number = models.CharField(max_length=16)
    to_number = models.CharField(max_length=16)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PLACING)
    # Each status the provider reported: {"status", "sequence", "at", "sip"}; callbacks arrive out of
    # order and more than once, so the newest sequence number decides the current status.
    history = models.JSONField(default=list, blank=True)
    last_sequence = models.IntegerField(default=-1)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    hung_up_by = models.CharField(max_length=10, choices=HungUpBy.choices, blank=True)
    error_code = models.CharField(max_length=10, blank=True)
    error_detail = models.TextField(blank=True)
    relay_events = models.JSONField(
        default=list, blank=True,
        help_text="What the ConversationRelay session reported besides words: speaker events, interruptions, keys.")
    recording = models.FileField(upload_to="recordings/", blank=True)
    recording_sid = models.CharField(max_length=64, blank=True)
    recording_duration_seconds = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Call {self.sid or '(not placed)'} {self.from_number} → {self.to_number} ({self.status})"

    @property
    def is_over(self) -> bool:
        return self.status in FINAL_CALL_STATUSES
