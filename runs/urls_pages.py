"""Pages for running tests: the scenario page, a path, batches and their comparison, the live run view,
the queue, results."""

from django.urls import path

from runs import views

app_name = "runs"

urlpatterns = [
    path("scenarios/<uuid:pk>/", views.scenario_detail, name="scenario-detail"),
    path("scenarios/<uuid:pk>/run-all/", views.scenario_run_all, name="scenario-run-all"),
    path("paths/<uuid:pk>/", views.path_detail, name="path-detail"),
    path("paths/<uuid:pk>/run/", views.path_run, name="path-run"),
    path("batches/<uuid:pk>/", views.batch_detail, name="batch-detail"),
    path("batches/<uuid:pk>/compare/", views.batch_compare, name="batch-compare"),
    path("runs/<uuid:pk>/", views.run_detail, name="run-detail"),
    path("runs/<uuid:pk>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<uuid:pk>/retry/", views.run_retry, name="run-retry"),
    path("runs/<uuid:pk>/save-as-path/", views.run_save_as_path, name="run-save-as-path"),
    path("queue/", views.queue, name="queue"),
    path("queue/pause/", views.queue_pause, name="queue-pause"),
    path("queue/resume/", views.queue_resume, name="queue-resume"),
    path("results/", views.results, name="results"),
]
