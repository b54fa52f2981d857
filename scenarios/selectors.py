"""Queries of scenarios' objects that views and APIs share."""

from __future__ import annotations

from django.db.models import QuerySet

from assure.tenancy import scoped
from scenarios.models import Scenario, Schedule


def schedules_of(scenario: Scenario) -> QuerySet[Schedule]:
    """A scenario's schedules, oldest first (its page's Schedules panel)."""
    return scoped(Schedule, scenario.workspace).filter(scenario=scenario).order_by("created_at")
