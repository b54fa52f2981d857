"""Loopback telephony: a local stand-in for the part of Twilio the product uses.

``LoopbackTwilio`` answers the twilio SDK's call requests, sends signed status callbacks, opens the
ConversationRelay websocket to the product and plays the far end of each call (a ``FarEnd``) with
simulated speech timing. ``make up`` runs it when no Twilio account is configured; the voice tests
run against it. See ``emulator.py`` for the wire details and the rules it follows where Twilio's
behaviour is not documented.
"""

from telephony.loopback.calls import Destination
from telephony.loopback.emulator import LoopbackTwilio
from telephony.loopback.far_ends import (
    Action,
    ChatRehearsal,
    DemoReceptionist,
    FarEnd,
    Hangup,
    Press,
    Say,
    ScriptedFarEnd,
    Wait,
)

__all__ = [
    "Action",
    "ChatRehearsal",
    "DemoReceptionist",
    "Destination",
    "FarEnd",
    "Hangup",
    "LoopbackTwilio",
    "Press",
    "Say",
    "ScriptedFarEnd",
    "Wait",
]
