"""Telephony providers: who places our calls and calls us back.

Both speak Twilio's API through the twilio SDK: ``twilio`` is Twilio itself, ``loopback`` is the
local Twilio emulator (``telephony/loopback``) that runs on the deployment's own machine. One
class serves both (``providers/twilio.py``); they differ in credentials, API URL and the base URL
the provider calls back. Each raises ``TelephonyError``, whose ``code`` is Twilio's error code.
"""

from __future__ import annotations

from django.conf import settings

from telephony.models import Provider


class TelephonyError(Exception):
    """A provider refused or failed a request; ``code`` is the provider's error code, if it gave one."""

    def __init__(self, message: str, *, code: int | None = None):
        super().__init__(message)
        self.code = code


def provider_for(name: str):
    """The configured provider called ``name``; a clear error when Twilio is not configured."""
    from telephony.providers.twilio import TwilioProvider

    if name == Provider.LOOPBACK:
        return TwilioProvider(
            name=Provider.LOOPBACK, account_sid=settings.LOOPBACK_ACCOUNT_SID, auth_token=settings.LOOPBACK_AUTH_TOKEN,
            api_url=settings.LOOPBACK_TELEPHONY_URL, callback_base_url=settings.LOOPBACK_CALLBACK_BASE_URL,
        )
    if name == Provider.TWILIO:
        missing = [n for n in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL") if not getattr(settings, n)]
        if missing:
            raise TelephonyError(
                f"Twilio is not configured on this server: set {', '.join(missing)} (see the README, \"Connect a "
                "Twilio account\"), or use loopback numbers to test offline.")
        return TwilioProvider(
            name=Provider.TWILIO, account_sid=settings.TWILIO_ACCOUNT_SID, auth_token=settings.TWILIO_AUTH_TOKEN,
            api_url=settings.TWILIO_API_URL, callback_base_url=settings.PUBLIC_BASE_URL,
        )
    raise TelephonyError(f"Unknown telephony provider {name!r}.")


def twilio_configured() -> bool:
    return bool(settings.TWILIO_ACCOUNT_SID and settings.TWILIO_AUTH_TOKEN and settings.PUBLIC_BASE_URL)
