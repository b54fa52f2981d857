"""Validation of what users type: phone numbers, URLs, JSON Schemas, script steps, criteria.

Each validator raises ``ValidationError`` with a message that says what was wrong and what is
expected, pointing into nested JSON with its position (``step 3: …``) so the UI and the API can
show it next to the field.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

from assure import patterns
from assure.validators import validate_http_url, validate_ws_url  # noqa: F401  (migrations name them here)

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
DTMF_RE = re.compile(r"^[0-9*#wW]{1,32}$")
SPEAKERS = ("caller", "target")
MAX_PAUSE_MS = 60_000


def validate_e164(value: str) -> None:
    if not isinstance(value, str) or not E164_RE.match(value):
        raise ValidationError(
            "%(value)s is not an E.164 phone number: use + then country code and number, "
            "digits only, e.g. +14155550123.",
            code="invalid_e164",
            params={"value": repr(value)},
        )


def validate_e164_list(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError("Must be a list of E.164 phone numbers.", code="invalid_type")
    for index, number in enumerate(value, start=1):
        try:
            validate_e164(number)
        except ValidationError as exc:
            raise ValidationError(f"number {index}: {exc.messages[0]}", code="invalid_e164") from None
    if len(set(value)) != len(value):
        raise ValidationError("Each number may appear only once.", code="duplicate")


def validate_json_object(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("Must be a JSON object.", code="invalid_type")


def validate_headers(value: Any) -> None:
    validate_json_object(value)
    for name, header_value in value.items():
        if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", name):
            raise ValidationError(f"{name!r} is not a valid HTTP header name.", code="invalid_header")
        if not isinstance(header_value, str) or "\n" in header_value or "\r" in header_value:
            raise ValidationError(f"Header {name!r} must be a single-line string.", code="invalid_header")


def validate_parameters_schema(value: Any) -> None:
    """A custom function's parameters: a JSON Schema (draft 2020-12) describing an object."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    validate_json_object(value)
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the schema"
        raise ValidationError(f"Not a valid JSON Schema at {where}: {exc.message}", code="invalid_schema") from None
    if value.get("type") != "object":
        raise ValidationError(
            'Function parameters must be a JSON Schema with "type": "object".', code="invalid_schema"
        )


def validate_function_name(value: str) -> None:
    if not FUNCTION_NAME_RE.match(value or ""):
        raise ValidationError(
            "Use 1–64 letters, digits, underscores or hyphens, starting with a letter or underscore.",
            code="invalid_name",
        )


def validate_regex(pattern: Any, *, what: str = "pattern") -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValidationError(f"{what} must be a non-empty string.", code="invalid_type")
    try:
        patterns.compile_pattern(pattern)
    except patterns.PatternError as exc:
        if exc.unsupported:
            raise ValidationError(f"{what}: RE2 does not support {exc.unsupported}.", code="unsupported_regex") from None
        raise ValidationError(f"{what} is not a valid regular expression: {exc.reason}.", code="invalid_regex") from None


def validate_jsonpath(value: str) -> None:
    from jsonpath_ng.exceptions import JsonPathParserError
    from jsonpath_ng.ext import parse

    if not value or not value.startswith("$"):
        raise ValidationError("Must be a JSONPath starting with $, e.g. $.data.messages[0].text.", code="invalid_jsonpath")
    try:
        parse(value)
    except (JsonPathParserError, Exception) as exc:  # jsonpath-ng raises plain Exceptions from its lexer
        raise ValidationError(f"Not a valid JSONPath: {exc}", code="invalid_jsonpath") from None


def _step_error(index: int, message: str) -> ValidationError:
    return ValidationError(f"step {index}: {message}", code="invalid_step")


def validate_script(value: Any) -> None:
    """A path's script: a list of steps, each an object with exactly one of the step keys."""
    if not isinstance(value, list):
        raise ValidationError("A script must be a list of steps.", code="invalid_type")
    for index, step in enumerate(value, start=1):
        if not isinstance(step, dict) or len(step) != 1:
            raise _step_error(
                index, 'each step is an object with one key: "say", "press", "pause_ms", "expect" or "end_call".'
            )
        (kind, arg), = step.items()
        if kind == "say":
            if not isinstance(arg, str) or not arg.strip():
                raise _step_error(index, '"say" needs the text to say.')
        elif kind == "press":
            if not isinstance(arg, str) or not DTMF_RE.match(arg):
                raise _step_error(index, '"press" needs digits to press: 0-9, * and # (w waits half a second).')
        elif kind == "pause_ms":
            if isinstance(arg, bool) or not isinstance(arg, int) or not 0 < arg <= MAX_PAUSE_MS:
                raise _step_error(index, f'"pause_ms" needs a whole number of milliseconds from 1 to {MAX_PAUSE_MS}.')
        elif kind == "expect":
            try:
                validate_regex(arg, what='"expect"')
            except ValidationError as exc:
                raise _step_error(index, exc.messages[0]) from None
        elif kind == "end_call":
            if arg is not True:
                raise _step_error(index, '"end_call" takes true.')
        else:
            raise _step_error(
                index, f'unknown step {kind!r}; use "say", "press", "pause_ms", "expect" or "end_call".'
            )
    ends = [i for i, step in enumerate(value, start=1) if "end_call" in step]
    if ends and ends[0] != len(value):
        raise _step_error(ends[0], '"end_call" must be the last step.')


# kind -> (required fields with their checks, optional fields with their checks)
def _speaker(v: Any) -> bool:
    return v in SPEAKERS


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


CRITERION_KINDS: dict[str, tuple[dict, dict]] = {
    "contains": ({"speaker": _speaker, "text": _text}, {"case_sensitive": lambda v: isinstance(v, bool)}),
    "regex": ({"speaker": _speaker, "pattern": _text}, {}),
    "tool_called": ({"tool": _text}, {"arguments": lambda v: isinstance(v, dict)}),
    "tool_not_called": ({"tool": _text}, {}),
    "ended_by": ({"speaker": _speaker}, {}),
    "max_latency_ms": ({"percentile": lambda v: v in ("p50", "p90", "max"), "ms": _positive_int}, {}),
    "max_duration_ms": ({"ms": _positive_int}, {}),
    "min_turns": ({"n": _non_negative_int}, {}),
    "max_turns": ({"n": _non_negative_int}, {}),
    "llm_judge": ({"rule": _text}, {}),
}
_FIELD_HELP = {
    "speaker": '"caller" or "target"',
    "text": "non-empty text",
    "pattern": "a regular expression",
    "tool": "a tool name",
    "arguments": "an object of expected arguments",
    "percentile": '"p50", "p90" or "max"',
    "ms": "a positive whole number of milliseconds",
    "n": "a whole number, 0 or more",
    "rule": "the rule in plain words",
    "case_sensitive": "true or false",
}


def validate_criteria(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError("Criteria must be a list.", code="invalid_type")
    names: set[str] = set()
    for index, criterion in enumerate(value, start=1):
        prefix = f"criterion {index}"
        if not isinstance(criterion, dict):
            raise ValidationError(f"{prefix}: must be an object with a name and a kind.", code="invalid_criterion")
        name, kind = criterion.get("name"), criterion.get("kind")
        if not _text(name):
            raise ValidationError(f"{prefix}: needs a name.", code="invalid_criterion")
        if name in names:
            raise ValidationError(f"{prefix}: the name {name!r} is used twice.", code="invalid_criterion")
        names.add(name)
        if kind not in CRITERION_KINDS:
            raise ValidationError(
                f"{prefix} ({name}): unknown kind {kind!r}; use one of {', '.join(CRITERION_KINDS)}.",
                code="invalid_criterion",
            )
        required, optional = CRITERION_KINDS[kind]
        for field, check in required.items():
            if field not in criterion or not check(criterion[field]):
                raise ValidationError(
                    f"{prefix} ({name}): {kind} needs {field!r}: {_FIELD_HELP[field]}.", code="invalid_criterion"
                )
        for field, check in optional.items():
            if field in criterion and not check(criterion[field]):
                raise ValidationError(
                    f"{prefix} ({name}): {field!r} must be {_FIELD_HELP[field]}.", code="invalid_criterion"
                )
        unknown = set(criterion) - {"name", "kind"} - set(required) - set(optional)
        if unknown:
            raise ValidationError(
                f"{prefix} ({name}): {kind} takes no {', '.join(sorted(map(repr, unknown)))}.",
                code="invalid_criterion",
            )
        if kind == "regex":
            try:
                validate_regex(criterion["pattern"])
            except ValidationError as exc:
                raise ValidationError(f"{prefix} ({name}): {exc.messages[0]}", code="invalid_criterion") from None


LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def validate_language(value: str) -> None:
    if not LANGUAGE_RE.match(value or ""):
        raise ValidationError("Use a BCP 47 language tag such as en-US or es-MX.", code="invalid_language")


def empty_object_schema() -> dict:
    return {"type": "object", "properties": {}}
