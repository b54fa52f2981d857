from __future__ import annotations

import logging
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from scenarios import sync, validators
from assure.doorbell import ring
from scenarios.models import CustomFunction, Target, url_origin

logger = logging.getLogger(__name__)

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


def function_request_sync(*, function: CustomFunction) -> None:
    """Set ``function`` pending and queue its webhook probe once the change is committed.

    ``updated_at`` moves too, so a probe already in flight for the function as it was no longer
    writes its answer back (``function_sync``): the probe queued here decides. A function deleted
    meanwhile is left alone.
    """
    pending = {
        "sync_status": CustomFunction.SyncStatus.PENDING,
        "sync_error": "",
        "synced_at": None,
        "updated_at": timezone.now(),
    }
    if CustomFunction.objects.filter(pk=function.pk).update(**pending) != 1:
        return
    for name, value in pending.items():
        setattr(function, name, value)

    from scenarios.tasks import sync_function

    function_id = str(function.pk)
    transaction.on_commit(lambda: ring(sync_function, function_id))


def function_sync(*, function_id) -> CustomFunction:
    """Probe a pending function's webhook and record whether it answered. Steps:

    1. Load the function. One that is no longer ``pending`` has been decided already (a duplicate
       message, or an earlier probe): nothing to do.
    2. Check what can be checked without the network: the URL and the parameters' JSON Schema. A
       bad one is an ``error`` saying what to fix, and no request is made.
    3. POST the signed probe (``scenarios.sync``), outside any transaction.
    4. Write ``synced`` or ``error`` back only if the function is still the one probed: same
       ``updated_at`` and still ``pending``. If it was edited (or a sync requested again) while
       the probe was in flight, the newer change's own sync decides.

    Returns the function as stored afterwards; raises ``CustomFunction.DoesNotExist`` if it is gone.
    """
    function = CustomFunction.objects.get(pk=function_id)
    if function.sync_status != CustomFunction.SyncStatus.PENDING:
        return function

    problem = _static_problem(function)
    if problem is None:
        # The webhook may take up to sync.PROBE_TIMEOUT_SECONDS to answer: this must not run in a
        # transaction, which would hold the row (and on SQLite the whole database) that long.
        try:
            sync.probe(url=function.url, name=function.name, parameters=function.parameters, secret=function.secret)
        except sync.ProbeError as exc:
            problem = str(exc)

    if problem is None:
        outcome = {"sync_status": CustomFunction.SyncStatus.SYNCED, "sync_error": "", "synced_at": timezone.now()}
    else:
        outcome = {"sync_status": CustomFunction.SyncStatus.ERROR, "sync_error": problem, "synced_at": None}
    CustomFunction.objects.filter(
        pk=function.pk, updated_at=function.updated_at, sync_status=CustomFunction.SyncStatus.PENDING
    ).update(**outcome)
    return CustomFunction.objects.get(pk=function.pk)


def _static_problem(function: CustomFunction) -> str | None:
    try:
        validators.validate_http_url(function.url)
    except ValidationError as exc:
        return f"The webhook URL {function.url!r} is not usable: {_sentence(exc.messages[0])} Fix the function's URL."
    try:
        validators.validate_parameters_schema(function.parameters)
    except ValidationError as exc:
        return (f"The parameters are not usable: {_sentence(exc.messages[0])} Fix the function's parameters; "
                "nothing was sent to the webhook.")
    return None


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else f"{text}."


TARGET_HOST_CHANGED = ("The URL's host changed: enter the headers again (or {} for none) so they are not sent "
                       "to the new host.")


def target_check_host_change(*, target: Target, headers_given: bool) -> None:
    """Refuse to carry a target's stored headers to another host.

    An edit that points the URL at another origin (scheme, host or port) while the target keeps
    headers must give the headers again: raises ``ValidationError`` on ``headers`` otherwise. Edits
    on the same host, new targets, and targets without headers pass.
    """
    if headers_given or target._state.adding or not target.headers:
        return
    stored_url = Target.objects.filter(pk=target.pk).values_list("url", flat=True).first()
    if stored_url is not None and url_origin(stored_url) != url_origin(target.url):
        raise ValidationError({"headers": TARGET_HOST_CHANGED})


def target_save(*, target: Target, headers_given: bool) -> Target:
    """Save a validated new or edited target; ``headers_given``: the edit supplied the headers (even
    ``{}``) rather than keeping the stored ones. The API, the page form and the admin all save here."""
    target_check_host_change(target=target, headers_given=headers_given)
    target.save()
    return target


STALE_PENDING_SECONDS = 60


def functions_resync_stale() -> int:
    """Queue a sync again for functions pending longer than a probe can take (their message was
    lost, or the worker died mid-probe). Returns how many were queued."""
    from datetime import timedelta

    from django.utils import timezone

    from scenarios.tasks import sync_function

    cutoff = timezone.now() - timedelta(seconds=STALE_PENDING_SECONDS)
    stale = list(CustomFunction.objects.filter(sync_status=CustomFunction.SyncStatus.PENDING, updated_at__lt=cutoff))
    for function in stale:
        function_request_sync(function=function)
    return len(stale)
