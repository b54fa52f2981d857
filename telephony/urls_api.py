"""Telephony's part of API v1 (DESIGN.md, "Public contract"), mounted at ``/api/v1/`` beside runs/urls.py."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from telephony import api

router = SimpleRouter()
router.register("phone-numbers", api.PhoneNumberViewSet, basename="phone-number")

urlpatterns = [
    path("runs/<uuid:pk>/recording/", api.RunRecordingView.as_view(), name="run-recording"),
    *router.urls,
]
