"""Paging through many runs: the run list API and the results feed walk every run once, in order,
by their own links (cursor links), with ties in the ordering time and with runs created mid-walk;
``limit``/``offset`` still page the API as the CLI does; a bad cursor is a 400 (API) or the latest
page (the feed), never a server error; filters stay in the links."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone

from runs.models import Run
from tests import factories as f

pytestmark = pytest.mark.django_db

OLDER = re.compile(r'<a href="([^"]*)" rel="next">Older</a>')
NEWER = re.compile(r'<a href="([^"]*)" rel="prev">Newer</a>')
RUN_LINK = re.compile(r'<tr data-status="[a-z]+">\s*<td><a href="/runs/([0-9a-f-]{36})/">')


def make_runs(path, count: int, *, at, tie_every: int = 3, **fields) -> list[Run]:
    """``count`` runs of ``path``, created a second apart going back from ``at``, ``tie_every`` of
    them sharing each time (their order is then the id's); finished ones end as they were created."""
    runs = []
    for i in range(count):
        moment = at - timedelta(seconds=i // tie_every)
        extra = {"ended_at": moment} if fields.get("status") in ("completed", "failed", "cancelled") else {}
        runs.append(Run(workspace=path.workspace, scenario=path.scenario, path=path, created_at=moment,
                        **extra, **fields))
    return Run.objects.bulk_create(runs)


def newest_first(runs, field: str = "created_at") -> list[str]:
    return [str(run.pk) for run in sorted(runs, key=lambda run: (getattr(run, field), run.pk), reverse=True)]


def local(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


def walk_api(api, url: str, *, link: str = "next", between_pages=None) -> list[str]:
    seen = []
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        seen += [run["id"] for run in response.json()["results"]]
        if between_pages:
            between_pages()
        url = response.json()[link] and local(response.json()[link])
    return seen


@pytest.fixture
def path(workspace):
    return f.PathFactory(scenario=f.ScenarioFactory(workspace=workspace))


# The run list API ----------------------------------------------------------------------------------


def test_next_links_walk_every_run_once_in_order_through_ties(api, path):
    runs = make_runs(path, 23, at=timezone.now(), tie_every=4, status="completed", stage="done", verdict="passed")
    first = api.get("/api/v1/runs/?limit=5").json()
    assert first["count"] == 23 and first["previous"] is None
    assert "cursor=" in first["next"] and "offset=" not in first["next"]
    assert walk_api(api, "/api/v1/runs/?limit=5") == newest_first(runs)


def test_previous_links_walk_back_every_run_once(api, path):
    runs = make_runs(path, 17, at=timezone.now(), tie_every=5, status="pending", stage="queued")
    url = "/api/v1/runs/?limit=4"
    while (page := api.get(url).json())["next"]:
        url = local(page["next"])
    last_page = [run["id"] for run in page["results"]]
    backwards = walk_api(api, local(page["previous"]), link="previous")
    # Each earlier page comes back in order; read from the end they are the list reversed.
    pages, rest = [], backwards
    while rest:
        pages.append(rest[:4])
        rest = rest[4:]
    assert [run for page_ in reversed(pages) for run in page_] + last_page == newest_first(runs)


def test_runs_created_during_a_walk_do_not_shift_it(api, path):
    runs = make_runs(path, 12, at=timezone.now() - timedelta(minutes=1), tie_every=2, status="pending", stage="queued")
    created = []

    def another_run_is_queued():
        created.extend(make_runs(path, 2, at=timezone.now(), status="pending", stage="queued"))

    seen = walk_api(api, "/api/v1/runs/?limit=5", between_pages=another_run_is_queued)
    assert seen == newest_first(runs)
    assert api.get("/api/v1/runs/?limit=5").json()["count"] == 12 + len(created)


def test_limit_and_offset_still_page_as_the_cli_does(api, path):
    from assure_cli.client import Client

    runs = make_runs(path, 9, at=timezone.now(), tie_every=3, status="completed", stage="done", verdict="failed")
    order = newest_first(runs)
    page = api.get("/api/v1/runs/?limit=4&offset=4").json()
    assert [run["id"] for run in page["results"]] == order[4:8] and page["count"] == 9
    assert page["next"] and page["previous"]
    assert walk_api(api, local(page["next"])) == order[8:]  # from an offset page, links go on by cursor
    assert walk_api(api, local(page["previous"]), link="previous") == order[:4]
    assert api.get("/api/v1/runs/?limit=4&offset=4000000000000000000000").json()["results"] == []

    # The CLI's own loop (500 at a time, offsets it counts itself) over HTTP into this process.
    batch = f.BatchFactory(scenario=path.scenario)
    in_batch = make_runs(path, 1203, at=timezone.now(), tie_every=50, status="pending", stage="queued", batch=batch)
    key = api.defaults["HTTP_AUTHORIZATION"].removeprefix("Token ")
    cli = Client("http://127.0.0.1", key, transport=httpx.WSGITransport(app=WSGIHandler()))
    # As Django's test client does: a request must not close the connection holding the test's data.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        assert [run["id"] for run in cli.paginate("runs/", {"batch": str(batch.pk)})] == newest_first(in_batch)
    finally:
        cli.close()
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


def test_filters_stay_in_the_links(api, path, workspace):
    other_path = f.PathFactory(scenario=path.scenario)
    make_runs(other_path, 4, at=timezone.now(), status="failed", stage="done", failure_reason="error")
    mine = make_runs(path, 7, at=timezone.now(), status="failed", stage="done", failure_reason="error")
    make_runs(path, 3, at=timezone.now(), status="cancelled", stage="done")
    url = f"/api/v1/runs/?status=failed&path={path.pk}&limit=3"
    link = api.get(url).json()["next"]
    assert parse_qs(urlsplit(link).query)["status"] == ["failed"]
    assert parse_qs(urlsplit(link).query)["path"] == [str(path.pk)]
    assert walk_api(api, url) == newest_first(mine)


def cursor_of(*parts) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "garbage", "%%%", "W10", "x" * 500, cursor_of("2026-11-27T10:00:00+00:00", "not-a-uuid", 0),
    cursor_of("yesterday", "4f0c1d52c3b74c2e9f1b2a8e6b3d9c10", 0),
    cursor_of("2026-11-27T10:00:00", "4f0c1d52c3b74c2e9f1b2a8e6b3d9c10", 0),  # no time zone
    cursor_of("2026-11-27T10:00:00+00:00", "4f0c1d52c3b74c2e9f1b2a8e6b3d9c10", 7),
    cursor_of("2026-11-27T10:00:00+00:00", "4f0c1d52c3b74c2e9f1b2a8e6b3d9c10"),
    base64.urlsafe_b64encode(b'{"a": 1, "b": 2, "c": 3}').decode(), base64.urlsafe_b64encode(b"\xff\xfe").decode(),
])
def test_a_bad_cursor_is_a_400_that_says_so(api, path, cursor):
    make_runs(path, 2, at=timezone.now(), status="pending", stage="queued")
    response = api.get("/api/v1/runs/", {"cursor": cursor})
    assert response.status_code == 400, response.content
    assert "follow the next and previous links" in response.json()["cursor"][0]


def test_a_cursor_leads_to_no_other_workspaces_runs(api, path, other_workspace):
    theirs = f.PathFactory(scenario=f.ScenarioFactory(workspace=other_workspace))
    make_runs(theirs, 5, at=timezone.now(), status="pending", stage="queued")
    mine = make_runs(path, 5, at=timezone.now(), status="pending", stage="queued")
    assert walk_api(api, "/api/v1/runs/?limit=2") == newest_first(mine)


# The results feed ----------------------------------------------------------------------------------


def walk_feed(client, url: str, *, link=OLDER) -> list[str]:
    seen = []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        seen += RUN_LINK.findall(html)
        found = link.search(html)
        url = "/results/" + unescape(found.group(1)) if found else None
    return seen


def test_older_links_walk_every_finished_run_once_in_order(member_client, path):
    finished = make_runs(path, 121, at=timezone.now(), tie_every=7, status="completed", stage="done", verdict="passed")
    make_runs(path, 3, at=timezone.now(), status="running", stage="live")  # not finished: not in the feed
    assert walk_feed(member_client, "/results/") == newest_first(finished, "ended_at")


def test_newer_links_walk_back_and_latest_returns_to_the_top(member_client, path):
    finished = make_runs(path, 110, at=timezone.now(), tie_every=5, status="failed", stage="done",
                         failure_reason="error")
    html = member_client.get("/results/").content.decode()
    assert "Newer" not in html and "Latest" not in html
    third = member_client.get("/results/" + unescape(OLDER.search(member_client.get(
        "/results/" + unescape(OLDER.search(html).group(1))).content.decode()).group(1))).content.decode()
    assert RUN_LINK.findall(third) == newest_first(finished, "ended_at")[100:]
    back = walk_feed(member_client, "/results/" + unescape(NEWER.search(third).group(1)), link=NEWER)
    assert back == newest_first(finished, "ended_at")[50:100] + newest_first(finished, "ended_at")[:50]
    assert re.search(r'<a href="\?">Latest</a>', third)


def test_runs_finishing_during_a_walk_do_not_shift_the_feed(member_client, path):
    finished = make_runs(path, 130, at=timezone.now() - timedelta(minutes=5), status="completed", stage="done",
                         verdict="failed")
    first = member_client.get("/results/").content.decode()
    make_runs(path, 20, at=timezone.now(), status="completed", stage="done", verdict="failed")
    rest = walk_feed(member_client, "/results/" + unescape(OLDER.search(first).group(1)))
    assert RUN_LINK.findall(first) + rest == newest_first(finished, "ended_at")


def test_the_feed_keeps_its_filters_in_its_links(member_client, path):
    other = f.PathFactory(scenario=f.ScenarioFactory(workspace=path.workspace))
    make_runs(other, 30, at=timezone.now(), status="completed", stage="done", verdict="failed")
    failed = make_runs(path, 60, at=timezone.now(), status="completed", stage="done", verdict="failed")
    make_runs(path, 40, at=timezone.now(), status="completed", stage="done", verdict="passed")
    url = f"/results/?scenario={path.scenario_id}&verdict=failed&status=completed"
    older = OLDER.search(member_client.get(url).content.decode()).group(1)
    query = parse_qs(urlsplit(unescape(older)).query)
    assert query["scenario"] == [str(path.scenario_id)]
    assert (query["verdict"], query["status"]) == (["failed"], ["completed"])
    assert walk_feed(member_client, url) == newest_first(failed, "ended_at")
    # Only completed runs have a verdict: asking for another status with one finds nothing.
    assert RUN_LINK.findall(member_client.get("/results/?verdict=failed&status=cancelled").content.decode()) == []


@pytest.mark.parametrize("cursor", [
    "garbage", "x" * 500, cursor_of("2026-11-27T10:00:00", "4f0c1d52c3b74c2e9f1b2a8e6b3d9c10", 0),
])
def test_a_bad_cursor_in_the_feed_shows_the_latest_results(member_client, path, cursor):
    finished = make_runs(path, 60, at=timezone.now(), status="cancelled", stage="done")
    response = member_client.get("/results/", {"cursor": cursor, "status": "cancelled"})
    assert response.status_code == 200
    html = response.content.decode()
    assert RUN_LINK.findall(html) == newest_first(finished, "ended_at")[:50]
    assert "That page link is not one this feed made" in html


def test_past_the_last_page_the_feed_offers_the_way_back(member_client, path):
    (only,) = make_runs(path, 1, at=timezone.now() - timedelta(days=1), status="completed", stage="done",
                        verdict="passed")
    beyond = cursor_of(only.ended_at.isoformat(), only.pk.hex, 0)
    html = member_client.get("/results/", {"cursor": beyond}).content.decode()
    assert RUN_LINK.findall(html) == [] and "back to the latest results" in html


# The queue page ------------------------------------------------------------------------------------


def test_the_queue_lists_the_next_queued_runs_and_counts_the_rest(member_client, path):
    from runs.views import QUEUED_SHOWN

    queued = make_runs(path, QUEUED_SHOWN + 7, at=timezone.now(), tie_every=1, status="pending", stage="queued")
    html = member_client.get("/queue/").content.decode()
    section = html[html.index('id="queue-queued"'):html.index('id="queue-recent"')]
    shown = re.findall(r'<tr id="run-row-([0-9a-f-]{36})"', section)
    next_to_start = [str(run.pk) for run in sorted(queued, key=lambda run: (run.created_at, run.pk))]
    assert shown == next_to_start[:QUEUED_SHOWN]
    assert f"and 7 more queued after these, {QUEUED_SHOWN + 7} in all" in section
