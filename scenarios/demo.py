"""The demo workspace a fresh install starts with: built-in demo targets, an agent and two
scenarios whose scripted paths follow the built-in demo receptionist (Brightsmile Dental)."""

from __future__ import annotations

from django.db import transaction

from assure.models import Membership, Workspace
from scenarios.models import DEMO_VOICE_NUMBER, Agent, Channel, Path, Scenario, Target

DEMO_SLUG = "demo"

CHAT_SCENARIO = {
    "name": "Book a dental appointment (chat)",
    "description": (
        "A patient contacts Brightsmile Dental's chat assistant to book, move or ask about an "
        "appointment. The assistant must offer times, confirm the booking and stay polite."
    ),
    "criteria": [
        {"name": "Greets the patient", "kind": "regex", "speaker": "target", "pattern": "(?i)brightsmile"},
        {"name": "Answers quickly", "kind": "max_latency_ms", "percentile": "p90", "ms": 2000},
        {"name": "Patient ends the chat", "kind": "ended_by", "speaker": "caller"},
    ],
    "paths": [
        {
            "name": "Straightforward booking",
            "narrative": "Maya wants a cleaning on Tuesday morning and takes the first time offered.",
            "script": [
                {"say": "Hi, I'd like to book a cleaning."},
                {"expect": "(?i)what day"},
                {"say": "Tuesday, please."},
                {"expect": "(?i)10 ?am|3 ?pm"},
                {"say": "10am works for me."},
                {"expect": "(?i)booked"},
                {"say": "Thanks, bye!"},
                {"end_call": True},
            ],
            "criteria": [{"name": "Confirms the booking", "kind": "contains", "speaker": "target", "text": "booked"}],
        },
        {
            "name": "Asks about opening hours first",
            "narrative": "Leo first checks the opening hours, then books for Friday afternoon.",
            "script": [
                {"say": "What are your opening hours?"},
                {"expect": "(?i)open"},
                {"say": "Great. Can I book an appointment on Friday?"},
                {"expect": "(?i)10 ?am|3 ?pm"},
                {"say": "3pm, please."},
                {"expect": "(?i)booked"},
                {"end_call": True},
            ],
            "criteria": [{"name": "Gives opening hours", "kind": "regex", "speaker": "target", "pattern": "(?i)\\b(8|9) ?am\\b"}],
        },
        {
            "name": "Patient who wants to cancel",
            "narrative": "Ana can no longer make her appointment and wants to cancel it.",
            "script": [
                {"say": "Hello, I need to cancel my appointment."},
                {"expect": "(?i)cancel"},
                {"say": "Yes, please cancel it."},
                {"expect": "(?i)cancelled|canceled"},
                {"end_call": True},
            ],
            "criteria": [{"name": "Confirms the cancellation", "kind": "regex", "speaker": "target", "pattern": "(?i)cancell?ed"}],
        },
    ],
}

VOICE_SCENARIO = {
    "name": "After-hours line (voice)",
    "description": (
        "A caller reaches Brightsmile Dental's phone line. The voice assistant must route by keypad "
        "choice, handle an urgent case, and end the call cleanly."
    ),
    "criteria": [
        {"name": "Greets the caller", "kind": "regex", "speaker": "target", "pattern": "(?i)brightsmile"},
        {"name": "Short call", "kind": "max_duration_ms", "ms": 120000},
    ],
    "paths": [
        {
            "name": "Books through the keypad menu",
            "narrative": "Sam presses 1 for appointments and books Monday.",
            "script": [
                {"say": "Hi, is this Brightsmile Dental?"},
                {"expect": "(?i)press 1"},
                {"press": "1"},
                {"expect": "(?i)what day"},
                {"say": "Monday."},
                {"expect": "(?i)10 ?am|3 ?pm"},
                {"say": "3pm."},
                {"expect": "(?i)booked"},
                {"end_call": True},
            ],
            "criteria": [{"name": "Confirms the booking", "kind": "contains", "speaker": "target", "text": "booked"}],
        },
        {
            "name": "Dental emergency",
            "narrative": "Priya has a broken tooth and is in pain; she needs the emergency line.",
            "script": [
                {"say": "Hello, I need help urgently."},
                {"expect": "(?i)press 1"},
                {"press": "2"},
                {"expect": "(?i)emergenc"},
                {"say": "I broke a tooth and it really hurts."},
                {"expect": "(?i)on-call|on call"},
                {"end_call": True},
            ],
            "criteria": [{"name": "Gives the on-call number", "kind": "regex", "speaker": "target", "pattern": "(?i)on.call"}],
        },
        {
            "name": "Caller who says nothing useful",
            "narrative": "An unsure caller mumbles; the assistant should ask again politely.",
            "script": [
                {"say": "Hello?"},
                {"expect": "(?i)press 1"},
                {"say": "Umm, I'm not sure."},
                {"expect": "(?i)sorry|again"},
                {"end_call": True},
            ],
            "criteria": [{"name": "Asks again", "kind": "regex", "speaker": "target", "pattern": "(?i)sorry|again"}],
        },
    ],
}

INBOUND_SCENARIO = {
    "name": "Clinic calls the patient back (inbound voice)",
    "description": (
        "Brightsmile Dental's phone system calls a patient back. The run arms one of the workspace's "
        "inbound numbers and waits for the clinic's call; the patient then books through the menu."
    ),
    "criteria": [
        {"name": "Introduces the clinic", "kind": "regex", "speaker": "target", "pattern": "(?i)brightsmile"},
        {"name": "Patient ends the call", "kind": "ended_by", "speaker": "caller"},
    ],
    "paths": [
        {
            "name": "Patient books from the call-back",
            "narrative": "Noor answers the clinic's call and books a Tuesday appointment through the keypad.",
            "script": [
                {"say": "Hello, Noor speaking."},
                {"expect": "(?i)press 1"},
                {"press": "1"},
                {"expect": "(?i)what day"},
                {"say": "Tuesday, please."},
                {"expect": "(?i)10 ?am|3 ?pm"},
                {"say": "10am."},
                {"expect": "(?i)booked"},
                {"say": "Thank you, bye."},
                {"end_call": True},
            ],
            "criteria": [{"name": "Confirms the booking", "kind": "contains", "speaker": "target", "text": "booked"}],
        },
    ],
}

# Fictional loopback number the demo agent calls from (telephony/demo.py provisions it).
DEMO_OUTBOUND_NUMBER = "+15550150"


@transaction.atomic
def demo_seed(*, password: str | None) -> Workspace:
    """Create (or bring back up to date) the demo workspace; idempotent.

    With ``password`` the user ``demo`` is created (or reset) as the workspace's owner and may
    use the admin.
    """
    from django.contrib.auth import get_user_model

    workspace, _ = Workspace.objects.get_or_create(slug=DEMO_SLUG, defaults={"name": "Demo"})
    if password is not None:
        User = get_user_model()
        user, _ = User.objects.get_or_create(username="demo", defaults={"email": "demo@example.com"})
        user.set_password(password)
        user.is_staff = True
        user.is_active = True
        user.save()
        Membership.objects.update_or_create(workspace=workspace, user=user, defaults={"role": Membership.Role.OWNER})

    chat_target, _ = Target.objects.get_or_create(
        workspace=workspace,
        name="Demo receptionist (chat)",
        defaults={"channel": Channel.CHAT, "kind": Target.Kind.DEMO},
    )
    voice_target, _ = Target.objects.update_or_create(
        workspace=workspace,
        name="Demo receptionist (voice)",
        defaults={"channel": Channel.VOICE, "kind": Target.Kind.DEMO, "phone_number": DEMO_VOICE_NUMBER,
                  "dial_in_delay_seconds": 1},
    )

    agent, _ = Agent.objects.get_or_create(
        workspace=workspace,
        name="Demo caller",
        defaults={
            "instructions": "You are a patient contacting a dental clinic. Be brief and natural, and "
            "end the conversation once your request is handled.",
            "end_conditions": "End once the booking, cancellation or referral is confirmed.",
            "max_duration_seconds": 120,
            "outbound_numbers": [DEMO_OUTBOUND_NUMBER],
        },
    )
    for spec, channel, target, direction in (
        (CHAT_SCENARIO, Channel.CHAT, chat_target, Scenario.Direction.OUTBOUND),
        (VOICE_SCENARIO, Channel.VOICE, voice_target, Scenario.Direction.OUTBOUND),
        (INBOUND_SCENARIO, Channel.VOICE, voice_target, Scenario.Direction.INBOUND),
    ):
        scenario, _ = Scenario.objects.update_or_create(
            workspace=workspace,
            name=spec["name"],
            defaults={
                "description": spec["description"],
                "channel": channel,
                "direction": direction,
                "inbound_window_seconds": 120,
                "agent": agent,
                "target": target,
                "criteria": spec["criteria"],
            },
        )
        for path in spec["paths"]:
            Path.objects.update_or_create(
                workspace=workspace,
                scenario=scenario,
                name=path["name"],
                defaults={"narrative": path["narrative"], "script": path["script"], "criteria": path["criteria"]},
            )
    for obj in (chat_target, voice_target, agent, *Scenario.objects.filter(workspace=workspace), *Path.objects.filter(workspace=workspace)):
        obj.full_clean()  # the demo must itself pass the validation users meet
    return workspace
