from __future__ import annotations

from datetime import datetime

from django import template

from telephony import selectors

register = template.Library()


@register.simple_tag
def recording_state(call) -> str:
    """``stored | live | unanswered | processing | unavailable``: see ``selectors.recording_state``."""
    return selectors.recording_state(call)


@register.filter
def iso_datetime(value):
    """A call history entry's ``at`` (an ISO 8601 string in JSON) as a datetime, for the ``date`` filter."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
