"""Doorbells: Celery messages that follow a committed change.

The database is the source of truth; a message that cannot be queued (the broker briefly away) is
logged and dropped — the beat sweeps find what it was for — and never fails or delays the change
that rang it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def ring(task, *args) -> None:
    """Queue ``task`` without waiting on an unreachable broker."""
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:  # any broker error: a periodic sweep covers it
        logger.warning("could not queue %s%s (%s); the periodic sweep will pick it up", task.name, args, exc)
