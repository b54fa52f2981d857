"""Firing schedules: the beat task queues one batch per due time of each enabled schedule.

Exactly once per due time, with any number of beat processes and across restarts:
- a due time is claimed by a conditional update that moves ``next_run_at`` on from it (the loser of
  a race updates nothing and does nothing), in the same transaction as the ``ScheduleFiring`` row,
  unique per (schedule, due time), and the batch itself: all of it commits, or none of it and the
  next tick fires the due time again; a batch that cannot be queued is rolled back alone, and the
  firing says why (the schedule moves on: no retrying a broken one on every tick);
- the next due time is the first one after *now*, so due times missed while beat was down fire
  once on its return, not once per missed slot.

A schedule is due at ``next_run_at``, and fires on the first beat tick after it
(``SCHEDULE_TICK_SECONDS``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from runs import services
from runs.models import ScheduleFiring
from scenarios.cron import NeverDue, next_after
from scenarios.models import Schedule

logger = logging.getLogger(__name__)

# Due schedules handled per tick; the rest wait for the next tick (still in due-time order).
MAX_FIRINGS_PER_TICK = 200


def schedules_fire_due(*, now: datetime | None = None) -> list[ScheduleFiring]:
    """Fire every enabled schedule whose due time has come; what this process fired."""
    now = now or timezone.now()
    due = list(
        Schedule.objects.filter(enabled=True, next_run_at__lte=now)
        .order_by("next_run_at").values_list("pk", "next_run_at")[:MAX_FIRINGS_PER_TICK]
    )
    fired = []
    for schedule_id, due_at in due:
        try:
            firing = schedule_fire(schedule_id=schedule_id, due_at=due_at, now=now)
        except Exception:
            # One broken schedule must not keep the others from firing; it is retried next tick.
            logger.exception("schedule %s could not fire for %s", schedule_id, due_at)
            continue
        if firing is not None:
            fired.append(firing)
    return fired


@transaction.atomic
def schedule_fire(*, schedule_id, due_at: datetime, now: datetime) -> ScheduleFiring | None:
    """Fire ``schedule_id`` for ``due_at`` if nobody has; None when another process did.

    1. Claim: ``next_run_at`` moves from ``due_at`` to the first due time after ``now``, only if it
       still is ``due_at`` and the schedule is enabled. A cron that never comes round again
       switches the schedule off, saying why (``disabled_reason``).
    2. Record the firing; the unique (schedule, due time) refuses a second one whatever happened
       to ``next_run_at`` (an edit that wrote back a stale value, say).
    3. Queue the batch (every path, ``repeat`` times) and link it to the firing, in a savepoint: a
       batch that cannot be queued (a scenario without paths, or any unexpected error) is rolled
       back alone, and the claim and the firing, which says why, still commit. A broken schedule
       is logged once per due time, not retried with a traceback on every tick.
    """
    still_due = {"pk": schedule_id, "enabled": True, "next_run_at": due_at}
    schedule = Schedule.objects.select_related("scenario").filter(**still_due).first()
    if schedule is None:
        return None
    claim = {}
    try:
        claim["next_run_at"] = next_after(schedule.cron, schedule.timezone, max(now, due_at))
    except NeverDue as exc:
        claim = {"next_run_at": None, "enabled": False, "disabled_reason": f"Switched off on {now:%Y-%m-%d}: {exc}"}
        logger.warning("schedule %s switched off: %s", schedule_id, exc)
    if Schedule.objects.filter(**still_due).update(**claim) != 1:
        return None
    try:
        with transaction.atomic():
            firing = ScheduleFiring.objects.create(schedule=schedule, due_at=due_at, fired_at=now)
    except IntegrityError:
        return None  # fired already; the claim above still moves the schedule on
    try:
        with transaction.atomic():
            batch, _ = services.scenario_run_all(scenario=schedule.scenario, repeat=schedule.repeat)
    except services.RunStateError as exc:
        firing.detail = str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded on the firing; the schedule moves on
        logger.exception("schedule %s could not queue its batch for %s", schedule_id, due_at)
        firing.detail = f"The batch could not be queued ({type(exc).__name__}): {exc}"[:1000]
    else:
        firing.batch = batch
    firing.save(update_fields=["batch", "detail"])
    return firing
