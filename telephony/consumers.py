"""The ConversationRelay websocket: Twilio (or the loopback telephony) opens it for each call.

The handshake is signed with the account's auth token over the exact URL we put in the TwiML; a
forged or unsigned handshake is refused before anything is read. The ``setup`` frame names the
run (a ``<Parameter>`` of the TwiML); the run, which has been waiting for its call, attaches to
this process's conversation holder, and the conversation runs as a task of daphne's loop while
this consumer feeds it every frame. Nothing here decides how a run ends: ``runs.execution`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import aiohttp
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import transaction
from django.utils import timezone

from assure import egress
from runs import dispatch
from runs.execution import attach, converse_attached
from runs.holder import holder_for_this_loop
from runs.live import publish_from_loop
from runs.recorder import DbRecorder, db
from telephony.models import Call
from telephony.providers import TelephonyError, provider_for
from telephony.relay import RelayConnection

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
# Twilio closes the socket after ten malformed messages in a row; we stop listening after as many.
MAX_BAD_FRAMES = 10

_http_sessions: dict[int, aiohttp.ClientSession] = {}


def _http() -> aiohttp.ClientSession:
    """One aiohttp session per event loop, for the LLM caller's function calls."""
    loop_id = id(asyncio.get_running_loop())
    session = _http_sessions.get(loop_id)
    if session is None or session.closed:
        # Function webhooks are tenants' URLs: the egress policy applies, and no cookie is kept.
        session = _http_sessions[loop_id] = egress.client_session()
    return session


class RelayConsumer(AsyncWebsocketConsumer):
    # A call's socket needs no channel layer: everything it carries is between the provider and
    # this process. Without one, a slow Redis can never close a live call.
    channel_layer_alias = None

    async def connect(self):
        self.connection: RelayConnection | None = None
        self.bad_frames = 0
        try:
            provider = provider_for(self.scope["url_route"]["kwargs"]["provider"])
        except TelephonyError as exc:
            logger.warning("relay websocket refused: %s", exc)
            await self.close(code=4404)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self.scope["headers"]}
        if not provider.signature_valid(provider.relay_url(), {}, headers.get("x-twilio-signature", "")):
            logger.warning("relay websocket refused: bad or missing X-Twilio-Signature")
            await self.close(code=4403)
            return
        await self.accept()

    async def dispatch(self, message):
        # Channels' dispatch first closes stale database connections, a round trip to a thread and
        # back before every frame: a call sends dozens per turn, and under 100 calls that hop took
        # p50 0.7 ms, p99 60 ms before our turn could even start (bench/README.md, Voice). This
        # consumer's queries run through runs.recorder.db, whose threads keep their connections fresh.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data=None, bytes_data=None):
        message = self._parse(text_data)
        if message is None:
            self.bad_frames += 1
            if self.bad_frames >= MAX_BAD_FRAMES:
                await self.close(code=1007)
            return
        self.bad_frames = 0
        if self.connection is not None:
            self.connection.feed(message)
        elif message.get("type") == "setup":
            await self._setup(message)

    def _parse(self, text_data) -> dict | None:
        if not text_data or len(text_data) > MAX_FRAME_BYTES:
            return None
        try:
            message = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: a frame nested thousands deep
            return None
        return message if isinstance(message, dict) else None

    async def _setup(self, message: dict) -> None:
        parameters = message.get("customParameters") if isinstance(message.get("customParameters"), dict) else {}
        try:
            run_id = str(uuid.UUID(str(parameters.get("run"))))
        except ValueError:
            await self._refuse("the session names no run")
            return
        holder = holder_for_this_loop("relay")
        publish_from_loop(asyncio.get_running_loop())
        prepared = await attach(run_id, holder=holder.name)
        if prepared is None:
            await self._refuse(f"run {run_id} is not waiting for a call")
            return
        await db(_call_connected, run_id, sid=str(message.get("callSid") or "")[:64])
        recorder = DbRecorder(run_id)
        self.connection = RelayConnection(send_json=self._send_json, recorder=recorder)
        holder.hold(run_id, self._converse(prepared, recorder))

    async def _converse(self, prepared, recorder) -> None:
        connection = self.connection

        async def session_ended(finished: bool):
            # Whoever closed the session first hung up. When we closed it, it was our caller's
            # end_call only if the conversation finished; otherwise AssureAgent cut it short.
            if not connection.we_ended:
                hung_up_by = Call.HungUpBy.TARGET
            else:
                hung_up_by = Call.HungUpBy.CALLER if finished else Call.HungUpBy.PLATFORM
            await db(_call_finished, prepared.run_id, hung_up_by=hung_up_by, events=connection.events)

        await converse_attached(prepared, connection, http=_http(), recorder=recorder, on_ended=session_ended)

    async def _refuse(self, why: str) -> None:
        logger.warning("relay session ended at once: %s", why)
        await self._send_json({"type": "end", "handoffData": json.dumps({"reason": why})})
        await self.close()

    async def _send_json(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame))

    async def disconnect(self, code):
        if self.connection is not None:
            self.connection.feed_closed()


def _call_connected(run_id, *, sid: str) -> None:
    """The conversation is connected: the call was answered, whatever its callbacks say yet."""
    now = timezone.now()
    Call.objects.filter(run_id=run_id, answered_at__isnull=True).update(answered_at=now)
    Call.objects.filter(run_id=run_id, status__in=[Call.Status.ARMED, Call.Status.QUEUED, Call.Status.RINGING,
                                                   Call.Status.PLACING]).update(status=Call.Status.IN_PROGRESS)
    if sid:
        Call.objects.filter(run_id=run_id, sid__isnull=True).update(sid=sid)
    transaction.on_commit(lambda: dispatch.publish_run_changed(run_id))


def _call_finished(run_id, *, hung_up_by: str, events: list[dict]) -> None:
    Call.objects.filter(run_id=run_id, hung_up_by="").update(hung_up_by=hung_up_by)
    Call.objects.filter(run_id=run_id).update(relay_events=events)
    transaction.on_commit(lambda: dispatch.publish_run_changed(run_id))
