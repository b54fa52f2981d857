"""Regular expressions that users write (a criterion's ``regex``, a script's ``expect``), compiled
with RE2 and matched against at most ``MAX_TEXT_CHARS`` of text.

Python's ``re`` backtracks: ``(a+)+$`` on a few dozen characters runs for minutes, on the event
loop that holds every other conversation of the worker. RE2 matches in time linear in the text,
and in exchange has no backreferences, lookarounds or atomic groups; a pattern that uses them is
refused when it is saved, with a message that says which.
"""

from __future__ import annotations

import functools

import re2

MAX_TEXT_CHARS = 100_000

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # otherwise RE2 writes every refused pattern to stderr

# RE2's parser error (its start) -> the syntax in words. Anything else is reported as RE2 words it.
_UNSUPPORTED = (
    *((f"invalid escape sequence: \\{digit}", "backreferences (\\1 … \\9)") for digit in "123456789"),
    ("invalid escape sequence: \\k", "backreferences (\\k<name>)"),
    ("invalid perl operator: (?P", "backreferences ((?P=name))"),
    ("invalid perl operator: (?=", "lookahead ((?=…))"),
    ("invalid perl operator: (?!", "negative lookahead ((?!…))"),
    ("invalid perl operator: (?<=", "lookbehind ((?<=…))"),
    ("invalid perl operator: (?<!", "negative lookbehind ((?<!…))"),
    ("invalid perl operator: (?>", "atomic groups ((?>…))"),
    ("invalid perl operator: (?(", "conditionals ((?(1)…|…))"),
    ("invalid perl operator: (?#", "comments ((?#…))"),
    ("bad repetition operator: ++", "possessive repetition (a++)"),
    ("bad repetition operator: *+", "possessive repetition (a*+)"),
    ("bad repetition operator: ?+", "possessive repetition (a?+)"),
    ("invalid escape sequence: \\Z", "\\Z (use \\z, or $)"),
    ("invalid repetition size", "repetition counts above 1000, or {n,m} with n > m"),
)


class PatternError(ValueError):
    """A pattern RE2 will not compile. ``unsupported`` names syntax RE2 lacks (a backreference…);
    otherwise ``reason`` is RE2's own words for a pattern that is not valid anywhere."""

    def __init__(self, *, unsupported: str | None, reason: str):
        self.unsupported, self.reason = unsupported, reason
        super().__init__(f"RE2 does not support {unsupported}" if unsupported else reason)


def _pattern_error(error: re2.error) -> PatternError:
    reason = error.args[0] if error.args else "not valid"
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    unsupported = next((syntax for start, syntax in _UNSUPPORTED if reason.startswith(start)), None)
    return PatternError(unsupported=unsupported, reason=reason)


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str):
    """The compiled pattern, or ``PatternError``."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise _pattern_error(exc) from None


def matches(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches anywhere in the first ``MAX_TEXT_CHARS`` of ``text``."""
    return compile_pattern(pattern).search(text[:MAX_TEXT_CHARS]) is not None
