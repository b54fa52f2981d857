"""Why a run could not test: each failure carries its failure reason and a detail naming what to check.

Anything that ends a run as ``failed`` raises one of these; the one place that turns them into a
transition is ``runs.execution.fail_with``. The reasons are ``Run.FailureReason``'s values (a test
pins them), spelled out here so connectors and telephony can raise them without importing models.
"""

from __future__ import annotations


class RunFailure(Exception):
    """The platform could not test this run."""

    reason = "error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class TargetUnreachableFailure(RunFailure):
    reason = "target_unreachable"


class CallerVoiceUnavailable(RunFailure):
    reason = "caller_voice_unavailable"


class ToolSyncPending(RunFailure):
    reason = "tool_sync_pending"


class DurationCapReached(RunFailure):
    reason = "duration_cap_no_progress"


class InboundTimeout(RunFailure):
    reason = "inbound_timeout"


class PlatformError(RunFailure):
    reason = "error"
