"""The completion webhooks: a signed JSON POST to the workspace's webhook URL when a run ends
(``run.finished``) and when a batch ends (``batch.finished``, with its comparison), and the
Slack-compatible message a schedule may ask for.

Signed exactly like the custom-function probe (``scenarios/sync.py``): ``X-Assure-Timestamp``
and ``X-Assure-Signature: sha256=HMAC_SHA256(secret, timestamp + "." + raw body)``, with the
workspace's webhook secret. Delivery is retried a few times on network errors and 5xx answers; the
receiver should treat ``delivery`` as an idempotency key.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from assure import egress
from runs import batches, dispatch, selectors
from runs.models import Batch, Run
from scenarios.sync import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

TIMEOUT_SECONDS = 10.0
USER_AGENT = "AssureAgent-webhook/1"


class DeliveryError(Exception):
    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def payload_for(run: Run) -> dict:
    base = (settings.PUBLIC_BASE_URL or "").rstrip("/")
    return {
        "type": "run.finished",
        "delivery": str(uuid.uuid5(uuid.NAMESPACE_URL, f"run-finished:{run.pk}")),
        "run": {
            "id": str(run.pk), "status": run.status, "verdict": run.verdict,
            "failure_reason": run.failure_reason or None, "failure_detail": run.failure_detail or None,
            "scenario": str(run.scenario_id) if run.scenario_id else None,
            "scenario_name": run.snapshot.get("scenario", {}).get("name"),
            "path": str(run.path_id) if run.path_id else None,
            "path_name": run.snapshot.get("path", {}).get("name"),
            "batch": str(run.batch_id) if run.batch_id else None,
            "retry_of": str(run.retry_of_id) if run.retry_of_id else None,
            "created_at": run.created_at.isoformat(), "ended_at": run.ended_at.isoformat() if run.ended_at else None,
            "metrics": run.metrics,
            "url": f"{base}/runs/{run.pk}/" if base else None,
        },
    }


def deliver(run: Run) -> None:
    """POST the signed payload; raises DeliveryError saying whether a retry may help."""
    _post_signed(run.workspace, payload_for(run))


def _post_signed(workspace, payload: dict) -> None:
    """POST ``payload`` to the workspace's webhook URL, signed with its webhook secret."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, TIMESTAMP_HEADER: timestamp}
    if workspace.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(workspace.webhook_secret, timestamp, body)
    _post(workspace.webhook_url, body, headers, label=url_label("the workspace's webhook", workspace.webhook_url))


def url_label(whose: str, url: str) -> str:
    """How a message names a URL that may be a secret (a Slack webhook's path is its key): whose it
    is and its host, never its path or query."""
    host = urlsplit(url).hostname or "an unreadable URL"
    return f"{whose} ({host})"


def _post(url: str, body: bytes, headers: dict, *, label: str) -> None:
    """One POST through the egress policy; raises DeliveryError saying whether a retry may help.
    Messages (logged, shown to operators) name the URL by ``label`` only."""
    try:
        with egress.http_client(timeout=TIMEOUT_SECONDS, refuse_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        refusal = egress.refusal_in(exc)
        reason = _without(url, str(refusal if refusal is not None else exc))
        raise DeliveryError(f"could not deliver to {label}: {reason}", retryable=refusal is None) from None
    if response.is_redirect:
        raise DeliveryError(f"{label} answered HTTP {response.status_code} (a redirect; redirects are "
                            "not followed: give the final URL)", retryable=False)
    if response.status_code >= 500:
        raise DeliveryError(f"{label} answered HTTP {response.status_code}", retryable=True)
    if response.status_code >= 400:
        raise DeliveryError(f"{label} refused the webhook: HTTP {response.status_code}", retryable=False)


def _without(url: str, text: str) -> str:
    # An HTTP client's error may quote the URL it was given (an invalid one, say): keep its secret
    # parts (path, query, credentials) out of the message.
    parts = urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.netloc.rpartition("@")[0]):
        if secret and secret != "/":
            text = text.replace(secret, "…")
    return text


def batch_finished(batch) -> None:
    """The ``batch.finished`` hook: called exactly once per batch, right after its ``finished_at``
    is committed (``runs.services.batch_finish``), in whatever process ended its last run.

    It must not block that process (a worker's conversation loop, or daphne for a call): anything
    slow (the webhook, the Slack message) is queued, not sent from here.
    """
    dispatch.notify_batch_finished(batch.pk)


def batch_news(batch: Batch, *, first_try: bool) -> None:
    """The news of a finished batch (``runs.tasks.notify_batch_finished``): the ``batch.finished``
    webhook to the workspace, if it has one; and, on the first try only (a retried webhook must not
    tell Slack again), the Slack message of the schedule that queued the batch, queued as its own
    delivery so that each is retried on its own."""
    if first_try:
        schedule = selectors.schedule_of(batch)
        if schedule is not None and schedule.slack_webhook_url:
            dispatch.post_batch_to_slack(batch.pk)
    if batch.workspace.webhook_url:
        deliver_batch(batch)


def batch_previous(batch: Batch, schedule) -> Batch | None:
    """What a finished batch is compared with: a scheduled batch with the batch its schedule queued
    before it, any other batch with the previous batch of its scenario."""
    if schedule is not None:
        return selectors.previous_scheduled_batch(batch, schedule)
    return batches.previous_batch(batch)


def batch_comparison(batch: Batch, previous: Batch | None) -> dict | None:
    """``batch`` compared with ``previous``; None when there is nothing to compare with."""
    if previous is None:
        return None
    try:
        return batches.batch_compare(batch, to=previous)
    except batches.NoComparison:
        return None


def batch_payload(batch: Batch, *, previous: Batch | None) -> dict:
    return {
        "event": "batch.finished",
        "delivery": str(uuid.uuid5(uuid.NAMESPACE_URL, f"batch-finished:{batch.pk}")),
        "batch": batches.batch_summary(batch),
        "comparison": batch_comparison(batch, previous),
    }


def deliver_batch(batch: Batch) -> None:
    """The ``batch.finished`` webhook to the workspace's URL, signed like the run webhook."""
    schedule = selectors.schedule_of(batch)
    _post_signed(batch.workspace, batch_payload(batch, previous=batch_previous(batch, schedule)))


def deliver_batch_to_slack(batch: Batch, schedule) -> None:
    """The schedule's Slack-compatible incoming webhook: ``{"text": …}``, no signature (Slack's
    URL is its own secret, so no message names more of it than its host)."""
    previous = selectors.previous_scheduled_batch(batch, schedule)
    payload = batch_payload(batch, previous=previous)
    text = slack_text(payload["batch"], payload["comparison"], schedule=schedule, first=previous is None)
    body = json.dumps({"text": text}, separators=(",", ":")).encode()
    _post(schedule.slack_webhook_url, body, {"Content-Type": "application/json", "User-Agent": USER_AGENT},
          label=url_label("the schedule's Slack webhook", schedule.slack_webhook_url))


# A Slack message lists this many paths per group, then says how many more.
SLACK_LIST_LIMIT = 10


def slack_text(summary: dict, comparison: dict | None, *, schedule, first: bool) -> str:
    """A short, readable result: scenario, pass rate, newly failing and fixed paths, and links.
    ``first``: the schedule queued no batch of this scenario before this one."""
    base = (settings.PUBLIC_BASE_URL or "").rstrip("/")
    counts = summary.get("counts") or {}
    judged = counts.get("passed", 0) + counts.get("failed_verdict", 0) + counts.get("inconclusive", 0)
    rate = summary.get("pass_rate")
    name = _slack_escape(summary.get("scenario_name") or "A deleted scenario")
    title = f"<{base}/batches/{summary['id']}/|{name}>" if base else f"*{name}*"
    lines = [f"{title}: scheduled batch finished ({_slack_escape(schedule.cron)}, {schedule.timezone})"]
    if rate is None:
        lines.append("No run was judged.")
    else:
        lines.append(f"Pass rate {round(rate * 100)}% ({counts.get('passed', 0)} of {judged} judged runs passed).")
    if counts.get("failed"):
        failed = counts["failed"]
        lines.append(f"{failed} run{'s' if failed != 1 else ''} could not be tested (platform failures).")
    if comparison is None:
        lines.append("Nothing to compare with yet: this is the schedule's first batch." if first else
                     "The previous scheduled batch could not be compared with this one.")
    else:
        for key, label in (("newly_failing", "Newly failing"), ("fixed", "Fixed")):
            changes = comparison.get(key) or []
            if changes:
                names = [_slack_escape(change.get("name") or "a deleted path") for change in changes[:SLACK_LIST_LIMIT]]
                more = f" and {len(changes) - SLACK_LIST_LIMIT} more" if len(changes) > SLACK_LIST_LIMIT else ""
                lines.append(f"{label} ({len(changes)}): {', '.join(names)}{more}")
        if not comparison.get("newly_failing") and not comparison.get("fixed"):
            lines.append("No path changed since the previous scheduled batch.")
        steady = [f"{len(comparison.get(key) or [])} {label}" for key, label in
                  (("still_failing", "still failing"), ("flaky", "flaky")) if comparison.get(key)]
        if steady:
            lines.append("Also: " + ", ".join(steady) + ".")
        if base:
            compare_url = f"{base}/batches/{comparison['batch']}/compare/?to={comparison['to']}"
            lines.append(f"<{compare_url}|Compare with the previous scheduled batch>")
    return "\n".join(lines)


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads <…> as links and mentions: a path named "<!channel>" must stay text.
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
