"""Voice benchmark: calls placed through the loopback telephony, timed by the emulator. Prints
figures; asserts nothing but that every run completed and passed (runs that fail measure nothing).

    .venv/bin/python bench/voice.py [--calls 100] [--concurrent 100] [--repeat 3] [--speech-scale 0.05]

Figures, how to read them, and what the profile found: bench/README.md, "Voice (loopback)".

Starts its own world in a temporary folder, as ``make up`` runs the product: a fresh database (the
embedded SQLite, or a database of its own on the PostgreSQL in DATABASE_URL, dropped at the end),
Redis (the embedded one, or REDIS_URL), the product's daphne, one Celery worker with the beat
scheduler embedded, a second daphne serving the floor, and the loopback telephony (the Twilio emulator) in this process, answering
with the demo receptionist (+15550100). The emulator is the witness: it plays Twilio and the far
end, so everything it times is measured from outside the product. It makes no recordings here
(Twilio makes them on its own machines, not on ours).

Each call follows one scripted path (``SCRIPT``): say → expect → press 1 → expect → say → expect …
→ end_call, so every call has several turns. Measures, for ``--repeat`` fresh batches:

1. calls started per second: N runs of the scenario requested as one "Run all paths" batch; the
   emulator notes when it received each ``Calls.json`` (the call's creation). Calls/s until all N
   were placed, and p50/p99 of batch requested → call placed;
2. latency our relay adds per turn with K simultaneous calls: every ``reply_gaps_ms`` of every call
   (the far end's final ``prompt`` sent → our next ``text`` token received, as the emulator times
   it), p50/p90/p99/max, next to the goal (p99 ≤ 20 ms at 100 simultaneous calls on one host).
   The floor, measured again right after each batch the same way: K calls to a bare relay on its
   own daphne (``floor_application``) that says the script's lines the moment each prompt arrives,
   without the product; the ratio to it is what the machine's noise cannot move much. Also
   printed: how many calls were live when the gaps were measured, the same gap after a key press
   (prompt → ``sendDigits``, which ``reply_gaps_ms`` leaves out), the silence after the call
   connects (setup sent → our caller's first words), and the emulator's own event-loop lag,
   which is inside every gap it measures. Fewer than K calls ever live at once fails the bench;
3. how many runs completed / passed / failed; any other outcome is printed with its reason and
   the bench exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.world import own_world  # noqa: E402

GOAL_P99_MS = 20
DEMO_NUMBER = "+15550100"
# The demo receptionist's rules (runs/demo_target.py) make this path deterministic: the greeting
# offers the menu, 1 asks for a day, and each later line has one answer. Five of its replies are
# followed by our caller speaking (a reply gap), one by a key press.
SCRIPT = [
    {"say": "Hi, is this Brightsmile Dental?"}, {"expect": "(?i)press 1"},
    {"press": "1"}, {"expect": "(?i)what day"},
    {"say": "Monday."}, {"expect": "(?i)10 ?am"},
    {"say": "What are your opening hours?"}, {"expect": "(?i)8 ?am"},
    {"say": "Are you open on Friday?"}, {"expect": "(?i)friday"},
    {"say": "10am please."}, {"expect": "(?i)booked"},
    {"say": "Thank you, bye."}, {"expect": "(?i)goodbye"},
    {"end_call": True},
]
CRITERIA = [{"name": "booked", "kind": "contains", "speaker": "target", "text": "booked for 10am"}]


def percentile(values, p):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def cpu_seconds(process_group: int) -> float:
    """CPU time (user + system) of the live processes of a process group, from /proc (Linux)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == process_group:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def floor_application(scope, receive, send):
    """The floor: a ConversationRelay endpoint that does nothing but answer, served by daphne in a
    process of its own (``daphne bench.voice:floor_application``). It speaks the script's lines and
    keys in order, each the moment the far end's final prompt arrives, and ends the session after the
    last, so its calls have the product's shape without the product."""
    if scope["type"] == "http":  # the <Connect action> callback: hang up
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/xml")]})
        await send({"type": "http.response.body", "body": b"<Response><Hangup/></Response>"})
        return
    if scope["type"] != "websocket":
        return
    steps = [step for step in SCRIPT if "say" in step or "press" in step]

    async def speak() -> None:
        if not steps:
            frame = {"type": "end", "handoffData": "{}"}
        elif "say" in steps[0]:
            frame = {"type": "text", "token": steps.pop(0)["say"], "last": True}
        else:
            frame = {"type": "sendDigits", "digits": steps.pop(0)["press"]}
        await send({"type": "websocket.send", "text": json.dumps(frame)})

    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            frame = json.loads(event.get("text") or "{}")
            if frame.get("type") == "setup" or (frame.get("type") == "prompt" and frame.get("last")):
                await speak()
        elif event["type"] == "websocket.disconnect":
            return


# The witness ----------------------------------------------------------------------------------

class Telephony:
    """The loopback telephony on an event loop of its own, in a thread of this process.

    Besides what the emulator records itself, it notes when each ``Calls.json`` request arrived
    (on this process's monotonic clock, the one the batch is timed with) and samples its own loop's
    lag, which is part of every time it measures.
    """

    PROBE_SECONDS = 0.01

    def __init__(self, *, speech_scale: float):
        from aiohttp import web
        from django.conf import settings

        from telephony.loopback import DemoReceptionist, Destination, LoopbackTwilio

        async def resolve(far_end_number: str, our_number: str) -> Destination:
            # Without the database: Twilio does not read ours to know who answers a number.
            if far_end_number == DEMO_NUMBER:
                return Destination("answer", far_end=DemoReceptionist)
            return Destination("failed", sip_response_code=404)

        self.account_sid, self.auth_token = settings.LOOPBACK_ACCOUNT_SID, settings.LOOPBACK_AUTH_TOKEN
        self.emulator = LoopbackTwilio(account_sid=self.account_sid, auth_token=self.auth_token, resolve=resolve,
                                       speech_scale=speech_scale, recordings_dir=None)
        # web.middleware marks it new-style; it cannot mark a bound method, hence the lambda.
        self.emulator.app.middlewares.append(web.middleware(lambda request, handler: self._note_call(request, handler)))
        self.created: dict[str, float] = {}  # call sid → when its Calls.json arrived (monotonic)
        self.refused: list[tuple[int, str]] = []
        self.lags: list[tuple[float, float]] = []  # (when, seconds late)
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="bench-telephony", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.emulator.base_url is None:
            if self._failed is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the loopback telephony did not start: {self._failed!r}")
            time.sleep(0.01)
        self.url = self.emulator.base_url

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as error:  # reported to the starting thread
            self._failed = error
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self.emulator.serve("127.0.0.1", 0)), asyncio.create_task(self._probe())]
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task is not stop and task.exception():
                raise task.exception()

    async def _probe(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.PROBE_SECONDS)
            after = time.monotonic()
            self.lags.append((after, after - before - self.PROBE_SECONDS))
            if len(self.lags) > 200_000:
                del self.lags[:100_000]

    async def _note_call(self, request, handler):
        received = time.monotonic()
        response = await handler(request)
        if request.method == "POST" and request.path.endswith("/Calls.json"):
            if response.status == 201:
                self.created[json.loads(response.body)["sid"]] = received
            else:
                self.refused.append((response.status, response.text[:200]))
        return response

    def witness(self, sid: str) -> dict:
        """``GET /loopback/calls/{sid}``: the emulator's public testimony of one call."""
        return self._get(f"/loopback/calls/{sid}")

    def place_floor_call(self, floor_port: int) -> None:
        """A call through the REST API, as the product places one, connected to the floor."""
        from telephony.twiml import relay_twiml

        floor = f"127.0.0.1:{floor_port}"
        twiml = relay_twiml(relay_url=f"ws://{floor}/", action_url=f"http://{floor}/action", run_id="floor", agent={})
        body = urlencode({"To": DEMO_NUMBER, "From": "+15550150", "Twiml": twiml}).encode()
        request = urllib.request.Request(f"{self.url}/2010-04-01/Accounts/{self.account_sid}/Calls.json", data=body,
                                         headers={"Authorization": f"Basic {self._token()}"})
        urllib.request.urlopen(request, timeout=30).close()

    def calls(self) -> list[dict]:
        """``GET /loopback/calls``: every call's witness without its timeline."""
        return self._get("/loopback/calls")["calls"]

    def _token(self) -> str:
        return base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()

    def _get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Basic {self._token()}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)


# The product's processes -----------------------------------------------------------------------

class Process:
    """One process of the product in a session of its own, its output in a file of the var dir."""

    def __init__(self, name: str, command: list[str], *, env: dict, var: Path):
        self.name = name
        self.log_path = var / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def output(self, lines: int = 60) -> str:
        return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    def wait_until(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited before {what}:\n{self.output()}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no {what} within {timeout:.0f}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        self.log.close()


def start_product(*, var: Path, telephony_url: str, redis_url: str, workers: int) -> tuple[list[Process], int]:
    """The product's daphne and worker (with beat), and the floor's daphne; returns the floor's port."""
    port, floor_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update({"REDIS_URL": redis_url, "PORT": str(port), "LOOPBACK_TELEPHONY_URL": telephony_url,
                "PYTHONUNBUFFERED": "1", "DEMO_TARGET_URL": f"http://127.0.0.1:{port}/demo-target/chat/"})
    processes = []
    try:
        web = Process("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                 "assure.asgi:application"], env=env, var=var)
        processes.append(web)

        web.wait_until(lambda: listening(port), "listening")
        floor = Process("floor", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(floor_port),
                                  "bench.voice:floor_application"], env=env, var=var)
        processes.append(floor)
        floor.wait_until(lambda: listening(floor_port), "listening")
        worker = Process("worker", [sys.executable, "-m", "celery", "-A", "assure", "worker", "--loglevel", "INFO",
                                    "--concurrency", str(workers), "--hostname", f"bench-voice-{os.getpid()}@%h",
                                    "--without-gossip", "--without-mingle",
                                    "--beat", "--schedule", str(var / "celerybeat-schedule")], env=env, var=var)
        processes.append(worker)
        worker.wait_until(lambda: " ready." in worker.log_path.read_text(errors="replace"), "ready line")
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return processes, floor_port


# One batch -------------------------------------------------------------------------------------

def make_scenario(workspace, target, *, name: str, paths: int):
    from scenarios.models import Agent, Path as ScenarioPath, Scenario

    agent = Agent.objects.create(workspace=workspace, name=f"{name} caller", max_duration_seconds=300)
    scenario = Scenario.objects.create(workspace=workspace, name=name, channel="voice", direction="outbound",
                                       agent=agent, target=target, criteria=CRITERIA)
    ScenarioPath.objects.bulk_create([
        ScenarioPath(workspace=workspace, scenario=scenario, name=f"{name} {i:04d}", narrative="bench", script=SCRIPT)
        for i in range(paths)
    ])
    return scenario


def wait_done(run_ids, timeout: float, *, poll: float = 0.1) -> None:
    from runs.models import TERMINAL_STATUSES, Run

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Run.objects.filter(pk__in=run_ids).exclude(status__in=TERMINAL_STATUSES).exists():
            return
        time.sleep(poll)
    left = Run.objects.filter(pk__in=run_ids).exclude(status__in=TERMINAL_STATUSES).count()
    raise SystemExit(f"{left} of {len(run_ids)} runs did not finish within {timeout:.0f}s")


def run_batch(telephony: Telephony, processes: list, workspace, target, *, name: str, size: int) -> dict:
    """Request ``size`` runs as one batch, wait for them all, and read the emulator's witness."""
    from django.db.models import Count

    from runs import services
    from runs.models import CriterionResult, Run
    from telephony.models import Call

    scenario = make_scenario(workspace, target, name=name, paths=size)
    known, refused_before = set(telephony.created), len(telephony.refused)
    lag_from = len(telephony.lags)
    cpu_before = {process.name: cpu_seconds(process.process.pid) for process in processes}
    cpu_before["bench"] = sum(os.times()[:2])
    requested = time.monotonic()
    batch, runs = services.scenario_run_all(scenario=scenario)
    run_ids = [run.pk for run in runs]
    wait_done(run_ids, timeout=120 + size)
    finished = time.monotonic()
    cpu = {process.name: cpu_seconds(process.process.pid) for process in processes}
    cpu["bench"] = sum(os.times()[:2])
    cpu = {name: (used - cpu_before[name]) / (finished - requested) for name, used in cpu.items()}
    lags = [lag for _, lag in telephony.lags[lag_from:]]

    outcomes = dict(Run.objects.filter(batch=batch).values_list("status").annotate(n=Count("id")).order_by())
    verdicts = dict(Run.objects.filter(batch=batch, status="completed").values_list("verdict")
                    .annotate(n=Count("id")).order_by())
    problems = []
    for run in Run.objects.filter(batch=batch).exclude(status="completed", verdict="passed").order_by("created_at"):
        why = run.failure_reason and f"{run.failure_reason}: {run.failure_detail}"
        if not why:
            why = "; ".join(CriterionResult.objects.filter(run=run).exclude(outcome="passed")
                            .values_list("rationale", flat=True)) or "no reason recorded"
        problems.append(f"run {run.pk} {run.status}/{run.verdict}: {why[:300]}")

    ours = {sid for sid in Call.objects.filter(run__batch=batch).values_list("sid", flat=True) if sid}
    sids = sorted(set(telephony.created) - known)
    if set(sids) != ours:
        problems.append(f"the emulator created {len(sids)} calls, the product recorded {len(ours)} sids; "
                        f"{len(ours - set(sids))} of ours were never created there")
    for status, text in telephony.refused[refused_before:]:
        problems.append(f"the emulator refused a call: HTTP {status} {text}")
    witnesses = {sid: telephony.witness(sid) for sid in sids}
    # Twilio's webhooks to us (status, the session's end) answered with an error, or never.
    unanswered = Counter(
        f"{event['event']} {event.get('http_status') or 'no answer'}"
        for witness in witnesses.values() for event in witness["timeline"]
        if event["event"].startswith("callback:") and not 200 <= (event.get("http_status") or 0) < 300
    )
    if unanswered:
        problems.append("webhooks the product failed: " + ", ".join(f"{what} x{n}" for what, n in unanswered.items()))
    return {
        "size": size,
        "requested": requested,
        "finished": finished,
        "created": {sid: telephony.created[sid] for sid in sids},
        "witnesses": witnesses,
        "outcomes": outcomes,
        "verdicts": verdicts,
        "problems": problems,
        "lags": lags,
        "cpu": cpu,
        "load": os.getloadavg()[0],
    }


def run_floor(telephony: Telephony, *, size: int, floor_port: int) -> dict:
    """``size`` calls to the floor, placed at once; waits for them to end and reads their witness."""
    known, lag_from = set(telephony.created), len(telephony.lags)
    requested = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: telephony.place_floor_call(floor_port), range(size)))
    sids = set(telephony.created) - known
    deadline = time.monotonic() + 120 + size
    while time.monotonic() < deadline:
        if all(call["status"] in ("completed", "busy", "no-answer", "failed", "canceled")
               for call in telephony.calls() if call["sid"] in sids):
            break
        time.sleep(0.2)
    witnesses = {sid: telephony.witness(sid) for sid in sids}
    broken = Counter(f"{w['status']}, session {(w['session'] or {}).get('status')}" for w in witnesses.values()
                     if w["status"] != "completed" or (w["session"] or {}).get("status") != "completed")
    return {"requested": requested, "created": {sid: telephony.created[sid] for sid in sids},
            "witnesses": witnesses, "lags": [lag for _, lag in telephony.lags[lag_from:]],
            "problems": [f"floor calls that did not complete: {dict(broken)}"] if broken else []}


# Figures ---------------------------------------------------------------------------------------

def placement(batch: dict) -> dict:
    delays = sorted((at - batch["requested"]) * 1000 for at in batch["created"].values())
    if not delays:
        return {"placed": 0}
    return {"placed": len(delays), "all_placed_s": delays[-1] / 1000, "calls_per_s": len(delays) / (delays[-1] / 1000),
            "p50": percentile(delays, 50), "p99": percentile(delays, 99)}


def turn_gaps(batch: dict) -> dict:
    """The emulator's reply gaps, and when each happened, to count the calls live at that moment."""
    gaps, digit_gaps, moments, spans, timeline_gaps, first_words = [], [], [], [], [], []
    for sid, witness in batch["witnesses"].items():
        created = batch["created"][sid]
        gaps.extend(witness["reply_gaps_ms"])
        if witness["answered_ms"] is not None:
            ended = witness["ended_ms"] if witness["ended_ms"] is not None else math.inf
            spans.append((created + witness["answered_ms"] / 1000, created + ended / 1000))
        # The timeline tells when each gap ended; it reproduces reply_gaps_ms to the millisecond.
        prompt_at = digits_from = setup_at = None
        for event in witness["timeline"]:
            name = event["event"]
            if name == "out:setup":
                setup_at = event["t_ms"]
            elif name == "in:text" and setup_at is not None:  # the call connected: our caller speaks first
                first_words.append(event["t_ms"] - setup_at)
                setup_at = None
            if name == "out:prompt" and event.get("last"):
                prompt_at = digits_from = event["t_ms"]
            elif name == "in:text" and prompt_at is not None:
                timeline_gaps.append(event["t_ms"] - prompt_at)
                moments.append(created + event["t_ms"] / 1000)
                prompt_at = digits_from = None
            elif name == "in:sendDigits" and digits_from is not None:
                digit_gaps.append(event["t_ms"] - digits_from)
                digits_from = None
    live_at = [sum(start <= moment < end for start, end in spans) for moment in moments]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    live = peak = 0
    for _, change in edges:
        live += change
        peak = max(peak, live)
    figures = {"count": len(gaps), "peak_live": peak, "digit_gaps": digit_gaps, "first_words": first_words,
               "timeline_agrees": len(timeline_gaps) == len(gaps)}
    if gaps:
        figures.update(p50=percentile(gaps, 50), p90=percentile(gaps, 90), p99=percentile(gaps, 99), max=max(gaps))
    if live_at:
        figures.update(live_p50=statistics.median(live_at), live_min=min(live_at))
    if first_words:
        figures.update(first_p50=percentile(first_words, 50), first_p99=percentile(first_words, 99))
    lags = [lag * 1000 for lag in batch["lags"]]
    if lags:
        figures.update(lag_p50=percentile(lags, 50), lag_p99=percentile(lags, 99), lag_max=max(lags))
    return figures


def print_batch(label: str, batch: dict, *, place: bool, turns: bool) -> dict:
    figures = {"runs": Counter({**batch["outcomes"], "passed": batch["verdicts"].get("passed", 0)})}
    outcome_words = ", ".join(f"{status} {n}" for status, n in sorted(batch["outcomes"].items()))
    verdict_words = ", ".join(f"{verdict} {n}" for verdict, n in sorted(batch["verdicts"].items(), key=str))
    print(f"   {label}: {batch['size']} runs, all ended {batch['finished'] - batch['requested']:.1f} s after the "
          f"request; {outcome_words} (verdicts: {verdict_words or 'none'})")
    cpu_words = ", ".join(f"{name} {share:.2f}" for name, share in batch["cpu"].items())
    print(f"      CPU seconds per second meanwhile: {cpu_words} (bench: this process, with the emulator); "
          f"machine load {batch['load']:.1f} on {os.cpu_count()} cores")
    if place:
        figures["place"] = fig = placement(batch)
        if fig["placed"]:
            print(f"      1. calls started: {fig['placed']} placed within {fig['all_placed_s']:.2f} s of the request = "
                  f"{fig['calls_per_s']:.0f} calls/s; request -> call placed p50 {fig['p50']:.0f} ms, "
                  f"p99 {fig['p99']:.0f} ms")
        else:
            print("      1. calls started: none placed")
    if turns:
        figures["turns"] = fig = turn_gaps(batch)
        if fig["peak_live"] < batch["size"]:
            batch["problems"].append(
                f"only {fig['peak_live']} of the {batch['size']} calls were ever live at once: not a measurement at "
                f"{batch['size']} (a larger --speech-scale keeps each call up longer)")
        if fig["count"]:
            digits = fig["digit_gaps"]
            print(f"      2. relay latency per turn (emulator's reply_gaps_ms), peak {fig['peak_live']} calls live, "
                  f"median {fig.get('live_p50', 0):.0f} (min {fig.get('live_min', 0)}) live when a gap was measured: "
                  f"p50 {fig['p50']} ms, p90 {fig['p90']} ms, p99 {fig['p99']} ms, max {fig['max']} ms, "
                  f"n={fig['count']}; goal p99 <= {GOAL_P99_MS} ms: {fig['p99'] / GOAL_P99_MS:.1f}x the goal")
            if digits:
                print(f"         after a key press (prompt -> sendDigits): p50 {percentile(digits, 50)} ms, "
                      f"p99 {percentile(digits, 99)} ms, n={len(digits)}; the emulator's own loop lag (inside every "
                      f"gap): p50 {fig.get('lag_p50', 0):.1f} ms, p99 {fig.get('lag_p99', 0):.1f} ms, "
                      f"max {fig.get('lag_max', 0):.0f} ms")
            if fig["first_words"]:
                words = fig["first_words"]
                print(f"         connected (setup sent) -> our caller's first words: p50 {percentile(words, 50)} ms, "
                      f"p99 {percentile(words, 99)} ms, max {max(words)} ms: silence the far end hears first")
            if not fig["timeline_agrees"]:
                print("         (the timeline and reply_gaps_ms disagree on the number of gaps: live counts are rough)")
        else:
            print("      2. no reply gaps were measured")
    for problem in batch["problems"]:
        print(f"      ! {problem}")
    return figures


# Setup and teardown ----------------------------------------------------------------------------

def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores{f' ({model})' if model else ''}, {platform.system()} {platform.release()}, "
            f"load {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="runs requested at once for the calls/s figure")
    parser.add_argument("--concurrent", type=int, default=100, help="simultaneous calls for the per-turn figure")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times; prints each and the median")
    parser.add_argument("--speech-scale", type=float, default=0.05,
                        help="the emulator's speech time multiplier (1.0: as slow as life)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with the processes' logs")
    parser.add_argument("--worker-processes", type=int, default=2, help="Celery worker processes (make up runs 2)")
    args = parser.parse_args()

    # The operator's cap on a workspace's parallel runs (20 by default) would stagger the batch.
    os.environ["MAX_PARALLEL_RUNS_PER_WORKSPACE"] = str(max(args.calls, args.concurrent))
    with own_world("voice", keep_logs=args.keep_logs) as world:
        from django.conf import settings

        telephony = Telephony(speech_scale=args.speech_scale)
        world.defer(telephony.stop)
        processes, floor_port = start_product(var=world.var, telephony_url=telephony.url,
                                              redis_url=settings.REDIS_URL, workers=args.worker_processes)
        for process in processes:
            world.defer(process.stop)
        ok = measure(telephony, processes, floor_port, args)
    sys.exit(0 if ok else 1)


def measure(telephony: Telephony, processes: list, floor_port: int, args) -> bool:
    from django.db import connection

    from assure.models import Workspace
    from scenarios.models import Target

    size = max(args.calls, args.concurrent)
    workspace = Workspace.objects.create(name="Bench", slug="bench", max_parallel_runs=size)
    target = Target.objects.create(workspace=workspace, name="Brightsmile Dental phone", channel="voice", kind="demo",
                                   phone_number=DEMO_NUMBER)
    redis_kind = "embedded" if os.environ.get("REDIS_URL", "").startswith("unix") or "REDIS_URL" not in os.environ \
        else "server"
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"database: {connection.vendor}, redis: {redis_kind}, worker processes: {args.worker_processes}, "
          f"one daphne; {len(SCRIPT)}-step script, {sum('say' in step for step in SCRIPT)} utterances and 1 key "
          f"press per call")
    print(f"speech scale {args.speech_scale:g}: simulated speech, thinking and rings take {args.speech_scale:g}x "
          f"their real time, so each call sends its frames and webhooks {1 / args.speech_scale:g}x as fast as a "
          f"real one: {args.concurrent} calls load the relay like {args.concurrent / args.speech_scale:.0f} real "
          f"calls would{'' if args.speech_scale >= 1 else ' (--speech-scale 1: calls as they really are)'}")

    # A fresh daphne pays for its first websocket, first queries and imports: not what a long-lived
    # deployment does on each call.
    warm = run_batch(telephony, processes, workspace, target, name="warm-up", size=2)
    warm_floor = run_floor(telephony, size=2, floor_port=floor_port)
    if warm["problems"] or warm_floor["problems"]:
        print_batch("warm-up", warm, place=False, turns=False)
        print("\n".join(f"      ! {problem}" for problem in warm_floor["problems"]))
        return False

    results, ok = [], True
    for attempt in range(1, args.repeat + 1):
        print(f"\nrepeat {attempt}:")
        if args.calls == args.concurrent:
            batch = run_batch(telephony, processes, workspace, target, name=f"batch {attempt}", size=args.calls)
            figures = print_batch(f"batch of {args.calls}", batch, place=True, turns=True)
            ok &= not batch["problems"]
        else:
            batch = run_batch(telephony, processes, workspace, target, name=f"start {attempt}", size=args.calls)
            figures = print_batch(f"batch of {args.calls}", batch, place=True, turns=False)
            ok &= not batch["problems"]
            time.sleep(1)
            batch = run_batch(telephony, processes, workspace, target, name=f"turns {attempt}", size=args.concurrent)
            turns = print_batch(f"batch of {args.concurrent}", batch, place=False, turns=True)
            figures["turns"], figures["runs"] = turns["turns"], figures["runs"] + turns["runs"]
            ok &= not batch["problems"]
        time.sleep(1)
        floor = run_floor(telephony, size=args.concurrent, floor_port=floor_port)
        figures["floor"] = fig = turn_gaps(floor)
        if fig["peak_live"] < args.concurrent:
            floor["problems"].append(f"only {fig['peak_live']} of the {args.concurrent} floor calls were live at once")
        ok &= not floor["problems"]
        if fig["count"]:
            print(f"   floor, just after: {args.concurrent} calls to a bare relay on its own daphne (no product), "
                  f"peak {fig['peak_live']} live: p50 {fig['p50']} ms, p90 {fig['p90']} ms, p99 {fig['p99']} ms, "
                  f"max {fig['max']} ms, n={fig['count']}; ours / floor at p99: "
                  f"{figures['turns']['p99'] / max(fig['p99'], 1):.1f}x; its first words p50 "
                  f"{fig.get('first_p50', 0)} ms, p99 {fig.get('first_p99', 0)} ms")
        for problem in floor["problems"]:
            print(f"      ! {problem}")
        results.append(figures)
        time.sleep(1)  # the batch's last hang-ups and sweeps settle

    print_medians(results, args)
    if not ok:
        print("\nSome runs did not complete and pass (above): these figures measure a broken run, not the relay.")
    return ok


def print_medians(results: list[dict], args) -> None:
    def median_of(part: str, key: str):
        values = [r[part][key] for r in results if key in r.get(part, {})]
        return statistics.median(values) if values else float("nan")

    print(f"\nmedians of {len(results)} repeat(s):")
    print(f"   1. {args.calls} runs requested at once: {median_of('place', 'calls_per_s'):.0f} calls/s "
          f"(all placed within {median_of('place', 'all_placed_s'):.2f} s); request -> call placed "
          f"p50 {median_of('place', 'p50'):.0f} ms, p99 {median_of('place', 'p99'):.0f} ms")
    p99 = median_of("turns", "p99")
    print(f"   2. relay latency per turn, {args.concurrent} calls (peak live {median_of('turns', 'peak_live'):.0f}): "
          f"p50 {median_of('turns', 'p50'):.0f} ms, p90 {median_of('turns', 'p90'):.0f} ms, p99 {p99:.0f} ms, "
          f"max {median_of('turns', 'max'):.0f} ms, n={median_of('turns', 'count'):.0f} per repeat; "
          f"goal p99 <= {GOAL_P99_MS} ms at 100 simultaneous calls: {p99 / GOAL_P99_MS:.1f}x the goal "
          f"(speech scale {args.speech_scale:g}); emulator loop lag p99 {median_of('turns', 'lag_p99'):.1f} ms")
    ratios = [r["turns"]["p99"] / max(r["floor"]["p99"], 1) for r in results if "p99" in r["turns"]
              and "p99" in r.get("floor", {})]
    print(f"      connected -> our caller's first words: p50 {median_of('turns', 'first_p50'):.0f} ms, "
          f"p99 {median_of('turns', 'first_p99'):.0f} ms (floor: p50 {median_of('floor', 'first_p50'):.0f} ms, "
          f"p99 {median_of('floor', 'first_p99'):.0f} ms)")
    print(f"      floor (bare relay, no product): p50 {median_of('floor', 'p50'):.0f} ms, "
          f"p99 {median_of('floor', 'p99'):.0f} ms; ours / floor at p99: "
          f"{statistics.median(ratios) if ratios else float('nan'):.1f}x (median of the repeats' ratios)")
    runs = sum((r["runs"] for r in results), Counter())
    print(f"   3. runs: {sum(n for status, n in runs.items() if status != 'passed')} requested, "
          f"{runs['completed']} completed ({runs['passed']} passed), {runs['failed']} failed, "
          f"{runs['cancelled']} cancelled")


if __name__ == "__main__":
    main()
