"""The phone number form of the Phone numbers page. Field validation is the model's; whether an
armed run holds the number is the services' (``phone_number_save``), which also catch a number
registered by someone else between this form's check and the save."""

from __future__ import annotations

from scenarios.forms import WorkspaceModelForm
from telephony.models import PhoneNumber
from telephony.services import NUMBER_TAKEN_MESSAGE


class PhoneNumberForm(WorkspaceModelForm):
    # (provider, number) is unique across every workspace: the words must not say whose it is.
    clash_field = "number"
    duplicate_name_message = NUMBER_TAKEN_MESSAGE

    class Meta:
        model = PhoneNumber
        fields = ["number", "direction", "provider", "label", "provider_sid"]
        labels = {"provider_sid": "Provider SID"}
        help_texts = {
            "number": "E.164, e.g. +14155550123: a number you have provisioned with the provider.",
            "direction": "Outbound numbers are the caller ID agents dial from (pick them on the agent); inbound "
                         "numbers are reserved by inbound runs, one run at a time, for the target to dial.",
            "provider": "Twilio for real calls. Loopback numbers are fictional and reach only the built-in demo and "
                        "rehearsal targets, offline.",
            "label": "What the number is for, e.g. “Support line caller ID”.",
            "provider_sid": "Optional: Twilio's PN… sid of the number, for your reference.",
        }
