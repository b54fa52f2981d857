"""Saving schedules: the one place that sets a schedule's next due time from what users edit.

Firing them is execution, and lives with the runs (``runs/schedules.py``); here a schedule is only
what users say: when, where (time zone), whether, how many repeats, and whom to tell on Slack.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from scenarios.cron import NeverDue, next_after
from scenarios.models import Schedule

# What decides when a schedule is due: a change to any of these starts its next due time afresh.
TIMING_FIELDS = ("cron", "timezone", "enabled")
EDITABLE_FIELDS = ("scenario", "cron", "timezone", "enabled", "repeat", "slack_webhook_url")


@transaction.atomic
def schedule_save(*, schedule: Schedule, now: datetime | None = None) -> Schedule:
    """Create or update ``schedule`` (already validated).

    1. Read what is stored (locked, so a beat claim and this save do not interleave; the schedule's
       row only, not its scenario's, which ``Meta.ordering`` would join).
    2. New, or cron / time zone / enabled changed: the next due time is the first after now (a
       schedule switched on again never fires for the times it was off), null while disabled, and
       the reason it once switched itself off is forgotten. A cron that never comes round again
       leaves it disabled, saying why. Otherwise the stored next due time stays: a pending due time
       is not skipped by an edit of ``repeat`` or the Slack URL.
    3. Save only the fields users edit (and those set here): a due time the beat task just moved
       on is the beat task's to write.
    """
    now = now or timezone.now()
    stored = None
    if not schedule._state.adding:
        stored = (Schedule.objects.select_for_update(of=("self",)).order_by().filter(pk=schedule.pk)
                  .values(*TIMING_FIELDS).first())
    retime = (schedule._state.adding or stored is None
              or any(stored[name] != getattr(schedule, name) for name in TIMING_FIELDS))
    if retime:
        schedule.next_run_at, schedule.disabled_reason = None, ""
        if schedule.enabled:
            try:
                schedule.next_run_at = next_after(schedule.cron, schedule.timezone, now)
            except NeverDue as exc:
                schedule.enabled, schedule.disabled_reason = False, str(exc)
    if schedule._state.adding:
        schedule.save()
    elif stored is None:
        raise Schedule.DoesNotExist("This schedule was deleted meanwhile.")
    else:
        fields = [*EDITABLE_FIELDS, "updated_at"] + (["next_run_at", "disabled_reason"] if retime else [])
        schedule.save(update_fields=fields)
    return schedule


def schedule_set_enabled(*, schedule: Schedule, enabled: bool) -> Schedule:
    schedule.enabled = enabled
    return schedule_save(schedule=schedule)


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete ``schedule``: it fires no more. The batches it queued are kept."""
    schedule.delete()
