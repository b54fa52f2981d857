"""Schedules: a scenario runs by itself on a cron expression, once per due time, and says what changed.

Through the real stack where it matters: real Celery workers with the embedded beat (ticking every
second here), the real database and Redis, customer bots and webhook receivers on real sockets.
Time is driven by moving a schedule's ``next_run_at`` into the past, as the passing of time would.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.utils import timezone

from runs import schedules as firing
from runs import notify, selectors, services, tasks
from runs.models import Batch, Run, ScheduleFiring
from scenarios import schedules
from scenarios.cron import MAX_CRON_LENGTH, min_interval_minutes, next_after, validate_cron
from scenarios.models import Schedule
from tests import factories as f
from tests.support import CeleryWorker, DaphneServer, FakeTarget, chromium, signed_in_page, wait_for

TERMINAL = ("completed", "failed", "cancelled")


def bot_scenario(workspace, bot_url: str, *, paths=("status",)):
    """A chat scenario against a bot on a real socket: path ``name`` says ``name`` and expects the
    bot to answer ``<name>: ok``."""
    target = f.TargetFactory(workspace=workspace, url=bot_url)
    scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
    for name in paths:
        f.PathFactory(scenario=scenario, name=name, script=[
            {"say": name}, {"expect": f"^{name}: ok$"}, {"end_call": True}])
    return scenario


def make_schedule(scenario, **fields) -> Schedule:
    fields = {"cron": "0 3 1 1 *", "timezone": "UTC", **fields}
    return schedules.schedule_save(schedule=Schedule(workspace=scenario.workspace, scenario=scenario, **fields))


def make_due(schedule: Schedule, due_at: datetime) -> None:
    """The schedule's due time has come (or came while nothing was ticking)."""
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=due_at)


# Cron, time zones and the minimum interval ----------------------------------------------------------


def test_next_due_time_is_read_in_the_schedules_time_zone():
    after = datetime(2026, 3, 28, 12, 0, tzinfo=dt_timezone.utc)
    # 09:00 in Paris is 08:00 UTC before the spring change and 07:00 UTC after it.
    first = next_after("0 9 * * *", "Europe/Paris", after)
    second = next_after("0 9 * * *", "Europe/Paris", first)
    assert (first, second) == (datetime(2026, 3, 29, 7, 0, tzinfo=dt_timezone.utc),
                               datetime(2026, 3, 30, 7, 0, tzinfo=dt_timezone.utc))
    assert first.astimezone(ZoneInfo("Europe/Paris")).hour == 9


def test_a_local_time_the_autumn_change_repeats_fires_once_unless_every_hour():
    """Clocks go back in New York at 02:00 on 2026-11-01: 01:30 comes twice (05:30Z, then 06:30Z).
    A daily cron fires at the first only, as classic cron does; an hourly one in both hours."""
    after = datetime(2026, 10, 31, 12, 0, tzinfo=dt_timezone.utc)
    first = next_after("30 1 * * *", "America/New_York", after)
    second = next_after("30 1 * * *", "America/New_York", first)
    assert (first, second) == (datetime(2026, 11, 1, 5, 30, tzinfo=dt_timezone.utc),
                               datetime(2026, 11, 2, 6, 30, tzinfo=dt_timezone.utc))
    # Asked from inside the repeated hour (after the first 01:30 fired): not again that night.
    assert next_after("30 1 * * *", "America/New_York", datetime(2026, 11, 1, 6, 0, tzinfo=dt_timezone.utc)) == second

    hourly = [next_after("30 * * * *", "America/New_York", datetime(2026, 11, 1, 4, 0, tzinfo=dt_timezone.utc))]
    for _ in range(3):
        hourly.append(next_after("30 * * * *", "America/New_York", hourly[-1]))
    assert [moment.hour for moment in hourly] == [4, 5, 6, 7]  # 00:30 EDT, 01:30 EDT, 01:30 EST, 02:30 EST


def test_a_long_cron_is_refused_before_it_is_parsed(api, workspace):
    """croniter takes seconds over a long expression: its length is checked first, by every path in."""
    import time

    huge = "0 " * 400_000  # 800 KB
    started = time.monotonic()
    with pytest.raises(ValidationError) as refused:
        validate_cron(huge)
    assert time.monotonic() - started < 0.2  # was 2.5 s of croniter
    assert f"at most {MAX_CRON_LENGTH} characters" in " ".join(refused.value.messages)
    started = time.monotonic()
    response = api.post("/api/v1/schedules/", {"scenario": str(f.ScenarioFactory(workspace=workspace).pk),
                                               "cron": huge}, content_type="application/json")
    assert response.status_code == 400 and "cron" in response.json()
    assert time.monotonic() - started < 1.5
    with pytest.raises(ValueError):
        next_after(huge, "UTC", timezone.now())


@pytest.mark.parametrize("cron, minutes", [
    ("*/5 * * * *", 5), ("0,5 * * * *", 5), ("58,2 * * * *", 4), ("0 * * * *", 60), ("59 9-10 * * *", 60),
    ("0 23,0 * * *", 60), ("30 6 * * 1-5", 24 * 60),
])
def test_the_shortest_interval_of_a_cron(cron, minutes):
    from croniter import croniter

    expanded = croniter(cron).expanded
    assert min_interval_minutes(expanded[0], expanded[1]) == minutes


# The API ---------------------------------------------------------------------------------------


def test_create_a_schedule_it_gets_its_next_due_time_and_keeps_the_slack_url_secret(api, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    before = timezone.now()
    response = api.post("/api/v1/schedules/", {
        "scenario": str(scenario.pk), "cron": "30 6 * * 1-5", "timezone": "America/New_York", "repeat": 3,
        "slack_webhook_url": "http://127.0.0.1:9/slack/T000/B000/secret-part",
    }, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert "slack_webhook_url" not in body and body["has_slack_webhook"] is True
    assert (body["cron"], body["timezone"], body["repeat"], body["enabled"], body["last_batch"]) == (
        "30 6 * * 1-5", "America/New_York", 3, True, None)
    next_run = datetime.fromisoformat(body["next_run_at"])
    assert next_run == next_after("30 6 * * 1-5", "America/New_York", before)
    local = next_run.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, local.weekday() < 5) == (6, 30, True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT slack_webhook_url FROM scenarios_schedule WHERE id = %s", [body["id"].replace("-", "")])
        stored = cursor.fetchone()[0]
    assert "secret-part" not in stored
    assert api.get(f"/api/v1/schedules/{body['id']}/").json()["next_run_at"] == body["next_run_at"]
    assert [s["id"] for s in api.get(f"/api/v1/schedules/?scenario={scenario.pk}").json()["results"]] == [body["id"]]


BAD_INPUT = [
    ({"cron": "* * * * *"}, "cron", "at most every 5 minutes"),
    ({"cron": "*/2 * * * *"}, "cron", "every 2 minutes"),
    ({"cron": "58,1 * * * *"}, "cron", "every 3 minutes"),
    ({"cron": "0 0 * * * *"}, "cron", "five fields"),
    ({"cron": "0 0 * *"}, "cron", "five fields"),
    ({"cron": "every day"}, "cron", "five fields"),
    ({"cron": "61 * * * *"}, "cron", "Not a valid cron expression"),
    ({"cron": "0 25 * * *"}, "cron", "Not a valid cron expression"),
    ({"cron": "0 0 31 2 *"}, "cron", "no date"),
    ({"cron": "H 3 * * *"}, "cron", "Hashed"),
    ({"cron": "@daily"}, "cron", "five fields"),
    ({"cron": ""}, "cron", ""),
    ({"cron": "0 " * 200}, "cron", ""),
    ({"cron": 5}, "cron", ""),
    ({"cron": None}, "cron", ""),
    ({"cron": ["0", "6", "*", "*", "*"]}, "cron", ""),
    ({"cron": "0 6 * * 1-5\x00"}, "cron", ""),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", "IANA"),
    ({"timezone": "localtime"}, "timezone", "IANA"),
    ({"timezone": "../../../etc/passwd"}, "timezone", "IANA"),
    ({"timezone": ""}, "timezone", ""),
    ({"timezone": 3}, "timezone", ""),
    ({"repeat": 0}, "repeat", ""),
    ({"repeat": 101}, "repeat", ""),
    ({"repeat": -1}, "repeat", ""),
    ({"repeat": "many"}, "repeat", ""),
    ({"repeat": 1.5}, "repeat", ""),
    ({"repeat": 10**30}, "repeat", ""),
    ({"enabled": "perhaps"}, "enabled", ""),
    ({"slack_webhook_url": "ftp://hooks.example.com/x"}, "slack_webhook_url", "http"),
    ({"slack_webhook_url": "http://169.254.169.254/latest/"}, "slack_webhook_url", "egress"),
    ({"slack_webhook_url": "not a url"}, "slack_webhook_url", ""),
    ({"slack_webhook_url": "https://" + "a" * 600 + ".example.com/"}, "slack_webhook_url", ""),
    ({"scenario": "not-a-uuid"}, "scenario", ""),
    ({"scenario": None}, "scenario", ""),
]


@pytest.mark.parametrize("change, field, words", BAD_INPUT, ids=[str(change)[:60] for change, _, _ in BAD_INPUT])
def test_bad_input_is_a_400_naming_the_field(api, workspace, change, field, words):
    scenario = f.ScenarioFactory(workspace=workspace)
    data = {"scenario": str(scenario.pk), "cron": "0 6 * * *", "timezone": "UTC", **change}
    response = api.post("/api/v1/schedules/", data, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert words in " ".join(response.json()[field])
    assert not Schedule.objects.exists()

    existing = make_schedule(scenario)
    response = api.patch(f"/api/v1/schedules/{existing.pk}/", change, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_another_workspaces_scenario_and_schedules_are_out_of_reach(api, workspace, other_workspace):
    theirs = f.ScenarioFactory(workspace=other_workspace)
    response = api.post("/api/v1/schedules/", {"scenario": str(theirs.pk), "cron": "0 6 * * *"},
                        content_type="application/json")
    assert response.status_code == 400 and "scenario" in response.json()

    their_schedule = make_schedule(theirs)
    assert api.get(f"/api/v1/schedules/{their_schedule.pk}/").status_code == 404
    assert api.patch(f"/api/v1/schedules/{their_schedule.pk}/", {"enabled": False},
                     content_type="application/json").status_code == 404
    assert api.delete(f"/api/v1/schedules/{their_schedule.pk}/").status_code == 404
    assert api.get("/api/v1/schedules/").json()["count"] == 0
    mine = make_schedule(f.ScenarioFactory(workspace=workspace))
    response = api.patch(f"/api/v1/schedules/{mine.pk}/", {"scenario": str(theirs.pk)}, content_type="application/json")
    assert response.status_code == 400
    assert Schedule.objects.get(pk=their_schedule.pk).enabled is True
    assert Schedule.objects.get(pk=mine.pk).scenario_id != theirs.pk


def test_editing_the_timing_starts_afresh_other_edits_keep_a_pending_due_time(api, workspace):
    schedule = make_schedule(f.ScenarioFactory(workspace=workspace), cron="0 6 * * *")
    url = f"/api/v1/schedules/{schedule.pk}/"
    pending = timezone.now() - timedelta(seconds=5)  # due, and not yet fired
    make_due(schedule, pending)

    body = api.patch(url, {"repeat": 4, "slack_webhook_url": "http://127.0.0.1:9/hook"},
                     content_type="application/json").json()
    assert datetime.fromisoformat(body["next_run_at"]) == pending and body["repeat"] == 4

    body = api.patch(url, {"enabled": False}, content_type="application/json").json()
    assert (body["enabled"], body["next_run_at"]) == (False, None)

    body = api.patch(url, {"enabled": True}, content_type="application/json").json()
    assert datetime.fromisoformat(body["next_run_at"]) > timezone.now()  # no firing for the time it was off

    body = api.patch(url, {"cron": "15 7 * * *", "timezone": "Asia/Tokyo"}, content_type="application/json").json()
    local = datetime.fromisoformat(body["next_run_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (7, 15)

    cleared = api.patch(url, {"slack_webhook_url": ""}, content_type="application/json").json()
    assert cleared["has_slack_webhook"] is False
    assert api.delete(url).status_code == 204 and not Schedule.objects.exists()


# Firing: once per due time -----------------------------------------------------------------------


def test_due_times_missed_while_nothing_ticked_fire_once(workspace):
    scenario = bot_scenario(workspace, "http://127.0.0.1:9/chat", paths=("a", "b"))
    schedule = make_schedule(scenario, cron="*/5 * * * *", repeat=3)
    now = timezone.now()
    make_due(schedule, now - timedelta(hours=3))  # 36 due times passed

    fired = firing.schedules_fire_due(now=now)

    assert len(fired) == 1 and ScheduleFiring.objects.count() == 1
    schedule.refresh_from_db()
    assert now < schedule.next_run_at <= now + timedelta(minutes=5)
    batch = fired[0].batch
    assert selectors.last_batches_of([schedule.pk]) == {schedule.pk: batch}
    assert batch.scenario == scenario and batch.repeat == 3
    assert Run.objects.filter(batch=batch).count() == 6  # 2 paths × 3 repeats
    assert firing.schedules_fire_due(now=now) == []  # nothing is due any more


def test_a_due_time_fires_once_even_when_its_claim_is_written_back(workspace):
    """A stale save that puts an already fired due time back (or two beats racing) still fires it
    once: the firing row is unique per schedule and due time."""
    schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"))
    due = timezone.now() - timedelta(minutes=1)
    make_due(schedule, due)
    assert len(firing.schedules_fire_due()) == 1
    make_due(schedule, due)  # the stale value

    assert firing.schedules_fire_due() == []
    assert ScheduleFiring.objects.filter(schedule=schedule).count() == 1 and Batch.objects.count() == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now()  # moved on, not stuck on the fired due time


def test_a_disabled_schedule_and_a_scenario_without_paths(workspace):
    enabled_but_empty = make_schedule(f.ScenarioFactory(workspace=workspace))
    disabled = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"), enabled=False)
    due = timezone.now() - timedelta(minutes=1)
    make_due(enabled_but_empty, due)
    make_due(disabled, due)

    fired = firing.schedules_fire_due()

    assert [(x.schedule_id, x.batch) for x in fired] == [(enabled_but_empty.pk, None)]
    assert "no paths" in fired[0].detail
    assert not Batch.objects.exists()
    enabled_but_empty.refresh_from_db()
    assert enabled_but_empty.next_run_at > timezone.now()


@pytest.mark.django_db(transaction=True)
def test_two_claimers_at_once_fire_a_due_time_once(workspace):
    schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"))
    due = timezone.now() - timedelta(minutes=1)
    make_due(schedule, due)
    start = threading.Barrier(4)
    results, errors = [], []

    def claim():
        try:
            start.wait()
            results.append(firing.schedule_fire(schedule_id=schedule.pk, due_at=due, now=timezone.now()))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len([r for r in results if r is not None]) == 1 and len(results) == 4
    assert ScheduleFiring.objects.filter(schedule=schedule).count() == 1 and Batch.objects.count() == 1


# Through the real beat ---------------------------------------------------------------------------


def beat_worker(redis_url, name, **env):
    return CeleryWorker(redis_url=redis_url, name=name, beat=True, env={"SCHEDULE_TICK_SECONDS": "1", **env})


def ticks(*workers) -> int:
    """Beat ticks that ran to the end, across these workers' logs."""
    return sum(1 for worker in workers for line in list(worker.log)
               if "runs.tasks.fire_due_schedules[" in line and "succeeded" in line)


def firings_of(schedule) -> list[ScheduleFiring]:
    return list(ScheduleFiring.objects.filter(schedule=schedule).order_by("due_at"))


@pytest.mark.django_db(transaction=True)
def test_a_schedule_due_twice_fires_twice_once_each_across_a_beat_restart_and_two_beats(workspace, test_redis_url):
    bot = FakeTarget(lambda message, n: (200, {"reply": f"{message}: ok"}))
    workers = []
    try:
        scenario = bot_scenario(workspace, bot.url)
        schedules_ = [make_schedule(scenario) for _ in range(3)]
        first_due = timezone.now() - timedelta(minutes=2)
        for schedule in schedules_:
            make_due(schedule, first_due)

        workers.append(beat_worker(test_redis_url, "beat1"))
        wait_for(lambda: all(len(firings_of(s)) == 1 for s in schedules_), 60, message="the first due time to fire")
        seen = ticks(*workers)
        wait_for(lambda: ticks(*workers) >= seen + 3, 30, message="three more beat ticks")
        assert [len(firings_of(s)) for s in schedules_] == [1, 1, 1]  # fired once, not once per tick
        workers.pop().stop()

        # Beat is down when the next due time comes; then it restarts, twice over.
        second_due = timezone.now() - timedelta(minutes=1)
        for schedule in schedules_:
            make_due(schedule, second_due)
        workers += [beat_worker(test_redis_url, "beat2"), beat_worker(test_redis_url, "beat3")]
        wait_for(lambda: all(len(firings_of(s)) == 2 for s in schedules_), 60, message="the second due time to fire")
        seen = [ticks(worker) for worker in workers]
        wait_for(lambda: all(ticks(w) >= n + 3 for w, n in zip(workers, seen)), 30, message="both beats to tick again")

        for schedule in schedules_:
            fired = firings_of(schedule)
            assert [x.due_at for x in fired] == [first_due, second_due]
            assert all(x.batch_id for x in fired) and len({x.batch_id for x in fired}) == 2
            schedule.refresh_from_db()
            assert selectors.last_batches_of([schedule.pk])[schedule.pk].pk == fired[-1].batch_id
            assert schedule.next_run_at == next_after(schedule.cron, schedule.timezone, timezone.now())
        assert Batch.objects.filter(scenario=scenario).count() == 6
        batch_runs = Run.objects.filter(batch__scenario=scenario)
        wait_for(lambda: not batch_runs.exclude(status__in=TERMINAL).exists(), 60, message="the batches' runs to end")
        assert set(batch_runs.values_list("status", "verdict")) == {("completed", "passed")}
    finally:
        for worker in workers:
            worker.stop()
        bot.close()


def signed_by(secret: str, request: dict) -> bool:
    headers = {k.lower(): v for k, v in request["headers"].items()}
    expected = hmac.new(secret.encode(), headers["x-assure-timestamp"].encode() + b"." + request["raw"], hashlib.sha256)
    return hmac.compare_digest(headers.get("x-assure-signature", ""), f"sha256={expected.hexdigest()}")


@pytest.mark.django_db(transaction=True)
def test_a_scheduled_batch_sends_its_comparison_to_the_webhook_and_to_slack(workspace, api, test_redis_url):
    healthy = {"booking": True}

    def bot_answer(message, n):
        if message == "booking" and not healthy["booking"]:
            return 200, {"reply": "booking: sorry, the calendar is down"}
        return 200, {"reply": f"{message}: ok"}

    bot = FakeTarget(bot_answer)
    hooks = FakeTarget(lambda message, n: (200, {"ok": True}))
    slack = FakeTarget(lambda message, n: (200, b"ok"))
    worker = None
    try:
        workspace.webhook_url, workspace.webhook_secret = hooks.url, "hook-secret"
        workspace.save()
        scenario = bot_scenario(workspace, bot.url, paths=("status", "booking"))
        scenario.name = "Dental <front desk>"
        scenario.save()
        schedule = make_schedule(scenario, repeat=2, slack_webhook_url=slack.url)
        worker = beat_worker(test_redis_url, "beat", PUBLIC_BASE_URL="https://assure.example.test")

        def batch_webhooks():
            return [r for r in list(hooks.requests) if r["body"].get("event") == "batch.finished"]

        make_due(schedule, timezone.now() - timedelta(minutes=1))
        wait_for(lambda: len(batch_webhooks()) == 1 and len(slack.requests) == 1, 90, message="the first batch's news")
        healthy["booking"] = False
        make_due(schedule, timezone.now() - timedelta(seconds=1))
        wait_for(lambda: len(batch_webhooks()) == 2 and len(slack.requests) == 2, 90, message="the second batch's news")

        first, second = [fired.batch for fired in firings_of(schedule)]
        delivered = batch_webhooks()
        assert all(signed_by("hook-secret", request) for request in delivered)
        assert [d["body"]["batch"]["id"] for d in delivered] == [str(first.pk), str(second.pk)]
        one, two = (d["body"] for d in delivered)
        assert one["comparison"] is None
        assert one["batch"]["schedule"] == str(schedule.pk) and one["batch"]["finished"] is True
        assert (one["batch"]["counts"]["passed"], one["batch"]["pass_rate"]) == (4, 1.0)
        assert (two["comparison"]["batch"], two["comparison"]["to"]) == (str(second.pk), str(first.pk))
        assert [change["name"] for change in two["comparison"]["newly_failing"]] == ["booking"]
        assert [change["name"] for change in two["comparison"]["unchanged_passing"]] == ["status"]
        assert two["batch"]["pass_rate"] == 0.5

        first_text, second_text = (request["body"]["text"] for request in slack.requests)
        assert "Dental &lt;front desk&gt;" in first_text and "<front desk>" not in first_text
        assert "Pass rate 100% (4 of 4" in first_text and "Nothing to compare with yet" in first_text
        assert "Pass rate 50% (2 of 4" in second_text
        assert "Newly failing (1): booking" in second_text
        assert f"https://assure.example.test/batches/{second.pk}/compare/?to={first.pk}" in second_text
        assert "x-assure-signature" not in {k.lower() for k in slack.requests[0]["headers"]}

        # A batch nobody scheduled gets the webhook too, compared with the scenario's previous batch.
        healthy["booking"] = True
        queued = api.post(f"/api/v1/scenarios/{scenario.pk}/run-all/", {}, content_type="application/json")
        third = queued.json()["batch"]
        wait_for(lambda: len(batch_webhooks()) == 3, 90, message="the unscheduled batch's webhook")
        three = batch_webhooks()[2]["body"]
        assert three["batch"]["id"] == third and three["batch"]["schedule"] is None
        assert three["comparison"]["to"] == str(second.pk)
        assert [change["name"] for change in three["comparison"]["fixed"]] == ["booking"]
    finally:
        if worker is not None:
            worker.stop()
        for server in (bot, hooks, slack):
            server.close()


def test_the_slack_url_is_checked_against_the_egress_policy_when_sent(workspace, settings):
    """Saved while allowed, refused when sent after the policy changed: never contacted."""
    from runs.notify import DeliveryError, deliver_batch_to_slack

    slack = FakeTarget(lambda message, n: (200, b"ok"))
    try:
        schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"), slack_webhook_url=slack.url)
        make_due(schedule, timezone.now() - timedelta(minutes=1))
        batch = firing.schedules_fire_due()[0].batch
        settings.EGRESS_ALLOW = []
        with pytest.raises(DeliveryError) as refused:
            deliver_batch_to_slack(batch, schedule)
        assert refused.value.retryable is False and "egress" in str(refused.value)
        assert slack.requests == []
    finally:
        slack.close()


SLACK_SECRET = "T0SECRET/B0SECRET/xoxsecretpart"


@pytest.mark.parametrize("answer", [404, 500, "refused"])
def test_the_slack_url_never_appears_in_an_error_or_a_log(workspace, caplog, answer):
    """The path of a Slack incoming-webhook URL is its key: messages name its host only."""
    slack = FakeTarget(lambda message, n: (answer if isinstance(answer, int) else 200, b"no"))
    try:
        port = slack.server.server_address[1]
        if answer == "refused":
            slack.close()  # nothing listens on the port any more
        url = f"http://127.0.0.1:{port}/services/{SLACK_SECRET}?token=querysecret"
        schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"), slack_webhook_url=url)
        make_due(schedule, timezone.now() - timedelta(minutes=1))
        batch = firing.schedules_fire_due()[0].batch

        with pytest.raises(notify.DeliveryError) as failed:
            notify.deliver_batch_to_slack(batch, schedule)
        assert "the schedule's Slack webhook (127.0.0.1)" in str(failed.value)
        with caplog.at_level("INFO"):  # what production logs
            tasks.post_batch_to_slack.apply(args=[str(batch.pk)], retries=tasks.post_batch_to_slack.max_retries)
        logged = [record.getMessage() for record in caplog.records]
        assert any(f"Slack message for batch {batch.pk} not delivered" in line for line in logged), logged
        for text in [str(failed.value), *logged]:
            assert "SECRET" not in text and "querysecret" not in text and "/services/" not in text, text
    finally:
        if answer != "refused":
            slack.close()


def test_slack_says_first_batch_only_when_the_schedule_has_no_earlier_one(workspace):
    schedule = make_schedule(f.ScenarioFactory(workspace=workspace))
    summary = {"id": "b", "counts": {"passed": 1}, "pass_rate": 1.0, "scenario_name": "S"}
    assert "first batch" in notify.slack_text(summary, None, schedule=schedule, first=True)
    text = notify.slack_text(summary, None, schedule=schedule, first=False)
    assert "first batch" not in text and "could not be compared" in text


def test_a_schedule_moved_to_another_scenario_compares_only_within_a_scenario(workspace):
    schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"))
    make_due(schedule, timezone.now() - timedelta(minutes=2))
    on_first = firing.schedules_fire_due()[0].batch
    schedule.refresh_from_db()
    schedule.scenario = bot_scenario(workspace, "http://127.0.0.1:9/chat")
    schedules.schedule_save(schedule=schedule)
    make_due(schedule, timezone.now() - timedelta(minutes=1))
    on_second = firing.schedules_fire_due()[0].batch

    assert selectors.previous_scheduled_batch(on_second, schedule) is None
    assert selectors.schedule_of(on_second) == schedule and selectors.schedule_of(on_first) == schedule
    make_due(schedule, timezone.now() - timedelta(seconds=30))
    third = firing.schedules_fire_due()[0].batch
    assert selectors.previous_scheduled_batch(third, schedule) == on_second


# Bounds and robustness ----------------------------------------------------------------------------


def test_a_scenario_has_at_most_twenty_schedules(api, member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace)
    for _ in range(Schedule.MAX_PER_SCENARIO):
        make_schedule(scenario)
    response = api.post("/api/v1/schedules/", {"scenario": str(scenario.pk), "cron": "0 6 * * *"},
                        content_type="application/json")
    assert response.status_code == 400 and "the most it may have" in " ".join(response.json()["scenario"])
    elsewhere = make_schedule(f.ScenarioFactory(workspace=workspace))
    response = api.patch(f"/api/v1/schedules/{elsewhere.pk}/", {"scenario": str(scenario.pk)},
                         content_type="application/json")
    assert response.status_code == 400 and "scenario" in response.json()
    # One of its own schedules may still be edited.
    mine = Schedule.objects.filter(scenario=scenario).first()
    assert api.patch(f"/api/v1/schedules/{mine.pk}/", {"repeat": 2}, content_type="application/json").status_code == 200

    panel = member_client.post(f"/scenarios/{scenario.pk}/schedules/new/",
                               {"cron": "0 6 * * *", "timezone": "UTC", "repeat": 1}, HTTP_HX_REQUEST="true")
    assert panel.status_code == 200 and "the most it may have" in panel.content.decode()
    assert Schedule.objects.filter(scenario=scenario).count() == Schedule.MAX_PER_SCENARIO


def test_a_batch_that_cannot_be_queued_is_recorded_once_and_the_schedule_moves_on(workspace, monkeypatch, caplog):
    schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"), cron="*/5 * * * *")
    make_due(schedule, timezone.now() - timedelta(minutes=1))

    def broken(**kwargs):
        Batch.objects.create(workspace=workspace, scenario=schedule.scenario)  # half done, then:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(services, "scenario_run_all", broken)
    fired = firing.schedules_fire_due()

    assert len(fired) == 1 and fired[0].batch is None
    assert "RuntimeError" in fired[0].detail and "the disk is full" in fired[0].detail
    assert ScheduleFiring.objects.get().detail == fired[0].detail
    assert not Batch.objects.exists()  # the half-done batch was rolled back alone
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at > timezone.now()
    caplog.clear()
    assert firing.schedules_fire_due() == []  # not retried on every tick
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_cron_that_never_comes_round_again_switches_the_schedule_off_and_says_why(api, member_client, workspace):
    schedule = make_schedule(bot_scenario(workspace, "http://127.0.0.1:9/chat"))
    # Saved when it still came round (as a cron croniter reads differently after an upgrade might).
    Schedule.objects.filter(pk=schedule.pk).update(cron="0 0 31 2 *")
    make_due(schedule, timezone.now() - timedelta(minutes=1))

    fired = firing.schedules_fire_due()

    assert len(fired) == 1 and fired[0].batch is not None  # the due time that came still fires
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_run_at) == (False, None)
    assert "no date that comes round" in schedule.disabled_reason
    body = api.get(f"/api/v1/schedules/{schedule.pk}/").json()
    assert body["enabled"] is False and "no date that comes round" in body["disabled_reason"]
    panel = member_client.get(f"/scenarios/{schedule.scenario_id}/schedules/", HTTP_HX_REQUEST="true")
    assert "no date that comes round" in panel.content.decode()
    assert firing.schedules_fire_due() == []

    # Switched on again with a cron that comes round: the reason is forgotten.
    body = api.patch(f"/api/v1/schedules/{schedule.pk}/", {"cron": "0 6 * * *", "enabled": True},
                     content_type="application/json").json()
    assert body["enabled"] is True and body["disabled_reason"] == "" and body["next_run_at"]


def test_saving_a_schedule_locks_its_row_alone(workspace):
    """``Meta.ordering`` sorts by the scenario's name: the lock's query must not join (and so, on
    PostgreSQL, lock) the scenario."""
    from django.db import connection as db_connection
    from django.test.utils import CaptureQueriesContext

    schedule = make_schedule(f.ScenarioFactory(workspace=workspace))
    schedule.repeat = 3
    with CaptureQueriesContext(db_connection) as queries:
        schedules.schedule_save(schedule=schedule)
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert reads and not any("scenarios_scenario" in sql for sql in reads), reads


def test_scenarios_reference_nothing_of_runs():
    """DESIGN's one-way dependency, assure ← scenarios ← runs: no model, migration or module of
    scenarios points at runs."""
    import importlib
    import pathlib

    from django.apps import apps as django_apps

    for model in django_apps.get_app_config("scenarios").get_models():
        for field in model._meta.get_fields():
            if field.concrete and field.related_model is not None:
                assert field.related_model._meta.app_label != "runs", (model, field)
    for migration in pathlib.Path("scenarios/migrations").glob("0*.py"):
        module = importlib.import_module(f"scenarios.migrations.{migration.stem}")
        assert all(app != "runs" for app, _ in module.Migration.dependencies), migration
    for source in pathlib.Path("scenarios").glob("*.py"):
        text = source.read_text()
        assert "from runs" not in text and "import runs" not in text, source


# The scenario page's panel ------------------------------------------------------------------------


def test_the_schedules_panel_lists_adds_disables_and_deletes(member_client, workspace):
    scenario = f.ScenarioFactory(workspace=workspace, name="Nightly checks")
    page = member_client.get(f"/scenarios/{scenario.pk}/").content.decode()
    assert f'hx-get="/scenarios/{scenario.pk}/schedules/"' in page

    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "schedules-panel"}
    panel = member_client.get(f"/scenarios/{scenario.pk}/schedules/", **htmx).content.decode()
    assert "No schedules." in panel and 'id="add-schedule"' in panel

    refused = member_client.post(f"/scenarios/{scenario.pk}/schedules/new/",
                                 {"cron": "* * * * *", "timezone": "UTC", "repeat": 1}, **htmx)
    assert refused.status_code == 200 and "at most every 5 minutes" in refused.content.decode()
    assert not Schedule.objects.exists()

    added = member_client.post(f"/scenarios/{scenario.pk}/schedules/new/",
                               {"cron": "0 6 * * 1-5", "timezone": "Europe/Paris", "repeat": 2}, **htmx)
    schedule = Schedule.objects.get()
    assert (schedule.scenario, schedule.workspace, schedule.repeat, schedule.enabled) == (scenario, workspace, 2, True)
    assert schedule.next_run_at is not None and f'id="schedule-{schedule.pk}"' in added.content.decode()

    disabled = member_client.post(f"/schedules/{schedule.pk}/enabled/", {"enabled": "false"}, **htmx)
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_run_at) == (False, None) and "Disabled" in disabled.content.decode()

    member_client.post(f"/schedules/{schedule.pk}/enabled/", {"enabled": "true"}, **htmx)
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at > timezone.now()

    schedule.refresh_from_db()
    confirm = member_client.get(f"/scenarios/{scenario.pk}/delete/").content.decode()
    assert "Its 1 schedule will be deleted with it" in confirm

    gone = member_client.post(f"/schedules/{schedule.pk}/delete/", **htmx)
    assert gone.status_code == 200 and not Schedule.objects.exists() and "No schedules." in gone.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_schedules_panel_in_a_browser(workspace, test_redis_url):
    """The panel loads into the scenario page, refuses a bad cron next to the field, adds, disables
    and deletes a schedule, all without reloading the page (Debian's Chromium, the real daphne)."""
    user = f.UserFactory(username="scheduler")
    f.MembershipFactory(workspace=workspace, user=user, role="owner")
    scenario = f.ScenarioFactory(workspace=workspace, name="Nightly checks")
    web = DaphneServer(redis_url=test_redis_url)
    try:
        with chromium() as browser:
            page = signed_in_page(browser, base_url=web.url, username="scheduler",
                                  password="correct horse battery staple")
            page.goto(f"/scenarios/{scenario.pk}/")
            page.wait_for_selector("#schedules-panel #add-schedule")
            page.evaluate("window.__notReloaded = true")

            page.fill("#id_cron", "*/2 * * * *")
            page.click("#add-schedule")
            page.wait_for_selector("#field-cron.has-error")
            assert "at most every 5 minutes" in page.inner_text("#field-cron")
            assert not Schedule.objects.exists()

            page.fill("#id_cron", "0 6 * * 1-5")
            page.fill("#id_timezone", "Europe/Paris")
            page.fill("#id_repeat", "2")
            page.click("#add-schedule")
            page.wait_for_selector("#schedules-panel tr[data-enabled=true]")
            schedule = Schedule.objects.get()
            assert (schedule.cron, schedule.timezone, schedule.repeat, schedule.scenario) == (
                "0 6 * * 1-5", "Europe/Paris", 2, scenario)
            assert "06:00" in page.inner_text(f"#schedule-{schedule.pk}")

            page.click(f"#schedule-{schedule.pk} button:has-text('Disable')")
            page.wait_for_selector(f"#schedule-{schedule.pk}[data-enabled=false]")
            assert Schedule.objects.get().next_run_at is None

            page.once("dialog", lambda dialog: dialog.accept())
            page.click(f"#schedule-{schedule.pk} button:has-text('Delete')")
            page.wait_for_selector(f"#schedule-{schedule.pk}", state="detached")
            assert not Schedule.objects.exists()
            assert page.evaluate("window.__notReloaded === true")
    finally:
        web.stop()


def test_viewers_and_other_workspaces_cannot_change_schedules(client, workspace, other_workspace):
    theirs = make_schedule(f.ScenarioFactory(workspace=other_workspace))
    mine = make_schedule(f.ScenarioFactory(workspace=workspace))
    viewer = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=viewer, role="viewer")
    client.force_login(viewer)
    assert client.post(f"/schedules/{mine.pk}/delete/").status_code == 403
    assert client.post(f"/scenarios/{mine.scenario_id}/schedules/new/", {"cron": "0 6 * * *"}).status_code == 403
    panel = client.get(f"/scenarios/{mine.scenario_id}/schedules/").content.decode()
    assert f'id="schedule-{mine.pk}"' in panel and 'id="add-schedule"' not in panel
    assert client.get(f"/scenarios/{theirs.scenario_id}/schedules/").status_code == 404
    assert client.post(f"/schedules/{mine.pk}/enabled/", {"enabled": "false"}).status_code == 403

    member = f.UserFactory()
    f.MembershipFactory(workspace=workspace, user=member, role="member")
    client.force_login(member)
    assert client.post(f"/schedules/{theirs.pk}/enabled/", {"enabled": "false"}).status_code == 404
    assert client.post(f"/schedules/{theirs.pk}/delete/").status_code == 404
    assert client.post(f"/scenarios/{theirs.scenario_id}/schedules/new/", {"cron": "0 6 * * *"}).status_code == 404

    assert Schedule.objects.count() == 2
    assert all(schedule.enabled for schedule in Schedule.objects.all())


# Queues ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, queue, soft_time_limit", [
    ("runs.tasks.fire_due_schedules", "celery", None),
    ("runs.tasks.notify_batch_finished", "background", 120),
    ("runs.tasks.post_batch_to_slack", "background", 120),
])
def test_schedules_fire_on_the_default_queue_and_their_news_goes_out_on_background(task, queue, soft_time_limit):
    """Firing is quick bookkeeping that must not wait behind slow customer webhooks; the webhook and
    the Slack message are such webhooks, with the background queue's time limit."""
    from assure.celery import app as celery_app

    assert celery_app.amqp.router.route({}, task, args=(), kwargs={})["queue"].name == queue
    assert celery_app.tasks[task].soft_time_limit == soft_time_limit


def test_beat_looks_for_due_schedules(settings):
    entries = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values()
               if entry["task"] == "runs.tasks.fire_due_schedules"]
    assert len(entries) == 1 and 1 <= entries[0]["schedule"] <= 300
