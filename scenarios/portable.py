"""Scenarios as text: a scenario exported to YAML and imported back, Botium ``.convo.txt`` files
imported as paths, and a recorded conversation turned into a path's script.

Everything that reaches the database goes through the API's own serializers (``scenarios.api``),
so a file is refused for exactly what the API and the pages refuse, with the same messages, and
inside one transaction: an import that fails writes nothing.

The YAML is deterministic (fixed key order, block style, one string style per kind of string), so
export → import → export gives the same bytes, and a scenario kept in a repository diffs cleanly.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import yaml
from django.db import IntegrityError, transaction
from django.utils import timezone

from assure.tenancy import scoped
from scenarios import validators
from scenarios.api import PathSerializer, ScenarioSerializer
from scenarios.models import Agent, Path, Scenario, Target

FORMAT_VERSION = 1
MAX_YAML_BYTES = 1_000_000
MAX_YAML_DEPTH = 32
MAX_PATHS = 500
MAX_BOTIUM_FILES = 500
MAX_BOTIUM_FILE_BYTES = 256_000
MAX_BOTIUM_TOTAL_BYTES = 1_000_000
# A saved expectation longer than this many characters is cut at a word: the target's exact words
# rarely repeat at that length, and RE2 compiles a literal this long comfortably.
MAX_EXPECT_CHARS = 1_000

SCENARIO_KEYS = ("version", "name", "description", "channel", "direction", "inbound_window_seconds",
                 "max_parallel_runs", "agent", "target", "criteria", "paths")
PATH_KEYS = ("name", "narrative", "script", "criteria")
SCENARIO_DEFAULTS = {"description": "", "direction": Scenario.Direction.OUTBOUND, "inbound_window_seconds": 300,
                     "max_parallel_runs": None, "criteria": []}


class _ExactScenarioSerializer(ScenarioSerializer):
    """The API's scenario serializer, keeping multi-line text exactly as the file has it (the API
    trims surrounding whitespace): export → import → export gives the same bytes."""

    class Meta(ScenarioSerializer.Meta):
        extra_kwargs = {**getattr(ScenarioSerializer.Meta, "extra_kwargs", {}),
                        "description": {"trim_whitespace": False}}


class _ExactPathSerializer(PathSerializer):
    class Meta(PathSerializer.Meta):
        extra_kwargs = {**getattr(PathSerializer.Meta, "extra_kwargs", {}),
                        "narrative": {"trim_whitespace": False}}


class ImportRefused(ValueError):
    """The text cannot be imported; ``detail`` is the API's 400 body (field → messages)."""

    def __init__(self, detail: dict[str, Any]):
        self.detail = detail
        super().__init__(str(detail))


# Export ----------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style throughout; multi-line text as literal blocks (``|``) so narratives read as
    written; text with line breaks YAML would normalise (``\\r``, NEL, U+2028/9) double-quoted."""

    def ignore_aliases(self, data) -> bool:
        # Two equal criteria must be written out twice, never as an anchor and an alias.
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if any(char in value for char in "\r\x85\u2028\u2029"):
        style = '"'
    elif "\n" in value:
        style = "|"  # the emitter falls back to quotes where a block cannot hold the text exactly
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _canonical(value: Any) -> Any:
    """Objects with their keys sorted, all the way down (a tool's expected arguments)."""
    if isinstance(value, dict):
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def _criterion(criterion: dict) -> dict:
    """``name``, ``kind``, then the kind's fields in the order the validators declare them."""
    required, optional = validators.CRITERION_KINDS.get(criterion.get("kind"), ({}, {}))
    order = ["name", "kind", *required, *optional]
    ordered = {key: _canonical(criterion[key]) for key in order if key in criterion}
    ordered.update({key: _canonical(criterion[key]) for key in sorted(criterion) if key not in ordered})
    return ordered


def scenario_document(scenario: Scenario) -> dict:
    """The scenario as the plain data the YAML holds: agent and target by name, paths in the
    scenario page's order."""
    return {
        "version": FORMAT_VERSION,
        "name": scenario.name,
        "description": scenario.description,
        "channel": scenario.channel,
        "direction": scenario.direction,
        "inbound_window_seconds": scenario.inbound_window_seconds,
        "max_parallel_runs": scenario.max_parallel_runs,
        "agent": scenario.agent.name,
        "target": scenario.target.name,
        "criteria": [_criterion(c) for c in scenario.criteria],
        "paths": [
            {
                "name": path.name,
                "narrative": path.narrative,
                "script": [_canonical(step) for step in path.script],
                "criteria": [_criterion(c) for c in path.criteria],
            }
            for path in scenario.paths.order_by("created_at", "name")
        ],
    }


def dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     indent=2, width=math.inf)


def scenario_to_yaml(scenario: Scenario) -> str:
    return dump_yaml(scenario_document(scenario))


# Loading YAML safely -------------------------------------------------------------------------


# libyaml's parser and composer when PyYAML was built with it (the wheels are): several times faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):
    """The safe loader, refusing a key given twice (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be plain text", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_events(text: str) -> None:
    """Refuse, from the parser's event stream and before anything is built, what a small text file
    never needs and a hostile one uses: aliases (a few lines of them expand into gigabytes once
    walked) and nesting deeper than ``MAX_YAML_DEPTH`` (building the document recurses per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted", event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_yaml(data: bytes | str) -> Any:
    """One YAML document, at most ``MAX_YAML_BYTES``, as plain JSON-like data; ``ImportRefused``
    otherwise, with the line where the YAML went wrong."""
    if isinstance(data, bytes):
        if len(data) > MAX_YAML_BYTES:
            raise ImportRefused({"detail": f"The YAML is larger than {MAX_YAML_BYTES:,} bytes."})
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ImportRefused({"detail": "The YAML must be UTF-8 text."}) from None
    elif len(data.encode("utf-8")) > MAX_YAML_BYTES:
        raise ImportRefused({"detail": f"The YAML is larger than {MAX_YAML_BYTES:,} bytes."})
    try:
        _check_events(data)
        loader = _StrictLoader(data)
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ImportRefused({"detail": f"Not valid YAML: {_yaml_problem(exc)}"}) from None
    except ValueError as exc:  # a scalar Python will not convert: an integer of thousands of digits
        raise ImportRefused({"detail": f"Not valid YAML: {exc}"}) from None
    problem = _not_json(document, "the document")
    if problem:
        raise ImportRefused({"detail": problem})
    return document


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})."
    return f"{problem}."


def _not_json(value: Any, where: str) -> str | None:
    """What in ``value`` has no JSON equivalent (a date, a set, a non-text key, NaN), or None.
    Scripts and criteria are stored as JSON."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    return f"{at}: the key {key!r} must be text (quote it)."
                stack.append((inner, f"{at} › {key}"))
        elif isinstance(item, list):
            stack.extend((inner, f"{at} › item {i}") for i, inner in enumerate(item, start=1))
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{at}: {item} is not a number JSON can hold."
        elif item is not None and not isinstance(item, (str, int, bool)):
            return f"{at}: {item!r} is a {type(item).__name__}, not text or a number (quote it)."
    return None


# Import ----------------------------------------------------------------------------------------


def _unknown_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> str | None:
    unknown = [key for key in mapping if key not in allowed]
    if unknown:
        return f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; " \
               f"use {', '.join(allowed)}."
    return None


def _messages(errors: Any) -> str:
    """A serializer's errors as one line: ``field: message; field: message``."""
    if isinstance(errors, dict):
        return "; ".join(f"{field}: {_messages(inner)}" if field != "non_field_errors" else _messages(inner)
                         for field, inner in errors.items())
    if isinstance(errors, list):
        return " ".join(_messages(inner) for inner in errors)
    return str(errors)


def scenario_import(*, workspace, document: Any, replace: bool = False) -> Scenario:
    """Create a scenario and its paths from an exported document (``load_yaml``'s result). Steps:

    1. Check the document's shape: an object with the known keys, ``version`` 1, at most
       ``MAX_PATHS`` paths, each an object with the known keys.
    2. Find the agent and target by name in ``workspace``.
    3. In one transaction: save the scenario through the API's serializer, new or (``replace``)
       the one of the same name, then each path in file order. With ``replace``, a path of the
       same name is updated in place (its runs stay linked), others are created, and paths the
       file no longer lists are deleted. Paths are ordered as the file orders them.
    4. Any refusal rolls everything back and raises ``ImportRefused`` naming the field or path;
       so does a race lost to another writer (imports into one workspace take turns on its row;
       a same-named scenario or path created meanwhile by the API or a page is caught after the
       insert), never a server error or two scenarios of one name.
    """
    if not isinstance(document, dict):
        raise ImportRefused({"detail": "The YAML must be an object with the scenario's fields (name, channel, "
                                       "agent, target, criteria, paths…): export a scenario to see one."})
    problem = _unknown_keys(document, SCENARIO_KEYS, "scenario")
    if problem:
        raise ImportRefused({"detail": problem})
    version = document.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ImportRefused({"version": [f"This server reads version {FORMAT_VERSION} files; "
                                         f"this one says {version!r}."]})
    paths = document.get("paths", [])
    if paths is None:
        paths = []
    if not isinstance(paths, list):
        raise ImportRefused({"paths": ["Must be a list of paths."]})
    if len(paths) > MAX_PATHS:
        raise ImportRefused({"paths": [f"At most {MAX_PATHS} paths per scenario; this file has {len(paths)}."]})
    first_with_name: dict[str, int] = {}
    for index, item in enumerate(paths, start=1):
        if not isinstance(item, dict):
            raise ImportRefused({"paths": [f"path {index}: must be an object with a name (and narrative, script, "
                                           "criteria)."]})
        problem = _unknown_keys(item, PATH_KEYS, f"path {index}")
        if problem:
            raise ImportRefused({"paths": [problem]})
        path_name = item.get("name")
        if isinstance(path_name, str):
            if path_name in first_with_name:
                raise ImportRefused({"paths": [f"path {index}: the name {path_name!r} is path "
                                               f"{first_with_name[path_name]}'s too; each path needs its own."]})
            first_with_name[path_name] = index

    references = {}
    errors: dict[str, list[str]] = {}
    for field, model in (("agent", Agent), ("target", Target)):
        name = document.get(field)
        if not isinstance(name, str) or not name:
            errors[field] = [f"The {field}'s name is required."]
            continue
        found = scoped(model, workspace).filter(name=name).first()
        if found is None:
            errors[field] = [f"No {field} named {name!r} in this workspace: create it first, or fix the name."]
        references[field] = found
    if errors:
        raise ImportRefused(errors)

    name = document.get("name")
    # What the file leaves out takes the default, on a replace too: the scenario becomes the file.
    # (An empty value reads as null: for these fields, the default too.)
    data = {key: document[key] for key in SCENARIO_KEYS if key in document and key not in ("version", "paths")}
    data.update({key: default for key, default in SCENARIO_DEFAULTS.items() if data.get(key) is None})
    data.update(agent=references["agent"].pk, target=references["target"].pk)
    try:
        return _scenario_save(workspace=workspace, name=name, data=data, paths=paths, replace=replace)
    except IntegrityError:
        # A path of the replaced scenario added by someone else between the checks and the inserts.
        raise ImportRefused({"detail": "The scenario changed while it was being imported: nothing was imported; "
                                       "try again."}) from None


def _scenario_save(*, workspace, name: Any, data: dict, paths: list, replace: bool) -> Scenario:
    context = {"workspace": workspace}
    with transaction.atomic():
        # Imports into one workspace take turns: two imports of a new name must not both find it
        # free and create two scenarios of that name. (A row lock; SQLite serialises writes anyway.)
        list(type(workspace).objects.filter(pk=workspace.pk).select_for_update().values_list("pk", flat=True))
        same_name = (list(scoped(Scenario, workspace).filter(name=name).select_for_update())
                     if isinstance(name, str) else [])
        if same_name and not replace:
            raise ImportRefused({"name": [f"A scenario named {name!r} already exists: import with ?replace=true "
                                          "to update it, or rename it in the file."]})
        if len(same_name) > 1:
            raise ImportRefused({"name": [f"{len(same_name)} scenarios are named {name!r}: rename all but one "
                                          "before replacing."]})
        instance = same_name[0] if same_name else None
        serializer = _ExactScenarioSerializer(instance, data=data, context=context)
        if not serializer.is_valid():
            raise ImportRefused(serializer.errors)
        scenario = serializer.save(workspace=workspace)
        if scoped(Scenario, workspace).filter(name=scenario.name).count() > 1:
            # One of that name was created outside an import (the API, a page) after the check.
            raise ImportRefused({"name": [f"A scenario named {scenario.name!r} was created while importing: "
                                          "nothing was imported; import again with ?replace=true to update it."]})

        kept = {path.name: path for path in scenario.paths.all()} if instance is not None else {}
        saved: list[Path] = []
        path_errors: list[str] = []
        for index, item in enumerate(paths, start=1):
            path_name = item.get("name")
            existing = kept.pop(path_name, None) if isinstance(path_name, str) else None
            # An empty value (``script:`` with nothing after it reads as null) is the field's default.
            path_data = {"scenario": scenario.pk, "name": path_name,
                         **{key: default if item.get(key) is None else item[key]
                            for key, default in (("narrative", ""), ("script", []), ("criteria", []))}}
            path_serializer = _ExactPathSerializer(existing, data=path_data, context=context)
            if not path_serializer.is_valid():
                label = f"path {index}" + (f" ({path_name})" if isinstance(path_name, str) else "")
                path_errors.append(f"{label}: {_messages(path_serializer.errors)}")
                continue
            saved.append(path_serializer.save(workspace=workspace))
        if path_errors:
            raise ImportRefused({"paths": path_errors})
        for leftover in kept.values():
            leftover.delete()
        _order_as_given(saved)
    return scenario


def _order_as_given(paths: list[Path]) -> None:
    """Paths are listed by creation time: give them consecutive times in the given order, so the
    page (and the next export) lists them as the file did."""
    base = timezone.now()
    for offset, path in enumerate(paths):
        path.created_at = base + timedelta(microseconds=offset)
        Path.objects.filter(pk=path.pk).update(created_at=path.created_at)


# Expectations ----------------------------------------------------------------------------------

_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def literal_pattern(text: str) -> str:
    """An RE2 pattern that finds ``text`` anywhere, ignoring case and how the words are spaced:
    Botium's default matching (substring, lower-cased, whitespace collapsed). Empty for no words."""
    words = text.split()
    return "(?i)" + r"\s+".join(_RE2_SPECIAL.sub(r"\\\1", word) for word in words) if words else ""


def loose_expectation(text: str) -> str:
    """The pattern for an ``expect`` step from what a target said: its words (the first
    ``MAX_EXPECT_CHARS`` of them, cut at a word), case and spacing ignored, not anchored."""
    if len(text) > MAX_EXPECT_CHARS:
        text = text[:MAX_EXPECT_CHARS].rsplit(None, 1)[0]
    return literal_pattern(text)


# Botium ----------------------------------------------------------------------------------------

# Botium's asserters, logic hooks and user inputs that have no equivalent in a script here. A line
# in a #me/#bot block is one of them when its first word (after Botium's ``!`` negation or ``?``
# optional marks) is a name below; any other line is the message text, as Botium reads it.
_BOTIUM_UNSUPPORTED = frozenset({
    "BUTTON", "BUTTONS", "MEDIA", "CARDS", "FORM", "FORMS", "INTENT", "INTENT_UNIQUE", "INTENT_CONFIDENCE",
    "ENTITIES", "ENTITY_VALUES", "ENTITY_CONTENT", "JSON_PATH", "JSON_PATH_COUNT", "RESPONSE_LENGTH",
    "TEXT", "TEXT_EQUALS", "TEXT_EQUALS_IC", "TEXT_REGEXP_ANY", "TEXT_REGEXP_ALL", "TEXT_REGEXP_ANY_IC",
    "TEXT_REGEXP_ALL_IC", "TEXT_WILDCARD_ANY", "TEXT_WILDCARD_ALL", "TEXT_WILDCARD_ANY_IC", "TEXT_WILDCARD_ALL_IC",
    "TEXT_WILDCARDEXACT_ANY", "TEXT_WILDCARDEXACT_ALL", "TEXT_WILDCARDEXACT_ANY_IC", "TEXT_WILDCARDEXACT_ALL_IC",
    "WAITFORBOT", "WAITFORBOTTIMEOUT", "SET_SCRIPTING_MEMORY", "CLEAR_SCRIPTING_MEMORY", "ASSIGN_SCRIPTING_MEMORY",
    "UPDATE_CUSTOM", "SKIP_BOT_UNCONSUMED", "INCLUDE", "CONDITIONAL_STEP_TIME_BASED",
    "CONDITIONAL_STEP_BUSINESS_HOURS", "CONDITIONAL_STEP_JSON_PATH_BASED", "CHECKLINK", "HASLINK", "MESSAGE_INFO",
    "BOTIUM_SENTIMENT", "OPERATOR", "WER",
})
_BOTIUM_CONTAINS = {"TEXT_CONTAINS_ANY": False, "TEXT_CONTAINS_ANY_IC": True,
                    "TEXT_CONTAINS_ALL": False, "TEXT_CONTAINS_ALL_IC": True}
_HOOK_RE = re.compile(r"^([!?]{0,2})([A-Z][A-Z0-9_]*)(?:\s+(.*))?$")


class BotiumError(ValueError):
    def __init__(self, line: int | None, message: str):
        self.line, self.message = line, message
        super().__init__(f"line {line}: {message}" if line else message)


def convo_name(filename: str) -> str:
    base = posixpath.basename(filename.replace("\\", "/"))
    return base[: -len(".convo.txt")] if base.lower().endswith(".convo.txt") else base


def botium_skipped(filename: str) -> bool:
    """Botium skips files named ``skip.…``, ``skip-…`` or ``skip_…`` (any case); so do we."""
    return re.match(r"^skip[.\-_]", posixpath.basename(filename.replace("\\", "/")), re.IGNORECASE) is not None


def parse_botium_convo(filename: str, text: str) -> dict:
    """A Botium ``.convo.txt`` as ``{"name", "narrative", "script"}``. Steps:

    1. The first line, unless it starts a section (``#…``), is the convo's name (else the file's
       name); the lines after it, up to the first section, its description (the narrative).
    2. ``#me`` blocks become ``say`` steps (the block's lines joined), ``#bot`` blocks ``expect``
       steps with Botium's default matching: the text anywhere in the reply, case and spacing
       ignored. An empty ``#bot`` block expects any reply. ``#begin``/``#end`` are skipped.
    3. ``PAUSE ms`` becomes a ``pause_ms`` step; ``TEXT_CONTAINS_ANY|ALL[_IC] a|b`` in a ``#bot``
       block more ``expect`` steps. Other asserters and logic hooks, a message negated with ``!``
       (no script step says "must not contain"), ``#include`` and unknown sections are refused with
       their line: nothing is imported half-understood.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    name, description, index = None, [], 0
    if lines and lines[0].strip() and not lines[0].lstrip().startswith("#"):
        name = lines[0].strip()
        index = 1
        while index < len(lines) and not lines[index].lstrip().startswith("#"):
            description.append(lines[index])
            index += 1
    sections: list[tuple[str, int, list[tuple[int, str]]]] = []
    for number, line in enumerate(lines[index:], start=index + 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            sender, _, rest = stripped[1:].partition(" ")
            sender = sender.lower()
            if sender == "include":
                raise BotiumError(number, "#include (partial convos) is not supported: paste the partial convo's "
                                          "steps in its place.")
            if sender not in ("me", "bot", "begin", "end"):
                raise BotiumError(number, f"unknown section {stripped!r}: use #me, #bot, #begin or #end.")
            if rest.strip() and sender in ("me", "bot"):
                raise BotiumError(number, f"#{sender} takes nothing after it on its line; put the text below it.")
            sections.append((sender, number, []))
        elif not sections:
            if stripped:
                raise BotiumError(number, "text before the first #me or #bot section.")
        else:
            sections[-1][2].append((number, line))
    if not any(sender in ("me", "bot") for sender, _, _ in sections):
        raise BotiumError(None, "no #me or #bot section: not a Botium convo.")

    script: list[dict] = []
    for sender, number, block in sections:
        if sender in ("begin", "end"):
            continue
        script.extend(_botium_block(sender, number, block))
    if not script:
        raise BotiumError(None, "no steps.")
    return {"name": name or convo_name(filename), "narrative": "\n".join(description).strip(), "script": script}


def _botium_block(sender: str, number: int, block: list[tuple[int, str]]) -> list[dict]:
    texts: list[str] = []
    first_text_line: int | None = None
    before: list[dict] = []
    after: list[dict] = []
    for line_number, line in block:
        stripped = line.strip()
        hook = _HOOK_RE.match(stripped)
        name = hook.group(2) if hook else None
        if name == "PAUSE":
            argument = (hook.group(3) or "").strip()
            if hook.group(1) or not argument.isdigit() or not 0 < int(argument) <= validators.MAX_PAUSE_MS:
                raise BotiumError(line_number, f"PAUSE needs milliseconds from 1 to {validators.MAX_PAUSE_MS}.")
            (before if sender == "me" else after).append({"pause_ms": int(argument)})
        elif name in _BOTIUM_CONTAINS:
            if sender != "bot" or hook.group(1):
                raise BotiumError(line_number, f"{name} checks what the bot said: it belongs in a #bot block, "
                                               "without ! or ?.")
            options = [option for option in (hook.group(3) or "").split("|") if option.strip()]
            if not options:
                raise BotiumError(line_number, f"{name} needs the texts to look for, separated by |.")
            ignore_case = _BOTIUM_CONTAINS[name]
            found = [literal_pattern(option)[len("(?i)"):] for option in options]
            if name.startswith("TEXT_CONTAINS_ALL"):
                # Each expectation is checked against everything the target said since the caller
                # last spoke: one per text means all of them.
                after.extend({"expect": ("(?i)" if ignore_case else "") + pattern} for pattern in found)
            else:
                after.append({"expect": ("(?i)" if ignore_case else "") + "(?:" + "|".join(found) + ")"})
        elif name in _BOTIUM_UNSUPPORTED:
            raise BotiumError(line_number, f"the Botium asserter or logic hook {name} has no equivalent here; "
                                           "remove the line, or express it as a criterion of the path.")
        else:
            if first_text_line is None and stripped:
                first_text_line = line_number
            texts.append(line)
    text = "\n".join(texts).strip()
    if text.startswith("!"):
        # Botium reads a message starting with ! as its negation ("the reply must NOT contain
        # this"). A script step here can only expect what is said: importing it as a positive
        # expect (or a say) would silently invert the test.
        raise BotiumError(first_text_line, f"{text.splitlines()[0]!r}: a message starting with ! is Botium's "
                                           "negation (must NOT contain the text), which a script step cannot "
                                           "express; remove the line, or express it as a criterion of the path.")
    steps: list[dict] = list(before)
    if sender == "me":
        if text:
            steps.append({"say": text})
        elif not before:
            raise BotiumError(number, "#me with nothing to say.")
    else:
        # An empty #bot block: Botium only waits for a reply, whatever it says.
        steps.append({"expect": literal_pattern(text) if text else r"\S"})
    steps.extend(after)
    return steps


def paths_import_botium(*, scenario: Scenario, files: dict[str, str]) -> list[Path]:
    """Add one path per Botium convo in ``files`` (file name → text) to ``scenario``, in file-name
    order, in one transaction. Files Botium itself skips (``skip-…``) are left out. Raises
    ``ImportRefused`` ``{"files": ["name, line n: …", …]}`` naming every file refused, and
    then imports nothing."""
    problems: list[str] = []
    parsed: list[tuple[str, dict]] = []
    for filename in sorted(files):
        if botium_skipped(filename):
            continue
        if not filename.lower().endswith(".convo.txt"):
            problems.append(f"{filename}: only .convo.txt files are convos (utterances, partial convos and "
                            "other formats are not imported).")
            continue
        try:
            parsed.append((filename, parse_botium_convo(filename, files[filename])))
        except BotiumError as exc:
            where = f", line {exc.line}" if exc.line else ""
            problems.append(f"{filename}{where}: {exc.message}")
    if not problems and not parsed:
        problems.append("No convo to import: send at least one .convo.txt file.")
    taken = {name: "this scenario" for name in scenario.paths.values_list("name", flat=True)}
    for filename, convo in parsed:
        if convo["name"] in taken:
            problems.append(f"{filename}: the path name {convo['name']!r} is taken by {taken[convo['name']]}; "
                            "rename the convo (its first line).")
        taken.setdefault(convo["name"], filename)
    if problems:
        raise ImportRefused({"files": problems})

    context = {"workspace": scenario.workspace}
    try:
        with transaction.atomic():
            saved: list[Path] = []
            for filename, convo in parsed:
                serializer = PathSerializer(data={"scenario": scenario.pk, **convo}, context=context)
                if not serializer.is_valid():
                    problems.append(f"{filename}: {_messages(serializer.errors)}")
                    continue
                saved.append(serializer.save(workspace=scenario.workspace))
            if problems:
                raise ImportRefused({"files": problems})
            _order_as_given(saved)
    except IntegrityError:
        # A path of one of these names added to the scenario by someone else after the check.
        raise ImportRefused({"files": ["A path of one of these names was added to the scenario while importing: "
                                       "nothing was imported; try again."]}) from None
    return saved


# A conversation as a script ----------------------------------------------------------------------


def script_from_conversation(events: Iterable[tuple[str, str]]) -> list[dict]:
    """A script that replays a recorded conversation. ``events`` in order: ``("caller", text)``,
    ``("target", text)``, ``("press", digits)`` (the caller's key presses) and ``("end_call", "")``
    (the caller hung up). The caller's words become ``say`` steps, the target's ``expect`` steps
    (``loose_expectation``), key presses ``press`` steps; an ``end_call`` closes the script."""
    script: list[dict] = []
    for kind, text in events:
        if kind == "caller" and text.strip():
            script.append({"say": text})
        elif kind == "target" and text.strip():
            script.append({"expect": loose_expectation(text)})
        elif kind == "press" and validators.DTMF_RE.match(text or ""):
            script.append({"press": text})
        elif kind == "end_call":
            script.append({"end_call": True})
            break
    return script


def path_create(*, scenario: Scenario, name: str, narrative: str, script: list, criteria: list) -> Path:
    """Save a new path of ``scenario`` through the API's validation; ``ImportRefused`` with its
    field errors otherwise."""
    serializer = PathSerializer(data={"scenario": scenario.pk, "name": name, "narrative": narrative,
                                      "script": script, "criteria": criteria},
                                context={"workspace": scenario.workspace})
    if not serializer.is_valid():
        raise ImportRefused(serializer.errors)
    return serializer.save(workspace=scenario.workspace)
