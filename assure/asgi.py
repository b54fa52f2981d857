import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "assure.settings")
# Django must be set up before anything imports models (consumers, routing).
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

# Django's rule under ASGI: no persistent database connections. Each HTTP request (a provider's
# webhook) runs its view in a thread of its own, so a connection kept open is never reused and stays
# open until it is garbage-collected: 100 calls' webhooks took all of PostgreSQL's 100 connections
# and failed with HTTP 500 (bench/README.md, Voice). Workers keep theirs.
for database in settings.DATABASES.values():
    database["CONN_MAX_AGE"] = 0

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from assure.routing import browser_websocket_urlpatterns, provider_websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Provider websockets (Twilio's ConversationRelay) arrive without an Origin header and are
        # verified by the provider's signature, so they come first and skip the origin check;
        # everything else is a browser, checked against ALLOWED_HOSTS and signed in by session.
        "websocket": URLRouter(
            [
                *provider_websocket_urlpatterns,
                re_path(
                    r"^",
                    AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(browser_websocket_urlpatterns))),
                ),
            ]
        ),
    }
)

# Everything loaded so far lives as long as daphne. Frozen, the collector's full passes skip it:
# they scanned ~210k objects and stopped the event loop 100-250 ms each, several times a minute
# with 100 live pages (bench/README.md, "Live pushes").
gc.collect()
gc.freeze()
