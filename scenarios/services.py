from __future__ import annotations

from collections.abc import Iterable

from scenarios.models import CustomFunction

# What the webhook probe checks: a change to any of these means the function must sync again.
SYNC_RELEVANT_FIELDS = frozenset({"name", "parameters", "url", "secret"})


def function_mark_changed(*, function: CustomFunction, changed_fields: Iterable[str]) -> bool:
    """Set a function back to ``pending`` when what its sync proved has changed (not saved here)."""
    if function._state.adding or not SYNC_RELEVANT_FIELDS.intersection(changed_fields):
        return False
    function.sync_status = CustomFunction.SyncStatus.PENDING
    function.sync_error = ""
    function.synced_at = None
    return True
