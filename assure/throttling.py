"""API throttling: each workspace token (or signed-in user) gets ``API_THROTTLE_RATE`` requests.

The counts live in Django's cache, which ``assure/settings.py`` points at Redis, so every web
process of a deployment shares them.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from assure.models import ApiToken


class WorkspaceTokenRateThrottle(SimpleRateThrottle):
    scope = "api"

    def get_rate(self) -> str | None:
        # Read on each request, not frozen into the class at import (DRF's default), so the
        # operator's setting, and a test's, take effect.
        return settings.API_THROTTLE_RATE

    def get_cache_key(self, request, view) -> str:
        if isinstance(request.auth, ApiToken):
            ident = f"token:{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
