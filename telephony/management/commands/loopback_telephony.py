"""Serve the loopback telephony: a local Twilio emulator that `make up` starts when no Twilio
account is configured (telephony/loopback). It plays the far end of every loopback call."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand

from telephony.loopback.directory import resolve
from telephony.loopback.emulator import LoopbackTwilio


class Command(BaseCommand):
    help = "Serve the loopback telephony (a local emulator of Twilio's voice API and ConversationRelay)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.LOOPBACK_TELEPHONY_PORT)

    def handle(self, *args, host, port, **options):
        emulator = LoopbackTwilio(
            account_sid=settings.LOOPBACK_ACCOUNT_SID, auth_token=settings.LOOPBACK_AUTH_TOKEN, resolve=resolve,
            speech_scale=settings.LOOPBACK_SPEECH_SCALE, recordings_dir=settings.VAR_DIR / "loopback-recordings",
            public_url=settings.LOOPBACK_TELEPHONY_URL,
        )
        self.stdout.write(f"Loopback telephony on http://{host}:{port}/ (speech scale {settings.LOOPBACK_SPEECH_SCALE:g})")
        try:
            asyncio.run(emulator.serve(host, port))
        except KeyboardInterrupt:
            pass
