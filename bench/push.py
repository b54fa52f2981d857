"""Live-push benchmark: a target's reply → the run page's websocket has it, with 1, 10 and 100
signed-in viewers of the same run. Prints figures; asserts nothing.

    .venv/bin/python bench/push.py [--viewers 1,10,100] [--turns 30] [--cadence-ms 200]
    DATABASE_URL=postgres://…/postgres REDIS_URL=redis://127.0.0.1:6379/11 .venv/bin/python bench/push.py

Figures, and how to read them: bench/README.md, "Live pushes".

Starts its own world in a temporary folder, as ``make up`` runs the product: a fresh database (the
embedded SQLite, or a database of its own on the PostgreSQL in DATABASE_URL, dropped at the end),
Redis (the embedded one, or REDIS_URL; emptied afterwards if it was empty before), the product's
daphne, one Celery worker (2 processes), and a second daphne serving the floor. In this process, on
one event loop: the chat target (an HTTP JSON bot) and the viewers (websockets to the run page's
socket with a signed-in user's session cookie, each sending the page's ``resume`` first, as
``static/js/live.js`` does).

**The witness** is this process: the target notes when it sends each reply (t0) and each viewer
when a ``turn`` frame with that reply's text arrives (t1), on the same clock. For each number of
viewers V, one chat run whose path says ``--turns`` lines; the target holds its first answer until
all V viewers are connected and resumed, then answers each line ``--cadence-ms`` after it arrives,
so every turn is pushed on its own. Everything between the reply leaving the target and the browser
receiving it counts: the worker reading the reply, saving the turn, publishing it, Redis, daphne,
the run page's consumer, the socket.

**The floor**, measured right after each level the same way: V websockets to a bare Channels
consumer on a daphne of its own (``floor_application``: it joins a group and forwards what the
group carries, no database, no product), and this process ``group_send``-ing the same number of
messages at the same cadence to that group through the same Redis. Channels, Redis, daphne and
the viewers' own receiving are in the floor; the product is not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from channels.consumer import get_handler_name  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402

from bench.voice import Process, cpu_seconds, free_port, listening, machine, percentile  # noqa: E402
from bench.world import own_world  # noqa: E402

GOALS_P99_MS = {1: 20, 100: 220}
PER_TURN = False  # --per-turn: each reply's fastest, median and slowest viewer
REPLY = re.compile(r"reply [LF]\d+-\d+")
FLOOR_GROUP = "bench-push-floor"


# The floor ------------------------------------------------------------------------------------

class FloorConsumer(AsyncWebsocketConsumer):
    """``daphne bench.push:floor_application``: every websocket joins the floor's group and gets
    what it carries, as it is."""

    groups = [FLOOR_GROUP]

    async def dispatch(self, message):
        # No database here: without Channels' per-message hop to a thread that closes stale
        # connections, the floor is the layer, daphne and the socket alone.
        await getattr(self, get_handler_name(message))(message)

    async def floor_push(self, event):
        await self.send(text_data=event["frame"])


floor_application = FloorConsumer.as_asgi()


# The witness: the target and the viewers, on one event loop of this process -------------------

class Witness:
    """The chat target and the viewers' websockets, on an event loop in a thread of this process."""

    PROBE_SECONDS = 0.01

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.sent: dict[str, float] = {}  # reply text → when the target sent it (perf_counter)
        self.sent_wall: dict[str, float] = {}  # the same on the wall clock, to compare with a turn's created_at
        self.gate: asyncio.Event | None = None  # the target's first answer waits for the viewers
        self.cadence = 0.2
        self.lags: list[float] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-witness", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the bench's target did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.gate = asyncio.Event()
        app = web.Application()
        app.router.add_post("/reply/{tag}", self._reply)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.probe = asyncio.ensure_future(self._probe())

    async def _reply(self, request):
        body = await request.json()
        number = int(body["text"].rsplit(" ", 1)[1])
        await self.gate.wait()
        await asyncio.sleep(self.cadence)
        text = f"reply {request.match_info['tag']}-{number}"
        self.sent[text], self.sent_wall[text] = time.perf_counter(), time.time()
        return web.json_response({"reply": text})

    async def _probe(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.PROBE_SECONDS)
            self.lags.append(time.perf_counter() - before - self.PROBE_SECONDS)

    def call(self, coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        async def shutdown():
            self.probe.cancel()
            await self.runner.cleanup()

        if self._thread.is_alive():
            try:
                self.call(shutdown(), timeout=10)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)


class Viewer:
    """One browser tab on the run page: its websocket, and when each reply's turn frame arrived."""

    def __init__(self, *, http, url: str, origin: str, resume: bool):
        self.http, self.url, self.origin, self.resume = http, url, origin, resume
        self.received: dict[str, float] = {}  # reply text → when its frame arrived (perf_counter)
        self.resumed = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def open(self) -> None:
        self.ws = await self.http.ws_connect(self.url, origin=self.origin, max_msg_size=0)
        if self.resume:
            await self.ws.send_json({"type": "resume", "turn_seq": 0, "tool_seq": 0})
        else:
            self.resumed.set()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            at = time.perf_counter()
            frame = json.loads(message.data)
            kind = frame.get("type")
            if kind == "turn":
                found = REPLY.search(frame["html"])
                if found and found.group() not in self.received:
                    self.received[found.group()] = at
            elif kind == "replace" and frame.get("id") == "run-summary":
                self.resumed.set()

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def open_viewers(*, count: int, url: str, origin: str, sessions: list[str], resume: bool):
    # One client session (one cookie jar) per signed-in user; no connection limit between them.
    https = [aiohttp.ClientSession(cookies={"sessionid": session} if session else None,
                                   connector=aiohttp.TCPConnector(limit=0)) for session in sessions[:count]]
    viewers = [Viewer(http=https[i % len(https)], url=url, origin=origin, resume=resume) for i in range(count)]
    # A few at a time, as tabs open: a hundred handshakes at once only measure the accept backlog.
    for start in range(0, count, 10):
        await asyncio.gather(*(viewer.open() for viewer in viewers[start:start + 10]))
    await asyncio.wait_for(asyncio.gather(*(viewer.resumed.wait() for viewer in viewers)), 60)
    return viewers, https


async def close_viewers(viewers, https) -> None:
    await asyncio.gather(*(viewer.close() for viewer in viewers), return_exceptions=True)
    for http in https:
        await http.close()


@contextlib.contextmanager
def viewers_open(witness: Witness, **how):
    """``open_viewers(**how)`` on the witness's loop; closed again whatever happens meanwhile."""
    sockets, https = witness.call(open_viewers(**how))
    try:
        yield sockets
    finally:
        witness.call(close_viewers(sockets, https))


# One level: V viewers of one run ---------------------------------------------------------------

def make_run(workspace, *, witness: Witness, tag: str, turns: int):
    from runs import services
    from scenarios.models import Agent, Path as ScenarioPath, Scenario, Target

    agent = Agent.objects.create(workspace=workspace, name=f"{tag} caller", max_duration_seconds=600)
    target = Target.objects.create(workspace=workspace, name=f"{tag} bot", channel="chat", kind="http_json",
                                   url=f"http://127.0.0.1:{witness.port}/reply/{tag}",
                                   request_template={"session": "{{session_id}}", "text": "{{message}}"},
                                   response_path="$.reply")
    scenario = Scenario.objects.create(workspace=workspace, name=tag, channel="chat", agent=agent, target=target,
                                       criteria=[{"name": "answers", "kind": "contains", "speaker": "target",
                                                  "text": "reply"}])
    script = [{"say": f"line {n}"} for n in range(1, turns + 1)] + [{"end_call": True}]
    path = ScenarioPath.objects.create(workspace=workspace, scenario=scenario, name=tag, narrative="bench",
                                       script=script)
    return services.path_run(path=path)


def wait_ended(run_id, timeout: float) -> str:
    from runs.models import TERMINAL_STATUSES, Run

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Run.objects.filter(pk=run_id).values_list("status", flat=True).get()
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not end within {timeout:.0f}s")


def measure_product(witness: Witness, workspace, *, base: str, sessions: list[str], viewers: int, turns: int,
                    tag: str, daphne: Process) -> dict:
    from runs.models import Turn

    witness.loop.call_soon_threadsafe(witness.gate.clear)  # before the run can send its first line
    run = make_run(workspace, witness=witness, tag=tag, turns=turns)
    url = f"{base.replace('http', 'ws')}/ws/runs/{run.pk}/"
    with viewers_open(witness, count=viewers, url=url, origin=base, sessions=sessions, resume=True) as sockets:
        lag_from = len(witness.lags)
        cpu_before, started = cpu_seconds(daphne.process.pid), time.monotonic()
        with witness_undisturbed():
            witness.loop.call_soon_threadsafe(witness.gate.set)
            status = wait_ended(run.pk, 60 + turns * 2)
            # The last turn's frames may still be on the way when the run's state says it ended.
            texts = [text for text in witness.sent if text.rsplit("-", 1)[0] == f"reply {tag}"]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(len(v.received) < len(texts) for v in sockets):
                time.sleep(0.05)
        daphne_cpu = (cpu_seconds(daphne.process.pid) - cpu_before) / (time.monotonic() - started)
    result = figures(sockets, {text: witness.sent[text] for text in texts}, witness.lags[lag_from:],
                     status=status, daphne_cpu=daphne_cpu)
    # Where the time went: the turn's created_at is stamped just before its row is inserted.
    saved = dict(Turn.objects.filter(run_id=run.pk, text__in=texts).values_list("text", "created_at"))
    to_saved = [(saved[text].timestamp() - witness.sent_wall[text]) * 1000 for text in texts if text in saved]
    if to_saved:
        result.update(saved_p50=percentile(to_saved, 50), saved_p99=percentile(to_saved, 99))
    return result


def measure_floor(witness: Witness, *, base: str, viewers: int, turns: int, cadence: float, tag: str) -> dict:
    from channels.layers import get_channel_layer

    async def publish() -> dict[str, float]:
        layer, sent = get_channel_layer(), {}
        for number in range(1, turns + 1):
            await asyncio.sleep(cadence)
            text = f"reply {tag}-{number}"
            frame = json.dumps({"type": "turn", "seq": number, "html": f'<li class="turn"><p>{text}</p></li>'})
            sent[text] = time.perf_counter()
            await layer.group_send(FLOOR_GROUP, {"type": "floor.push", "frame": frame})
        return sent

    with viewers_open(witness, count=viewers, url=f"{base.replace('http', 'ws')}/", origin=base, sessions=[""],
                      resume=False) as sockets:
        lag_from = len(witness.lags)
        with witness_undisturbed():
            sent = witness.call(publish())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(len(v.received) < len(sent) for v in sockets):
                time.sleep(0.05)
    return figures(sockets, sent, witness.lags[lag_from:], status="", daphne_cpu=None)


@contextlib.contextmanager
def witness_undisturbed():
    """No garbage collection in this process while it times a level: with Django loaded, one full
    collection stops the viewers' event loop for 100-250 ms on this kind of machine, and a browser
    would not pay for the witness's. A level allocates a few megabytes."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def figures(sockets, sent: dict[str, float], lags: list[float], *, status: str, daphne_cpu) -> dict:
    delays = [(viewer.received[text] - at) * 1000 for viewer in sockets for text, at in sent.items()
              if text in viewer.received]
    if PER_TURN:
        for text, at in sent.items():
            per = sorted((viewer.received[text] - at) * 1000 for viewer in sockets if text in viewer.received)
            if per:
                print(f"      {text}: min {per[0]:.1f} p50 {per[len(per) // 2]:.1f} max {per[-1]:.1f}")
    expected = len(sent) * len(sockets)
    result = {"count": len(delays), "missing": expected - len(delays), "status": status, "daphne_cpu": daphne_cpu,
              "lag_p99": percentile([lag * 1000 for lag in lags], 99) if lags else 0.0}
    if delays:
        result.update(p50=percentile(delays, 50), p95=percentile(delays, 95), p99=percentile(delays, 99),
                      max=max(delays))
    return result


def describe(figure: dict) -> str:
    if not figure["count"]:
        return f"nothing received ({figure['missing']} frames missing)"
    words = (f"p50 {figure['p50']:.1f} ms, p95 {figure['p95']:.1f} ms, p99 {figure['p99']:.1f} ms, "
             f"max {figure['max']:.1f} ms, n={figure['count']}")
    if figure["missing"]:
        words += f", {figure['missing']} frames never arrived"
    return words


# Setup and teardown ----------------------------------------------------------------------------

def start_product(*, var: Path, redis_url: str) -> tuple[list[Process], str, str]:
    """The product's daphne and worker, and the floor's daphne; returns their base URLs."""
    port, floor_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update({"REDIS_URL": redis_url, "PORT": str(port), "PYTHONUNBUFFERED": "1"})
    processes = []

    try:
        for name, on, app in (("daphne", port, "assure.asgi:application"),
                              ("floor", floor_port, "bench.push:floor_application")):
            process = Process(name, [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(on), app],
                              env=env, var=var)
            processes.append(process)
            process.wait_until(lambda: listening(on), "listening")
        worker = Process("worker", [sys.executable, "-m", "celery", "-A", "assure", "worker", "--loglevel", "INFO",
                                    "--concurrency", "2", "--hostname", f"bench-push-{os.getpid()}@%h",
                                    "--without-gossip", "--without-mingle"], env=env, var=var)
        processes.append(worker)
        worker.wait_until(lambda: " ready." in worker.log_path.read_text(errors="replace"), "ready line")
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return processes, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{floor_port}"


def signed_in_sessions(workspace, count: int) -> list[str]:
    """``count`` users of the workspace, every other one a viewer (the run page differs by role),
    each signed in: their session cookies."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from assure.models import Membership

    sessions = []
    for number in range(count):
        user = get_user_model().objects.create_user(username=f"viewer{number:03d}", password=None)
        role = Membership.Role.VIEWER if number % 2 else Membership.Role.MEMBER
        Membership.objects.create(user=user, workspace=workspace, role=role)
        browser = Client()
        browser.force_login(user)
        sessions.append(browser.cookies["sessionid"].value)
    return sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="1,10,100", help="numbers of viewers of one run, measured in turn")
    parser.add_argument("--turns", type=int, default=30, help="target replies per run")
    parser.add_argument("--cadence-ms", type=int, default=200, help="the target's think time before each reply")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with the processes' logs")
    parser.add_argument("--per-turn", action="store_true",
                        help="print each reply's fastest, median and slowest viewer (a stall hits them all)")
    args = parser.parse_args()
    global PER_TURN
    PER_TURN = args.per_turn
    levels = [int(level) for level in args.viewers.split(",")]

    os.environ.setdefault("EGRESS_ALLOW", "loopback")  # the target listens on 127.0.0.1
    with own_world("push", keep_logs=args.keep_logs) as world:
        from django.conf import settings

        logging.getLogger("axes").setLevel(logging.WARNING)  # a line per viewer signed in
        witness = Witness()
        world.defer(witness.stop)
        witness.cadence = args.cadence_ms / 1000
        processes, base, floor_base = start_product(var=world.var, redis_url=settings.REDIS_URL)
        for process in processes:
            world.defer(process.stop)
        measure(witness, processes[0], base=base, floor_base=floor_base, levels=levels, args=args)


def measure(witness: Witness, daphne: Process, *, base: str, floor_base: str, levels: list[int], args) -> None:
    from django.db import connection

    from assure.models import Workspace

    workspace = Workspace.objects.create(name="Bench", slug="bench", max_parallel_runs=10)
    sessions = signed_in_sessions(workspace, max(levels))
    redis_kind = "embedded" if os.environ.get("REDIS_URL", "").startswith("unix") or "REDIS_URL" not in os.environ \
        else "server"
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"database: {connection.vendor}, redis: {redis_kind}; one daphne, one worker (2 processes); "
          f"{args.turns} target replies per run, {args.cadence_ms} ms apart; viewers signed in, half of them "
          f"with the viewer role")
    # A fresh daphne pays for its first websockets, queries and imports: not what a long-lived one does.
    measure_product(witness, workspace, base=base, sessions=sessions, viewers=2, turns=3, tag="L0", daphne=daphne)
    measure_floor(witness, base=floor_base, viewers=2, turns=3, cadence=witness.cadence, tag="F0")

    rows = []
    for index, viewers in enumerate(levels, start=1):
        ours = measure_product(witness, workspace, base=base, sessions=sessions, viewers=viewers, turns=args.turns,
                               tag=f"L{index}", daphne=daphne)
        floor = measure_floor(witness, base=floor_base, viewers=viewers, turns=args.turns, cadence=witness.cadence,
                              tag=f"F{index}")
        goal = GOALS_P99_MS.get(viewers)
        print(f"\n{viewers} viewer(s), run {ours['status']}: reply sent -> turn frame received: {describe(ours)}")
        if "saved_p50" in ours:
            print(f"   of which reply sent -> the worker saving the turn (its created_at): "
                  f"p50 {ours['saved_p50']:.1f} ms, p99 {ours['saved_p99']:.1f} ms")
        if goal and ours["count"]:
            print(f"   goal p99 <= {goal} ms: {ours['p99'] / goal:.2f}x the goal")
        print(f"   floor (bare group_send -> {viewers} socket(s), no product): {describe(floor)}")
        if ours["count"] and floor["count"]:
            print(f"   ours / floor at p99: {ours['p99'] / max(floor['p99'], 0.1):.1f}x")
        print(f"   daphne CPU-s per second while the run went on: {ours['daphne_cpu']:.2f}; this process's loop lag "
              f"p99 {ours['lag_p99']:.1f} ms (inside every figure), during the floor {floor['lag_p99']:.1f} ms")
        rows.append((viewers, ours, floor))

    print("\nviewers | reply -> browser p50 / p95 / p99 / max (ms) | goal p99 | floor p50 / p99 (ms)")
    for viewers, ours, floor in rows:
        goal = GOALS_P99_MS.get(viewers)
        mine = (f"{ours['p50']:.1f} / {ours['p95']:.1f} / {ours['p99']:.1f} / {ours['max']:.1f}"
                if ours["count"] else "-")
        bare = f"{floor['p50']:.1f} / {floor['p99']:.1f}" if floor["count"] else "-"
        print(f"{viewers:7d} | {mine:43s} | {str(goal or '-'):8s} | {bare}")


if __name__ == "__main__":
    main()
