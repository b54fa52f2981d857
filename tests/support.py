"""Real processes and boundary fakes for end-to-end tests.

- ``CeleryWorker``: a real ``celery worker`` process against the test database and test Redis.
- ``FakeTarget``: a customer's bot on a real local socket (HTTP JSON, or failing on purpose).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """A URL for the test database this process is using, for processes we start."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class CeleryWorker:
    """``celery -A assure worker`` as its own process; ``beat=True`` embeds the beat scheduler."""

    def __init__(self, *, redis_url: str, name: str, env: dict | None = None, beat: bool = False, concurrency: int = 1):
        self.name = name
        self.redis_url = redis_url
        command = [sys.executable, "-m", "celery", "-A", "assure", "worker", "--loglevel", "INFO",
                   "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--without-gossip",
                   "--without-mingle", "--queues", settings.WORKER_QUEUES]
        if beat:
            command += ["--beat", "--schedule", os.path.join(tempfile.mkdtemp(prefix="assure-beat-"), "schedule")]
        full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
        full_env.update({
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "SECRET_KEY": os.environ.get("SECRET_KEY", "insecure-key-for-the-test-suite-only"),
            "PYTHONUNBUFFERED": "1",
            "RUN_HEARTBEAT_SECONDS": "1",
            "RUN_HEARTBEAT_TIMEOUT_SECONDS": "4",
            "RUN_SWEEP_SECONDS": "1",
            # Our fakes listen on 127.0.0.1; a test passes EGRESS_ALLOW="" to see the policy refuse.
            "EGRESS_ALLOW": os.environ.get("EGRESS_ALLOW", "loopback,private"),
            **(env or {}),
        })
        self.log: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
            self.stop()
            raise RuntimeError(f"worker {name} did not start:\n{self.output()}")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.append(line)
            if " ready." in line:
                self.ready.set()

    def output(self) -> str:
        return "".join(self.log[-200:])

    def kill(self) -> None:
        """Kill the worker and its pool processes at once, as a crash or OOM would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        wait_for_group_gone(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        wait_for_group_gone(self.process.pid)


def wait_for_group_gone(pgid: int, timeout: float = 10) -> None:
    """Wait until every process of the group has exited (pool children, daphne's workers): one
    still holding a database session would stop the test database from being dropped."""
    deadline = time.monotonic() + timeout
    while _live_members(pgid):
        if time.monotonic() > deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.05)


def _live_members(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies, already exited, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class FakeTarget:
    """A customer's chat bot over HTTP JSON on 127.0.0.1. ``behaviour`` decides each answer.

    behaviour(message: str, count: int) -> (status, body) — count is this bot's request number, and
    ``requests[count - 1]`` the request itself.
    """

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with target.lock:
                    target.requests.append({"body": body, "raw": raw, "headers": dict(self.headers)})
                    count = len(target.requests)
                status, reply = target.behaviour(body.get("text", body.get("message", "")), count)
                data = json.dumps(reply).encode() if not isinstance(reply, bytes) else reply
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/chat"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    """Poll the database-backed ``predicate`` until it holds (the worker is another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaphneServer:
    """The product's web process (HTTP + websockets) on the test database and test Redis."""

    def __init__(self, *, redis_url: str, env: dict | None = None):
        import socket

        self.port = int((env or {}).get("PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
        full_env.update({
            "DATABASE_URL": database_url(),
            "REDIS_URL": redis_url,
            "SECRET_KEY": os.environ.get("SECRET_KEY", "insecure-key-for-the-test-suite-only"),
            "PYTHONUNBUFFERED": "1",
            # The loopback telephony calls this server back on its own port.
            "PORT": str(self.port),
            # The workers' heartbeat settings: daphne holds calls, and the workers' sweep judges its
            # heartbeats by their timeout (a deployment gives every process the same values).
            "RUN_HEARTBEAT_SECONDS": "1",
            "RUN_HEARTBEAT_TIMEOUT_SECONDS": "4",
            "EGRESS_ALLOW": os.environ.get("EGRESS_ALLOW", "loopback,private"),
            **(env or {}),
        })
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "assure.asgi:application"],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        threading.Thread(target=lambda: [self.log.append(line) for line in self.process.stdout], daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("daphne exited:\n" + "".join(self.log))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("daphne did not start:\n" + "".join(self.log))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        wait_for_group_gone(self.process.pid)

    def kill(self) -> None:
        """Kill the web process at once, as a crash or OOM would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        wait_for_group_gone(self.process.pid)


# Browsers ----------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@contextlib.contextmanager
def chromium():
    """Debian's Chromium driven by Playwright. Without it the test is skipped with how to install
    it, or fails under ``CI=true`` (CI never skips browser tests)."""
    import pytest

    if not os.path.exists(CHROMIUM):
        message = ("Browser tests need Debian's Chromium: `apt-get install chromium chromium-driver` "
                   "(.ci/run installs it).")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, so Django would refuse the
    # tests' own ORM calls (plain synchronous code between browser steps). Allowed only in this
    # process, while the browser is open; the processes under test never see it.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def signed_in_page(browser, *, base_url: str, username: str, password: str):
    """A new browser context's page, signed in through the login form; close its ``context``."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(20000)
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    return page
