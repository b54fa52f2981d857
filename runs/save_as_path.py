"""Save as path: a finished run's conversation becomes a new path of its scenario, its script
replaying what was said (``scenarios.portable.script_from_conversation``)."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from runs import selectors
from runs.models import Run, ToolInvocation, Turn
from scenarios import portable
from scenarios.models import Path, Scenario

MAX_NAME = Path._meta.get_field("name").max_length
# Saves of the same run racing (a double click) each pick the next free name; this many tries.
NAME_ATTEMPTS = 5


class SaveAsPathError(ValueError):
    """The run cannot become a path; ``detail`` is the API's 400 body."""

    def __init__(self, detail: dict):
        self.detail = detail
        super().__init__(str(detail))


def run_conversation(run: Run) -> list[tuple[str, str]]:
    """The run's conversation as ``script_from_conversation`` reads it: turns by speaker (turns the
    target failed to answer left out), the caller's key presses, and the caller's hang-up."""
    events: list[tuple[str, str]] = []
    for kind, item in selectors.transcript(run):
        if kind == "turn":
            if not item.is_error:
                events.append((item.speaker, item.text))
        elif item.name == "press_digit" and isinstance(item.arguments, dict):
            events.append(("press", str(item.arguments.get("digits", ""))))
        elif item.name == "end_call" and item.status != ToolInvocation.Status.ERROR:
            events.append(("end_call", ""))
    return events


def _free_name(scenario: Scenario, wanted: str) -> str:
    """``wanted``, or ``wanted (2)``, ``(3)``… : the first name no path of the scenario has."""
    taken = set(scenario.paths.values_list("name", flat=True))
    name, number = wanted[:MAX_NAME], 2
    while name in taken:
        suffix = f" ({number})"
        name, number = wanted[: MAX_NAME - len(suffix)] + suffix, number + 1
    return name


def run_save_as_path(*, run: Run, name: str | None = None) -> Path:
    """A new path of the run's scenario whose script replays the run: the caller's turns as ``say``
    steps, the target's as loose ``expect`` steps (``portable.loose_expectation``) to edit, key
    presses as ``press``. The narrative and the path's own criteria are the run's path's, as the
    run had them. Without ``name``: "<path> (saved from run <id>)", numbered if taken. Raises
    ``SaveAsPathError`` for a run still going, without turns, or whose scenario is gone, or for a
    ``name`` the scenario has. A default name taken between the check and the insert (the same
    run saved twice at once) is replaced by the next free one."""
    if not run.is_terminal:
        raise SaveAsPathError({"detail": "The run has not finished yet: save it as a path once it has ended."})
    if not Turn.objects.filter(run=run).exists():
        raise SaveAsPathError({"detail": "The run has no turns: there is no conversation to save as a path."})
    scenario = Scenario.objects.filter(pk=run.scenario_id, workspace_id=run.workspace_id).first()
    if scenario is None:
        raise SaveAsPathError({"detail": "The run's scenario has been deleted: there is nowhere to save the path."})
    snapshot_path = (run.snapshot or {}).get("path") or {}
    wanted = None
    if name is None:
        source = snapshot_path.get("name") or "Run"
        wanted = f"{source} (saved from run {str(run.pk)[:8]})"
        name = _free_name(scenario, wanted)
    elif scenario.paths.filter(name=name).exists():
        raise SaveAsPathError({"name": [f"The scenario already has a path named {name!r}."]})
    script = portable.script_from_conversation(run_conversation(run))
    for _ in range(NAME_ATTEMPTS):
        # Another save may take the name after the check: the validation then refuses it, or, a
        # moment later still, the unique constraint does (in a savepoint, so the caller's
        # transaction stays usable). Either way a default name moves on to the next free one.
        try:
            with transaction.atomic():
                return portable.path_create(
                    scenario=scenario, name=name, narrative=snapshot_path.get("narrative") or "",
                    script=script, criteria=snapshot_path.get("criteria") or [])
        except portable.ImportRefused as exc:
            if not scenario.paths.filter(name=name).exists():
                raise SaveAsPathError(exc.detail) from None
        except IntegrityError:
            if not scenario.paths.filter(name=name).exists():
                raise  # another constraint: a defect, not a race on the name
        if wanted is None:
            raise SaveAsPathError({"name": [f"The scenario already has a path named {name!r}."]})
        name = _free_name(scenario, wanted)
    raise SaveAsPathError({"detail": "Other saves of this run kept taking the path's name: try again."})
