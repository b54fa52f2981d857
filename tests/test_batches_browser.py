"""Repeats, the batch page and the comparison as a QA team sees them: Debian's Chromium driven by
Playwright against the real product (daphne, a Celery worker, the demo target).

With CI=true a missing browser fails the suite; elsewhere this skips and says how to install it.
"""

from __future__ import annotations


import pytest

from runs.models import Batch
from scenarios.demo import demo_seed
from scenarios.models import Scenario
from tests.support import CeleryWorker, DaphneServer, chromium, signed_in_page, wait_for
from tests.test_browser import mark, not_reloaded, screenshot

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def product(django_db_setup, django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        web = DaphneServer(redis_url=test_redis_url)
        worker = CeleryWorker(redis_url=test_redis_url, name="batch-pages", beat=True, concurrency=2,
                              env={"DEMO_TARGET_URL": f"{web.url}/demo-target/chat/"})
    yield web
    worker.stop()
    web.stop()


@pytest.fixture(scope="module")
def browser(product):
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, product, db):
    demo_seed(password="demo-password")
    page = signed_in_page(browser, base_url=product.url, username="demo", password="demo-password")
    yield page
    page.context.close()


def test_repeat_a_path_watch_its_batch_then_compare_two_batches(page):
    scenario = Scenario.objects.get(workspace__slug="demo", channel="chat")
    paths = list(scenario.paths.order_by("created_at", "name"))
    page.goto(f"/paths/{paths[0].pk}/")
    page.fill("#run-path-repeat", "3")
    page.click("#run-path")
    page.wait_for_url("**/batches/*/")
    mark(page)
    # The page refreshes its body while the runs go on, and stops once they have all ended.
    page.wait_for_selector("#batch-body[data-finished=true]", timeout=60000)
    assert not_reloaded(page)
    row = page.locator(f"#batch-path-{paths[0].pk}")
    assert (row.get_attribute("data-passes"), row.get_attribute("data-total")) == ("3", "3")
    assert row.locator(".run-links a.verdict-passed").count() == 3
    assert page.locator("#batch-pass-rate").inner_text() == "100%"
    screenshot(page, "batch-page")

    page.goto(f"/scenarios/{scenario.pk}/")
    page.fill("#run-all-repeat", "2")
    page.click("#run-all")
    second = wait_for(lambda: Batch.objects.filter(scenario=scenario, repeat=2, finished_at__isnull=False).first(),
                      60, message="the second batch to finish")
    page.goto(f"/scenarios/{scenario.pk}/")
    assert page.locator("#batch-trend svg.trend-rate").is_visible()
    assert page.locator("#batch-trend circle.point.pass-rate").count() == 2
    assert page.locator("table.batches tbody tr").first.get_attribute("id") == f"batch-{second.pk}"
    screenshot(page, "scenario-batches")

    page.locator(f"#batch-{second.pk} a", has_text="Compare with previous").click()
    page.wait_for_url(f"**/batches/{second.pk}/compare/")
    assert "1 passing as before" in page.locator(".compare-counts").inner_text()
    not_compared = page.locator("#not_compared").inner_text()
    assert all(f"{path.name}: not in the earlier batch" in not_compared for path in paths[1:])
    assert page.locator("#latency tbody tr").count() == 1
    screenshot(page, "batch-compare")
