"""Who answers a loopback number: the product's side of the loopback telephony.

- ``+15550100``: the built-in demo receptionist (Brightsmile Dental's phone line, with a keypad menu);
- a rehearsal target's own number (``+155501…``, derived from its id): its chat target, spoken;
- ``+15550190`` a busy line, ``+15550191`` nobody answers, ``+15550192`` a call that fails, so a
  team can see how its scenarios report an unreachable target without a phone bill;
- any other number: the call fails (SIP 404), as a number that does not exist would.
"""

from __future__ import annotations

import uuid

import aiohttp
from django.db import close_old_connections

from scenarios.models import Channel, Target
from telephony.loopback.calls import Destination
from telephony.loopback.far_ends import ChatRehearsal, DemoReceptionist

BUSY_NUMBER = "+15550190"
NO_ANSWER_NUMBER = "+15550191"
FAILING_NUMBER = "+15550192"

class _RehearsalConnection:
    """A chat target's connection with an HTTP session of its own, closed with it: a rehearsal
    call is short-lived, and nothing is left open when the loopback telephony stops."""

    def __init__(self, spec: dict, secrets: dict):
        from runs.connectors import ConnectionContext, connection_for

        self.http = aiohttp.ClientSession()
        self.connection = connection_for(spec, ConnectionContext(session_id=str(uuid.uuid4()), http=self.http,
                                                                 secrets=secrets))

    async def open(self):
        return await self.connection.open()

    async def send(self, text: str):
        return await self.connection.send(text)

    async def press(self, digits: str):
        return await self.connection.press(digits)

    async def close(self) -> None:
        try:
            await self.connection.close()
        finally:
            await self.http.close()


def resolve(far_end_number: str, our_number: str) -> Destination:
    """Runs in a thread of the emulator (it reads the database)."""
    if far_end_number == BUSY_NUMBER:
        return Destination("busy", sip_response_code=486)
    if far_end_number == NO_ANSWER_NUMBER:
        return Destination("no-answer", sip_response_code=487)
    if far_end_number == FAILING_NUMBER:
        return Destination("failed", sip_response_code=503)
    close_old_connections()
    target = (Target.objects.filter(channel=Channel.VOICE, kind__in=Target.LOOPBACK_KINDS, phone_number=far_end_number)
              .select_related("rehearse_with").order_by("created_at").first())
    if target is None:
        return Destination("failed", sip_response_code=404)
    if target.kind == Target.Kind.DEMO:
        return Destination("answer", far_end=DemoReceptionist)
    chat = target.rehearse_with
    spec = {"id": str(chat.pk), "name": chat.name, "channel": chat.channel, "kind": chat.kind, "url": chat.url,
            "request_template": chat.request_template, "response_path": chat.response_path, "model": chat.model}
    secrets = dict(chat.headers or {})
    return Destination("answer", far_end=lambda: ChatRehearsal(lambda: _RehearsalConnection(spec, secrets)))
