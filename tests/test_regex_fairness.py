"""A tenant's regex cannot stall other tenants' conversations: `(a+)+$` against a long reply that
ends in "!" backtracks for ages in a backtracking engine; matched with RE2 it is linear. Other
conversations on the same worker process are witnessed by their bot, which measures the gap between
sending each reply and receiving the caller's next message."""

from __future__ import annotations

import threading
import time

import pytest

from runs import services
from runs.models import Run
from scenarios.models import Target
from tests import factories as f
from tests.support import CeleryWorker, FakeTarget, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE_REPLY = "a" * 19_000 + "!"
WITNESS_EXCHANGES = 8
# Platform gaps are tens of milliseconds; a backtracking `(a+)+$` over 19,000 characters would hold
# the worker's loop for far longer than the age of the universe. The bound only tells the two apart.
GAP_BOUND_SECONDS = 3.0


class GapWitness:
    """A chat bot over HTTP that thinks 100 ms per reply and records, per session, the time from its
    reply leaving to the next message arriving."""

    def __init__(self):
        self.gaps: list[float] = []
        self.replied_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.target = FakeTarget(self.answer)
        self.url = self.target.url

    def session(self, count: int) -> str:
        return self.target.requests[count - 1]["body"].get("session", "")

    def answer(self, message: str, count: int):
        arrived, session = time.monotonic(), self.session(count)
        with self.lock:
            if session in self.replied_at:
                self.gaps.append(arrived - self.replied_at.pop(session))
        if message.startswith("hostile"):
            reply = HOSTILE_REPLY
        else:
            time.sleep(0.1)
            reply = "Noted, go on."
        with self.lock:
            # Noted just before the reply is written, so the caller's next message can never arrive
            # first (noted after it, a fast caller's next message sometimes did, and went uncounted).
            self.replied_at[session] = time.monotonic()
        return 200, {"reply": reply}

    def close(self) -> None:
        self.target.close()


@pytest.fixture
def bot():
    witness = GapWitness()
    yield witness
    witness.close()


@pytest.fixture
def worker(django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        started = CeleryWorker(redis_url=test_redis_url, name="regex", beat=True, concurrency=1)
    yield started
    started.stop()


def test_a_catastrophic_pattern_leaves_other_conversations_on_time(bot, worker, workspace):
    workspace.max_parallel_runs = 20
    workspace.save()
    target = f.TargetFactory(workspace=workspace, kind=Target.Kind.HTTP_JSON, url=bot.url,
                             request_template={"text": "{{message}}", "session": "{{session_id}}"},
                             response_path="$.reply")
    witnesses = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
    script = []
    for i in range(WITNESS_EXCHANGES):
        script += [{"say": f"Point {i}."}, {"expect": "(?i)noted"}]
    for i in range(4):
        f.PathFactory(scenario=witnesses, name=f"witness {i}", script=script + [{"end_call": True}])
    hostile = f.ScenarioFactory(workspace=workspace, target=target, criteria=[
        {"name": f"Only a's {i}", "kind": "regex", "speaker": "target", "pattern": "(a+)+$"} for i in range(5)])
    f.PathFactory(scenario=hostile, name="hostile", script=[
        {"say": "hostile one"}, {"expect": "(a+)+$"}, {"say": "hostile two"}, {"end_call": True}])

    runs = services.scenario_run_all(scenario=witnesses)[1] + services.scenario_run_all(scenario=hostile)[1]
    wait_for(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status__in=["completed", "failed", "cancelled"])
             .count() == len(runs), 90, message="every run to end")

    statuses = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("path__name", "status"))
    assert set(statuses.values()) == {"completed"}, statuses
    hostile_run = Run.objects.get(pk=runs[-1].pk)
    assert hostile_run.verdict == "failed"  # the reply ends in "!": `(a+)+$` does not match, and says so
    assert set(hostile_run.criteria_results.values_list("outcome", flat=True)) == {"failed"}
    # Every witness exchange after the first was measured, none held up.
    assert len(bot.gaps) >= 4 * (WITNESS_EXCHANGES - 1)
    assert max(bot.gaps) < GAP_BOUND_SECONDS, sorted(bot.gaps)[-5:]
