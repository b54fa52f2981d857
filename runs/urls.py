"""API v1 routes (DESIGN.md, "Public contract")."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from runs import api as runs_api
from scenarios import api as scenarios_api

router = DefaultRouter()
router.register("agents", scenarios_api.AgentViewSet, basename="agent")
router.register("functions", scenarios_api.FunctionViewSet, basename="function")
router.register("targets", scenarios_api.TargetViewSet, basename="target")
router.register("scenarios", scenarios_api.ScenarioViewSet, basename="scenario")
router.register("paths", scenarios_api.PathViewSet, basename="path")
router.register("runs", runs_api.RunViewSet, basename="run")

urlpatterns = [
    path("scenarios/<uuid:pk>/run-all/", runs_api.ScenarioRunAllView.as_view(), name="scenario-run-all"),
    path("paths/<uuid:pk>/run/", runs_api.PathRunView.as_view(), name="path-run"),
    path("queue/", runs_api.QueueView.as_view(), name="queue"),
    path("queue/pause/", runs_api.QueuePauseView.as_view(), name="queue-pause"),
    path("queue/resume/", runs_api.QueueResumeView.as_view(), name="queue-resume"),
    *router.urls,
]
