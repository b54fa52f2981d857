"""Runs end to end: real Celery workers (two processes, one running beat), the real database and
Redis, the demo target on a live server, and customer bots faked on real sockets."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Run, RunEvent, Turn
from scenarios.models import Path, Target
from tests import factories as f
from tests.fakes import FakeWebsocketBot
from tests.support import CeleryWorker, FakeTarget, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def workers(django_db_setup, django_db_blocker, live_server, test_redis_url):
    env = {"DEMO_TARGET_URL": f"{live_server.url}/demo-target/chat/"}
    with django_db_blocker.unblock():
        started = [
            CeleryWorker(redis_url=test_redis_url, name="w1", env=env, beat=True),
            CeleryWorker(redis_url=test_redis_url, name="w2", env=env),
        ]
    yield started
    for worker in started:
        worker.stop()


def demo_scenario(workspace, *, paths: int, script=None, **scenario_fields):
    target = f.TargetFactory(workspace=workspace, kind=Target.Kind.DEMO, url="", request_template={}, response_path="")
    scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[
        {"name": "Greets", "kind": "regex", "speaker": "target", "pattern": "(?i)brightsmile"},
    ], **scenario_fields)
    for i in range(paths):
        f.PathFactory(scenario=scenario, name=f"path {i:02d}", script=script or [
            {"say": "Hi, I'd like to book a cleaning."}, {"expect": "(?i)what day"},
            {"pause_ms": 200}, {"say": "Tuesday, please."}, {"expect": "(?i)10 ?am"}, {"end_call": True},
        ])
    return scenario


def run_of(run_id) -> Run:
    return Run.objects.get(pk=run_id)


def ended(run_id, timeout=30) -> Run:
    return wait_for(lambda: (r := run_of(run_id)).status in TERMINAL and r, timeout, message=f"run {run_id} to end")


def max_concurrent(runs) -> int:
    """The most runs past queued and not yet terminal at any instant, from their recorded events."""
    points = []
    for event in RunEvent.objects.filter(run__in=runs).order_by("at", "id"):
        if event.to_stage == "materializing":
            points.append((event.at, 1))
        elif event.to_stage == "done" and event.from_stage != "queued":
            points.append((event.at, -1))
    current = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        current += delta
        peak = max(peak, current)
    return peak


def test_run_all_runs_every_path_with_bounded_parallelism_in_creation_order(workers, api, workspace):
    workspace.max_parallel_runs = 3
    workspace.save()
    scenario = demo_scenario(workspace, paths=8)
    response = api.post(f"/api/v1/scenarios/{scenario.pk}/run-all/")
    assert response.status_code == 201, response.content
    body = response.json()
    assert len(body["runs"]) == 8 and {r["status"] for r in body["runs"]} == {"pending"}
    ids = [r["id"] for r in body["runs"]]
    runs = [ended(run_id, 60) for run_id in ids]
    assert [r.status for r in runs] == ["completed"] * 8, [(r.status, r.failure_detail) for r in runs]
    assert {r.verdict for r in runs} == {"passed"}
    assert all(Turn.objects.filter(run=r).count() == 4 for r in runs)
    assert max_concurrent(runs) <= 3
    admitted = list(
        RunEvent.objects.filter(run__in=runs, to_stage="materializing").order_by("at", "id").values_list("run_id", flat=True)
    )
    assert [str(a) for a in admitted] == ids  # oldest first
    detail = api.get(f"/api/v1/runs/{ids[0]}/").json()
    assert [t["speaker"] for t in detail["turns"]] == ["caller", "target", "caller", "target"]
    assert detail["tool_invocations"][0]["name"] == "end_call"
    assert {c["name"]: c["outcome"] for c in detail["criteria"]} == {"Script expectations": "passed", "Greets": "passed"}
    assert detail["metrics"]["turns"] == 4 and detail["metrics"]["latency_ms_p50"] is not None
    listed = api.get(f"/api/v1/runs/?batch={body['batch']}&status=completed").json()
    assert listed["count"] == 8


def test_scenario_bound_holds_under_the_workspace_bound(workers, api, workspace):
    workspace.max_parallel_runs = 5
    workspace.save()
    scenario = demo_scenario(workspace, paths=4, max_parallel_runs=1)
    ids = [r["id"] for r in api.post(f"/api/v1/scenarios/{scenario.pk}/run-all/").json()["runs"]]
    runs = [ended(run_id, 60) for run_id in ids]
    assert {r.status for r in runs} == {"completed"}
    assert max_concurrent(runs) == 1


def test_cancel_a_queued_run_it_never_starts(workers, api, workspace):
    api.post("/api/v1/queue/pause/")
    path = demo_scenario(workspace, paths=1).paths.get()
    run_id = api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"]
    response = api.post(f"/api/v1/runs/{run_id}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.post(f"/api/v1/runs/{run_id}/cancel/").json()["status"] == "cancelled"  # idempotent
    api.post("/api/v1/queue/resume/")
    time.sleep(2.5)  # two sweep periods: nothing may pick it up
    run = run_of(run_id)
    assert (run.status, run.stage, run.started_at) == ("cancelled", "done", None)
    assert not Turn.objects.filter(run=run).exists()
    assert not RunEvent.objects.filter(run=run, to_stage="materializing").exists()


def test_cancel_a_live_run_stops_the_conversation(workers, api, workspace):
    bot = FakeWebsocketBot(greeting=None, parts=1)
    try:
        target = f.TargetFactory(workspace=workspace, kind=Target.Kind.WEBSOCKET, url=bot.url,
                                 request_template={}, response_path="")
        scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
        # Left alone, the script says "two" 20 s in and keeps the session open until then.
        path = f.PathFactory(scenario=scenario, script=[{"say": "one"}, {"pause_ms": 20000}, {"say": "two"}])
        run_id = api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"]
        wait_for(lambda: Turn.objects.filter(run_id=run_id).count() == 2, message="the first exchange")
        assert run_of(run_id).stage == "live"
        assert api.post(f"/api/v1/runs/{run_id}/cancel/").json()["status"] == "cancelled"
        # The executor notices within a heartbeat and closes the session: the bot sees it end.
        assert bot.closed.wait(10), "the conversation went on after the cancel"
        assert [frame["message"] for frame in bot.frames] == ["one"]
        assert Turn.objects.filter(run_id=run_id).count() == 2
        run = run_of(run_id)
        assert (run.status, run.verdict) == ("cancelled", None)
    finally:
        bot.close()


def test_retry_makes_a_new_run_pointing_at_the_old_one(workers, api, workspace):
    path = demo_scenario(workspace, paths=1).paths.get()
    api.post("/api/v1/queue/pause/")  # the run stays pending: not finished, so not retryable yet
    first = api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"]
    refused = api.post(f"/api/v1/runs/{first}/retry/")
    assert refused.status_code == 400 and "finished" in refused.json()["detail"]
    assert Run.objects.filter(path=path).count() == 1
    api.post("/api/v1/queue/resume/")
    ended(first)
    response = api.post(f"/api/v1/runs/{first}/retry/")
    assert response.status_code == 201
    second = response.json()
    assert second["retry_of"] == first and second["id"] != first
    assert ended(second["id"]).status == "completed"


def test_a_paused_queue_admits_nothing_until_resumed(workers, api, workspace):
    assert api.post("/api/v1/queue/pause/").json()["queue_paused"] is True
    path = demo_scenario(workspace, paths=1).paths.get()
    run_id = api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"]
    time.sleep(2.5)
    assert run_of(run_id).status == "pending"
    queue = api.get("/api/v1/queue/").json()
    assert queue["paused"] is True and [r["id"] for r in queue["queued"]] == [run_id]
    api.post("/api/v1/queue/resume/")
    assert ended(run_id).status == "completed"
    assert [r["id"] for r in api.get("/api/v1/queue/").json()["recent"]] == [run_id]


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/chat"


@pytest.mark.parametrize("kind", ["closed port", "http 500"])
def test_an_unreachable_target_fails_the_run_with_what_to_check(workers, api, workspace, kind):
    bot = FakeTarget(lambda message, n: (500, {"error": "boom"}))
    try:
        target = f.TargetFactory(workspace=workspace, url=_closed_port() if kind == "closed port" else bot.url)
        path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace, target=target))
        run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    finally:
        bot.close()
    assert (run.status, run.failure_reason, run.verdict) == ("failed", "target_unreachable", None)
    assert ("could not connect" if kind == "closed port" else "HTTP 500") in run.failure_detail
    assert "Check the target's URL" in run.failure_detail
    assert "isn't accepting calls" in api.get(f"/api/v1/runs/{run.pk}/").json()["failure_help"]


def test_a_target_that_errors_mid_conversation_is_recorded_and_the_run_finalizes(workers, api, workspace):
    bot = FakeTarget(lambda message, n: (200, {"reply": "hello there"}) if n == 1 else (503, {"error": "overloaded"}))
    try:
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[
            {"name": "greets", "kind": "contains", "speaker": "target", "text": "hello"}])
        path = f.PathFactory(scenario=scenario, script=[{"say": "hi"}, {"say": "book me"}, {"say": "thanks"}])
        run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    finally:
        bot.close()
    assert (run.status, run.verdict) == ("completed", "passed")
    turns = list(Turn.objects.filter(run=run).order_by("seq"))
    assert [t.speaker for t in turns] == ["caller", "target", "caller", "target"]
    assert turns[-1].is_error and "HTTP 503" in turns[-1].text


def test_unsynced_custom_functions_fail_before_any_conversation(workers, api, workspace):
    path = demo_scenario(workspace, paths=1).paths.get()
    f.CustomFunctionFactory(agent=path.scenario.agent, name="book_slot", sync_status="error")
    run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    assert (run.status, run.failure_reason) == ("failed", "tool_sync_pending")
    assert "book_slot (error)" in run.failure_detail
    assert not Turn.objects.filter(run=run).exists() and run.started_at is None


def test_a_conversation_past_the_cap_ends_as_duration_cap_no_progress(workers, api, workspace):
    bot = FakeTarget(lambda message, n: (200, {"reply": "mm-hmm"}))
    try:
        agent = f.AgentFactory(workspace=workspace, max_duration_seconds=10)
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        scenario = f.ScenarioFactory(workspace=workspace, agent=agent, target=target)
        path = f.PathFactory(scenario=scenario, script=[{"say": "tell me more"}, {"pause_ms": 60000}, {"say": "and?"}])
        run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"], timeout=40)
    finally:
        bot.close()
    assert (run.status, run.failure_reason) == ("failed", "duration_cap_no_progress")
    assert "10s cap" in run.failure_detail


def test_the_sweep_dispatches_a_run_whose_message_was_lost(workers, workspace, monkeypatch):
    from runs import dispatch, services

    # This process admits the run after the commit, then its message to the workers is lost.
    monkeypatch.setattr(dispatch, "execute_runs", lambda run_ids: None)
    path = demo_scenario(workspace, paths=1).paths.get()
    run = services.path_run(path=Path.objects.select_related("scenario__agent", "scenario__target").get(pk=path.pk))
    admission = RunEvent.objects.get(run=run, to_stage="materializing")

    assert ended(run.pk, 40).status == "completed"
    # Only the sweep sends an unclaimed run again, touching admitted_at when it does.
    resent_at = run_of(run.pk).admitted_at
    assert resent_at >= admission.at + timedelta(seconds=services.DISPATCH_RETRY_SECONDS)


def test_api_refuses_bad_input_and_other_workspaces(workers, api, workspace, other_workspace):
    theirs = f.PathFactory(scenario=f.ScenarioFactory(workspace=other_workspace))
    assert api.post(f"/api/v1/paths/{theirs.pk}/run/").status_code == 404
    assert api.post(f"/api/v1/scenarios/{theirs.scenario.pk}/run-all/").status_code == 404
    their_run = f.RunFactory(path=theirs)
    assert api.get(f"/api/v1/runs/{their_run.pk}/").status_code == 404
    assert api.post(f"/api/v1/runs/{their_run.pk}/cancel/").status_code == 404
    assert api.get("/api/v1/runs/?status=bogus").status_code == 400
    empty = f.ScenarioFactory(workspace=workspace)
    response = api.post(f"/api/v1/scenarios/{empty.pk}/run-all/")
    assert response.status_code == 400 and "no paths" in response.json()["detail"]
    assert run_of(their_run.pk).status == "pending"


def test_a_path_without_a_script_is_played_by_the_llm_caller_and_judged(workers, api, workspace):
    from tests.fakes import FakeOpenAI

    def model(messages):
        if "judge" in messages[0]["content"] and "rule holds" in messages[0]["content"]:
            return '{"verdict": "pass", "rationale": "The bot echoed the request.", "evidence": [2]}'
        said = [m for m in messages if m["role"] == "assistant"]
        if not said:
            return "Hello, can I book a table for two?"
        return {"content": "Great, thanks!", "tool_calls": [{"name": "end_call", "arguments": {}}]}

    llm = FakeOpenAI(model)
    bot = FakeTarget(lambda message, n: (200, {"reply": f"Sure: {message}"}))
    try:
        agent = f.AgentFactory(workspace=workspace, llm_base_url=llm.base_url, llm_model="caller-1")
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        scenario = f.ScenarioFactory(workspace=workspace, agent=agent, target=target, criteria=[
            {"name": "echoes", "kind": "llm_judge", "rule": "The bot repeats the caller's request."}])
        path = f.PathFactory(scenario=scenario, script=[], narrative="Sam wants a table for two tonight.")
        run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    finally:
        llm.close()
        bot.close()
    assert (run.status, run.verdict) == ("completed", "passed"), run.failure_detail
    assert [t.speaker for t in Turn.objects.filter(run=run).order_by("seq")] == ["caller", "target", "caller", "target"]
    assert "Sam wants a table" in run.persona
    assert list(run.criteria_results.values_list("name", "outcome")) == [("echoes", "passed")]


def test_a_path_without_a_script_and_no_llm_fails_saying_what_to_configure(workers, api, workspace, settings):
    path = f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace), script=[], narrative="Anyone.")
    run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    assert (run.status, run.failure_reason) == ("failed", "error")
    assert "LLM_BASE_URL" in run.failure_detail


def test_a_finished_run_is_posted_to_the_workspace_webhook_signed(workers, api, workspace):
    import json as _json

    from scenarios.sync import verify_signature

    receiver = FakeTarget(lambda message, n: (200, {"ok": True}))
    try:
        response = api.patch("/api/v1/workspace/", {"webhook_url": receiver.url, "webhook_secret": "hook-secret"},
                             content_type="application/json")
        assert response.status_code == 200 and "webhook_secret" not in response.json()
        path = demo_scenario(workspace, paths=1).paths.get()
        run = ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
        wait_for(lambda: receiver.requests, message="the webhook")
    finally:
        receiver.close()
    delivered = receiver.requests[0]
    body = delivered["body"]
    assert body["type"] == "run.finished" and body["run"]["id"] == str(run.pk)
    assert (body["run"]["status"], body["run"]["verdict"]) == ("completed", "passed")
    headers = {k.lower(): v for k, v in delivered["headers"].items()}
    raw = _json.dumps(body, separators=(",", ":")).encode()
    assert verify_signature("hook-secret", headers["x-assure-timestamp"], raw, headers["x-assure-signature"])
