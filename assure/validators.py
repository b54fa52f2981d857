"""Validators the apps share: URLs a tenant gives, checked against the egress policy when saved."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from assure import egress


def _validate_url(value: str, schemes: tuple[str, ...]) -> None:
    scheme = urlsplit(value or "").scheme
    if scheme not in schemes:
        raise ValidationError(
            f"Must be a URL starting with {' or '.join(s + '://' for s in schemes)}.", code="invalid_url"
        )
    # Not Django's URLValidator: it wants a dotted domain, and targets often live at hosts like
    # http://bot:8080 on a private network.
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValidationError(f"Not a valid URL: {exc}.", code="invalid_url") from None
    if not parts.hostname or any(c.isspace() for c in value):
        raise ValidationError("Not a valid URL: it needs a host name and no spaces.", code="invalid_url")
    # Only what needs no DNS lookup (a literal address, localhost): names are checked at run time,
    # when the connection is made to the address that was checked.
    refusal = egress.static_refusal(value)
    if refusal is not None:
        raise ValidationError(f"This URL is {refusal}.", code="egress_blocked")


def validate_http_url(value: str) -> None:
    _validate_url(value, ("http", "https"))


def validate_ws_url(value: str) -> None:
    _validate_url(value, ("ws", "wss"))
