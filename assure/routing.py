"""Websocket routes, gathered from the apps that serve them."""

# Browser websockets: live run view, scenario path statuses, queue (runs/consumers.py).
browser_websocket_urlpatterns: list = []
# Provider websockets: Twilio ConversationRelay (telephony/consumers.py).
provider_websocket_urlpatterns: list = []
