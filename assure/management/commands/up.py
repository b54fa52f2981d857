"""Run the whole product in the foreground: daphne, a Celery worker and beat (and, on the
embedded default, the embedded Redis and the demo workspace). Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from assure.embedded import EmbeddedRedis, EmbeddedRedisError


class Command(BaseCommand):
    help = "Migrate, seed the demo (embedded default), and run daphne + Celery worker + beat until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes.")
        parser.add_argument("--no-demo", action="store_true", help="Do not seed the demo workspace.")

    def handle(self, *args, host, port, concurrency, no_demo, **options):
        self.stopping = False
        self._check_port_free(host, port)
        self.stdout.write("Applying migrations…")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        demo = settings.EMBEDDED_DATABASE and not no_demo
        if demo:
            call_command("seed_demo", verbosity=0)

        redis_server = EmbeddedRedis(settings.VAR_DIR) if settings.EMBEDDED_REDIS else None
        children: dict[str, subprocess.Popen] = {}
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        exit_code = 0
        try:
            if redis_server is not None:
                self.stdout.write(f"Starting the embedded Redis on {redis_server.socket}…")
                try:
                    redis_server.start()
                except EmbeddedRedisError as exc:
                    raise CommandError(str(exc)) from None
            python = sys.executable
            # Every process agrees on where the web server and the loopback telephony listen.
            os.environ["PORT"] = str(port)
            os.environ.setdefault("LOOPBACK_TELEPHONY_PORT", str(port + 10))
            commands = {
                "web": [python, "-m", "daphne", "-b", host, "-p", str(port), "assure.asgi:application"],
                "worker": [python, "-m", "celery", "-A", "assure", "worker", "--loglevel", "INFO",
                           "--concurrency", str(concurrency), "--hostname", f"worker-{os.getpid()}@%h",
                           "--queues", settings.WORKER_QUEUES],
                "beat": [python, "-m", "celery", "-A", "assure", "beat", "--loglevel", "INFO",
                         "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME],
                # The local Twilio emulator: loopback numbers (the demo's) call through it.
                "telephony": [python, "manage.py", "loopback_telephony"],
            }
            # Workers reach the built-in demo target on this web server.
            os.environ.setdefault("DEMO_TARGET_URL", f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/demo-target/chat/")
            for name, command in commands.items():
                # Own sessions: Ctrl-C reaches only this launcher, which stops the children in
                # order and the Redis they depend on last.
                children[name] = subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True)
            self._wait_for_web(host, port, children)
            if not self.stopping:
                self._banner(host, port, demo)
            while not self.stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(f"The {name} process exited with code {child.returncode}; stopping everything.")
                        self.stopping = True
                        exit_code = 1
                        break
                else:
                    time.sleep(0.2)
        finally:
            self.stdout.write("Stopping…")
            self._stop_children(children)
            if redis_server is not None:
                redis_server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stdout.write("Stopped.")
        if exit_code:
            raise CommandError("a process of the product exited unexpectedly (see its output above)")

    def _request_stop(self, signum, frame):
        self.stopping = True

    def _check_port_free(self, host: str, port: int) -> None:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise CommandError(
                    f"cannot listen on {host}:{port} ({exc.strerror}). Is another `make up` running? "
                    f"Use another port with PORT={port + 1} make up."
                ) from None

    def _wait_for_web(self, host: str, port: int, children: dict[str, subprocess.Popen], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.stopping and time.monotonic() < deadline:
            if children["web"].poll() is not None:
                return  # the monitoring loop reports it
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        if not self.stopping:
            self.stderr.write(f"The web server did not start listening on {host}:{port} within {timeout:.0f}s.")

    def _banner(self, host: str, port: int, demo: bool) -> None:
        shown_host = f"[{host}]" if ":" in host else host
        lines = ["", f"AssureAgent is up: http://{shown_host}:{port}/"]
        if demo:
            lines.append("Sign in as demo / demo (workspace 'demo'); the admin is at /admin/.")
        lines += ["Press Ctrl-C to stop.", ""]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()

    def _stop_children(self, children: dict[str, subprocess.Popen], timeout: float = 20) -> None:
        # Web first (no new work accepted), then beat, then the worker, which finishes what it runs.
        for name in ("web", "beat", "worker", "telephony"):
            child = children.get(name)
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"The {name} process did not stop within {timeout:.0f}s; killing it.")
                child.kill()
                child.wait()
