from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from assure import api, views
from runs import demo_target


def healthz(request):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("workspace/switch/", views.workspace_switch, name="workspace-switch"),
    path("healthz/", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/workspace/", api.WorkspaceView.as_view(), name="api-workspace"),
    path("api/v1/", include("runs.urls")),
    path("api/v1/", include("telephony.urls_api")),
    path("demo-target/chat/", demo_target.chat, name="demo-target-chat"),
    # Telephony provider webhooks (Twilio, loopback): telephony/urls.py.
    path("", include("telephony.urls")),
    # Phone numbers page and run recordings: telephony/urls_pages.py.
    path("", include("telephony.urls_pages")),
    # Run pages (scenario page, live run view, queue, results): runs/urls_pages.py.
    path("", include("runs.urls_pages")),
    # Authoring pages (agents, functions, targets, scenarios, paths): scenarios/urls.py.
    path("", include("scenarios.urls")),
]
