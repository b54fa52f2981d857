"""What this process knows of the runs it has seen.

A run's workspace, scenario, batch and channel are set when it is queued and never change, and a
run changes stage several times: each change publishes to the run's pages and its end is followed
up (admission, the batch's end, a call's release). Remembered once, when a worker loads the runs
it claimed or when a change first asks, they cost one query per run, not one per change.
"""

from __future__ import annotations

import collections
from typing import NamedTuple

KNOWN_RUNS_LIMIT = 20_000


class Known(NamedTuple):
    workspace_id: object
    scenario_id: object
    batch_id: object
    channel: str

    def groups(self, run_id) -> list[str]:
        """The Channels groups of the pages that show the run."""
        return [f"run-{run_id}", f"workspace-{self.workspace_id}"] + (
            [f"scenario-{self.scenario_id}"] if self.scenario_id else [])


_known: collections.OrderedDict[str, Known] = collections.OrderedDict()


def remember(run) -> Known:
    """Note what ``run`` (a ``Run`` loaded for something else) tells of itself."""
    return _note(run.pk, Known(run.workspace_id, run.scenario_id, run.batch_id,
                               (run.snapshot.get("scenario") or {}).get("channel", "")))


def known(run_ids) -> dict[str, Known]:
    """{run id: what is known of it}, reading the runs not seen yet in one query; a run that is
    gone is left out."""
    from runs.models import Run

    wanted = [str(run_id) for run_id in run_ids]
    found = {run_id: _known[run_id] for run_id in wanted if run_id in _known}
    missing = [run_id for run_id in wanted if run_id not in found]
    if missing:
        for run_id, workspace_id, scenario_id, batch_id, channel in Run.objects.filter(
                pk__in=missing).order_by().values_list(
                "pk", "workspace_id", "scenario_id", "batch_id", "snapshot__scenario__channel"):
            found[str(run_id)] = _note(run_id, Known(workspace_id, scenario_id, batch_id, channel or ""))
    return found


def _note(run_id, known: Known) -> Known:
    _known[str(run_id)] = known
    while len(_known) > KNOWN_RUNS_LIMIT:
        _known.popitem(last=False)
    return known
