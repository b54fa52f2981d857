"""The voice channel's driver: takes a materialized voice run live by placing its call (outbound)
or arming a number for the target to dial (inbound), then lets go of it. The conversation attaches
when the call's ConversationRelay websocket reaches ``telephony.consumers``, in whichever web
process it lands; the run waits meanwhile with ``attach_by`` as its deadline.
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from runs import services as run_services
from runs.execution import ChannelDriver, PreparedRun
from runs.failures import PlatformError
from runs.recorder import db
from telephony import services
from telephony.models import Provider
from telephony.providers import TelephonyError, provider_for
from telephony.twiml import relay_twiml

# Twilio ends the call itself a little after our own cap, should we fail to.
TIME_LIMIT_GRACE_SECONDS = 30


class VoiceDriver(ChannelDriver):
    async def start(self, prepared: PreparedRun, *, http) -> None:
        if prepared.direction == "inbound":
            await self._arm(prepared)
        else:
            await self._dial(prepared)

    async def _dial(self, prepared: PreparedRun) -> None:
        """Steps: write the call (a redelivered start finds it and stops); go live and let go of
        the run *before* dialling, so a fast answer finds it waiting; dial outside any transaction;
        record the sid, or hang up at once if the run ended while we dialled."""
        dial = await db(services.call_prepare_outbound, run_id=prepared.run_id, snapshot=prepared.snapshot)
        if dial is None:
            return
        try:
            provider = provider_for(dial.provider)
        except TelephonyError as exc:
            raise PlatformError(str(exc)) from None
        deadline = services.attach_deadline(direction="outbound", window_seconds=0, ring_seconds=settings.CALL_RING_SECONDS)
        if not await db(run_services.run_await_call, run_id=prepared.run_id, persona=prepared.persona,
                        attach_by=deadline, detail=f"calling {dial.to} from {dial.from_}"):
            return
        twiml = relay_twiml(relay_url=provider.relay_url(), action_url=provider.webhook_url("connect", run=prepared.run_id),
                            run_id=prepared.run_id, agent=prepared.snapshot["agent"])
        try:
            sid = await asyncio.to_thread(
                provider.place_call, to=dial.to, from_=dial.from_, twiml=twiml, run_id=prepared.run_id,
                ring_seconds=settings.CALL_RING_SECONDS, time_limit=prepared.cap_seconds + TIME_LIMIT_GRACE_SECONDS)
        except TelephonyError as exc:
            raise await db(services.call_placement_failed, call_id=dial.call_id, error=exc) from None
        if not await db(services.call_placed, call_id=dial.call_id, sid=sid):
            await asyncio.to_thread(services.call_hang_up, run_id=prepared.run_id)

    async def _arm(self, prepared: PreparedRun) -> None:
        """Steps: reserve a number and write the armed call; go live and wait for the call (the
        window is the deadline); on loopback, have the far end dial in as its system would."""
        armed = await db(services.call_arm_inbound, run_id=prepared.run_id, snapshot=prepared.snapshot)
        if armed is None:
            return
        call, provider_name = armed
        scenario = prepared.snapshot["scenario"]
        deadline = services.attach_deadline(direction="inbound", window_seconds=scenario["inbound_window_seconds"],
                                            ring_seconds=0)
        if not await db(run_services.run_await_call, run_id=prepared.run_id, persona=prepared.persona,
                        attach_by=deadline, detail=f"armed: waiting for a call to {call.to_number}"):
            await db(services.numbers_release, run_id=prepared.run_id)
            return
        if provider_name == Provider.LOOPBACK:
            target = prepared.snapshot["target"]
            try:
                await asyncio.to_thread(provider_for(Provider.LOOPBACK).dial_in, to=call.to_number,
                                        from_=target["phone_number"],
                                        delay_seconds=target.get("dial_in_delay_seconds") or 0)
            except TelephonyError as exc:
                raise PlatformError(str(exc)) from None

    def stop(self, run_id: str) -> None:
        services.call_hang_up(run_id=run_id)

    def never_attached(self, run_id: str, *, direction: str, window) -> tuple[str, str]:
        answered = services.call_answered(run_id=run_id)
        if answered:
            # The far end picked up (or called in) and the provider opened the call, but the relay
            # websocket never reached us: the provider cannot reach PUBLIC_BASE_URL.
            return (PlatformError.reason,
                    f"The call was {answered} but its conversation never reached this deployment: check that "
                    f"PUBLIC_BASE_URL ({settings.PUBLIC_BASE_URL or 'unset'}) is reachable from the telephony "
                    "provider, websockets included.")
        return super().never_attached(run_id, direction=direction, window=window)
