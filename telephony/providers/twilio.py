"""Twilio's API through the twilio SDK, for Twilio itself and for the loopback emulator.

The SDK builds every URL on ``https://<domain>.twilio.com``; ``RebasedHttpClient`` rewrites the
origin to ``api_url`` when it is not Twilio's, which is how the loopback telephony (and a test's
fake of Twilio) is reached through exactly the code path that production uses.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse
from dataclasses import dataclass

import httpx
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from telephony.providers import TelephonyError

logger = logging.getLogger(__name__)

TWILIO_ORIGIN = "https://api.twilio.com"
REQUEST_TIMEOUT_SECONDS = 15
MAX_RECORDING_BYTES = 200 * 1024 * 1024


class RebasedHttpClient(TwilioHttpClient):
    def __init__(self, api_url: str):
        super().__init__(timeout=REQUEST_TIMEOUT_SECONDS)
        self.api_url = api_url.rstrip("/")

    def request(self, method, url, *args, **kwargs):
        parts = urllib.parse.urlsplit(url)
        if parts.hostname and parts.hostname.endswith(".twilio.com"):
            url = self.api_url + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().request(method, url, *args, **kwargs)


@dataclass
class TwilioProvider:
    name: str
    account_sid: str
    auth_token: str
    api_url: str
    callback_base_url: str

    @property
    def client(self) -> Client:
        http_client = None if self.api_url.rstrip("/") == TWILIO_ORIGIN else RebasedHttpClient(self.api_url)
        return Client(self.account_sid, self.auth_token, http_client=http_client)

    # URLs the provider calls back ----------------------------------------------------------

    def webhook_url(self, name: str, **query) -> str:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.callback_base_url.rstrip('/')}/telephony/{self.name}/{name}/{suffix}"

    def relay_url(self) -> str:
        base = self.callback_base_url.rstrip("/")
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/telephony/{self.name}/relay/"

    def signature_valid(self, url: str, params: dict, signature: str) -> bool:
        return bool(signature) and RequestValidator(self.auth_token).validate(url, params, signature)

    # Calls ---------------------------------------------------------------------------------

    def place_call(self, *, to: str, from_: str, twiml: str, run_id: str, ring_seconds: int, time_limit: int) -> str:
        """Dial ``to``; returns the call sid. Slow network I/O: never inside a transaction."""
        try:
            call = self.client.calls.create(
                to=to, from_=from_, twiml=twiml,
                status_callback=self.webhook_url("status", run=run_id), status_callback_method="POST",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
                timeout=ring_seconds, time_limit=time_limit,
                record=True, recording_channels="dual",
                recording_status_callback=self.webhook_url("recording", run=run_id),
                recording_status_callback_event=["completed"],
            )
        except TwilioRestException as exc:
            raise TelephonyError(_words(exc), code=exc.code) from None
        except Exception as exc:  # the SDK's transport: refused, timeout, DNS
            raise TelephonyError(f"could not reach the telephony provider at {self.api_url}: {exc}") from None
        return call.sid

    def hang_up(self, sid: str, *, answered: bool) -> None:
        """End a call: a live one is completed, one still queued or ringing is canceled."""
        try:
            self.client.calls(sid).update(status="completed" if answered else "canceled")
        except TwilioRestException as exc:
            raise TelephonyError(_words(exc), code=exc.code) from None
        except Exception as exc:
            raise TelephonyError(f"could not reach the telephony provider at {self.api_url}: {exc}") from None

    def download_recording(self, url: str) -> bytes:
        """The recording's WAV, fetched with the account's credentials; only from the provider's API."""
        if not url.startswith(("https://api.twilio.com/", self.api_url.rstrip("/") + "/")):
            raise TelephonyError(f"refusing to download a recording from {url}: not the provider's API")
        if self.api_url.rstrip("/") != TWILIO_ORIGIN:
            url = self.api_url.rstrip("/") + urllib.parse.urlsplit(url).path
        token = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        try:
            with httpx.stream("GET", url + ".wav", headers={"Authorization": f"Basic {token}"},
                              timeout=REQUEST_TIMEOUT_SECONDS, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise TelephonyError(f"the recording at {url} answered HTTP {response.status_code}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RECORDING_BYTES:
                        raise TelephonyError(f"the recording at {url} is over {MAX_RECORDING_BYTES // 2**20} MiB")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise TelephonyError(f"could not download the recording at {url}: {exc}") from None

    def dial_in(self, *, to: str, from_: str, delay_seconds: int) -> None:
        """Loopback only: have the far end at ``from_`` call our number ``to`` after a delay, as the
        system under test would. Twilio's own numbers are dialled by the customer's system."""
        try:
            response = httpx.post(
                f"{self.api_url.rstrip('/')}/loopback/dial-in", auth=(self.account_sid, self.auth_token),
                data={"To": to, "From": from_, "Url": self.webhook_url("voice"), "Delay": str(delay_seconds),
                      "StatusCallback": self.webhook_url("status")},
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except httpx.HTTPError as exc:
            raise TelephonyError(f"could not reach the loopback telephony at {self.api_url}: {exc}. Is it running "
                                 "(make up starts it)?") from None
        if response.status_code >= 300:
            raise TelephonyError(f"the loopback telephony refused the dial-in: HTTP {response.status_code} "
                                 f"{response.text[:200]}")


def _words(exc: TwilioRestException) -> str:
    message = exc.msg if isinstance(exc.msg, str) else str(exc)
    # The SDK prefixes "Unable to create record: "; the provider's own words are what users need.
    return message.split(": ", 1)[-1] if message.startswith("Unable to") else message
