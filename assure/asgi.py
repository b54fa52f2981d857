import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "assure.settings")
# Django must be set up before anything imports models (consumers, routing).
django_asgi_app = get_asgi_application()

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
