"""JSON typed by users (API bodies, JSON textareas): strict JSON, and not nested without end.

Python's ``json`` accepts ``NaN`` and ``Infinity``, which no database JSON column and no other
JSON reader accepts, and recurses once per nesting level, so a body nested a few thousand deep
raises ``RecursionError`` instead of a parse error.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class JSONInputError(ValueError):
    """Parsed JSON that is refused; the message says why, in words for the user."""


def _refuse_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not allowed in JSON: use a number or null")


def loads(text: str | bytes) -> Any:
    """Strict ``json.loads``: ``json.JSONDecodeError`` for bad syntax, ``JSONInputError`` for NaN,
    Infinity or nesting deeper than ``MAX_DEPTH``."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONInputError(f"nested deeper than {MAX_DEPTH} levels") from None
    if nesting_depth(value) > MAX_DEPTH:
        raise JSONInputError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def nesting_depth(value: Any) -> int:
    """Depth of lists and objects in parsed JSON, without recursion: a scalar is 0, ``[]`` is 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break  # deep enough to refuse; no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest
