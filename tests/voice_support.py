"""The voice stack for end-to-end tests: the loopback telephony (the product's Twilio emulator)
served from this test process, the product's daphne and a Celery worker with beat, all on the
test database and Redis.

Far ends are chosen per number: ``stack.answer(number, far_end_factory)`` puts any far end (a
``ScriptedFarEnd``, the demo receptionist…) behind a number for the tests that follow; numbers
not registered fall through to the product's own directory (demo, rehearsal targets, the busy /
no-answer / failing numbers). Simulated speech runs 50× faster than life.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

from django.conf import settings

from telephony.loopback.calls import Destination
from telephony.loopback.directory import resolve as product_resolve
from telephony.loopback.emulator import LoopbackTwilio
from tests.support import CeleryWorker, DaphneServer, free_port

SPEECH_SCALE = 0.02


class VoiceStack:
    def __init__(self, *, redis_url: str, tmp_path, worker_env: dict | None = None, web_env: dict | None = None,
                 public_base_url: bool = False):
        """``public_base_url``: set PUBLIC_BASE_URL to this stack's daphne, the URL a real provider
        (a test's fake of Twilio) calls back; its port is chosen here, so callers cannot pass it."""
        self.destinations: dict[str, Destination] = {}
        self.emulator = LoopbackTwilio(
            account_sid=settings.LOOPBACK_ACCOUNT_SID, auth_token=settings.LOOPBACK_AUTH_TOKEN, resolve=self._resolve,
            speech_scale=SPEECH_SCALE, recordings_dir=tmp_path / "recordings",
        )
        self.telephony_url = self.emulator.start_in_thread()
        port = free_port()
        env = {"PORT": str(port), "LOOPBACK_TELEPHONY_URL": self.telephony_url, "CALL_RING_SECONDS": "5",
               "DEMO_TARGET_URL": f"http://127.0.0.1:{port}/demo-target/chat/"}
        if public_base_url:
            env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        self.redis_url = redis_url
        self.web_env = {**env, **(web_env or {})}
        self.web = DaphneServer(redis_url=redis_url, env=self.web_env)
        self.worker = CeleryWorker(redis_url=redis_url, name="voice", env={**env, **(worker_env or {})}, beat=True)
        self.env = env

    def restart_web(self) -> None:
        """A new daphne on the same port and settings, as a supervisor restarts a web process that
        died (a test killed it with ``stack.web.kill()``)."""
        self.web.stop()
        self.web = DaphneServer(redis_url=self.redis_url, env=self.web_env)

    def _resolve(self, far_end_number: str, our_number: str) -> Destination:
        if far_end_number in self.destinations:
            return self.destinations[far_end_number]
        return product_resolve(far_end_number, our_number)

    def answer(self, number: str, far_end_factory) -> None:
        """Whoever calls ``number`` from now on reaches a new ``far_end_factory()``."""
        self.destinations[number] = Destination("answer", far_end=far_end_factory)

    def calls(self) -> list[dict]:
        return self._get("/loopback/calls")["calls"]

    def call(self, sid: str) -> dict:
        """The emulator's witness of one call: its timeline, reply gaps, session end."""
        return self._get(f"/loopback/calls/{sid}")

    def dial_in(self, *, to: str, from_: str) -> str:
        """A far end at ``from_`` calls our number ``to`` now, through the product's voice webhook,
        as a customer's system would; returns the call's sid."""
        form = {"To": to, "From": from_, "Url": f"{self.web.url}/telephony/loopback/voice/", "Delay": "0"}
        return self._request("/loopback/dial-in", data=urllib.parse.urlencode(form).encode())["sid"]

    def _get(self, path: str) -> dict:
        return self._request(path)

    def _request(self, path: str, data: bytes | None = None) -> dict:
        token = base64.b64encode(f"{settings.LOOPBACK_ACCOUNT_SID}:{settings.LOOPBACK_AUTH_TOKEN}".encode()).decode()
        request = urllib.request.Request(self.telephony_url + path, data=data,
                                         headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def stop(self) -> None:
        self.worker.stop()
        self.web.stop()
        self.emulator.stop()
