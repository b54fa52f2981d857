"""Batches: repeats with pass@k, pass^k and flaky paths, the batch API and page, and the comparison of
two batches. End to end through a real Celery worker against a customer's bot that is
deliberately nondeterministic (on a plan, so the expected figures are exact), on a real socket;
the rest against the database (bad input, a 100 paths × 100 repeats batch, finishing a batch)."""

from __future__ import annotations

import importlib
import json
import threading
from datetime import timedelta

import pytest
from aiohttp import web
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from assure.services import api_token_create
from runs import batches, notify, services
from runs.evaluation import percentile
from runs.models import Batch, CriterionResult, Run, Turn
from tests import factories as f
from tests.fakes import AiohttpServer
from tests.support import CeleryWorker, wait_for

YES = "Yes, you are booked."
NO = "No idea, sorry."
SAYS_YES = {"name": "Says yes", "kind": "contains", "speaker": "target", "text": "you are booked"}


class PlannedBot(AiohttpServer):
    """A customer's chat bot (HTTP JSON) whose answers vary from one conversation to the next.

    Each path's caller says "ping <word>"; each new conversation (session) for a word takes the
    next answer of that word's plan: "yes" (what the criterion wants), "no", or "down" (HTTP 503,
    so the platform cannot test: a platform failure). Which run meets which answer depends on the
    order the worker runs them in; how many of each a path meets does not."""

    def __init__(self):
        self.lock = threading.Lock()
        self.plans: dict[str, list[str]] = {}
        self.taken: dict[str, int] = {}
        self.sessions: dict[str, str] = {}

        async def chat(request):
            body = await request.json()
            word = body["text"].split()[-1]
            with self.lock:
                if body["session"] not in self.sessions:
                    plan, taken = self.plans[word], self.taken.get(word, 0)
                    self.sessions[body["session"]] = plan[taken % len(plan)]
                    self.taken[word] = taken + 1
                answer = self.sessions[body["session"]]
            if answer == "down":
                return web.json_response({"error": "overloaded"}, status=503)
            return web.json_response({"reply": YES if answer == "yes" else NO})

        app = web.Application()
        app.router.add_post("/chat", chat)
        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}/chat"

    def plan(self, plans: dict[str, list[str]]) -> None:
        with self.lock:
            self.plans, self.taken = plans, {}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, test_redis_url):
    # No beat: a batch must finish where its last run ends, not thanks to the sweep.
    with django_db_blocker.unblock():
        started = CeleryWorker(redis_url=test_redis_url, name="batches", concurrency=2)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def bot():
    server = PlannedBot()
    yield server
    server.close()


@pytest.fixture
def api(workspace):
    _, key = api_token_create(workspace=workspace, name="tests")
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


@pytest.fixture
def pages(member):
    client = Client()
    client.force_login(member)
    return client


def post_json(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def bot_scenario(workspace, bot, words: list[str]):
    target = f.TargetFactory(workspace=workspace, url=bot.url)
    scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[SAYS_YES])
    for word in words:
        f.PathFactory(scenario=scenario, name=word, script=[{"say": f"ping {word}"}, {"end_call": True}])
    return scenario


def finished(batch_id, timeout=90) -> Batch:
    return wait_for(lambda: Batch.objects.filter(pk=batch_id, finished_at__isnull=False).first(), timeout,
                    message=f"batch {batch_id} to finish")


def judged_latencies(**run_filter) -> list[int]:
    return list(Turn.objects.filter(speaker="target", latency_ms__isnull=False, run__status="completed",
                                    **{f"run__{k}": v for k, v in run_filter.items()}).values_list("latency_ms", flat=True))


# Through the real stack ------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_five_repeats_of_a_path_give_pass_at_k_pass_all_k_and_flaky(worker, bot, api, workspace):
    bot.plan({"coin": ["yes", "no", "yes", "down", "yes"]})
    path = bot_scenario(workspace, bot, ["coin"]).paths.get()

    response = post_json(api, f"/api/v1/paths/{path.pk}/run/", {"repeat": 5})

    assert response.status_code == 201, response.content
    body = response.json()
    assert len(body["runs"]) == 5 and {run["batch"] for run in body["runs"]} == {body["batch"]}
    batch = finished(body["batch"])
    runs = list(Run.objects.filter(batch=batch))
    assert batch.finished_at >= max(run.ended_at for run in runs)
    detail = api.get(f"/api/v1/batches/{batch.pk}/").json()
    assert (detail["finished"], detail["repeat"], detail["scenario"]) == (True, 5, str(path.scenario_id))
    assert detail["counts"] == {"runs": 5, "pending": 0, "running": 0, "completed": 4, "failed": 1, "cancelled": 0,
                                "passed": 3, "failed_verdict": 1, "inconclusive": 0}
    assert detail["pass_rate"] == 0.75  # the platform failure is not a judged run
    (row,) = detail["paths"]
    assert (row["path"], row["passes"], row["total"], row["platform_failures"]) == (str(path.pk), 3, 4, 1)
    assert (row["pass_at_k"], row["pass_all_k"], row["flaky"]) == (True, False, True)
    down = [run for run in runs if run.status == "failed"]
    assert [run.failure_reason for run in down] == ["target_unreachable"]
    failed_run = Run.objects.get(batch=batch, verdict="failed")
    assert [(c["run"], c["name"], c["outcome"]) for c in row["failed_criteria"]] == [(str(failed_run.pk), "Says yes", "failed")]
    assert sorted(r["id"] for r in row["runs"]) == sorted(str(run.pk) for run in runs)
    latencies = judged_latencies(batch=batch)
    assert len(latencies) == 4
    assert (row["latency_ms_p50"], row["latency_ms_p90"]) == (percentile(latencies, 50), percentile(latencies, 90))
    assert (detail["latency_ms_p50"], detail["latency_ms_p90"]) == (row["latency_ms_p50"], row["latency_ms_p90"])
    listed = api.get(f"/api/v1/batches/?scenario={path.scenario_id}").json()
    assert listed["count"] == 1 and listed["results"][0] == {k: v for k, v in detail.items() if k != "paths"}


@pytest.mark.django_db(transaction=True)
def test_a_comparison_lists_exactly_the_paths_that_changed(worker, bot, api, pages, workspace):
    scenario = bot_scenario(workspace, bot, ["good", "breaks", "heals", "bad", "wobbles"])
    bot.plan({"good": ["yes"], "breaks": ["yes"], "heals": ["no"], "bad": ["no"], "wobbles": ["yes"]})
    first = post_json(api, f"/api/v1/scenarios/{scenario.pk}/run-all/", {"repeat": 2}).json()
    assert len(first["runs"]) == 10
    finished(first["batch"])
    bot.plan({"good": ["yes"], "breaks": ["no"], "heals": ["yes"], "bad": ["no"], "wobbles": ["yes", "no"]})
    second = post_json(api, f"/api/v1/scenarios/{scenario.pk}/run-all/", {"repeat": 2}).json()
    finished(second["batch"])

    comparison = api.get(f"/api/v1/batches/{second['batch']}/compare/").json()

    assert (comparison["batch"], comparison["to"]) == (second["batch"], first["batch"])  # the previous one
    names = {group: [change["name"] for change in comparison[group]] for group in batches.CHANGE_GROUPS}
    assert names == {"newly_failing": ["breaks"], "fixed": ["heals"], "still_failing": ["bad"], "flaky": ["wobbles"],
                     "unchanged_passing": ["good"]}
    assert comparison["not_compared"] == []
    (breaks,) = comparison["newly_failing"]
    assert (breaks["before"], breaks["after"]) == ({"passes": 2, "total": 2, "pass_rate": 1.0},
                                                   {"passes": 0, "total": 2, "pass_rate": 0.0})
    says_yes = next(c for c in breaks["criteria"] if c["name"] == "Says yes")
    assert says_yes["before"]["outcome"] == "passed" and says_yes["after"]["outcome"] == "failed"
    assert says_yes["before"]["evidence_turns"] == [{"seq": 2, "speaker": "target", "text": YES}]
    assert "No turn" in says_yes["after"]["rationale"]
    assert says_yes["after"]["outcomes"] == {"failed": 2}
    (wobbles,) = comparison["flaky"]
    assert wobbles["after"]["passes"] == 1 and next(
        c for c in wobbles["criteria"] if c["name"] == "Says yes")["after"]["outcomes"] == {"passed": 1, "failed": 1}
    assert [row["name"] for row in comparison["latency"]] == ["good", "breaks", "heals", "bad", "wobbles"]
    good = scenario.paths.get(name="good")
    assert comparison["latency"][0]["p50_after"] == percentile(
        judged_latencies(batch_id=second["batch"], path=good), 50)
    assert api.get(f"/api/v1/batches/{second['batch']}/compare/?to={first['batch']}").json() == comparison
    bad = api.get(f"/api/v1/batches/{second['batch']}/").json()["paths"][3]
    assert (bad["name"], bad["pass_at_k"], bad["pass_all_k"], bad["flaky"]) == ("bad", False, False, False)

    page = pages.get(f"/batches/{second['batch']}/compare/").content.decode()
    newly_failing = page[page.index('id="newly_failing"'):page.index('id="fixed"')]
    assert "breaks" in newly_failing and "heals" not in newly_failing
    assert YES in newly_failing  # the evidence turn, quoted
    scenario_page = pages.get(f"/scenarios/{scenario.pk}/").content.decode()
    assert scenario_page.index(f'id="batch-{second["batch"]}"') < scenario_page.index(f'id="batch-{first["batch"]}"')
    assert scenario_page.count('class="point pass-rate"') == 2


# Bad input: a 400 or a 404, never a server error, and nothing queued -------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("repeat", [0, 101, -1, "x", 2.5, True, None, [], {}, "1e2", 10**30])
def test_a_bad_repeat_is_a_400_and_queues_nothing(api, workspace, repeat):
    scenario = f.ScenarioFactory(workspace=workspace)
    path = f.PathFactory(scenario=scenario)
    for url in (f"/api/v1/paths/{path.pk}/run/", f"/api/v1/scenarios/{scenario.pk}/run-all/"):
        response = post_json(api, url, {"repeat": repeat})
        assert response.status_code == 400, (url, response.content)
        assert "repeat" in response.json()
    assert not Run.objects.exists() and not Batch.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("body", ["[1, 2]", "null", '"repeat"', "{"])
def test_a_body_that_is_not_an_object_is_a_400(api, workspace, body):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    response = api.post(f"/api/v1/paths/{path.pk}/run/", body, content_type="application/json")
    assert response.status_code == 400
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_path_run_with_repeat_one_is_one_run_and_more_is_a_batch(api, workspace):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    single = post_json(api, f"/api/v1/paths/{path.pk}/run/", {}).json()
    assert single["batch"] is None and single["path"] == str(path.pk)
    repeated = post_json(api, f"/api/v1/paths/{path.pk}/run/", {"repeat": 3}).json()
    batch = Batch.objects.get(pk=repeated["batch"])
    assert batch.repeat == 3 and batch.scenario_id == path.scenario_id
    assert Run.objects.filter(batch=batch, path=path).count() == 3


@pytest.mark.django_db
def test_another_workspaces_batch_is_a_404(api, workspace, other_workspace):
    mine = services.scenario_run_all(scenario=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)).scenario)[0]
    theirs_scenario = f.PathFactory(scenario=f.ScenarioFactory(workspace=other_workspace)).scenario
    theirs = services.scenario_run_all(scenario=theirs_scenario)[0]
    assert api.get(f"/api/v1/batches/{theirs.pk}/").status_code == 404
    assert api.get(f"/api/v1/batches/{theirs.pk}/compare/").status_code == 404
    assert api.get(f"/api/v1/batches/{mine.pk}/compare/?to={theirs.pk}").status_code == 404
    assert [b["id"] for b in api.get("/api/v1/batches/").json()["results"]] == [str(mine.pk)]
    assert api.get(f"/api/v1/batches/?scenario={theirs_scenario.pk}").json()["count"] == 0


@pytest.mark.django_db
def test_what_cannot_be_compared_is_a_400_that_says_why(api, workspace):
    scenario = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)).scenario
    first = services.scenario_run_all(scenario=scenario)[0]
    elsewhere = services.scenario_run_all(scenario=f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace)).scenario)[0]
    response = api.get(f"/api/v1/batches/{first.pk}/compare/")
    assert response.status_code == 400 and "first batch" in response.json()["detail"]
    assert "itself" in api.get(f"/api/v1/batches/{first.pk}/compare/?to={first.pk}").json()["detail"]
    assert "same scenario" in api.get(f"/api/v1/batches/{first.pk}/compare/?to={elsewhere.pk}").json()["detail"]
    assert api.get(f"/api/v1/batches/{first.pk}/compare/?to=not-an-id").json() == {"to": ["Must be an id (UUID)."]}
    assert api.get("/api/v1/batches/?scenario=42").status_code == 400
    assert api.get("/api/v1/batches/not-an-id/").status_code == 404


@pytest.mark.django_db
def test_the_pages_refuse_bad_input_politely(pages, workspace, other_workspace):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    theirs = services.scenario_run_all(scenario=f.PathFactory(scenario=f.ScenarioFactory(workspace=other_workspace)).scenario)[0]
    for repeat in ("0", "101", "abc", "2.5", "9" * 5000):
        response = pages.post(f"/paths/{path.pk}/run/", {"repeat": repeat}, follow=True)
        assert response.status_code == 200
        assert "Repeat must be a whole number from 1 to 100." in response.content.decode()
        response = pages.post(f"/scenarios/{path.scenario_id}/run-all/", {"repeat": repeat}, follow=True)
        assert "Repeat must be a whole number from 1 to 100." in response.content.decode()
    assert not Run.objects.filter(workspace=workspace).exists()
    response = pages.post(f"/paths/{path.pk}/run/", {"repeat": "3"})
    batch = Batch.objects.get(workspace=workspace)
    assert response["Location"] == f"/batches/{batch.pk}/" and batch.runs.count() == 3
    link = f'href="/batches/{batch.pk}/"'
    assert link in pages.get(f"/runs/{batch.runs.first().pk}/").content.decode()  # the run page names its batch
    assert link in pages.get(f"/scenarios/{path.scenario_id}/").content.decode()
    assert pages.get(f"/batches/{theirs.pk}/").status_code == 404
    assert pages.get(f"/batches/{batch.pk}/compare/?to={theirs.pk}").status_code == 404
    assert pages.get(f"/batches/{batch.pk}/compare/?to=garbage").status_code == 404
    first = pages.get(f"/batches/{batch.pk}/compare/")
    assert first.status_code == 200 and "first batch of its scenario" in first.content.decode()


# What a batch says, from runs made in the database ---------------------------------------------------

def ended(run, *, verdict=None, status="completed", **fields):
    Run.objects.filter(pk=run.pk).update(status=status, stage="done", verdict=verdict, ended_at=timezone.now(),
                                         failure_reason="error" if status == "failed" else "", **fields)


@pytest.mark.django_db
def test_disagreeing_verdicts_are_flaky_only_within_one_snapshot(workspace):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    batch, (first, second) = services.path_run_repeated(path=path, repeat=2)
    ended(first, verdict="passed")
    ended(second, verdict="inconclusive")
    assert batches.batch_detail(batch)["paths"][0]["flaky"] is True
    edited = dict(second.snapshot, path={**second.snapshot["path"], "narrative": "edited before a retry"})
    Run.objects.filter(pk=second.pk).update(snapshot=edited)
    row = batches.batch_detail(batch)["paths"][0]
    assert (row["flaky"], row["passes"], row["total"], row["pass_at_k"], row["pass_all_k"]) == (False, 1, 2, True, False)


@pytest.mark.django_db
def test_platform_failures_are_counted_apart_and_a_lost_run_retried_is_not_counted(workspace):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    batch, (lost, broken, fine) = services.path_run_repeated(path=path, repeat=3)
    ended(lost, status="failed")
    ended(broken, status="failed")
    ended(fine, verdict="passed")
    retry = f.RunFactory(path=path, batch=batch, retry_of=lost, auto_retry=True, snapshot=fine.snapshot)
    ended(retry, verdict="passed")
    row = batches.batch_detail(batch)["paths"][0]
    assert (row["passes"], row["total"], row["platform_failures"], row["flaky"], row["pass_all_k"]) == (2, 2, 1, False, True)


@pytest.mark.django_db
def test_a_batch_finishes_once_when_its_last_run_ends(workspace, monkeypatch, django_capture_on_commit_callbacks):
    announced = []
    monkeypatch.setattr(notify, "batch_finished", lambda batch: announced.append(batch.pk))
    services.workspace_queue_pause(workspace=workspace)  # nothing here may reach a worker
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    batch, (first, second) = services.path_run_repeated(path=path, repeat=2)
    with django_capture_on_commit_callbacks(execute=True):
        services.run_cancel(run_id=first.pk)
    batch.refresh_from_db()
    assert batch.finished_at is None and announced == []
    with django_capture_on_commit_callbacks(execute=True):
        services.run_fail(run_id=second.pk, reason="error", detail="test")
    batch.refresh_from_db()
    assert batch.finished_at is not None and announced == [batch.pk]
    finished_at = batch.finished_at
    with django_capture_on_commit_callbacks(execute=True):
        assert services.batch_finish(batch_id=batch.pk) is False
        services.sweep()
    batch.refresh_from_db()
    assert batch.finished_at == finished_at and announced == [batch.pk]


@pytest.mark.django_db
def test_the_sweep_finishes_a_batch_whose_last_run_ended_unnoticed(workspace, monkeypatch, django_capture_on_commit_callbacks):
    announced = []
    monkeypatch.setattr(notify, "batch_finished", lambda batch: announced.append(batch.pk))
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    batch, runs = services.path_run_repeated(path=path, repeat=2)
    for run in runs:
        ended(run, verdict="passed")  # as if the process died right after committing the last end
    with django_capture_on_commit_callbacks(execute=True):
        assert services.sweep()["batches_finished"] == 1
        assert services.sweep()["batches_finished"] == 0
    assert announced == [batch.pk]


@pytest.mark.django_db
def test_a_batch_of_100_paths_by_100_repeats_renders_in_a_bounded_number_of_queries(pages, api, workspace):
    scenario = f.ScenarioFactory(workspace=workspace, criteria=[SAYS_YES])
    f.PathFactory.create_batch(100, scenario=scenario)
    before, _ = services.scenario_run_all(scenario=scenario, repeat=1)
    batch, runs = services.scenario_run_all(scenario=scenario, repeat=100)
    assert len(runs) == 10_000 and batch.repeat == 100
    # Odd paths fail every fourth repetition (flaky); each run has a target turn with a latency.
    failing = {run.pk for i, run in enumerate(runs) if (i % 100) % 2 and (i // 100) % 4 == 0}
    Run.objects.filter(batch__in=[before, batch]).update(status="completed", stage="done", verdict="passed",
                                                          ended_at=timezone.now())
    Run.objects.filter(pk__in=failing).update(verdict="failed")
    CriterionResult.objects.bulk_create([
        CriterionResult(run_id=run_id, position=0, name="Says yes", kind="contains", outcome="failed",
                        rationale="No turn where the target said 'you are booked'.", evidence=[2])
        for run_id in failing], batch_size=1000)
    Turn.objects.bulk_create([
        Turn(run_id=run.pk, seq=2, speaker="target", text=NO, started_ms=10, latency_ms=100 + i % 50)
        for i, run in enumerate(runs)], batch_size=1000)

    with CaptureQueriesContext(connection) as page_queries:
        page = pages.get(f"/batches/{batch.pk}/")
    with CaptureQueriesContext(connection) as api_queries:
        detail = api.get(f"/api/v1/batches/{batch.pk}/").json()
    with CaptureQueriesContext(connection) as compare_queries:
        comparison = api.get(f"/api/v1/batches/{batch.pk}/compare/").json()

    assert page.status_code == 200 and page.content.decode().count('class="pill badge-flaky"') == 50
    assert len(page_queries) <= 25 and len(api_queries) <= 25 and len(compare_queries) <= 30, (
        len(page_queries), len(api_queries), len(compare_queries))
    assert len(detail["paths"]) == 100 and sum(len(row["runs"]) for row in detail["paths"]) == 10_000
    assert [row["flaky"] for row in detail["paths"]] == [bool(i % 2) for i in range(100)]
    assert detail["paths"][1]["failed_criteria_total"] == 25
    assert len(detail["paths"][1]["failed_criteria"]) == batches.FAILED_CRITERIA_PER_PATH
    assert (len(comparison["flaky"]), len(comparison["unchanged_passing"])) == (50, 50)
    assert comparison["to"] == str(before.pk)


@pytest.mark.django_db
def test_the_scenario_page_draws_the_trend_of_its_batches(pages, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    path = f.PathFactory(scenario=scenario)
    made = []
    for day, verdicts in enumerate([["passed", "passed"], ["passed", "failed"], ["failed", "failed"]]):
        batch, runs = services.path_run_repeated(path=path, repeat=2)
        Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(days=3 - day))
        for run, verdict in zip(runs, verdicts):
            ended(run, verdict=verdict)
        made.append(batch)
    html = pages.get(f"/scenarios/{scenario.pk}/").content.decode()
    assert '<svg viewBox="0 0 720 150" role="img"' in html
    assert html.count('class="point pass-rate"') == 3
    chart = html[html.index('class="line pass-rate" points="') + 31:]
    ys = [float(point.split(",")[1]) for point in chart[:chart.index('"')].split()]
    assert ys[0] < ys[1] < ys[2]  # 100 %, 50 %, 0 %: the line goes down (SVG's y grows downwards)
    order = [html.index(f'id="batch-{batch.pk}"') for batch in reversed(made)]
    assert order == sorted(order)  # latest first


@pytest.mark.django_db
def test_the_migration_marks_batches_that_had_already_ended_as_finished(workspace):
    from django.apps import apps

    migration = importlib.import_module("runs.migrations.0007_batches")
    services.workspace_queue_pause(workspace=workspace)
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    done, done_runs = services.path_run_repeated(path=path, repeat=2)
    going, (going_run, _) = services.path_run_repeated(path=path, repeat=2)
    for run in done_runs:
        ended(run)
    ended(going_run)
    migration.finish_ended_batches(apps, None)
    done.refresh_from_db()
    going.refresh_from_db()
    assert done.finished_at == max(Run.objects.get(pk=run.pk).ended_at for run in done_runs)
    assert going.finished_at is None


@pytest.mark.django_db
def test_a_bare_post_still_runs_once_and_a_form_that_says_something_is_refused(api, workspace):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))
    assert api.post(f"/api/v1/paths/{path.pk}/run/").status_code == 201  # an empty multipart body
    assert api.post(f"/api/v1/scenarios/{path.scenario_id}/run-all/").status_code == 201
    assert api.post(f"/api/v1/paths/{path.pk}/run/", {"repeat": "5"}).status_code == 415
    assert Run.objects.count() == 2 and Batch.objects.get().repeat == 1
