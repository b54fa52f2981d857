"""Cron expressions and time zones of schedules: validated when saved, read when due.

A schedule's ``cron`` is the classic five fields (minute, hour, day of month, month, day of week),
parsed by ``croniter``; its ``timezone`` is an IANA name (``Europe/Paris``), so "0 9 * * 1-5"
means nine o'clock on weekdays where the team works, daylight saving time included.

Schedules fire at most every ``MIN_INTERVAL_MINUTES`` (5): each firing is a whole batch of runs
(every path, ``repeat`` times), and a team comparing releases has no use for more; a tighter cron
is refused when saved rather than quietly thinned out.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from datetime import datetime, timezone as dt_timezone

from croniter import CroniterBadDateError, CroniterError, croniter
from django.core.exceptions import ValidationError

MIN_INTERVAL_MINUTES = 5
MAX_CRON_LENGTH = 100
# croniter's extensions that make a firing time depend on something other than the expression
# (H: a hash of an id we do not pass; R: random): a schedule must say when it fires.
NOT_PLAIN_CRON = re.compile(r"(?<![a-z])[hr](?![a-z])", re.IGNORECASE)


def validate_cron(value: str) -> None:
    """Five fields that croniter reads, no hashed or random fields, and no two firings closer
    than ``MIN_INTERVAL_MINUTES``."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Give a cron expression of five fields: minute hour day-of-month month day-of-week, "
                              "e.g. 0 6 * * 1-5.", code="invalid_cron")
    # First, before anything reads it: croniter takes seconds over a long enough expression, and the
    # field's max_length does not stop the other validators from running.
    if len(value) > MAX_CRON_LENGTH:
        raise ValidationError(f"A cron expression has at most {MAX_CRON_LENGTH} characters.", code="invalid_cron")
    fields = value.split()
    if len(fields) != 5:
        raise ValidationError(
            f"A cron expression has five fields (minute hour day-of-month month day-of-week); this one has "
            f"{len(fields)}.", code="invalid_cron")
    if any(NOT_PLAIN_CRON.search(field) for field in fields):
        raise ValidationError("Hashed (H) and random (R) cron fields are not supported: say when it runs.",
                              code="invalid_cron")
    try:
        expanded = croniter(" ".join(fields)).expanded
    except (CroniterError, ValueError, TypeError, OverflowError) as exc:
        raise ValidationError(f"Not a valid cron expression: {exc}.", code="invalid_cron") from None
    gap = min_interval_minutes(expanded[0], expanded[1])
    if gap < MIN_INTERVAL_MINUTES:
        raise ValidationError(
            f"This schedule would fire every {gap} minute{'s' if gap != 1 else ''}; schedules fire at most every "
            f"{MIN_INTERVAL_MINUTES} minutes (e.g. */{MIN_INTERVAL_MINUTES} * * * *).", code="cron_too_frequent")


def min_interval_minutes(minutes: list, hours: list) -> int:
    """The shortest time between two firings of a cron with these expanded minute and hour fields.

    Within an hour it is the closest two minutes; across an hour boundary (two consecutive hours,
    or 23 → 0 on consecutive days) the last minute of one hour to the first of the next. The day
    fields only remove days, so they never make firings closer: assuming every day keeps this a
    lower bound, exact for every cron that fires on two consecutive days.
    """
    minute_set = sorted(range(60) if "*" in minutes else {int(m) for m in minutes})
    hour_set = set(range(24) if "*" in hours else {int(h) for h in hours})
    gaps = [b - a for a, b in zip(minute_set, minute_set[1:])]
    if any((hour + 1) % 24 in hour_set for hour in hour_set):
        gaps.append(60 - minute_set[-1] + minute_set[0])
    return min(gaps) if gaps else 24 * 60


# Files of a system's zoneinfo directory that are no IANA zone: the server's own local time, and
# the database's placeholder zone.
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@functools.lru_cache(maxsize=1)
def known_timezones() -> tuple[str, ...]:
    """The IANA time zone names, sorted (the schedule form offers them)."""
    return tuple(sorted(zoneinfo.available_timezones() - NOT_ZONES))


@functools.lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(known_timezones())


def validate_timezone(value: str) -> None:
    # Only names of the IANA database: ZoneInfo would also open other files under the zoneinfo
    # directory ("localtime"), whose meaning depends on the server.
    if not isinstance(value, str) or value not in _known_zones():
        raise ValidationError(
            "Not an IANA time zone name: use one like UTC, Europe/Paris or America/New_York.",
            code="invalid_timezone")


def next_after(cron: str, timezone_name: str, after: datetime) -> datetime:
    """The first firing strictly after ``after`` (aware), in UTC. Raises ``NeverDue`` when the
    expression names no date that exists (the 31st of February).

    Daylight saving time as classic cron has it: a local time the spring change skips fires at the
    same instant as the hour after it; a local time the autumn change repeats fires once, the first
    time (unless the hour field is ``*``: an hourly cron fires in both of the repeated hours).
    """
    if len(cron) > MAX_CRON_LENGTH:
        raise ValueError(f"A cron expression has at most {MAX_CRON_LENGTH} characters.")
    zone = zoneinfo.ZoneInfo(timezone_name)
    every_hour = cron.split()[1:2] == ["*"]
    try:
        iterator = croniter(cron, after.astimezone(zone))
        # croniter walks local wall-clock time; around a daylight-saving change a local time may map
        # back to or before ``after``: step on rather than fire the same moment twice.
        for _ in range(4):
            local = iterator.get_next(datetime)
            if local.fold == 1 and not every_hour:
                continue  # the second pass of a repeated local time: it fired the first time
            result = local.astimezone(dt_timezone.utc)
            if result > after:
                return result
    except CroniterBadDateError:
        pass
    raise NeverDue("This cron expression names no date that comes round (e.g. the 31st of February).")


class NeverDue(ValueError):
    """A cron expression that croniter reads but that never comes round."""
