"""A fake of Twilio's REST API for placing and hanging up calls, on a real local socket.

The product reaches it through the real twilio SDK (``TWILIO_API_URL`` points at ``fake.url``):

- ``POST /2010-04-01/Accounts/{sid}/Calls.json`` records the request's form fields and answers
  ``201`` with a call resource (status ``queued``, a fresh ``CA…`` sid), or, for a number given to
  ``refuse()``, Twilio's error JSON (``{"code", "message", "more_info", "status"}``), which the SDK
  raises as ``TwilioRestException``;
- ``POST …/Calls/{sid}.json`` records the update (``Status=canceled|completed``) and answers with the
  call resource;
- HTTP Basic auth (account sid and auth token) is checked on every request: 401 / 20003 otherwise.

It never calls anyone back and opens no websocket: a test plays Twilio's side itself with
``call_back()``, a form POST signed the way Twilio signs (``X-Twilio-Signature``), to the exact URL
the product gave Twilio when it placed the call (``PlacedCall.status_callback`` …).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from email.utils import format_datetime
from datetime import datetime, timezone
from xml.etree import ElementTree

import httpx
from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.fakes import AiohttpServer

API_VERSION = "2010-04-01"
# Leave the header out: ``call_back(..., signature=UNSIGNED)``.
UNSIGNED = None
_SIGN = object()


@dataclass
class PlacedCall:
    """One call the fake accepted: the product's request and what it asked of the call since."""

    sid: str
    form: dict
    updates: list[dict] = field(default_factory=list)

    @property
    def to(self) -> str:
        return self.form["To"]

    @property
    def status_callback(self) -> str:
        return self.form["StatusCallback"]

    @property
    def recording_status_callback(self) -> str:
        return self.form["RecordingStatusCallback"]

    @property
    def connect_action(self) -> str:
        """The ``<Connect action>`` URL of the call's TwiML: Twilio posts the relay session's end there."""
        return ElementTree.fromstring(self.form["Twiml"]).find("Connect").get("action")

    @property
    def relay_url(self) -> str:
        """The ConversationRelay websocket URL of the call's TwiML."""
        return ElementTree.fromstring(self.form["Twiml"]).find("Connect/ConversationRelay").get("url")

    def statuses_asked(self) -> list[str]:
        return [update.get("Status") for update in list(self.updates)]


class FakeTwilio(AiohttpServer):
    def __init__(self, *, account_sid: str | None = None, auth_token: str | None = None):
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.requests: list[dict] = []  # the form of every authenticated Calls.json request, refused or not
        self.calls: dict[str, PlacedCall] = {}
        self.unauthenticated = 0
        self._refusals: dict[str, dict] = {}
        self._lock = threading.Lock()

        account = f"/{API_VERSION}/Accounts/{{account_sid}}"
        app = web.Application(middlewares=[self._basic_auth])
        app.router.add_post(f"{account}/Calls.json", self._create_call)
        app.router.add_post(f"{account}/Calls/{{sid}}.json", self._update_call)
        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}"

    # What the test configures and reads --------------------------------------------------------

    def refuse(self, to: str, *, code: int, message: str, status: int = 400) -> None:
        """Calls to ``to`` fail the way Twilio refuses them (e.g. 21211, an invalid 'To' number)."""
        self._refusals[to] = {"code": code, "message": message,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}

    def requests_to(self, to: str) -> list[dict]:
        with self._lock:
            return [form for form in self.requests if form.get("To") == to]

    def placed(self, to: str) -> list[PlacedCall]:
        with self._lock:
            return [call for call in self.calls.values() if call.to == to]

    # Playing Twilio's callbacks ---------------------------------------------------------------

    def signature_for(self, url: str, params: dict, *, token: str | None = None) -> str:
        return RequestValidator(token or self.auth_token).compute_signature(url, params)

    def call_back(self, url: str, params: dict, *, signature=_SIGN) -> httpx.Response:
        """POST ``params`` to ``url`` as Twilio does: form-encoded, signed with the account's token
        unless ``signature`` is given (``UNSIGNED`` leaves the header out)."""
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if signature is _SIGN:
            signature = self.signature_for(url, params)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return httpx.post(url, data=params, headers=headers, timeout=15)

    def status_fields(self, call: PlacedCall, status: str, sequence: int, **extra: str) -> dict:
        """The form of one status callback of ``call``, as Twilio sends it."""
        return {
            "AccountSid": self.account_sid, "CallSid": call.sid, "From": call.form["From"], "To": call.to,
            "Called": call.to, "Caller": call.form["From"], "Direction": "outbound-api", "ApiVersion": API_VERSION,
            "CallStatus": status, "SequenceNumber": str(sequence), "CallbackSource": "call-progress-events",
            "Timestamp": format_datetime(datetime.now(timezone.utc), usegmt=True), **extra,
        }

    # The REST API -----------------------------------------------------------------------------

    @web.middleware
    async def _basic_auth(self, request: web.Request, handler):
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if (scheme.lower() != "basic" or not hmac.compare_digest(user, self.account_sid)
                or not hmac.compare_digest(password, self.auth_token)
                or request.match_info.get("account_sid") != self.account_sid):
            self.unauthenticated += 1
            return self._error(401, 20003, "Authenticate")
        return await handler(request)

    async def _create_call(self, request: web.Request) -> web.Response:
        form = _fields(await request.post())
        with self._lock:
            self.requests.append(form)
        refusal = self._refusals.get(form.get("To", ""))
        if refusal is not None:
            return web.json_response(refusal, status=refusal["status"])
        call = PlacedCall(sid="CA" + secrets.token_hex(16), form=form)
        with self._lock:
            self.calls[call.sid] = call
        return web.json_response(self._resource(call, "queued"), status=201)

    async def _update_call(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return self._error(404, 20404, f"The requested resource {request.path} was not found")
        update = _fields(await request.post())
        call.updates.append(update)
        return web.json_response(self._resource(call, update.get("Status") or "queued"))

    def _resource(self, call: PlacedCall, status: str) -> dict:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}"
        now = format_datetime(datetime.now(timezone.utc), usegmt=True)
        return {"sid": call.sid, "account_sid": self.account_sid, "to": call.to, "from": call.form.get("From"),
                "status": status, "direction": "outbound-api", "api_version": API_VERSION, "date_created": now,
                "date_updated": now, "uri": f"{uri}.json"}

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message, "status": status,
                                  "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)


def _fields(form) -> dict:
    """Form fields; a repeated one (``StatusCallbackEvent``) as a list."""
    fields: dict = {}
    for key in form:
        values = form.getall(key)
        fields[key] = values[0] if len(values) == 1 else list(values)
    return fields
