"""The TwiML that connects a call to our ConversationRelay websocket, and the short answers."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement, tostring

# What every session asks of ConversationRelay (TWILIO-NOTES in the README's voice section):
# - reportInputDuringAgentSpeech="any": a target that talks over our caller is still heard;
# - partialPrompts: the target's words arrive while it speaks, so our caller can barge in and the
#   first words time the target's latency;
# - speaker events: when our caller's speech really ended, the other end of that latency;
# - no welcomeGreeting: outbound, our caller speaks first, once the call is answered.
RELAY_DEFAULTS = {
    "interruptible": "any",
    "dtmfDetection": "true",
    "reportInputDuringAgentSpeech": "any",
    "partialPrompts": "true",
    "debug": "speaker-events tokens-played",
}


def relay_twiml(*, relay_url: str, action_url: str, run_id: str, agent: dict, recording_callback: str | None = None) -> str:
    """Connect the call to our relay. With ``recording_callback`` (an incoming call, which no
    call-creation option records), ``<Start><Recording>`` records both channels from the first
    moment, before the conversation: a short call cannot end before its recording has begun."""
    response = Element("Response")
    if recording_callback:
        start = SubElement(response, "Start")
        SubElement(start, "Recording", channels="dual", recordingStatusCallback=recording_callback,
                   recordingStatusCallbackEvent="completed")
    connect = SubElement(response, "Connect", action=action_url)
    attributes = {"url": relay_url, "language": agent.get("language") or "en-US",
                  "ttsProvider": agent.get("voice_provider") or "ElevenLabs", **RELAY_DEFAULTS}
    if agent.get("voice"):
        attributes["voice"] = agent["voice"]
    relay = SubElement(connect, "ConversationRelay", attributes)
    SubElement(relay, "Parameter", name="run", value=str(run_id))
    return tostring(response, encoding="unicode")


def hang_up_twiml(say: str | None = None) -> str:
    response = Element("Response")
    if say:
        SubElement(response, "Say").text = say
    SubElement(response, "Hangup")
    return tostring(response, encoding="unicode")
