"""One worker process holds at most WORKER_MAX_CONVERSATIONS conversations, whatever the
workspaces' bounds add up to: the bot, which the product does not control, counts the
conversations open at once."""

from __future__ import annotations

import threading
from collections import Counter
import time

import pytest

from runs import services
from runs.models import Run
from scenarios.models import Target
from tests import factories as f
from tests.support import CeleryWorker, FakeTarget, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CAP = 2


class OpenConversations:
    """A bot that counts conversations between their first message and their goodbye."""

    def __init__(self):
        self.open = self.peak = 0
        self.lock = threading.Lock()
        self.target = FakeTarget(self.answer)

    def answer(self, message: str, count: int):
        if message.startswith("Hello"):
            with self.lock:
                self.open += 1
                self.peak = max(self.peak, self.open)
            time.sleep(0.3)  # the bot thinking: uncapped conversations would overlap here
            return 200, {"reply": "Hi there, how can I help?"}
        with self.lock:
            self.open -= 1
        return 200, {"reply": "Goodbye."}


@pytest.fixture
def bot():
    witness = OpenConversations()
    yield witness
    witness.target.close()


@pytest.fixture
def worker(django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        started = CeleryWorker(redis_url=test_redis_url, name="capped", beat=True, concurrency=1,
                               env={"WORKER_MAX_CONVERSATIONS": str(CAP)})
    yield started
    started.stop()


def test_a_worker_process_holds_no_more_conversations_than_its_cap(bot, worker):
    runs = []
    for _ in range(3):  # three workspaces, each allowed 20 at once: only the worker's cap holds them
        workspace = f.WorkspaceFactory(max_parallel_runs=20)
        target = f.TargetFactory(workspace=workspace, kind=Target.Kind.HTTP_JSON, url=bot.target.url,
                                 request_template={"message": "{{message}}"}, response_path="$.reply")
        scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
        for i in range(2):
            f.PathFactory(scenario=scenario, name=f"path {i}", script=[
                {"say": "Hello, I have a question."}, {"expect": "(?i)help"},
                {"say": "Never mind, bye."}, {"expect": "(?i)goodbye"}, {"end_call": True}])
        runs += services.scenario_run_all(scenario=scenario)[1]

    wait_for(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status__in=["completed", "failed", "cancelled"])
             .count() == len(runs), 60, message="every run to end")
    assert set(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"completed"}
    assert bot.open == 0
    assert bot.peak == CAP, f"the bot saw {bot.peak} conversations at once"


class HoldsUntilFull(OpenConversations):
    """A bot that holds its first answer until ``expected`` conversations are open (or a few
    seconds pass): every conversation the workers can hold at once is then open together."""

    def __init__(self, expected: int):
        super().__init__()
        self.expected = expected
        self.all_open = threading.Event()

    def answer(self, message: str, count: int):
        if message.startswith("Hello"):
            with self.lock:
                self.open += 1
                self.peak = max(self.peak, self.open)
                if self.open >= self.expected:
                    self.all_open.set()
            self.all_open.wait(4)
            return 200, {"reply": "Hi there, how can I help?"}
        with self.lock:
            self.open -= 1
        return 200, {"reply": "Goodbye."}


def test_runs_a_full_process_cannot_take_go_to_a_process_with_room(django_db_blocker, test_redis_url):
    """Four runs reach one of two pool processes in one task; each process holds two. The full one
    offers the other two to the other process, which has room: all four are open at once, where
    they used to wait in the full process until its own conversations ended."""
    bot = HoldsUntilFull(expected=2 * CAP)
    with django_db_blocker.unblock():
        worker = CeleryWorker(redis_url=test_redis_url, name="two-capped", concurrency=2,
                              env={"WORKER_MAX_CONVERSATIONS": str(CAP)})
    try:
        workspace = f.WorkspaceFactory(max_parallel_runs=20)
        target = f.TargetFactory(workspace=workspace, kind=Target.Kind.HTTP_JSON, url=bot.target.url,
                                 request_template={"message": "{{message}}"}, response_path="$.reply")
        scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
        for i in range(2 * CAP):
            f.PathFactory(scenario=scenario, name=f"path {i}", script=[
                {"say": "Hello, I have a question."}, {"expect": "(?i)help"},
                {"say": "Never mind, bye."}, {"expect": "(?i)goodbye"}, {"end_call": True}])
        runs = services.scenario_run_all(scenario=scenario)[1]  # one hand-over task: under the chunk size

        wait_for(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status__in=["completed", "failed", "cancelled"])
                 .count() == len(runs), 60, message="every run to end")
        assert set(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"completed"}
        assert bot.peak == 2 * CAP, f"the bot saw {bot.peak} conversations at once"
        # Each run was executed by one process only, and both processes took two.
        assert sorted(Counter(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("worker", flat=True))
                      .values()) == [CAP, CAP]
    finally:
        worker.stop()
        bot.target.close()
