"""The built-in demo chat target, reached over HTTP like any customer's ``http_json`` bot."""

from __future__ import annotations

from django.conf import settings

from runs.connectors import register
from runs.connectors.http_json import HttpJsonConnection


class DemoChatConnection(HttpJsonConnection):
    end_path = "$.end"

    def __init__(self, target, context):
        target = {
            **target,
            "request_template": {"session_id": "{{session_id}}", "message": "{{message}}"},
            "response_path": "$.reply",
        }
        super().__init__(target, context)

    @property
    def url(self) -> str:
        return settings.DEMO_TARGET_URL


register("chat", "demo", DemoChatConnection)
