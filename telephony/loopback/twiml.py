"""The TwiML the emulator understands, and its rule for valid voices.

A call's instructions come as TwiML: inline (``Twiml`` when the call is created) or fetched from a
voice webhook. Two shapes matter:

- ``<Response><Connect action="…"><ConversationRelay url="ws(s)://…" …><Parameter …/>
  </ConversationRelay></Connect></Response>``: the call is handed to a ConversationRelay session
  (``RelaySettings``). A ``<Start><Recording …/></Start>`` before it records the call from that
  moment (``RecordingStart``).
- anything else (``<Say>``, ``<Pause>``, ``<Hangup>``, ``<Reject>``, …): ``PlainTwiml``, which the
  emulator plays briefly and then ends the call.

Voices: Twilio refuses a voice that its TTS provider does not offer (error 64106). The emulator
cannot know every provider's catalogue, so it applies a fixed rule (``voice_problem``):
``ttsProvider`` must be ElevenLabs (default), Google or Amazon (any letter case); an empty voice is
the provider's default; Google voices look like ``en-US-Neural2-F``; Amazon voices are one of
``AMAZON_VOICES``, optionally suffixed ``-Neural`` or ``-Generative``; ElevenLabs voices are a
20-character voice id, optionally followed by ``-`` and model/tuning settings.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

MAX_TWIML_CHARS = 64 * 1024

INTERRUPT_MODES = ("none", "dtmf", "speech", "any")
_LEGACY_BOOLEAN_MODES = {"true": "any", "false": "none"}

TTS_PROVIDERS = {"elevenlabs": "ElevenLabs", "google": "Google", "amazon": "Amazon"}
AMAZON_VOICES = (
    "Joanna", "Matthew", "Amy", "Brian", "Emma", "Ivy", "Justin", "Kendra", "Kimberly", "Salli",
    "Joey", "Ruth", "Stephen", "Olivia", "Aria",
)
_GOOGLE_VOICE_RE = re.compile(r"^[a-z]{2,3}-[A-Z]{2}-[A-Za-z0-9-]+$")
_AMAZON_VOICE_RE = re.compile(rf"^({'|'.join(AMAZON_VOICES)})(-Neural|-Generative)?$")
_ELEVENLABS_VOICE_RE = re.compile(r"^[A-Za-z0-9]{20}(-[A-Za-z0-9_.-]+)?$")


class TwimlError(ValueError):
    """The document is not TwiML the emulator can follow."""


@dataclass(frozen=True)
class RelaySettings:
    """A ``<Connect><ConversationRelay>``: where to connect and how the session behaves."""

    url: str
    action_url: str | None = None
    action_method: str = "POST"
    tts_provider: str = "ElevenLabs"
    voice: str = ""
    language: str = "en-US"
    transcription_language: str = "en-US"
    interruptible: str = "any"
    welcome_greeting: str | None = None
    welcome_greeting_interruptible: str = "any"
    dtmf_detection: bool = False
    report_input_during_agent_speech: str = "none"
    partial_prompts: bool = False
    speaker_events: bool = False
    tokens_played: bool = False
    custom_parameters: dict[str, str] = field(default_factory=dict)
    recording: RecordingStart | None = None


@dataclass(frozen=True)
class RecordingStart:
    """A ``<Start><Recording>``: record the call from now on, reported to ``status_callback``."""

    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_events: frozenset[str] = frozenset({"completed"})


@dataclass(frozen=True)
class PlainTwiml:
    """Any other TwiML: its verbs as ``(name, attributes, text)``, in order."""

    verbs: list[tuple[str, dict[str, str], str]]


def parse_twiml(document: str, *, document_url: str | None = None) -> RelaySettings | PlainTwiml:
    """Read a TwiML document. Relative ``action`` URLs resolve against ``document_url`` (the
    voice webhook the TwiML came from), as Twilio resolves them."""
    if len(document) > MAX_TWIML_CHARS:
        raise TwimlError("TwiML document too large")
    if "<!DOCTYPE" in document or "<!ENTITY" in document:
        raise TwimlError("TwiML must not declare a DTD or entities")
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as error:
        raise TwimlError(f"TwiML is not well-formed XML: {error}") from error
    if root.tag != "Response":
        raise TwimlError(f"TwiML root must be <Response>, not <{root.tag}>")

    recording = None
    for verb in root:
        if verb.tag == "Connect" and verb.find("ConversationRelay") is not None:
            return _relay_settings(verb, verb.find("ConversationRelay"), document_url, recording)
        if verb.tag == "Start" and verb.find("Recording") is not None:
            recording = _recording_start(verb.find("Recording"), document_url)
    return PlainTwiml([(verb.tag, dict(verb.attrib), (verb.text or "").strip()) for verb in root])


def voice_problem(provider: str, voice: str) -> str | None:
    """Why Twilio would refuse this provider/voice combination (error 64106), or None if fine."""
    canonical = TTS_PROVIDERS.get(provider.lower())
    if canonical is None:
        return f"Invalid ttsProvider '{provider}' (64106)"
    if not voice:
        return None
    pattern = {"Google": _GOOGLE_VOICE_RE, "Amazon": _AMAZON_VOICE_RE, "ElevenLabs": _ELEVENLABS_VOICE_RE}[canonical]
    if pattern.match(voice):
        return None
    return f"Invalid voice '{voice}' for provider {canonical} (64106)"


def _recording_start(element: ElementTree.Element, document_url: str | None) -> RecordingStart:
    callback = element.get("recordingStatusCallback") or None
    if callback is not None:
        if document_url:
            callback = urljoin(document_url, callback)
        if urlsplit(callback).scheme not in ("http", "https"):
            raise TwimlError(f"Recording recordingStatusCallback must be an http(s) URL, not {callback!r}")
    events = (element.get("recordingStatusCallbackEvent") or "completed").replace(",", " ").split()
    return RecordingStart(status_callback=callback,
                          status_callback_method=(element.get("recordingStatusCallbackMethod") or "POST").upper(),
                          status_callback_events=frozenset(events))


def _relay_settings(
    connect: ElementTree.Element, relay: ElementTree.Element, document_url: str | None,
    recording: RecordingStart | None = None,
) -> RelaySettings:
    attributes = relay.attrib
    url = attributes.get("url", "")
    if urlsplit(url).scheme not in ("ws", "wss") or not urlsplit(url).netloc:
        raise TwimlError(f"ConversationRelay url must be a ws:// or wss:// URL, not {url!r}")

    action_url = connect.get("action") or None
    if action_url is not None:
        if document_url:
            action_url = urljoin(document_url, action_url)
        if urlsplit(action_url).scheme not in ("http", "https"):
            raise TwimlError(f"Connect action must be an absolute http(s) URL, not {action_url!r}")

    language = attributes.get("language", "en-US")
    events = f"{attributes.get('debug', '')} {attributes.get('events', '')}".split()
    parameters = {
        parameter.get("name", ""): parameter.get("value", "")
        for parameter in relay.iter("Parameter")
        if parameter.get("name")
    }
    return RelaySettings(
        url=url,
        action_url=action_url,
        action_method=(connect.get("method") or "POST").upper(),
        tts_provider=attributes.get("ttsProvider", "ElevenLabs"),
        voice=attributes.get("voice", ""),
        language=attributes.get("ttsLanguage", language),
        transcription_language=attributes.get("transcriptionLanguage", language),
        interruptible=_mode(attributes.get("interruptible"), default="any"),
        welcome_greeting=attributes.get("welcomeGreeting") or None,
        welcome_greeting_interruptible=_mode(attributes.get("welcomeGreetingInterruptible"), default="any"),
        dtmf_detection=_flag(attributes.get("dtmfDetection")),
        report_input_during_agent_speech=_mode(attributes.get("reportInputDuringAgentSpeech"), default="none"),
        partial_prompts=_flag(attributes.get("partialPrompts")),
        speaker_events="speaker-events" in events,
        tokens_played="tokens-played" in events,
        custom_parameters=parameters,
        recording=recording,
    )


def interrupt_mode(value: object, *, default: str) -> str:
    """An ``interruptible``-style value (``none|dtmf|speech|any`` or a boolean) as a mode."""
    if isinstance(value, bool):
        return "any" if value else "none"
    return _mode(value if isinstance(value, str) else None, default=default)


def _mode(value: str | None, *, default: str) -> str:
    if value is None:
        return default
    value = value.strip().lower()
    value = _LEGACY_BOOLEAN_MODES.get(value, value)
    return value if value in INTERRUPT_MODES else default


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"
