"""Run-engine benchmarks. Prints figures; asserts nothing.

    .venv/bin/python bench/runs.py [--quick]

Starts its own world in a temporary folder: a fresh database (the embedded SQLite, or the
PostgreSQL in DATABASE_URL — the bench creates and drops its own database there), Redis (the
embedded one, or REDIS_URL), one Celery worker process (concurrency 1, so one conversation host),
and local HTTP targets on 127.0.0.1. Measures:

1. enqueue → materializing latency (p50/p99) with an idle worker, one run at a time;
2. per-run overhead of a 6-turn scripted conversation against an instant target, 50 runs at
   once, as a ratio to a bare loop doing the same 6 HTTP requests per conversation;
3. concurrent conversations one worker process holds against a 1 s think-time target, and the
   latency each turn gains over the 1 s (p50/p99), at several concurrency levels.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def start_targets() -> tuple[int, threading.Thread]:
    """An aiohttp server: /instant answers at once, /think answers after 1 s."""
    from aiohttp import web

    ready = threading.Event()
    holder = {}

    async def instant(request):
        body = await request.json()
        return web.json_response({"reply": f"ok {body.get('message', '')[:20]}"})

    async def think(request):
        body = await request.json()
        await asyncio.sleep(1.0)
        return web.json_response({"reply": f"ok {body.get('message', '')[:20]}"})

    def serve():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/instant", instant)
        app.router.add_post("/think", think)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        loop.run_until_complete(site.start())
        holder["port"] = site._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait()
    return holder["port"], thread


def bare_loop(port: int, conversations: int, turns: int) -> float:
    """Seconds per conversation for a plain http.client loop doing the same requests."""
    start = time.perf_counter()
    for c in range(conversations):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for t in range(turns):
            body = json.dumps({"session": str(c), "text": f"message {t}"})
            conn.request("POST", "/instant", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()
    return (time.perf_counter() - start) / conversations


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller samples, for a smoke run")
    parser.add_argument("--levels", default="100,200,300,500", help="concurrency levels for part 3")
    parser.add_argument("--parts", default="1,2,3", help="which measurements to run")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="worker processes (1: part 3 measures one process; `make up` runs 2)")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="assure-bench-"))
    os.environ["ASSURE_VAR_DIR"] = str(var)
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ["DJANGO_SETTINGS_MODULE"] = "assure.settings"
    pg_url = os.environ.get("DATABASE_URL")
    if pg_url:
        # A database of the bench's own on the given server.
        import psycopg

        parts = urlsplit(pg_url)
        bench_db = f"assure_bench_{os.getpid()}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{bench_db}"')
        os.environ["DATABASE_URL"] = parts._replace(path=f"/{bench_db}").geturl()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from assure.embedded import EmbeddedRedis

    redis_server = None
    if settings.EMBEDDED_REDIS:
        redis_server = EmbeddedRedis(var)
        redis_server.start()
    call_command("migrate", verbosity=0)

    port, _ = start_targets()
    os.environ["REDIS_URL"] = settings.REDIS_URL
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "assure", "worker", "--concurrency", str(args.concurrency), "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--hostname", "bench@%h"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": os.environ.get("DATABASE_URL", "")} if pg_url else dict(os.environ),
        start_new_session=True,
    )
    try:
        time.sleep(4)  # the worker connects
        os.environ["BENCH_CONCURRENCY"] = str(args.concurrency)
        print(f"worker pid {worker.pid}", flush=True)
        run_benchmarks(port, quick=args.quick, levels=[int(x) for x in args.levels.split(",")],
                       parts={int(x) for x in args.parts.split(",")})
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        if redis_server:
            redis_server.stop()
        if pg_url:
            from django.db import connections

            connections.close_all()
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{bench_db}" WITH (FORCE)')


def make_scenario(workspace, *, name, url, paths, script):
    from scenarios.models import Agent, Path, Scenario, Target

    agent = Agent.objects.create(workspace=workspace, name=f"{name} caller", max_duration_seconds=600)
    target = Target.objects.create(workspace=workspace, name=f"{name} bot", channel="chat", kind="http_json", url=url,
                                   request_template={"session": "{{session_id}}", "text": "{{message}}"},
                                   response_path="$.reply")
    scenario = Scenario.objects.create(workspace=workspace, name=name, channel="chat", agent=agent, target=target,
                                       criteria=[{"name": "answers", "kind": "contains", "speaker": "target", "text": "ok"}])
    Path.objects.bulk_create([
        Path(workspace=workspace, scenario=scenario, name=f"{name} {i:04d}", narrative="bench", script=script)
        for i in range(paths)
    ])
    return scenario


def wait_done(run_ids, timeout):
    from runs.models import TERMINAL_STATUSES, Run

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = Run.objects.filter(pk__in=run_ids).exclude(status__in=TERMINAL_STATUSES).count()
        if not left:
            return
        time.sleep(0.02)
    raise SystemExit(f"runs did not finish within {timeout}s")


def run_benchmarks(port: int, *, quick: bool, levels: list[int], parts: set[int]) -> None:
    from assure.models import Workspace

    workspace = Workspace.objects.create(name="Bench", slug="bench", max_parallel_runs=1000)
    instant = f"http://127.0.0.1:{port}/instant"
    print(f"worker processes: {os.environ.get('BENCH_CONCURRENCY', '?')}, database: {settings_vendor()}, redis: {'embedded' if os.environ['REDIS_URL'].startswith('unix') else 'server'}")

    if 1 in parts:
        part_latency(workspace, instant, quick)
    if 2 in parts:
        part_overhead(workspace, instant, port, quick)
    if 3 in parts:
        part_concurrency(workspace, port, quick, levels)


def part_latency(workspace, instant, quick):
    from runs import services
    from runs.models import RunEvent

    n = 20 if quick else 60
    scenario = make_scenario(workspace, name="latency", url=instant, paths=n, script=[{"say": "hi"}, {"end_call": True}])
    delays = []
    for path in scenario.paths.select_related("scenario__agent", "scenario__target"):
        run = services.path_run(path=path)
        wait_done([run.pk], 30)
        events = dict(RunEvent.objects.filter(run=run).values_list("to_stage", "at"))
        delays.append((events["materializing"] - events["queued"]).total_seconds() * 1000)
        time.sleep(0.05)  # idle again
    print(f"\n1. enqueue -> materializing, idle worker, {n} runs one at a time:")
    print(f"   p50 {statistics.median(delays):.1f} ms, p99 {percentile(delays, 99):.1f} ms "
          f"(Celery floor in FLOORS.md: p50 2.0-2.7 ms, p99 4.1-5.0 ms)")



def part_overhead(workspace, instant, port, quick):
    from runs import services
    from runs.models import Run

    turns = 6
    script = [{"say": f"message {i}"} for i in range(turns)] + [{"end_call": True}]
    samples = []
    bare = []
    for attempt in range(2 if quick else 3):
        scenario = make_scenario(workspace, name=f"overhead{attempt}", url=instant, paths=50, script=script)
        start = time.perf_counter()
        batch, runs = services.scenario_run_all(scenario=scenario)
        wait_done([r.pk for r in runs], 120)
        elapsed = time.perf_counter() - start
        completed = Run.objects.filter(batch=batch, status="completed").count()
        samples.append(elapsed)
        bare.append(bare_loop(port, 50, turns))
        assert completed == 50, f"only {completed}/50 completed"
        print(f"   attempt {attempt + 1}: {elapsed:.2f} s; {phase_spread(batch)}")
    per_run = statistics.median(samples) / 50 * 1000
    bare_ms = statistics.median(bare) * 1000
    print(f"\n2. 50 runs of a {turns}-turn scripted conversation (instant target), enqueue -> all completed:")
    print(f"   median batch {statistics.median(samples):.2f} s = {50 / statistics.median(samples):.0f} runs/s, "
          f"{per_run:.1f} ms per run; bare http.client loop {bare_ms:.2f} ms per conversation; "
          f"ratio {per_run / bare_ms:.1f}x (runs overlap, so this is throughput per run, not one run's latency)")



def part_concurrency(workspace, port, quick, levels):
    from django.db.models import Count

    from runs import services
    from runs.models import Run, Turn

    print("\n3. concurrent conversations in one worker process, target thinks 1 s per turn, 3 turns each:")
    for level in levels if not quick else levels[:2]:
        scenario = make_scenario(workspace, name=f"think{level}", url=f"http://127.0.0.1:{port}/think", paths=level,
                                 script=[{"say": "one"}, {"say": "two"}, {"say": "three"}, {"end_call": True}])
        start = time.perf_counter()
        batch, runs = services.scenario_run_all(scenario=scenario)
        wait_done([r.pk for r in runs], 300)
        elapsed = time.perf_counter() - start
        statuses = dict(Run.objects.filter(batch=batch).values_list("status").annotate(Count("id")).order_by())
        added = [lat - 1000 for lat in Turn.objects.filter(run__batch=batch, speaker="target").values_list("latency_ms", flat=True)]
        live_peak = max_live(batch)
        phases = phase_spread(batch)
        print(f"   K={level}: {statuses}, peak live {live_peak}, wall {elapsed:.1f} s (ideal ~3 s), "
              f"added latency per turn p50 {statistics.median(added):.0f} ms, p99 {percentile(added, 99):.0f} ms, "
              f"max {max(added)} ms")
        print(f"      {phases}")


def max_live(batch) -> int:
    from runs.models import RunEvent

    points = []
    for stage, at in RunEvent.objects.filter(run__batch=batch).values_list("to_stage", "at"):
        if stage == "live":
            points.append((at, 1))
        elif stage == "finalizing":
            points.append((at, -1))
    current = peak = 0
    for _, d in sorted(points):
        current += d
        peak = max(peak, current)
    return peak


def phase_spread(batch) -> str:
    """When the batch's runs reached each stage, relative to the first enqueue (seconds)."""
    from django.db.models import Max, Min

    from runs.models import RunEvent

    events = RunEvent.objects.filter(run__batch=batch)
    t0 = events.aggregate(t=Min("at"))["t"]
    parts = []
    for stage in ("materializing", "live", "finalizing", "done"):
        span = events.filter(to_stage=stage).aggregate(first=Min("at"), last=Max("at"))
        if span["first"]:
            parts.append(f"{stage} {(span['first'] - t0).total_seconds():.2f}-{(span['last'] - t0).total_seconds():.2f}")
    return "stages reached (s after enqueue): " + ", ".join(parts)


def settings_vendor() -> str:
    from django.db import connection

    return connection.vendor


if __name__ == "__main__":
    main()
