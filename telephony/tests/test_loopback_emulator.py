"""Loopback telephony behaves like Twilio for the product: driven through the real twilio SDK, it
sends signed webhooks and speaks ConversationRelay to a small aiohttp server standing in for our
product, which checks every signature (webhooks and the websocket handshake) the way the product
does. No database: ``resolve`` is a plain function over a dict.
"""

from __future__ import annotations

import asyncio
import json
import re
import wave
from collections import defaultdict
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from runs.demo_target import VOICE_GREETING
from telephony.loopback import (
    ChatRehearsal,
    DemoReceptionist,
    Destination,
    LoopbackTwilio,
    Press,
    Say,
    ScriptedFarEnd,
    Wait,
)
from telephony.loopback.recording import espeak_available

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "loopback-test-auth-token"
OUR_NUMBER = "+14155550100"
TARGET_NUMBER = "+14155550199"
SCALE = 0.02  # a second of simulated speech takes 20 ms
WAIT_SECONDS = 5.0  # the most any single expected event may take
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]
EMULATOR_AUTH = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, AUTH_TOKEN)}


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=30))


# -- "our product": receives the emulator's webhooks and serves the relay websocket ----------------


class Relay:
    """The product's end of one ConversationRelay websocket."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.frames: asyncio.Queue[dict] = asyncio.Queue()
        self.seen: list[dict] = []
        self.closed = asyncio.Event()

    async def recv(self) -> dict:
        frame = await asyncio.wait_for(self.frames.get(), timeout=WAIT_SECONDS)
        self.seen.append(frame)
        return frame

    async def recv_until(self, predicate) -> dict:
        """The first frame matching ``predicate``; the ones before it are kept in ``seen``."""
        while True:
            frame = await self.recv()
            if predicate(frame):
                return frame

    async def recv_type(self, kind: str, **fields) -> dict:
        return await self.recv_until(lambda frame: frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()))

    async def say(self, text: str) -> None:
        """Send an utterance as streamed tokens, the way the product does."""
        words = text.split(" ")
        half = len(words) // 2
        await self.ws.send_json({"type": "text", "token": " ".join(words[:half]) + " ", "last": False})
        await self.ws.send_json({"type": "text", "token": " ".join(words[half:]), "last": True})

    async def send(self, frame: dict) -> None:
        await self.ws.send_json(frame)

    async def wait_closed(self) -> None:
        """Wait for the emulator to close the websocket; every frame received is then in ``seen``."""
        await asyncio.wait_for(self.closed.wait(), timeout=WAIT_SECONDS)
        while not self.frames.empty():
            self.seen.append(self.frames.get_nowait())


class Product:
    """A stand-in for our product's Twilio endpoints, validating signatures with the SDK."""

    def __init__(self):
        self.validator = RequestValidator(AUTH_TOKEN)
        self.bad_signatures: list[str] = []
        self.webhooks: dict[str, asyncio.Queue[dict]] = defaultdict(asyncio.Queue)
        self.relays: asyncio.Queue[Relay] = asyncio.Queue()
        self.open_relays: list[Relay] = []
        self.voice_twiml = "<Response><Hangup/></Response>"

    async def __aenter__(self) -> "Product":
        app = web.Application()
        app.router.add_post("/hooks/{kind}", self._webhook)
        app.router.add_get("/relay", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info) -> None:
        for relay in self.open_relays:
            await relay.ws.close()
        await self._runner.cleanup()
        assert self.bad_signatures == [], f"requests with a wrong X-Twilio-Signature: {self.bad_signatures}"

    def hook(self, kind: str) -> str:
        return f"{self.base_url}/hooks/{kind}"

    @property
    def relay_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/relay?run=42"

    async def next_webhook(self, kind: str) -> dict:
        return await asyncio.wait_for(self.webhooks[kind].get(), timeout=WAIT_SECONDS)

    async def next_relay(self) -> Relay:
        return await asyncio.wait_for(self.relays.get(), timeout=WAIT_SECONDS)

    async def status_callbacks_until_completed(self) -> list[dict]:
        callbacks = []
        while not callbacks or callbacks[-1]["CallStatus"] not in ("completed", "busy", "no-answer", "failed", "canceled"):
            callbacks.append(await self.next_webhook("status"))
        return callbacks

    async def _webhook(self, request: web.Request) -> web.Response:
        form = await request.post()
        url = f"http://{request.host}{request.path_qs}"
        if not self.validator.validate(url, form, request.headers.get("X-Twilio-Signature", "")):
            self.bad_signatures.append(url)
            return web.Response(status=403)
        kind = request.match_info["kind"]
        await self.webhooks[kind].put(dict(form))
        twiml = self.voice_twiml if kind == "voice" else "<Response/>"
        return web.Response(text=twiml, content_type="text/xml")

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        url = f"ws://{request.host}{request.path_qs}"
        if "Origin" in request.headers or not self.validator.validate(url, {}, request.headers.get("X-Twilio-Signature", "")):
            self.bad_signatures.append(url)
            return web.Response(status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        relay = Relay(ws)
        self.open_relays.append(relay)
        await self.relays.put(relay)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await relay.frames.put(json.loads(message.data))
        relay.closed.set()
        self.open_relays.remove(relay)
        return ws


def relay_twiml(product: Product, *, parameters: dict | None = None, **attributes: str) -> str:
    attributes = {
        "url": product.relay_url,
        "dtmfDetection": "true",
        "partialPrompts": "true",
        "reportInputDuringAgentSpeech": "any",
        "debug": "speaker-events tokens-played",
        **attributes,
    }
    rendered = " ".join(f"{name}={quoteattr(value)}" for name, value in attributes.items())
    children = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>" for name, value in (parameters or {}).items()
    )
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect action={quoteattr(product.hook("action"))}>'
            f"<ConversationRelay {rendered}>{children}</ConversationRelay></Connect></Response>")


# -- the emulator, reached through the real SDK -----------------------------------------------------


@pytest.fixture
def destinations() -> dict[str, Destination]:
    return {}


@pytest.fixture
def start_emulator(destinations, tmp_path, monkeypatch):
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    started: list[LoopbackTwilio] = []

    def start(*, speech_scale: float = SCALE) -> LoopbackTwilio:
        emulator = LoopbackTwilio(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            resolve=lambda far_end_number, our_number: destinations[far_end_number],
            speech_scale=speech_scale,
            recordings_dir=tmp_path / "recordings",
        )
        emulator.start_in_thread()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(start_emulator) -> LoopbackTwilio:
    return start_emulator()


def sdk_client(emulator: LoopbackTwilio, *, auth_token: str = AUTH_TOKEN) -> Client:
    client = Client(ACCOUNT_SID, auth_token)
    client.api.base_url = emulator.base_url
    return client


@pytest.fixture
def twilio_client(emulator) -> Client:
    return sdk_client(emulator)


def answering(far_end) -> Destination:
    return Destination("answer", far_end=lambda: far_end)


async def place_call(client: Client, product: Product, *, twiml: str | None = None, **options):
    return await asyncio.to_thread(
        client.calls.create,
        to=TARGET_NUMBER,
        from_=OUR_NUMBER,
        twiml=twiml or relay_twiml(product),
        status_callback=product.hook("status"),
        status_callback_event=ALL_EVENTS,
        **options,
    )


async def witness(emulator: LoopbackTwilio, call_sid: str) -> dict:
    async with aiohttp.ClientSession(headers=EMULATOR_AUTH) as session:
        async with session.get(f"{emulator.base_url}/loopback/calls/{call_sid}") as response:
            assert response.status == 200
            return await response.json()


def events(timeline: list[dict], name: str) -> list[dict]:
    return [entry for entry in timeline if entry["event"] == name]


# -- placing a call ---------------------------------------------------------------------------------


def test_outbound_call_reports_progress_in_order_and_hands_over_its_parameters(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            call = await place_call(twilio_client, product, twiml=relay_twiml(product, parameters={"run_id": "42"}))
            assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid)
            assert (call.status, call.direction, call.to, call._from) == ("queued", "outbound-api", TARGET_NUMBER, OUR_NUMBER)
            assert call.date_created is not None and call.account_sid == ACCOUNT_SID

            relay = await product.next_relay()
            setup = await relay.recv()
            assert setup["type"] == "setup"
            assert setup["callSid"] == call.sid and setup["accountSid"] == ACCOUNT_SID
            assert (setup["from"], setup["to"], setup["direction"]) == (OUR_NUMBER, TARGET_NUMBER, "outbound")
            assert setup["customParameters"] == {"run_id": "42"}
            assert setup["sessionId"].startswith("VX")

            await relay.send({"type": "end", "handoffData": '{"reason": "done"}'})
            action = await product.next_webhook("action")
            assert action["CallSid"] == call.sid and action["SessionId"] == setup["sessionId"]
            assert action["SessionStatus"] == "completed"
            assert action["HandoffData"] == '{"reason": "done"}'
            await relay.wait_closed()

            callbacks = await product.status_callbacks_until_completed()
            assert [c["CallStatus"] for c in callbacks] == ["queued", "ringing", "in-progress", "completed"]
            assert [c["SequenceNumber"] for c in callbacks] == ["0", "1", "2", "3"]
            assert all(c["CallSid"] == call.sid and c["Direction"] == "outbound-api" for c in callbacks)
            assert all(c["CallbackSource"] == "call-progress-events" for c in callbacks)
            assert callbacks[-1]["SipResponseCode"] == "200" and callbacks[-1]["CallDuration"] == "0"

            fetched = await asyncio.to_thread(twilio_client.calls(call.sid).fetch)
            assert fetched.status == "completed" and fetched.start_time is not None

    run(scenario())


def test_the_far_end_hears_our_caller_and_answers_with_prompts_and_speaker_events(emulator, twilio_client, destinations):
    far_end = ScriptedFarEnd(replies=[[Say("Brightsmile Dental how can I help you today")]])
    destinations[TARGET_NUMBER] = answering(far_end)

    async def scenario():
        async with Product() as product:
            twiml = relay_twiml(product, ttsProvider="Google", voice="en-US-Neural2-F")
            call = await place_call(twilio_client, product, twiml=twiml)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.say("I would like to book a cleaning")

            final = await relay.recv_type("prompt", last=True)
            assert final["voicePrompt"] == "Brightsmile Dental how can I help you today"
            assert final["lang"] == "en-US"
            frames = [(f["type"], f.get("name"), f.get("value") or f.get("voicePrompt")) for f in relay.seen[1:]]
            assert frames == [
                ("info", "agentSpeaking", "on"),
                ("info", "agentSpeaking", "off"),
                ("info", "tokensPlayed", "I would like to book a cleaning"),
                ("info", "clientSpeaking", "on"),
                ("prompt", None, "Brightsmile Dental"),
                ("prompt", None, "Brightsmile Dental how can"),
                ("prompt", None, "Brightsmile Dental how can I help"),
                ("prompt", None, "Brightsmile Dental how can I help you today"),
                ("info", "clientSpeaking", "off"),
                ("prompt", None, "Brightsmile Dental how can I help you today"),
            ]
            assert far_end.heard == ["I would like to book a cleaning"]

            await relay.say("Thank you")  # our next turn: the far end measures the gap before it
            await relay.send({"type": "end"})
            await product.next_webhook("action")
            await product.status_callbacks_until_completed()

            testimony = await witness(emulator, call.sid)
            assert testimony["status"] == "completed"
            assert [e["text"] for e in events(testimony["timeline"], "target_said")] == [final["voicePrompt"]]
            assert "I would like to book a cleaning" in [e["text"] for e in events(testimony["timeline"], "caller_said")]
            assert len(testimony["reply_gaps_ms"]) == 1 and testimony["reply_gaps_ms"][0] >= 0

    run(scenario())


def test_key_presses_travel_both_ways(twilio_client, destinations):
    far_end = ScriptedFarEnd(on_digits=[[Press("5#")]])
    destinations[TARGET_NUMBER] = answering(far_end)

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.send({"type": "sendDigits", "digits": "1w2"})
            assert (await relay.recv_type("dtmf"))["digit"] == "5"
            assert (await relay.recv_type("dtmf"))["digit"] == "#"
            assert far_end.heard_digits == ["12"]
            await relay.send({"type": "end"})
            await product.next_webhook("action")

    run(scenario())


def test_a_welcome_greeting_is_spoken_for_our_caller_when_the_call_connects(twilio_client, destinations):
    far_end = ScriptedFarEnd(replies=[[Say("Hi Sam")]])
    destinations[TARGET_NUMBER] = answering(far_end)

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product, twiml=relay_twiml(product, welcomeGreeting="Hello this is Sam"))
            relay = await product.next_relay()
            await relay.recv_type("setup")
            assert (await relay.recv_type("info", name="tokensPlayed"))["value"] == "Hello this is Sam"
            assert (await relay.recv_type("prompt", last=True))["voicePrompt"] == "Hi Sam"
            assert far_end.heard == ["Hello this is Sam"]
            await relay.send({"type": "end"})
            await product.next_webhook("action")

    run(scenario())


def test_the_far_end_barging_in_interrupts_our_caller(start_emulator, destinations):
    # A slower clock than the other tests: the far end must start talking while 7 words remain.
    emulator = start_emulator(speech_scale=0.05)
    twilio_client = sdk_client(emulator)
    far_end = ScriptedFarEnd(barge_in_after_words=3, replies=[[Say("Sorry to cut in")]])
    destinations[TARGET_NUMBER] = answering(far_end)
    utterance = "one two three four five six seven eight nine ten"

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.say(utterance)

            interrupt = await relay.recv_type("interrupt")
            played = interrupt["utteranceUntilInterrupt"]
            assert played.startswith("one two three") and len(played.split()) < 10
            assert int(interrupt["durationUntilInterruptMs"]) > 0
            assert far_end.heard == ["one two three"]
            assert (await relay.recv_type("info", name="agentSpeaking"))["value"] == "off"
            assert (await relay.recv_type("info", name="tokensPlayed"))["value"] == played
            assert (await relay.recv_type("prompt", last=True))["voicePrompt"] == "Sorry to cut in"
            await relay.send({"type": "end"})
            await product.next_webhook("action")

    run(scenario())


@pytest.mark.parametrize("report", ["none", "any"])
def test_talk_over_is_reported_only_when_report_input_during_agent_speech_allows(twilio_client, destinations, report):
    far_end = ScriptedFarEnd(barge_in_after_words=3, replies=[[Say("Sorry to cut in"), Wait(3.0), Say("Anyway how can I help")]])
    destinations[TARGET_NUMBER] = answering(far_end)

    async def scenario():
        async with Product() as product:
            twiml = relay_twiml(product, interruptible="none", reportInputDuringAgentSpeech=report)
            await place_call(twilio_client, product, twiml=twiml)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.say("one two three four five six seven eight nine ten")

            await relay.recv_type("prompt", voicePrompt="Anyway how can I help", last=True)
            finals = [f["voicePrompt"] for f in relay.seen if f["type"] == "prompt" and f["last"]]
            if report == "none":
                assert finals == ["Anyway how can I help"]
                assert not any("Sorry" in f["voicePrompt"] for f in relay.seen if f["type"] == "prompt")
            else:
                assert finals == ["Sorry to cut in", "Anyway how can I help"]
            # Nobody was cut off: both talked at once and our caller's whole utterance was played.
            assert all(frame["type"] != "interrupt" for frame in relay.seen)
            tokens_played = [f["value"] for f in relay.seen if f.get("name") == "tokensPlayed"]
            assert tokens_played == ["one two three four five six seven eight nine ten"]
            await relay.send({"type": "end"})
            await product.next_webhook("action")

    run(scenario())


# -- sessions that fail or end -----------------------------------------------------------------------


def test_a_voice_the_provider_does_not_offer_fails_the_session_with_64106(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            call = await place_call(twilio_client, product, twiml=relay_twiml(product, ttsProvider="Amazon", voice="Nobody-Neural"))
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.say("Hello there")
            error = await relay.recv_type("error")
            assert "64106" in error["description"] and "Nobody-Neural" in error["description"]
            await relay.wait_closed()
            action = await product.next_webhook("action")
            assert (action["SessionStatus"], action["ErrorCode"]) == ("failed", "64106")
            callbacks = await product.status_callbacks_until_completed()
            assert callbacks[-1]["CallStatus"] == "completed" and callbacks[-1]["CallSid"] == call.sid

    run(scenario())


def test_an_unreachable_websocket_fails_the_session_with_64102(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product, twiml=relay_twiml(product, url="ws://127.0.0.1:9/nowhere"))
            action = await product.next_webhook("action")
            assert (action["SessionStatus"], action["ErrorCode"], action["SessionDuration"]) == ("failed", "64102", "0")
            assert (await product.status_callbacks_until_completed())[-1]["CallStatus"] == "completed"

    run(scenario())


def test_ten_invalid_messages_in_a_row_close_the_websocket_with_1007(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.ws.send_str("not json")
            await relay.send({"type": "play", "source": "https://example.com/hold.mp3"})  # valid: resets the count
            for _ in range(10):
                await relay.send({"type": "dance"})
            assert (await relay.recv_type("error"))["description"] == "Invalid message received (64107)"
            await relay.wait_closed()
            errors = [frame for frame in relay.seen if frame["type"] == "error"]
            assert len(errors) == 1 + 10
            assert relay.ws.close_code == 1007
            action = await product.next_webhook("action")
            assert (action["SessionStatus"], action["ErrorCode"]) == ("failed", "64105")

    run(scenario())


def test_the_product_closing_the_websocket_completes_the_call(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.ws.close()
            assert (await product.next_webhook("action"))["SessionStatus"] == "completed"
            assert (await product.status_callbacks_until_completed())[-1]["CallStatus"] == "completed"

    run(scenario())


@pytest.mark.parametrize(
    ("outcome", "status", "sip", "rang"),
    [("busy", "busy", "486", True), ("no-answer", "no-answer", "487", True), ("failed", "failed", "404", False)],
)
def test_calls_that_are_not_answered(twilio_client, destinations, outcome, status, sip, rang):
    destinations[TARGET_NUMBER] = Destination(outcome)

    async def scenario():
        async with Product() as product:
            call = await place_call(twilio_client, product)
            callbacks = await product.status_callbacks_until_completed()
            expected = ["queued", "ringing", status] if rang else ["queued", status]
            assert [c["CallStatus"] for c in callbacks] == expected
            assert (callbacks[-1]["SipResponseCode"], callbacks[-1]["CallDuration"]) == (sip, "0")
            assert (await asyncio.to_thread(twilio_client.calls(call.sid).fetch)).status == status
            assert product.relays.empty()

    run(scenario())


def test_invalid_numbers_and_credentials_are_refused_as_twilio_does(emulator, twilio_client, destinations):
    with pytest.raises(TwilioRestException) as refused:
        twilio_client.calls.create(to="555-0199", from_=OUR_NUMBER, twiml="<Response/>")
    assert (refused.value.status, refused.value.code) == (400, 21211)

    with pytest.raises(TwilioRestException) as refused:
        twilio_client.calls.create(to=TARGET_NUMBER, from_="us", twiml="<Response/>")
    assert refused.value.code == 21212

    with pytest.raises(TwilioRestException) as refused:
        twilio_client.calls.create(to=TARGET_NUMBER, from_=OUR_NUMBER, twiml="<Response>" + "x" * 4000 + "</Response>")
    assert refused.value.code == 32018

    with pytest.raises(TwilioRestException) as refused:
        sdk_client(emulator, auth_token="wrong").calls.create(to=TARGET_NUMBER, from_=OUR_NUMBER, twiml="<Response/>")
    assert (refused.value.status, refused.value.code) == (401, 20003)

    with pytest.raises(TwilioRestException) as refused:
        twilio_client.calls("CA" + "f" * 32).fetch()
    assert (refused.value.status, refused.value.code) == (404, 20404)


def test_hanging_up_a_live_call_through_the_api_closes_the_websocket(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            call = await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")

            ignored = await asyncio.to_thread(twilio_client.calls(call.sid).update, status="canceled")
            assert ignored.status == "in-progress"  # canceled only stops a call that has not been answered

            hung_up = await asyncio.to_thread(twilio_client.calls(call.sid).update, status="completed")
            assert hung_up.status == "completed"
            await relay.wait_closed()
            action = await product.next_webhook("action")
            assert action["SessionStatus"] == "ended"
            callbacks = await product.status_callbacks_until_completed()
            assert callbacks[-1]["CallStatus"] == "completed" and callbacks[-1]["SipResponseCode"] == "200"

    run(scenario())


def test_canceling_a_ringing_call(start_emulator, destinations):
    emulator = start_emulator(speech_scale=1.0)  # a real second of ringing to cancel in
    twilio_client = sdk_client(emulator)
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            call = await place_call(twilio_client, product)
            assert (await product.next_webhook("status"))["CallStatus"] == "queued"
            assert (await product.next_webhook("status"))["CallStatus"] == "ringing"
            canceled = await asyncio.to_thread(twilio_client.calls(call.sid).update, status="canceled")
            assert canceled.status == "canceled"
            completed = await product.next_webhook("status")
            assert (completed["CallStatus"], completed["SipResponseCode"]) == ("canceled", "487")
            assert product.relays.empty()

    run(scenario())


# -- dialling in -------------------------------------------------------------------------------------


async def dial_in(emulator: LoopbackTwilio, product: Product) -> str:
    form = {"To": OUR_NUMBER, "From": TARGET_NUMBER, "Url": product.hook("voice"), "StatusCallback": product.hook("status")}
    async with aiohttp.ClientSession(headers=EMULATOR_AUTH) as session:
        async with session.post(f"{emulator.base_url}/loopback/dial-in", data=form) as response:
            assert response.status == 202
            return (await response.json())["sid"]


def test_a_dial_in_follows_the_conversation_relay_twiml(emulator, destinations):
    far_end = ScriptedFarEnd(on_answer=[Say("Hi I am calling about my appointment")])
    destinations[TARGET_NUMBER] = answering(far_end)

    async def scenario():
        async with Product() as product:
            product.voice_twiml = relay_twiml(product, parameters={"run_id": "7"})
            sid = await dial_in(emulator, product)
            incoming = await product.next_webhook("voice")
            assert (incoming["CallSid"], incoming["From"], incoming["To"]) == (sid, TARGET_NUMBER, OUR_NUMBER)
            assert (incoming["Direction"], incoming["CallStatus"], incoming["Called"]) == ("inbound", "ringing", OUR_NUMBER)

            relay = await product.next_relay()
            setup = await relay.recv_type("setup")
            assert (setup["direction"], setup["from"], setup["to"]) == ("inbound", TARGET_NUMBER, OUR_NUMBER)
            assert setup["customParameters"] == {"run_id": "7"}
            prompt = await relay.recv_type("prompt", last=True)
            assert prompt["voicePrompt"] == "Hi I am calling about my appointment"
            await relay.send({"type": "end"})
            assert (await product.next_webhook("action"))["SessionStatus"] == "completed"
            completed = await product.next_webhook("status")  # a number's callback: completed only
            assert (completed["CallStatus"], completed["Direction"], completed["SequenceNumber"]) == ("completed", "inbound", "0")

    run(scenario())


def test_a_dial_in_answered_with_say_and_hangup_ends(emulator, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd())

    async def scenario():
        async with Product() as product:
            product.voice_twiml = "<Response><Say>No test is armed for this number.</Say><Hangup/></Response>"
            sid = await dial_in(emulator, product)
            assert (await product.next_webhook("voice"))["CallSid"] == sid
            assert (await product.next_webhook("status"))["CallStatus"] == "completed"
            timeline = (await witness(emulator, sid))["timeline"]
            assert events(timeline, "twiml:plain") and not events(timeline, "ws:open")
            assert product.relays.empty()

    run(scenario())


# -- the shipped far ends ----------------------------------------------------------------------------


def test_the_demo_receptionist_greets_on_silence_and_answers_key_presses(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(DemoReceptionist())

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            assert (await relay.recv_type("prompt", last=True))["voicePrompt"] == VOICE_GREETING
            await relay.send({"type": "sendDigits", "digits": "1"})
            assert (await relay.recv_type("prompt", last=True))["voicePrompt"] == "Appointments. What day works for you?"
            await relay.send({"type": "end"})
            await product.next_webhook("action")

    run(scenario())


@dataclass
class ChatReply:
    text: str
    ended: bool = False


class EchoChatBot:
    """A chat target connection: greets, echoes, and ends the conversation on "bye"."""

    closed = False

    async def open(self):
        return ChatReply("Hello from chat")

    async def send(self, text):
        return ChatReply(f"You said {text}", ended="bye" in text.lower())

    async def press(self, digits):
        return ChatReply(f"You pressed {digits}")

    async def close(self):
        EchoChatBot.closed = True


def test_a_chat_rehearsal_speaks_the_bot_and_hangs_up_when_it_ends(twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ChatRehearsal(EchoChatBot))

    async def scenario():
        async with Product() as product:
            await place_call(twilio_client, product)
            relay = await product.next_relay()
            await relay.recv_type("setup")
            assert (await relay.recv_type("prompt", last=True))["voicePrompt"] == "Hello from chat"
            await relay.say("Okay bye now")
            assert (await relay.recv_type("prompt", last=True))["voicePrompt"] == "You said Okay bye now"
            await relay.wait_closed()
            assert (await product.next_webhook("action"))["SessionStatus"] == "ended"
            assert EchoChatBot.closed

    run(scenario())


# -- recording ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed: recordings cannot be voiced")
def test_a_recorded_call_gets_a_two_channel_wav_and_a_recording_callback(emulator, twilio_client, destinations):
    destinations[TARGET_NUMBER] = answering(ScriptedFarEnd(replies=[[Say("Hello this is the dentist")]]))

    async def scenario():
        async with Product() as product:
            call = await place_call(twilio_client, product, record=True, recording_channels="dual",
                                    recording_status_callback=product.hook("recording"))
            relay = await product.next_relay()
            await relay.recv_type("setup")
            await relay.say("Hi I need a cleaning")
            await relay.recv_type("prompt", last=True)
            await relay.send({"type": "end"})

            recorded = await product.next_webhook("recording")
            assert recorded["CallSid"] == call.sid and recorded["RecordingStatus"] == "completed"
            assert re.fullmatch(r"RE[0-9a-f]{32}", recorded["RecordingSid"])
            assert recorded["RecordingChannels"] == "2" and recorded["RecordingSource"] == "OutboundAPI"
            assert recorded["RecordingUrl"] == (
                f"{emulator.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recorded['RecordingSid']}")

            async with aiohttp.ClientSession(headers=EMULATOR_AUTH) as session:
                async with session.get(recorded["RecordingUrl"] + ".wav") as response:
                    assert response.status == 200
                    audio = await response.read()
            return audio

    audio = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    path = emulator.recordings_dir / "downloaded.wav"
    path.write_bytes(audio)
    with wave.open(str(path)) as recording:
        assert (recording.getnchannels(), recording.getsampwidth()) == (2, 2)
        frames = recording.readframes(recording.getnframes())
    samples = memoryview(frames).cast("h")
    assert any(samples[0::2]), "our caller's channel is silent"
    assert any(samples[1::2]), "the target's channel is silent"
