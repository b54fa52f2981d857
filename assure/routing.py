"""Websocket routes, gathered from the apps that serve them."""

from runs.routing import websocket_urlpatterns as runs_websockets
from telephony.routing import websocket_urlpatterns as telephony_websockets

# Browser websockets: live run view, scenario path statuses, queue (runs/consumers.py).
browser_websocket_urlpatterns: list = [*runs_websockets]
# Provider websockets: Twilio ConversationRelay (telephony/consumers.py).
provider_websocket_urlpatterns: list = [*telephony_websockets]
