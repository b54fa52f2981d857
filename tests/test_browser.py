"""The QA team's pages in a real browser (Debian's Chromium driven by Playwright) against the real
product: daphne serving HTTP and websockets, Celery workers, the demo target.

With CI=true a missing browser fails the suite; elsewhere these tests skip and say how to
install it. ASSURE_SCREENSHOTS=<folder> saves screenshots of the main pages there.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from assure.models import Workspace
from runs import services
from runs.models import CriterionResult, Run, Turn
from scenarios.demo import demo_seed
from scenarios.models import Path as ScenarioPath
from tests import factories as f
from tests.support import CeleryWorker, DaphneServer, FakeTarget, chromium, signed_in_page, wait_for


pytestmark = pytest.mark.django_db(transaction=True)



@pytest.fixture(scope="module")
def browser(product):
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def product(django_db_setup, django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        web = DaphneServer(redis_url=test_redis_url)
        env = {"DEMO_TARGET_URL": f"{web.url}/demo-target/chat/"}
        workers = [CeleryWorker(redis_url=test_redis_url, name="b1", env=env, beat=True),
                   CeleryWorker(redis_url=test_redis_url, name="b2", env=env)]
    yield web
    for worker in workers:
        worker.stop()
    web.stop()


@pytest.fixture
def demo(browser, db):
    return demo_seed(password="demo-password")


@pytest.fixture
def page(browser, product, demo):
    page = signed_in_page(browser, base_url=product.url, username="demo", password="demo-password")
    yield page
    page.context.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("ASSURE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def live(page) -> None:
    page.wait_for_selector("[data-live][data-state=live]", state="attached")


def mark(page) -> None:
    """Tag the loaded document; the tag survives only if the page is never reloaded."""
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page) -> bool:
    return page.evaluate("window.__notReloaded === true")


def test_run_all_paths_updates_each_path_live(page, demo):
    scenario = demo.scenario_set.get(channel="chat") if hasattr(demo, "scenario_set") else None
    from scenarios.models import Scenario

    scenario = Scenario.objects.get(workspace=demo, channel="chat")
    services.workspace_queue_pause(workspace=demo)  # runs wait until the page is watching
    page.goto(f"/scenarios/{scenario.pk}/")
    page.click("text=Run all paths")
    page.wait_for_selector("#batch-progress [data-count=pending]")
    live(page)
    mark(page)
    assert page.locator("td.path-status[data-status=pending]").count() == 3
    services.workspace_queue_resume(workspace=Workspace.objects.get(pk=demo.pk))
    page.wait_for_function("document.querySelectorAll('td.path-status[data-status=completed]').length === 3")
    assert not_reloaded(page)
    assert page.locator("#batch-progress [data-count=completed]").inner_text() == "3 completed"
    screenshot(page, "scenario-page")


def slow_path(workspace, pause_ms=1200, steps=4):
    bot = FakeTarget(lambda message, n: (200, {"reply": f"Reply {n} to: {message}"}))
    target = f.TargetFactory(workspace=workspace, url=bot.url)
    scenario = f.ScenarioFactory(workspace=workspace, target=target, name="Slow bot")
    script = []
    for i in range(steps):
        script += [{"say": f"Message {i + 1}"}, {"pause_ms": pause_ms}]
    path = f.PathFactory(scenario=scenario, name="Patient caller", script=script + [{"end_call": True}])
    return bot, ScenarioPath.objects.select_related("scenario__agent", "scenario__target").get(pk=path.pk)


def test_a_running_run_shows_turns_as_they_happen(page, demo):
    bot, path = slow_path(demo)
    try:
        run = services.path_run(path=path)
        wait_for(lambda: Turn.objects.filter(run=run).count() >= 2, message="the run to go live")
        page.goto(f"/runs/{run.pk}/")
        live(page)
        mark(page)
        shown = page.locator("#transcript .turn").count()
        page.wait_for_function(f"document.querySelectorAll('#transcript .turn').length > {shown + 1}")
        assert page.locator("#run-header").get_attribute("data-stage") == "live"
        screenshot(page, "live-run")
        page.wait_for_selector("#run-header[data-status=completed]", timeout=30000)
        assert not_reloaded(page)
        seqs = page.eval_on_selector_all("#transcript .turn", "els => els.map(e => +e.dataset.seq)")
        assert seqs == list(range(1, Turn.objects.filter(run=run).count() + 1))  # no gaps, no duplicates
        assert page.locator("#run-summary .verdict-passed, #run-summary .verdict-failed").count() >= 1
    finally:
        bot.close()


def test_a_finished_runs_page_fits_a_1280_pixel_window(page, demo):
    run = f.RunFactory(path=f.PathFactory(scenario=f.ScenarioFactory(workspace=demo)), status="completed",
                       stage="done", verdict="passed")
    for i, (name, kind, why) in enumerate([
            ("Script expectations", "script", "Every expect step of the script matched the target's reply."),
            ("Greets the caller", "regex", "The target matched /(?i)brightsmile|bright smile dental clinic/ in turn 2."),
            ("Short call", "max_duration_ms", "The conversation lasted 18279 ms (limit 120000 ms).")]):
        CriterionResult.objects.create(run=run, position=i, name=name, kind=kind, outcome="passed", rationale=why,
                                       evidence=[2])
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/runs/{run.pk}/")
    page.wait_for_selector("#run-summary .criteria")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_a_dropped_websocket_reconnects_and_fetches_what_it_missed(page, demo):
    bot, path = slow_path(demo, pause_ms=700, steps=5)
    try:
        run = services.path_run(path=path)
        wait_for(lambda: Turn.objects.filter(run=run).exists(), message="the run to go live")
        page.goto(f"/runs/{run.pk}/")
        live(page)
        # Drop the connection as a flaky network would; turns keep being saved meanwhile.
        page.evaluate("window.assureLive.socket.close()")
        page.wait_for_selector("#run-header[data-status=completed]", timeout=40000)
        seqs = page.eval_on_selector_all("#transcript .turn", "els => els.map(e => +e.dataset.seq)")
        assert seqs == list(range(1, Turn.objects.filter(run=run).count() + 1))
    finally:
        bot.close()


def test_cancel_a_run_from_the_queue_page(page, demo):
    bot, path = slow_path(demo, pause_ms=20000, steps=2)
    try:
        run = services.path_run(path=path)
        wait_for(lambda: Turn.objects.filter(run=run).exists(), message="the run to go live")
        page.goto("/queue/")
        live(page)
        row = page.locator(f"#run-row-{run.pk}")
        assert row.get_attribute("data-status") == "running"
        screenshot(page, "queue-page")
        row.locator("[data-action=cancel]").click()
        page.wait_for_selector(f"#queue-recent #run-row-{run.pk}[data-status=cancelled]")
        assert Run.objects.get(pk=run.pk).status == "cancelled"
    finally:
        bot.close()


def test_a_paused_queue_keeps_new_runs_queued(page, demo):
    path = ScenarioPath.objects.select_related("scenario__agent", "scenario__target").filter(
        workspace=demo, scenario__channel="chat").first()
    page.goto("/queue/")
    page.click("#queue-pause")
    page.wait_for_selector("#queue-resume")
    live(page)
    mark(page)
    # Queued as a request would queue it: from a thread without an event loop (Playwright runs
    # one in this thread), so its live push goes out.
    def queue_run():
        try:
            return services.path_run(path=path)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as request_thread:
        run = request_thread.submit(queue_run).result()
    page.wait_for_selector(f"#queue-queued #run-row-{run.pk}[data-status=pending]")
    time.sleep(2.5)  # two sweep periods: a paused queue admits nothing
    assert Run.objects.get(pk=run.pk).status == "pending"
    assert page.locator(f"#queue-queued #run-row-{run.pk}").count() == 1
    page.click("#queue-resume")
    page.wait_for_selector(f"#queue-recent #run-row-{run.pk}[data-status=completed]")


def test_functions_panel_turns_green_when_retry_syncs_the_function(page, demo):
    from scenarios.models import Agent, CustomFunction
    from scenarios.services import function_request_sync

    healthy = {"up": False}
    webhook = FakeTarget(lambda message, n: (200, {"ok": True}) if healthy["up"] else (500, {"error": "down"}))
    try:
        agent = Agent.objects.get(workspace=demo)
        function = f.CustomFunctionFactory(agent=agent, name="book_slot", url=webhook.url, sync_status="pending")
        function_request_sync(function=function)  # the worker probes it: the webhook is down
        wait_for(lambda: CustomFunction.objects.get(pk=function.pk).sync_status == "error", message="the sync to fail")
        page.goto(f"/agents/{agent.pk}/")
        panel = page.locator("#functions-panel")
        assert panel.get_attribute("data-sync-state") == "error"
        assert "HTTP 500" in page.locator("#functions-panel .banner-error").inner_text()
        screenshot(page, "functions-panel-error")
        healthy["up"] = True
        page.click("#retry-sync")
        page.wait_for_selector("#functions-panel[data-sync-state=synced]")
        assert "All functions synced" in page.locator("#functions-panel .banner-ok").inner_text()
        assert CustomFunction.objects.get(pk=function.pk).sync_status == "synced"
    finally:
        webhook.close()
