"""The completion webhook: a signed JSON POST to the workspace's webhook URL when a run ends.

Signed exactly like the custom-function probe (``scenarios/sync.py``): ``X-Assure-Timestamp``
and ``X-Assure-Signature: sha256=HMAC_SHA256(secret, timestamp + "." + raw body)``, with the
workspace's webhook secret. Delivery is retried a few times on network errors and 5xx answers; the
receiver should treat ``delivery`` as an idempotency key.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
from django.conf import settings

from assure import egress
from runs.models import Run

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
    from scenarios.sync import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    workspace = run.workspace
    body = json.dumps(payload_for(run), separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, TIMESTAMP_HEADER: timestamp}
    if workspace.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(workspace.webhook_secret, timestamp, body)
    try:
        with egress.http_client(timeout=TIMEOUT_SECONDS, refuse_redirects=False) as client:
            response = client.post(workspace.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        refusal = egress.refusal_in(exc)
        if refusal is not None:
            raise DeliveryError(f"could not deliver to {workspace.webhook_url}: {refusal}", retryable=False) from None
        raise DeliveryError(f"could not deliver to {workspace.webhook_url}: {exc}", retryable=True) from None
    if response.is_redirect:
        raise DeliveryError(f"{workspace.webhook_url} answered HTTP {response.status_code} (a redirect; redirects are "
                            "not followed: give the final URL)", retryable=False)
    if response.status_code >= 500:
        raise DeliveryError(f"{workspace.webhook_url} answered HTTP {response.status_code}", retryable=True)
    if response.status_code >= 400:
        raise DeliveryError(f"{workspace.webhook_url} refused the webhook: HTTP {response.status_code}", retryable=False)
