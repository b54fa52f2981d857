"""Run every path of a scenario from CI: ``manage.py assure_run <scenario> --wait [--junit FILE]``.

Exits 0 when every run completed with the verdict ``passed``; 1 when any failed, was cancelled,
or judged failed/inconclusive; 2 on bad input; 3 when --timeout ran out first.
"""

from __future__ import annotations

import sys
import time
import uuid
from xml.etree import ElementTree as ET

from django.core.management.base import BaseCommand, CommandError

from assure.models import Workspace
from runs import services
from runs.models import TERMINAL_STATUSES, Run
from scenarios.models import Scenario


class Command(BaseCommand):
    help = "Queue all paths of a scenario as one batch; with --wait, wait for the verdicts and exit non-zero on any failure."

    def add_arguments(self, parser):
        parser.add_argument("scenario", help="The scenario's id, or its exact name.")
        parser.add_argument("--workspace", help="Workspace slug (needed when the name is used in several workspaces).")
        parser.add_argument("--wait", action="store_true", help="Wait until every run has finished.")
        parser.add_argument("--junit", metavar="FILE", help="Write a JUnit XML report (implies --wait).")
        parser.add_argument("--timeout", type=float, default=1800, help="Seconds to wait at most (default 1800).")

    def handle(self, *args, scenario, workspace, wait, junit, timeout, **options):
        target = self._scenario(scenario, workspace)
        try:
            batch, runs = services.scenario_run_all(scenario=target)
        except services.RunStateError as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(f"Queued {len(runs)} runs of '{target.name}' as batch {batch.pk}.")
        if not (wait or junit):
            return
        finished = self._wait([r.pk for r in runs], timeout)
        runs = list(Run.objects.filter(batch=batch).order_by("created_at"))
        for run in runs:
            outcome = run.verdict or run.failure_reason or run.status
            self.stdout.write(f"  {run.status:<9} {outcome:<26} {run.snapshot['path']['name']}")
        if junit:
            self._write_junit(junit, target, runs)
        passed = sum(1 for r in runs if r.status == "completed" and r.verdict == "passed")
        self.stdout.write(f"{passed} passed, {len(runs) - passed} failed")
        if not finished:
            self.stderr.write(f"Timed out after {timeout:.0f}s with runs still going.")
            sys.exit(3)
        if passed != len(runs):
            sys.exit(1)

    def _scenario(self, value: str, workspace_slug: str | None) -> Scenario:
        scenarios = Scenario.objects.select_related("workspace")
        if workspace_slug:
            workspace = Workspace.objects.filter(slug=workspace_slug).first()
            if workspace is None:
                raise CommandError(f"No workspace with slug {workspace_slug!r}.", returncode=2)
            scenarios = scenarios.filter(workspace=workspace)
        try:
            matches = list(scenarios.filter(pk=uuid.UUID(value)))
        except ValueError:
            matches = list(scenarios.filter(name=value))
        if not matches:
            raise CommandError(f"No scenario {value!r}{' in ' + workspace_slug if workspace_slug else ''}.", returncode=2)
        if len(matches) > 1:
            raise CommandError(
                f"{len(matches)} scenarios are named {value!r}; pass --workspace or the scenario's id.", returncode=2
            )
        return matches[0]

    def _wait(self, run_ids, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            counts = dict(Run.objects.filter(pk__in=run_ids).values_list("status").annotate(n=__import__("django").db.models.Count("id")).order_by())
            if counts != last:
                self.stdout.write("  " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
                last = counts
            if sum(n for s, n in counts.items() if s in TERMINAL_STATUSES) == len(run_ids):
                return True
            time.sleep(0.5)
        return False

    def _write_junit(self, path: str, scenario: Scenario, runs: list[Run]) -> None:
        failures = sum(1 for r in runs if r.status == "completed" and r.verdict != "passed")
        errors = sum(1 for r in runs if r.status != "completed")
        suite = ET.Element("testsuite", name=scenario.name, tests=str(len(runs)), failures=str(failures), errors=str(errors))
        for run in runs:
            duration = (run.metrics or {}).get("duration_ms") or 0
            case = ET.SubElement(suite, "testcase", classname=scenario.name, name=run.snapshot["path"]["name"],
                                 time=f"{duration / 1000:.3f}")
            if run.status != "completed":
                element = ET.SubElement(case, "error", type=run.failure_reason or run.status,
                                        message=run.failure_detail or f"Run {run.status}")
                element.text = f"Run {run.pk}: {run.failure_detail or run.status}"
            elif run.verdict != "passed":
                failed = [c for c in run.criteria_results.all() if c.outcome != "passed"]
                element = ET.SubElement(case, "failure", type=run.verdict or "failed",
                                        message="; ".join(f"{c.name}: {c.outcome}" for c in failed) or run.verdict)
                element.text = "\n".join(f"{c.name} ({c.kind}) {c.outcome}: {c.rationale}" for c in failed)
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
