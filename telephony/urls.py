from django.urls import path

from telephony import views

# Provider webhooks; <provider> is twilio or loopback (the signature is checked with its token).
urlpatterns = [
    path("telephony/<str:provider>/status/", views.status_callback, name="telephony-status"),
    path("telephony/<str:provider>/connect/", views.connect_action, name="telephony-connect"),
    path("telephony/<str:provider>/recording/", views.recording_callback, name="telephony-recording"),
    path("telephony/<str:provider>/voice/", views.incoming_call, name="telephony-voice"),
]
