"""Authoring pages (agents, functions, targets, scenarios, paths), namespaced ``scenarios:``.

Namespaced because the API router already uses the plain names (``agent-list``,
``scenario-detail``, …). The scenario page ``/scenarios/<id>/`` and ``/paths/<id>/`` are the run
pages' (``runs/urls_pages.py``).
"""

from django.urls import path

from scenarios import views

app_name = "scenarios"

urlpatterns = [
    path("agents/", views.AgentList.as_view(), name="agent-list"),
    path("agents/new/", views.AgentCreate.as_view(), name="agent-create"),
    path("agents/<uuid:pk>/", views.AgentDetail.as_view(), name="agent-detail"),
    path("agents/<uuid:pk>/edit/", views.AgentUpdate.as_view(), name="agent-update"),
    path("agents/<uuid:pk>/delete/", views.AgentDelete.as_view(), name="agent-delete"),
    path("agents/<uuid:pk>/functions/new/", views.FunctionCreate.as_view(), name="function-create"),
    path("agents/<uuid:pk>/functions/sync/", views.function_retry_sync, name="function-retry-sync"),
    path("functions/<uuid:pk>/edit/", views.FunctionUpdate.as_view(), name="function-update"),
    path("functions/<uuid:pk>/delete/", views.FunctionDelete.as_view(), name="function-delete"),
    path("targets/", views.TargetList.as_view(), name="target-list"),
    path("targets/new/", views.TargetCreate.as_view(), name="target-create"),
    path("targets/<uuid:pk>/edit/", views.TargetUpdate.as_view(), name="target-update"),
    path("targets/<uuid:pk>/delete/", views.TargetDelete.as_view(), name="target-delete"),
    path("scenarios/", views.ScenarioList.as_view(), name="scenario-list"),
    path("scenarios/new/", views.ScenarioCreate.as_view(), name="scenario-create"),
    path("scenarios/<uuid:pk>/edit/", views.ScenarioUpdate.as_view(), name="scenario-update"),
    path("scenarios/<uuid:pk>/delete/", views.ScenarioDelete.as_view(), name="scenario-delete"),
    path("scenarios/<uuid:pk>/paths/new/", views.PathCreate.as_view(), name="path-create"),
    path("paths/<uuid:pk>/edit/", views.PathUpdate.as_view(), name="path-update"),
    path("paths/<uuid:pk>/delete/", views.PathDelete.as_view(), name="path-delete"),
    path("scenarios/<uuid:pk>/schedules/", views.schedules_panel, name="schedules-panel"),
    path("scenarios/<uuid:pk>/schedules/new/", views.schedule_create, name="schedule-create"),
    path("schedules/<uuid:pk>/enabled/", views.schedule_set_enabled, name="schedule-set-enabled"),
    path("schedules/<uuid:pk>/delete/", views.schedule_delete, name="schedule-delete"),
]
