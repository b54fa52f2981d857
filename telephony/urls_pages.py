"""Telephony pages, namespaced ``telephony:`` (the API router uses the plain names)."""

from django.urls import path

from telephony import views_pages

app_name = "telephony"

urlpatterns = [
    path("phone-numbers/", views_pages.PhoneNumberList.as_view(), name="phone-number-list"),
    path("phone-numbers/new/", views_pages.PhoneNumberCreate.as_view(), name="phone-number-create"),
    path("phone-numbers/<uuid:pk>/edit/", views_pages.PhoneNumberUpdate.as_view(), name="phone-number-update"),
    path("phone-numbers/<uuid:pk>/delete/", views_pages.PhoneNumberDelete.as_view(), name="phone-number-delete"),
    path("runs/<uuid:pk>/recording/", views_pages.run_recording, name="run-recording"),
]
