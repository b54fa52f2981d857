"""List pages and APIs with many stored runs, timed over real HTTP. Prints figures; asserts nothing.

    .venv/bin/python bench/pages.py [--runs 100000] [--requests 50] [--deep 25000]
    DATABASE_URL=postgres://…/postgres REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python bench/pages.py

Figures and how to read them: bench/README.md, "Pages with many runs".

Starts its own world in a temporary folder, as ``make up`` runs the product: a fresh database (the
embedded SQLite, or a database of its own on the PostgreSQL in DATABASE_URL, dropped at the end),
Redis (the embedded one, or REDIS_URL, emptied afterwards if it was empty before) and the product's
daphne. No worker: nothing runs, the pages only read.

Seeds one workspace with ``--runs`` runs in bulk, laid out as months of use would leave them:
several scenarios and their paths, "Run all paths" batches (one of them large), a few single runs;
nearly all finished (completed with a verdict, some failed with a reason, some cancelled), finish
times spread over eight weeks, the newest still running or queued. Every run carries the snapshot
the product takes of its path. Some runs have a full record (12 turns, tool calls, criteria results
with an LLM judge's prompt and answer, the run's events) for the run pages measured.

Then measures, from this process (the client: it sees what a browser or the CLI sees), each URL
``--requests`` times after a warm-up, one request at a time on one kept-alive connection: p50, p95
and p99 next to the goal (p95 <= 150 ms with 100,000 runs). Pages use a signed-in member's session
cookie, the API an API token. Deep pages are reached the way a user reaches them: by following the
pages' own "Older" links (the results feed) and the API's ``next`` links, ``--deep`` runs down; the
time of every page on that walk is printed too. The API is also asked for a deep page by ``offset``,
as the CLI pages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.voice import Process, free_port, listening, machine, percentile  # noqa: E402
from bench.world import own_world  # noqa: E402

GOAL_P95_MS = 150
SEED_CHUNK = 2000
WEEKS = 8
# Scenarios × paths: the seeded workspace's catalogue. The last one is the large regression suite
# whose one big batch (LARGE_REPEAT runs of each path) stands for a heavy "Run all paths".
SCENARIOS = [("Booking", 8), ("Cancellation", 6), ("Opening hours", 4), ("Billing dispute", 10),
             ("Address change", 5), ("Refund", 7), ("Escalation", 6), ("Order status", 9),
             ("Appointment reschedule", 8), ("Password reset", 5), ("Complaint", 12), ("Regression suite", 48)]
LARGE_REPEAT = 50
# Of the finished runs: completed with each verdict, or not (failed: the platform could not test).
OUTCOMES = [(("completed", "passed"), 66), (("completed", "failed"), 18), (("completed", "inconclusive"), 4),
            (("failed", None), 8), (("cancelled", None), 4)]
FAILURE_REASONS = ["target_unreachable", "duration_cap_no_progress", "error", "tool_sync_pending"]
PATH_SCRIPT = [{"say": "Hi, I'd like to book a table for two tonight."}, {"expect": "(?i)what time"},
               {"say": "Around eight, please."}, {"expect": "(?i)(booked|confirmed)"},
               {"say": "Thank you, that's all."}, {"end_call": True}]
SCENARIO_CRITERIA = [
    {"name": "confirms the booking", "kind": "contains", "speaker": "target", "text": "booked"},
    {"name": "fast replies", "kind": "max_latency_ms", "percentile": "p90", "ms": 1500},
    {"name": "polite and accurate", "kind": "llm_judge",
     "rule": "The agent is polite, confirms the date, time and party size, and never invents availability."},
]


# Seeding ----------------------------------------------------------------------------------------

def seed(args) -> dict:
    """One workspace with ``args.runs`` runs; returns what the URLs need (ids, the session, the key)."""
    from django.db import connection
    from django.test import Client

    from assure.models import Membership, Workspace
    from assure.services import api_token_create
    from django.contrib.auth import get_user_model
    from runs.services import snapshot_of
    from scenarios.models import Agent, Path as ScenarioPath, Scenario, Target

    rng = random.Random(7)
    started = time.monotonic()
    workspace = Workspace.objects.create(name="Bench", slug="bench", max_parallel_runs=args.running)
    user = get_user_model().objects.create_user("bench", password="bench-password-not-used")
    Membership.objects.create(workspace=workspace, user=user, role="owner")
    agent = Agent.objects.create(workspace=workspace, name="Polite caller", max_duration_seconds=300,
                                 instructions="You are a customer calling a restaurant. " * 8)
    target = Target.objects.create(workspace=workspace, name="Booking bot", channel="chat", kind="http_json",
                                   url="https://bot.example.com/chat", response_path="$.reply",
                                   request_template={"session": "{{session_id}}", "text": "{{message}}"})
    paths_of = {}
    for name, count in SCENARIOS:
        scenario = Scenario.objects.create(workspace=workspace, name=name, channel="chat", agent=agent, target=target,
                                           description=f"{name}: what the agent must get right. " * 4,
                                           criteria=SCENARIO_CRITERIA)
        paths_of[scenario] = ScenarioPath.objects.bulk_create([
            ScenarioPath(workspace=workspace, scenario=scenario, name=f"{name} {i + 1:02d}", script=PATH_SCRIPT,
                         narrative="A regular who knows what they want and says so briefly. " * 3)
            for i in range(count)
        ])
    snapshots = {path.pk: snapshot_of(path) for paths in paths_of.values() for path in paths}

    plan = _plan(rng, paths_of, args)
    _insert_runs(workspace, plan, snapshots, rng)
    detailed = _insert_records(rng, plan, args.detailed)
    seconds = time.monotonic() - started
    with connection.cursor() as cursor:  # what autovacuum does to a table soon after a bulk load
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
    analyzed = time.monotonic() - started - seconds

    client = Client()
    client.force_login(user)
    _, key = api_token_create(workspace=workspace, name="bench")
    large = max(plan["batches"], key=lambda batch: batch["size"])
    ordinary = plan["batches"][len(plan["batches"]) // 2]
    some_path = paths_of[next(iter(paths_of))][0]
    return {
        "workspace": workspace, "session": client.cookies["sessionid"].value, "key": key,
        "scenario": next(iter(paths_of)).pk, "path": some_path.pk,
        "batch": ordinary["id"], "large_batch": large["id"], "large_batch_size": large["size"],
        "detailed_run": detailed, "seconds": seconds, "analyze_seconds": analyzed, "counts": plan["counts"],
    }


def _plan(rng, paths_of, args) -> dict:
    """Each run's scenario, path, batch, status, verdict and times, oldest first, as plain tuples."""
    from uuid import uuid4

    scenarios = list(paths_of)
    now = datetime.now(timezone.utc)
    runs, batches = [], []
    outcomes = [outcome for outcome, weight in OUTCOMES for _ in range(weight)]
    large_scenario = scenarios[-1]
    large_size = len(paths_of[large_scenario]) * LARGE_REPEAT
    large_at = rng.randrange(args.runs // 4, args.runs // 2)
    while len(runs) < args.runs:
        if large_at is not None and len(runs) >= large_at:
            scenario, repeat, large_at = large_scenario, LARGE_REPEAT, None
        else:
            scenario, repeat = rng.choice(scenarios[:-1]), rng.choice([1, 1, 1, 2, 3])
        paths = paths_of[scenario]
        if rng.random() < 0.1:  # a single path run, no batch
            batch, group = None, [rng.choice(paths)]
        else:
            batch = {"id": uuid4(), "scenario": scenario.pk, "size": 0}
            batches.append(batch)
            group = [path for _ in range(repeat) for path in paths]
        for path in group:
            if len(runs) == args.runs:
                break
            runs.append({"id": uuid4(), "scenario": scenario.pk, "path": path.pk,
                         "batch": batch["id"] if batch else None})
            if batch:
                batch["size"] += 1
    # Oldest first, over the weeks; a batch's runs start a few seconds apart.
    span = timedelta(weeks=WEEKS).total_seconds()
    finished = len(runs) - args.pending - args.running
    counts = {}
    for index, run in enumerate(runs):
        created = now - timedelta(seconds=span * (1 - index / len(runs))) - timedelta(minutes=5)
        run["created_at"] = created
        if index >= finished + args.running:
            run.update(status="pending", stage="queued", verdict=None, ended_at=None, started_at=None)
            run["created_at"] = now - timedelta(seconds=(len(runs) - index) * 0.01)
        elif index >= finished:
            run.update(status="running", stage="live", verdict=None, ended_at=None,
                       started_at=now - timedelta(seconds=rng.uniform(1, 60)))
            run["created_at"] = run["started_at"] - timedelta(seconds=1)
        else:
            status, verdict = rng.choice(outcomes)
            run.update(status=status, stage="done", verdict=verdict, started_at=created + timedelta(seconds=1),
                       ended_at=created + timedelta(seconds=rng.uniform(10, 180)))
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    return {"runs": runs, "batches": batches, "counts": counts}


def _insert_runs(workspace, plan, snapshots, rng) -> None:
    from django.db import transaction

    from runs.models import Batch, Run

    batches = {b["id"]: Batch(id=b["id"], workspace=workspace, scenario_id=b["scenario"],
                              repeat=LARGE_REPEAT if b["size"] > 200 else 1) for b in plan["batches"]}
    first, last, unfinished = {}, {}, set()
    for run in plan["runs"]:
        if run["batch"]:
            first.setdefault(run["batch"], run["created_at"])
            if run["ended_at"] is None:
                unfinished.add(run["batch"])
            else:
                last[run["batch"]] = max(last.get(run["batch"], run["ended_at"]), run["ended_at"])
    with transaction.atomic():
        Batch.objects.bulk_create(batches.values(), batch_size=SEED_CHUNK)
        for start in range(0, len(plan["runs"]), SEED_CHUNK):
            chunk = plan["runs"][start:start + SEED_CHUNK]
            Run.objects.bulk_create([_run(workspace, run, snapshots, rng) for run in chunk], batch_size=SEED_CHUNK)
        # Batch.created_at is auto_now_add, so the seeded times go in afterwards, with finished_at
        # of the batches whose runs all ended.
        for batch_id, batch in batches.items():
            batch.created_at = first[batch_id]
            batch.finished_at = None if batch_id in unfinished else last.get(batch_id)
        Batch.objects.bulk_update(batches.values(), ["created_at", "finished_at"], batch_size=500)


def _run(workspace, run: dict, snapshots: dict, rng):
    from runs.models import Run

    status = run["status"]
    fields = dict(id=run["id"], workspace=workspace, scenario_id=run["scenario"], path_id=run["path"],
                  batch_id=run["batch"], status=status, stage=run["stage"], verdict=run["verdict"],
                  snapshot=snapshots[run["path"]], created_at=run["created_at"], started_at=run["started_at"],
                  ended_at=run["ended_at"], persona="You are Sam, calling to book a table for two at eight.")
    if status == "failed":
        fields.update(failure_reason=rng.choice(FAILURE_REASONS), failure_detail="The target did not answer in 10 s.")
    if status == "running":
        fields.update(admitted_at=run["created_at"], heartbeat_at=run["started_at"], worker="bench@host:1")
    if status == "completed":
        latencies = sorted(rng.randint(300, 1800) for _ in range(6))
        fields["metrics"] = {"turns": 12, "duration_ms": rng.randint(20_000, 90_000), "latency_ms_p50": latencies[2],
                             "latency_ms_p90": latencies[5], "latency_ms_max": latencies[5],
                             "tokens": {"caller": {"prompt": 2400, "completion": 180},
                                        "judge": {"prompt": 1900, "completion": 90}}}
    return Run(**fields)


def _insert_records(rng, plan: dict, how_many: int):
    """Turns, tool calls, criteria results and events for ``how_many`` completed runs; returns the
    id of one of them (the run page measured)."""
    from django.db import transaction

    from runs.models import CriterionResult, Run, RunEvent, ToolInvocation, Turn

    completed = [run for run in plan["runs"] if run["status"] == "completed"]
    chosen = rng.sample(completed, min(how_many, len(completed)))
    turns, tools, criteria, events = [], [], [], []
    for run in chosen:
        for seq in range(1, 13):
            speaker = "caller" if seq % 2 else "target"
            latency = None if speaker == "caller" else rng.randint(300, 1800)
            turns.append(Turn(run_id=run["id"], seq=seq, speaker=speaker, started_ms=seq * 4000,
                              ended_ms=seq * 4000 + 2500, latency_ms=latency,
                              text=("Could you book a table for two at eight tonight, please? " if speaker == "caller"
                                    else "Certainly. Let me check what we have at eight for two people. ") * 2))
        tools.append(ToolInvocation(run_id=run["id"], seq=1, name="lookup_booking", arguments={"date": "today"},
                                    result={"available": ["19:30", "20:00"]}, at_ms=9000, duration_ms=120))
        tools.append(ToolInvocation(run_id=run["id"], seq=2, name="end_call", arguments={}, at_ms=48_000))
        for position, criterion in enumerate(SCENARIO_CRITERIA):
            judge = criterion["kind"] == "llm_judge"
            criteria.append(CriterionResult(
                run_id=run["id"], position=position, name=criterion["name"], kind=criterion["kind"],
                outcome="passed" if run["verdict"] == "passed" else rng.choice(["passed", "failed"]),
                rationale="The agent confirmed the booking for two at eight in turn 6.", evidence=[4, 6],
                judge_prompt=("You judge a phone conversation. " * 60) if judge else "",
                judge_answer=json.dumps({"verdict": "pass", "rationale": "Polite and accurate.", "turns": [4, 6]})
                if judge else ""))
        at = run["created_at"]
        for to_status, to_stage, offset in [("pending", "queued", 0), ("running", "materializing", 0.5),
                                            ("running", "live", 1), ("running", "finalizing", 50),
                                            ("completed", "done", 51)]:
            events.append(RunEvent(run_id=run["id"], at=at + timedelta(seconds=offset), to_status=to_status,
                                   to_stage=to_stage))
    with transaction.atomic():
        for model, rows in ((Turn, turns), (ToolInvocation, tools), (CriterionResult, criteria), (RunEvent, events)):
            model.objects.bulk_create(rows, batch_size=SEED_CHUNK)
    return chosen[0]["id"] if chosen else Run.objects.filter(status="completed").values_list("id", flat=True).first()


# The client -------------------------------------------------------------------------------------

class Browser:
    """One kept-alive HTTP connection to daphne, as a browser tab or the CLI holds one."""

    def __init__(self, port: int, headers: dict):
        self.port, self.headers = port, headers
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, url: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        try:
            self.connection.request("GET", url, headers=self.headers)
            response = self.connection.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError):  # daphne closed an idle connection: reconnect once
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            started = time.perf_counter()
            self.connection.request("GET", url, headers=self.headers)
            response = self.connection.getresponse()
            body = response.read()
        return response.status, body, (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.connection.close()


OLDER_LINK = re.compile(r'<a\b[^>]*href="([^"]*)"[^>]*>\s*Older\b')


def older_link(base: str, body: bytes) -> str | None:
    """The results feed's "Older" link, as a browser would follow it."""
    from urllib.parse import urljoin

    found = OLDER_LINK.search(body.decode("utf-8", "replace"))
    return urljoin(base, unescape(found.group(1))) if found else None


def next_link(base: str, body: bytes) -> str | None:
    """The API's ``next`` link, on this server."""
    link = json.loads(body).get("next")
    if not link:
        return None
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def walk(browser: Browser, url: str, pages: int, follow) -> tuple[str, list[float], int]:
    """Follow ``follow`` links from ``url`` up to ``pages`` times; the last page reached, the time of
    every page on the way, and how many pages down it is."""
    times, depth = [], 0
    while True:
        status, body, ms = browser.get(url)
        if status != 200:
            raise SystemExit(f"walking {url}: HTTP {status}: {body[:300]!r}")
        times.append(ms)
        further = follow(url, body) if depth < pages else None
        if not further:
            return url, times, depth
        url, depth = further, depth + 1


def measure(browser: Browser, url: str, *, requests: int, warmup: int) -> dict:
    for _ in range(warmup):
        browser.get(url)
    times, statuses, size = [], set(), 0
    for _ in range(requests):
        status, body, ms = browser.get(url)
        times.append(ms)
        statuses.add(status)
        size = len(body)
    return {"times": times, "statuses": statuses, "size": size}


def line(label: str, times: list[float], *, note: str = "", over: list | None = None) -> None:
    p50, p95, p99 = (percentile(times, p) for p in (50, 95, 99))
    verdict = "ok" if p95 <= GOAL_P95_MS else "OVER"
    if over is not None and p95 > GOAL_P95_MS:
        over.append((label, p95))
    print(f"   {label:<60} p50 {p50:7.1f}  p95 {p95:7.1f}  p99 {p99:7.1f} ms   goal p95 <= {GOAL_P95_MS} ms: "
          f"{p95 / GOAL_P95_MS:4.2f}x {verdict}{note}", flush=True)


def urls(world: dict, args) -> tuple[list, list]:
    """(label, URL) of the pages (session) and of the API (token)."""
    scenario, path, batch, large = world["scenario"], world["path"], world["batch"], world["large_batch"]
    pages = [
        ("queue page /queue/", "/queue/"),
        ("results feed /results/", "/results/"),
        ("results ?scenario=", f"/results/?{urlencode({'scenario': scenario})}"),
        ("results ?verdict=failed", "/results/?verdict=failed"),
        ("results ?verdict=inconclusive", "/results/?verdict=inconclusive"),
        ("results ?status=failed", "/results/?status=failed"),
        ("results ?status=cancelled&verdict=passed (none)", "/results/?status=cancelled&verdict=passed"),
        ("run page /runs/<id>/ (12 turns, 3 criteria)", f"/runs/{world['detailed_run']}/"),
    ]
    api = [
        ("API /api/v1/runs/", "/api/v1/runs/"),
        (f"API /api/v1/runs/?offset={args.deep}", f"/api/v1/runs/?offset={args.deep}"),
        (f"API ?limit=500&offset={args.deep} (the CLI's page)", f"/api/v1/runs/?limit=500&offset={args.deep}"),
        ("API ?status=running", "/api/v1/runs/?status=running"),
        ("API ?status=pending", "/api/v1/runs/?status=pending"),
        ("API ?status=failed", "/api/v1/runs/?status=failed"),
        (f"API ?status=completed&offset={args.deep}", f"/api/v1/runs/?status=completed&offset={args.deep}"),
        ("API ?scenario=", f"/api/v1/runs/?scenario={scenario}"),
        ("API ?scenario=&offset=5000", f"/api/v1/runs/?scenario={scenario}&offset=5000"),
        ("API ?path=", f"/api/v1/runs/?path={path}"),
        ("API ?batch= (a batch of a few runs)", f"/api/v1/runs/?batch={batch}"),
        (f"API ?batch= ({world['large_batch_size']} runs)", f"/api/v1/runs/?batch={large}"),
        (f"API ?batch=&limit=500&offset=2000 ({world['large_batch_size']} runs)",
         f"/api/v1/runs/?batch={large}&limit=500&offset=2000"),
        ("API /api/v1/runs/<id>/", f"/api/v1/runs/{world['detailed_run']}/"),
        ("API /api/v1/queue/", "/api/v1/queue/"),
    ]
    for extra in args.url:
        (api if extra.startswith("/api/") else pages).append((extra, extra))
    return pages, api


def run_measurements(port: int, world: dict, args) -> None:
    page_browser = Browser(port, {"Cookie": f"sessionid={world['session']}", "Accept": "text/html"})
    api_browser = Browser(port, {"Authorization": f"Token {world['key']}", "Accept": "application/json"})
    pages, api = urls(world, args)
    over: list[tuple[str, float]] = []
    try:
        print(f"\n{args.requests} requests per URL after {args.warmup} warm-up, one at a time (ms):")
        for browser, group in ((page_browser, pages), (api_browser, api)):
            for label, url in group:
                figures = measure(browser, url, requests=args.requests, warmup=args.warmup)
                bad = figures["statuses"] - {200}
                line(label, figures["times"], over=over,
                     note=f"   [{figures['size'] / 1024:.0f} KB]" + (f"  ! HTTP {sorted(bad)}" if bad else ""))
        if args.deep:
            walks = [
                (page_browser, "results", "/results/", 50, older_link),
                (page_browser, "results ?verdict=failed", "/results/?verdict=failed", 50, older_link),
                (page_browser, "results ?scenario=", f"/results/?{urlencode({'scenario': world['scenario']})}", 50,
                 older_link),
                (page_browser, "results ?status=failed", "/results/?status=failed", 50, older_link),
                (api_browser, "API runs", "/api/v1/runs/", 50, next_link),
                (api_browser, "API runs ?status=completed", "/api/v1/runs/?status=completed", 50, next_link),
                (api_browser, "API runs ?scenario=", f"/api/v1/runs/?scenario={world['scenario']}", 50, next_link),
                (api_browser, f"API runs ?batch= ({world['large_batch_size']} runs)",
                 f"/api/v1/runs/?batch={world['large_batch']}", 50, next_link),
            ]
            print(f"\ndeep pages, reached by following the pages' own links up to {args.deep} runs down "
                  f"(\"Older\" on the results feed, \"next\" in the API); first the walk, then the page it reached:")
            for browser, label, url, per_page, follow in walks:
                deepest, times, depth = walk(browser, url, args.deep // per_page, follow)
                line(f"{label}: every page of the walk (1..{depth + 1})", times, over=over)
                figures = measure(browser, deepest, requests=args.requests, warmup=args.warmup)
                line(f"{label}: page {depth + 1} ({depth * per_page} runs down)", figures["times"], over=over,
                     note="" if figures["statuses"] == {200} else f"  ! HTTP {sorted(figures['statuses'])}")
        print(f"\n{len(over)} over the goal (p95 <= {GOAL_P95_MS} ms)" +
              "".join(f"\n   {label}: p95 {p95:.0f} ms" for label, p95 in over))
    finally:
        page_browser.close()
        api_browser.close()


# Setup and teardown -----------------------------------------------------------------------------

def start_daphne(var: Path, redis_url: str) -> tuple[Process, int]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    # The throttle (600 requests/min per token) would answer 429 to a bench that asks faster.
    env.update({"REDIS_URL": redis_url, "PORT": str(port), "PYTHONUNBUFFERED": "1", "API_THROTTLE_RATE": "off"})
    daphne = Process("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                "assure.asgi:application"], env=env, var=var)

    try:
        daphne.wait_until(lambda: listening(port), "listening")
    except BaseException:
        daphne.stop()
        raise
    return daphne, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs stored in the workspace")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per URL")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per URL first")
    parser.add_argument("--deep", type=int, default=25_000,
                        help="how far down the deep pages are, in runs (the old feed's page 500); 0: no walks")
    parser.add_argument("--pending", type=int, default=500, help="queued runs among them (the newest)")
    parser.add_argument("--running", type=int, default=20, help="running runs among them")
    parser.add_argument("--detailed", type=int, default=2000,
                        help="completed runs given turns, tool calls, criteria results and events")
    parser.add_argument("--url", action="append", default=[], help="another URL to time (/api/… with the token)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with daphne's log")
    args = parser.parse_args()

    os.environ["API_THROTTLE_RATE"] = "off"
    with own_world("pages", keep_logs=args.keep_logs) as bench_world:
        from django.conf import settings
        from django.db import connection

        print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
        print(f"database: {connection.vendor}, redis: {'embedded' if bench_world.embedded_redis else 'server'}; one daphne")
        world = seed(args)
        counts = ", ".join(f"{status} {n}" for status, n in sorted(world["counts"].items()))
        print(f"seeded {args.runs} runs ({counts}) over {WEEKS} weeks, {args.detailed} with full records, in "
              f"{world['seconds']:.1f} s" + (f" (+ VACUUM ANALYZE {world['analyze_seconds']:.1f} s)"
                                              if connection.vendor == "postgresql" else ""), flush=True)
        connection.close()  # the bench's own connection must not hold SQLite's WAL or a PG session

        daphne, port = start_daphne(bench_world.var, settings.REDIS_URL)
        bench_world.defer(daphne.stop)
        run_measurements(port, world, args)


if __name__ == "__main__":
    main()
