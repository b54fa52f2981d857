from django.urls import path

from runs import consumers

websocket_urlpatterns = [
    path("ws/runs/<uuid:pk>/", consumers.RunConsumer.as_asgi()),
    path("ws/scenarios/<uuid:pk>/", consumers.ScenarioConsumer.as_asgi()),
    path("ws/queue/", consumers.QueueConsumer.as_asgi()),
]
