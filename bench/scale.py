"""Run-engine scale benchmark, timed by a witness target. Prints figures; asserts nothing but that
every run completed and passed (a run that fails measures nothing).

    .venv/bin/python bench/scale.py [--parts pickup,batch,capacity,scaleout] [--levels 200,500,1000]
    DATABASE_URL=postgres://…/postgres REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/scale.py

Figures, how to read them, and the goals: bench/README.md, "Scale (chat)".

Starts its own world in a temporary folder, as ``make up`` runs the product: a fresh database (the
embedded SQLite, or a database of its own on the PostgreSQL in DATABASE_URL, dropped at the end),
Redis (the embedded one, or REDIS_URL), the product's Celery worker (``--worker-processes``, 2 like
``make up``, beat embedded) and the witness: an HTTP chat target in a process of its own that
answers every message and times the product from the side the product does not control. For each
conversation it notes when it finished sending a reply and when the caller's next message arrived:
that gap is the platform's whole cost of a turn for a scripted caller (save the reply, push it, save
the caller's line, push it, send it). Parts:

- ``pickup``: one run at a time on an idle worker, enqueue → ``materializing`` (the run's own
  events), next to the Celery floor in FLOORS.md;
- ``batch``: 50 six-turn runs against a target that answers at once, batch requested → last run
  ended (``ended_at``: every turn stored and pushed, verdicts stored), next to Botium on the same 50
  conversations (FLOORS.md: about 1.0–1.25 s without its start-up);
- ``capacity``: K six-turn conversations at once against a target that thinks 1 s per reply; the
  witness's gaps p50/p99 and how many conversations it saw open at once;
- ``scaleout``: the same 200-run instant batch with one worker process pinned to one core, then with
  a second worker (its own Celery node) pinned to the other: the second one's gain in runs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.voice import Process, cpu_seconds, free_port, machine, percentile, wait_done  # noqa: E402
from bench.world import own_world  # noqa: E402

TURNS = 6
BOTIUM_50_S = (1.0, 1.25)  # FLOORS.md: botium-cli on the same 50 conversations, without its start-up
CELERY_FLOOR = "p50 2.0-2.7 ms, p99 4.1-5.0 ms"
GAP_GOAL_P99_MS = 50


# The witness ------------------------------------------------------------------------------------

def serve_witness(port: int) -> None:
    """The target, in a process of its own so the product's and the bench's work never delay it.

    ``POST /instant`` answers at once, ``POST /think`` after 1 s. ``GET /stats`` returns what it
    saw since the last ``POST /reset``: every gap, the most conversations open at once, its own
    event-loop lag (which is inside every gap it measures), and when it saw the first and last
    message.
    """
    from aiohttp import web

    state = {}

    def reset():
        state.update(sent={}, gaps=[], by_exchange={}, by_second={}, open=set(), peak=0, lags=[], first=None, last=None,
                     messages=0)

    reset()

    async def reply(request, think: float):
        received = time.monotonic()
        body = await request.json()
        session = str(body.get("session"))
        state["messages"] += 1
        state["first"] = state["first"] or received
        state["last"] = received
        sent = state["sent"].pop(session, None)
        if sent is not None:
            gap = (received - sent[0]) * 1000
            state["gaps"].append(gap)
            state["by_exchange"].setdefault(str(sent[1]), []).append(gap)
            # When it fell, in whole seconds since the first message: start-up, steady, wind-down.
            state["by_second"].setdefault(str(int(received - state["first"])), []).append(gap)
        state["open"].add(session)
        state["peak"] = max(state["peak"], len(state["open"]))
        if think:
            await asyncio.sleep(think)
        text = str(body.get("text", ""))
        payload = json.dumps({"reply": f"ok {text[:20]}"}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        if text.endswith(f"{TURNS - 1}"):  # the script's last line: this conversation ends here
            state["open"].discard(session)
        else:
            # Which reply of the conversation this is: the gaps after it are reported by position.
            state["sent"][session] = (time.monotonic(), (sent[1] if sent is not None else 0) + 1)
        return response

    async def instant(request):
        return await reply(request, 0)

    async def think(request):
        return await reply(request, 1.0)

    async def stats(request):
        return web.json_response({key: value for key, value in state.items() if key not in ("sent", "open")})

    async def do_reset(request):
        reset()
        return web.json_response({})

    async def lag_probe(app):
        async def probe():
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                state["lags"].append((time.monotonic() - before - 0.01) * 1000)
        app["probe"] = asyncio.create_task(probe())

    app = web.Application(client_max_size=1024 * 64)
    app.router.add_post("/instant", instant)
    app.router.add_post("/think", think)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", do_reset)
    app.on_startup.append(lag_probe)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


class Witness:
    def __init__(self, var: Path):
        self.port = free_port()
        self.process = Process("witness", [sys.executable, __file__, "--serve-witness", str(self.port)],
                               env=dict(os.environ), var=var)
        self.process.wait_until(self._up, "listening")

    def _up(self) -> bool:
        try:
            self.stats()
            return True
        except OSError:
            return False

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url("stats"), timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url("reset"), method="POST"), timeout=10).read()


# The product ------------------------------------------------------------------------------------

class Workers:
    """Celery worker nodes of the product, each optionally pinned to CPU cores (``taskset``)."""

    def __init__(self, var: Path, env: dict):
        self.var, self.env, self.nodes = var, env, []

    def start(self, *, processes: int, cores: str | None = None, beat: bool = False) -> Process:
        name = f"worker{len(self.nodes) + 1}"
        command = [sys.executable, "-m", "celery", "-A", "assure", "worker", "--loglevel", "INFO",
                   "--concurrency", str(processes), "--hostname", f"bench-{name}-{os.getpid()}@%h",
                   "--without-gossip", "--without-mingle"]
        if beat:
            command += ["--beat", "--schedule", str(self.var / "celerybeat-schedule")]
        if cores is not None:
            command = ["taskset", "-c", cores, *command]
        node = Process(name, command, env=self.env, var=self.var)
        self.nodes.append(node)
        WORKERS[:] = self.nodes
        node.wait_until(lambda: " ready." in node.log_path.read_text(errors="replace"), "ready line")
        return node

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []
        WORKERS[:] = []


def make_scenario(workspace, *, name: str, url: str, paths: int):
    from scenarios.models import Agent, Path as ScenarioPath, Scenario, Target

    agent = Agent.objects.create(workspace=workspace, name=f"{name} caller", max_duration_seconds=600)
    target = Target.objects.create(workspace=workspace, name=f"{name} bot", channel="chat", kind="http_json", url=url,
                                   request_template={"session": "{{session_id}}", "text": "{{message}}"},
                                   response_path="$.reply")
    script = [{"say": f"message {i}"} for i in range(TURNS)] + [{"end_call": True}]
    scenario = Scenario.objects.create(
        workspace=workspace, name=name, channel="chat", agent=agent, target=target,
        criteria=[{"name": "answers", "kind": "contains", "speaker": "target", "text": "ok"}])
    ScenarioPath.objects.bulk_create([
        ScenarioPath(workspace=workspace, scenario=scenario, name=f"{name} {i:04d}", narrative="bench", script=script)
        for i in range(paths)
    ])
    return scenario


WORKERS: list = []  # the worker nodes running now, for their CPU time


def machine_busy_seconds() -> float:
    """CPU time every process of the machine spent (all cores), from /proc/stat (Linux)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_batch(witness: Witness, workspace, *, name: str, size: int, kind: str) -> dict:
    """Request ``size`` runs as one batch, wait for every one to end, read the witness."""
    from django.db.models import Count, Max

    from runs import services
    from runs.models import Run

    scenario = make_scenario(workspace, name=name, url=witness.url(kind), paths=size)
    witness.reset()
    cpu_before = sum(cpu_seconds(node.process.pid) for node in WORKERS)
    busy_before = machine_busy_seconds()
    requested = datetime.now(timezone.utc)
    batch, runs = services.scenario_run_all(scenario=scenario)
    # The end is read from the runs' own timestamps; a slow poll only keeps the bench's own queries
    # out of the figures (500 ids, 50 times a second, were a fifth of the machine's CPU at K=500).
    wait_done([run.pk for run in runs], timeout=120 + size, poll=0.2)
    seen = witness.stats()
    cpu = sum(cpu_seconds(node.process.pid) for node in WORKERS) - cpu_before
    busy = machine_busy_seconds() - busy_before
    rows = Run.objects.filter(batch=batch)
    outcomes = dict(rows.values_list("status").annotate(n=Count("id")).order_by())
    passed = rows.filter(status="completed", verdict="passed").count()
    problems = [f"{run.pk} {run.status}/{run.verdict}: {run.failure_reason} {(run.failure_detail or '')[:200]}"
                for run in rows.exclude(status="completed", verdict="passed")[:5]]
    last_ended = rows.aggregate(at=Max("ended_at"))["at"]
    return {"timeline": timeline(rows, requested), "size": size, "seconds": (last_ended - requested).total_seconds(), "passed": passed,
            "outcomes": outcomes, "problems": problems, "gaps": seen["gaps"], "by_exchange": seen["by_exchange"],
            "by_second": seen["by_second"],
            "peak": seen["peak"],
            "lag_p99": percentile(seen["lags"], 99) if seen["lags"] else 0.0, "messages": seen["messages"],
            "cpu_ms_per_run": cpu * 1000 / size, "machine_ms_per_run": busy * 1000 / size}


def timeline(rows, requested) -> str:
    """Where a batch's time went, from the runs' own timestamps: when the last run was admitted,
    when they went live, how long their conversations and finalizing took; and how the runs split
    between worker processes (an uneven split leaves a core idle at the end)."""
    def ms(delta) -> float:
        return delta.total_seconds() * 1000

    stamps = list(rows.values_list("admitted_at", "started_at", "ended_at", "worker"))
    live = sorted(ms(started - requested) for _, started, _, _ in stamps if started)
    held = sorted(ms(ended - started) for _, started, ended, _ in stamps if started and ended)
    admitted = max(ms(at - requested) for at, _, _, _ in stamps if at)
    split = sorted(collections.Counter(worker for *_, worker in stamps).values(), reverse=True)
    return (f"last admitted +{admitted:.0f} ms; live p50 +{statistics.median(live):.0f} ms, last +{live[-1]:.0f} ms; "
            f"live -> ended p50 {statistics.median(held):.0f} ms, max {held[-1]:.0f} ms; runs per worker process "
            f"{'/'.join(map(str, split))}")


def report_problems(result: dict) -> bool:
    if result["passed"] == result["size"]:
        return True
    print(f"      ! only {result['passed']} of {result['size']} runs completed and passed: {result['outcomes']}")
    for problem in result["problems"]:
        print(f"      ! {problem}")
    return False


# Parts ------------------------------------------------------------------------------------------

def part_pickup(witness, workspace, samples: int, attempt: int) -> dict:
    from runs import services
    from runs.models import RunEvent

    scenario = make_scenario(workspace, name=f"pickup {attempt}", url=witness.url("instant"), paths=samples)
    delays = []
    for path in scenario.paths.select_related("scenario__agent", "scenario__target").order_by("name"):
        run = services.path_run(path=path)
        wait_done([run.pk], 30, poll=0.02)
        events = dict(RunEvent.objects.filter(run=run).values_list("to_stage", "at"))
        delays.append((events["materializing"] - events["queued"]).total_seconds() * 1000)
        time.sleep(0.05)  # the worker is idle again
    figures = {"p50": statistics.median(delays), "p99": percentile(delays, 99)}
    print(f"   pickup, {samples} runs one at a time on an idle worker, enqueue -> materializing: "
          f"p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms (goal: p50 <= 3x the Celery floor "
          f"({CELERY_FLOOR}), p99 <= 50 ms)")
    return figures


def part_batch(witness, workspace, attempt: int) -> dict:
    result = run_batch(witness, workspace, name=f"batch {attempt}", size=50, kind="instant")
    ok = report_problems(result)
    rate = 50 / result["seconds"]
    gaps = result["gaps"]
    print(f"   batch of 50 {TURNS}-turn runs, instant target, requested -> last ended: {result['seconds']:.2f} s = "
          f"{rate:.0f} runs/s (goal >= 100 runs/s); Botium on the same 50: {BOTIUM_50_S[0]:.2f}-{BOTIUM_50_S[1]:.2f} s, "
          f"so {result['seconds'] / BOTIUM_50_S[1]:.2f}-{result['seconds'] / BOTIUM_50_S[0]:.2f}x Botium's time "
          f"(goal <= 0.4x); witness gaps p50 {statistics.median(gaps):.1f} ms, p99 {percentile(gaps, 99):.1f} ms")
    print(f"      CPU per run: workers {result['cpu_ms_per_run']:.1f} ms, whole machine {result['machine_ms_per_run']:.1f} ms")
    print(f"      {result['timeline']}")
    return {"seconds": result["seconds"], "runs_per_s": rate, "cpu_ms_per_run": result["cpu_ms_per_run"], "ok": ok}


def part_capacity(witness, workspace, level: int, attempt: int) -> dict:
    result = run_batch(witness, workspace, name=f"capacity {level} {attempt}", size=level, kind="think")
    ok = report_problems(result)
    gaps = result["gaps"]
    figures = {"p50": statistics.median(gaps), "p99": percentile(gaps, 99), "max": max(gaps), "peak": result["peak"],
               "seconds": result["seconds"], "lag_p99": result["lag_p99"], "cpu_ms_per_run": result["cpu_ms_per_run"],
               "ok": ok}
    print(f"   K={level}: witness saw {result['peak']} open at once; gap reply -> next message p50 {figures['p50']:.1f} ms, "
          f"p99 {figures['p99']:.1f} ms, max {figures['max']:.0f} ms (goal p99 <= {GAP_GOAL_P99_MS} ms; n={len(gaps)}); "
          f"all ended {result['seconds']:.1f} s after the request (ideal ~{TURNS} s); witness loop lag p99 "
          f"{figures['lag_p99']:.1f} ms; CPU per run: workers {figures['cpu_ms_per_run']:.1f} ms, whole machine "
          f"{result['machine_ms_per_run']:.1f} ms")
    print(f"      {result['timeline']}")
    print("      gap p50/p99 by exchange: " + ", ".join(
        f"{n}: {statistics.median(gaps):.0f}/{percentile(gaps, 99):.0f} ms"
        for n, gaps in sorted(result["by_exchange"].items(), key=lambda item: int(item[0]))))
    print("      gap n/p99 by second since the first message: " + ", ".join(
        f"{n}s: {len(gaps)}/{percentile(gaps, 99):.0f} ms"
        for n, gaps in sorted(result["by_second"].items(), key=lambda item: int(item[0]))))
    return figures


def part_scaleout(witness, workspace, workers: Workers, attempt: int, size: int) -> dict:
    """The same batch on one worker process pinned to core 0, then with a second node on core 1."""
    rates, machine_ms = [], []
    for nodes in (1, 2):
        workers.stop_all()
        workers.start(processes=1, cores="0")
        if nodes == 2:
            workers.start(processes=1, cores="1")
        warm = run_batch(witness, workspace, name=f"scaleout warm {attempt} {nodes}", size=4, kind="instant")
        report_problems(warm)
        result = run_batch(witness, workspace, name=f"scaleout {attempt} {nodes}", size=size, kind="instant")
        report_problems(result)
        rates.append(size / result["seconds"])
        machine_ms.append(result["machine_ms_per_run"])
    gain = rates[1] / rates[0] - 1
    ceiling = os.cpu_count() * 1000 / machine_ms[1]
    print(f"   scale-out, {size} instant {TURNS}-turn runs: one worker process on core 0 {rates[0]:.0f} runs/s, "
          f"plus a second node on core 1 {rates[1]:.0f} runs/s: the second adds {gain:.0%} (goal >= 80%); the whole "
          f"machine (workers, database, Redis, witness, bench) spent {machine_ms[1]:.1f} CPU-ms per run with both, "
          f"so {os.cpu_count()} cores top out near {ceiling:.0f} runs/s whatever the workers")
    return {"one": rates[0], "two": rates[1], "gain": gain, "machine_ms_per_run": machine_ms[1], "ceiling": ceiling}


# Main -------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="pickup,batch,capacity,scaleout")
    parser.add_argument("--levels", default="200,500,1000", help="simultaneous conversations for the capacity part")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times; prints each and the median")
    parser.add_argument("--worker-processes", type=int, default=2, help="Celery worker processes (make up runs 2)")
    parser.add_argument("--pickup-samples", type=int, default=60)
    parser.add_argument("--scaleout-runs", type=int, default=200)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--serve-witness", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_witness:
        serve_witness(args.serve_witness)
        return
    parts = set(args.parts.split(","))
    levels = [int(level) for level in args.levels.split(",")]

    os.environ.setdefault("EGRESS_ALLOW", "loopback")  # the witness listens on 127.0.0.1
    biggest = max(levels + [args.scaleout_runs, 50])
    os.environ["MAX_PARALLEL_RUNS_PER_WORKSPACE"] = str(min(biggest, 1000))
    with own_world("scale", keep_logs=args.keep_logs) as world:
        from django.conf import settings
        from django.db import connection

        from assure.models import Workspace

        env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        env.update({"REDIS_URL": settings.REDIS_URL, "PYTHONUNBUFFERED": "1"})
        witness = Witness(world.var)
        world.defer(witness.process.stop)
        workers = Workers(world.var, env)
        world.defer(workers.stop_all)
        workspace = Workspace.objects.create(name="Bench", slug="bench", max_parallel_runs=min(biggest, 1000))
        print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
        print(f"database: {connection.vendor}, redis: {'embedded' if world.embedded_redis else 'server'}, "
              f"worker processes: {args.worker_processes}, WORKER_MAX_CONVERSATIONS {settings.WORKER_MAX_CONVERSATIONS}")

        results = []
        if parts - {"scaleout"}:
            workers.start(processes=args.worker_processes, beat=True)
            report_problems(run_batch(witness, workspace, name="warm-up", size=4, kind="instant"))
        for attempt in range(1, args.repeat + 1) if parts - {"scaleout"} else ():
            print(f"\nrepeat {attempt}:", flush=True)
            figures = {}
            if "pickup" in parts:
                figures["pickup"] = part_pickup(witness, workspace, args.pickup_samples, attempt)
            if "batch" in parts:
                figures["batch"] = part_batch(witness, workspace, attempt)
            if "capacity" in parts:
                for level in levels:
                    figures[f"K={level}"] = part_capacity(witness, workspace, level, attempt)
            results.append(figures)
        if "scaleout" in parts:
            results = results or [{} for _ in range(args.repeat)]
            for attempt, figures in enumerate(results, 1):
                figures["scaleout"] = part_scaleout(witness, workspace, workers, attempt, args.scaleout_runs)
        print_medians(results)


def print_medians(results: list[dict]) -> None:
    if len(results) < 2:
        return
    print(f"\nmedians of {len(results)} repeats:")
    for part in results[0]:
        keys = [key for key, value in results[0][part].items() if isinstance(value, (int, float)) and key != "ok"]
        medians = ", ".join(f"{key} {statistics.median(r[part][key] for r in results):.2f}" for key in keys)
        print(f"   {part}: {medians}")


if __name__ == "__main__":
    main()
