"""A run page's websocket, served by the real daphne, stays connected and keeps receiving while a
burst of runs executes: the workers (real Celery) talk to the demo target on that same daphne, and
every run publishes through the same Redis."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import aiohttp
import pytest
from django.test import Client

from runs import services
from runs.models import Run
from scenarios.models import Path, Scenario, Target
from tests import factories as f
from tests.support import CeleryWorker, DaphneServer, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = ("completed", "failed", "cancelled")
BURST_WORKSPACES, PATHS_EACH = 25, 20  # 500 runs, all admitted at once
QUICK = [{"say": "Hi, I'd like to book a cleaning."}, {"expect": "(?i)what day"},
         {"say": "Tuesday, please."}, {"expect": "(?i)10 ?am"}, {"end_call": True}]
# Quiet for longer than the layer's 5 s blocking receive: the consumer must outlive idle waits.
WATCHED = [{"say": "Hi, I'd like to book a cleaning."}, {"expect": "(?i)what day"}, {"pause_ms": 7000},
           {"say": "Tuesday, please."}, {"expect": "(?i)10 ?am"}, {"end_call": True}]


@pytest.fixture
def product(django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        web = DaphneServer(redis_url=test_redis_url)
        env = {"DEMO_TARGET_URL": f"{web.url}/demo-target/chat/"}
        workers = [CeleryWorker(redis_url=test_redis_url, name="burst1", env=env, beat=True, concurrency=2)]
    yield web
    for worker in workers:
        worker.stop()
    web.stop()


def demo_paths(workspace, *, count: int, script) -> Scenario:
    target = f.TargetFactory(workspace=workspace, kind=Target.Kind.DEMO, url="", request_template={}, response_path="")
    scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
    for i in range(count):
        f.PathFactory(scenario=scenario, name=f"path {i:02d}", script=script)
    return scenario


class RunPageSocket:
    """The run page's websocket, as the browser opens it: the session cookie and the page's origin."""

    def __init__(self, *, url: str, origin: str, session: str):
        self.messages: list[dict] = []
        self.closed_with = None
        self.loop = asyncio.new_event_loop()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self._read(url, origin, session),), daemon=True)
        self.thread.start()
        assert self.connected.wait(10), f"the run page's websocket did not connect: {self.closed_with}"

    async def _read(self, url, origin, session):
        async with aiohttp.ClientSession(cookies={"sessionid": session}) as http:
            async with http.ws_connect(url, origin=origin) as self.ws:
                self.connected.set()
                await self.ws.send_json({"type": "resume", "turn_seq": 0, "tool_seq": 0})
                async for message in self.ws:
                    self.messages.append(json.loads(message.data))
                self.closed_with = self.ws.close_code

    def send(self, message: dict) -> None:
        asyncio.run_coroutine_threadsafe(self.ws.send_json(message), self.loop).result(5)

    def turn_seqs(self) -> list[int]:
        return [m["seq"] for m in list(self.messages) if m["type"] == "turn"]

    def close(self) -> None:
        if self.closed_with is None and not self.ws.closed:
            asyncio.run_coroutine_threadsafe(self.ws.close(), self.loop).result(5)
        self.thread.join(5)


def test_the_run_page_socket_stays_connected_through_a_burst_of_runs(product, workspace, member):
    workspace.max_parallel_runs = 1
    workspace.save()
    watched_path = demo_paths(workspace, count=1, script=WATCHED).paths.get()
    watched = services.path_run(path=Path.objects.get(pk=watched_path.pk))
    browser = Client()
    browser.force_login(member)
    socket = RunPageSocket(url=f"{product.url.replace('http', 'ws')}/ws/runs/{watched.pk}/", origin=product.url,
                           session=browser.cookies["sessionid"].value)
    try:
        burst = []
        for _ in range(BURST_WORKSPACES):
            tenant = f.WorkspaceFactory(max_parallel_runs=20)
            burst += services.scenario_run_all(scenario=demo_paths(tenant, count=PATHS_EACH, script=QUICK))[1]

        wait_for(lambda: run_status(watched.pk) in TERMINAL, 60, message="the watched run to end")
        # Its later turns came as live pushes, after the quiet pause, while the burst ran. Pushes
        # queue behind the burst's own on a loaded machine: what must hold is that they all arrive,
        # each once and in order, on the same, still open socket (a dead consumer never would).
        wait_for(lambda: len(socket.turn_seqs()) >= 4 or socket.closed_with is not None, 60,
                 message="the watched run's four turns on the socket")
        assert socket.closed_with is None, f"the page's socket closed ({socket.closed_with}) during the burst"
        assert socket.turn_seqs() == [1, 2, 3, 4]
        wait_for(lambda: Run.objects.filter(pk__in=[r.pk for r in burst], status__in=TERMINAL).count() == len(burst),
                 180, message="the burst to end")
        outcomes = Counter(Run.objects.filter(pk__in=[r.pk for r in burst]).values_list("status", "failure_detail"))
        assert set(status for status, _ in outcomes) == {"completed"}, outcomes.most_common(5)
        assert run_status(watched.pk) == "completed"

        # Still connected after it all: the page's resume is answered.
        seen = len(socket.messages)
        socket.send({"type": "resume", "turn_seq": 4, "tool_seq": 99})
        wait_for(lambda: any(m.get("id") == "run-summary" for m in socket.messages[seen:]), 10,
                 message="an answer to resume")
        assert socket.closed_with is None
    finally:
        socket.close()
    assert "TimeoutError" not in "".join(product.log)


def run_status(run_id) -> str:
    return Run.objects.filter(pk=run_id).values_list("status", flat=True).get()
