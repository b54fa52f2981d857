from django.urls import path

from telephony import consumers

websocket_urlpatterns = [
    path("ws/telephony/<str:provider>/relay/", consumers.RelayConsumer.as_asgi()),
]
