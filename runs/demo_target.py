"""The built-in demo target: a small rule-based receptionist for "Brightsmile Dental".

The product serves it itself over HTTP (``POST /demo-target/chat/``), so a fresh install has a
real system under test; the demo workspace's scripted paths follow its rules. It keeps no state:
each reply depends on the message alone.
"""

from __future__ import annotations

import json
import re

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday")
TIME_RE = re.compile(r"\b(10|3) ?(am|pm)\b")
VOICE_GREETING = "Thanks for calling Brightsmile Dental. For appointments press 1, for emergencies press 2."


def demo_reply(message: str) -> dict:
    """The receptionist's answer to one message: ``{"reply": text, "end": bool}``."""
    text = message.lower().strip()
    day = next((d for d in DAYS if d in text), None)
    time = TIME_RE.search(text)
    if text == "1":
        return _say("Appointments. What day works for you?")
    if text == "2":
        return _say("For a dental emergency, please describe what happened and I will connect you to our on-call dentist.")
    if any(w in text for w in ("broke", "hurts", "pain", "bleeding")):
        return _say("I'm sorry to hear that. Please call our on-call dentist now at +1 415 555 0100.")
    if "cancel" in text:
        if "yes" in text or "please cancel" in text:
            return _say("Done, your appointment is cancelled. Anything else I can help with?")
        return _say("I can help you cancel. Brightsmile Dental has your appointment on file; shall I cancel it?")
    if "hour" in text or "open" in text:
        return _say("Brightsmile Dental is open Monday to Friday, 8am to 6pm.")
    if time:
        slot = f"{time.group(1)}{time.group(2)}"
        return _say(f"You're booked for {slot}{' on ' + day.capitalize() if day else ''}. See you then!")
    if day:
        return _say(f"On {day.capitalize()} I have 10am or 3pm. Which would you prefer?")
    if any(w in text for w in ("book", "appointment", "cleaning", "check-up", "checkup")):
        return _say("Brightsmile Dental here, happy to help you book. What day works for you?")
    if any(w in text for w in ("bye", "thank")):
        return _say("Thanks for contacting Brightsmile Dental. Goodbye!")
    return _say("Sorry, I didn't catch that. Could you say it again? I can book, cancel or tell you our opening hours.")


def _say(text: str, end: bool = False) -> dict:
    return {"reply": text, "end": end}


@csrf_exempt
@require_POST
def chat(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
        message = body["message"]
        if not isinstance(message, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        return JsonResponse({"error": 'Send a JSON object with a "message" string.'}, status=400)
    return JsonResponse({"session_id": body.get("session_id"), **demo_reply(message)})
