"""API v1 routes (DESIGN.md, "Public contract")."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from runs import api as runs_api
from scenarios import api as scenarios_api
from scenarios import api_text as scenarios_text_api

router = DefaultRouter()
router.register("agents", scenarios_api.AgentViewSet, basename="agent")
router.register("functions", scenarios_api.FunctionViewSet, basename="function")
router.register("targets", scenarios_api.TargetViewSet, basename="target")
router.register("scenarios", scenarios_api.ScenarioViewSet, basename="scenario")
router.register("paths", scenarios_api.PathViewSet, basename="path")
router.register("schedules", runs_api.ScheduleViewSet, basename="schedule")
router.register("runs", runs_api.RunViewSet, basename="run")
router.register("batches", runs_api.BatchViewSet, basename="batch")

urlpatterns = [
    path("scenarios/<uuid:pk>/run-all/", runs_api.ScenarioRunAllView.as_view(), name="scenario-run-all"),
    path("paths/<uuid:pk>/run/", runs_api.PathRunView.as_view(), name="path-run"),
    # Before the router: "scenarios/import/" would otherwise read as a scenario id.
    path("scenarios/import/", scenarios_text_api.ScenarioImportView.as_view(), name="scenario-import"),
    path("scenarios/<uuid:pk>/export/", scenarios_text_api.ScenarioExportView.as_view(), name="scenario-export"),
    path("scenarios/<uuid:pk>/import-botium/", scenarios_text_api.ScenarioImportBotiumView.as_view(),
         name="scenario-import-botium"),
    path("runs/<uuid:pk>/save-as-path/", runs_api.RunSaveAsPathView.as_view(), name="run-save-as-path"),
    path("queue/", runs_api.QueueView.as_view(), name="queue"),
    path("queue/pause/", runs_api.QueuePauseView.as_view(), name="queue-pause"),
    path("queue/resume/", runs_api.QueueResumeView.as_view(), name="queue-resume"),
    *router.urls,
]
