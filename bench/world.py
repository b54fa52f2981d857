"""The world every benchmark starts in, and the cleanup every one of them owes.

A temporary folder for the product's state; the embedded SQLite and Redis, or a database of the
bench's own on the PostgreSQL in ``DATABASE_URL`` (created, then dropped with FORCE) and the Redis
database in ``REDIS_URL`` (emptied afterwards if it was empty before); Django set up and migrated.
What a bench starts inside it (processes, servers) it hands to ``World.defer``: on the way out, also
on Ctrl-C or SIGTERM, those stop first, newest first, then the world itself goes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def interrupted(signum, frame):
    raise KeyboardInterrupt


@dataclass
class World:
    var: Path
    embedded_redis: bool
    cleanups: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def defer(self, stop: Callable[[], object]) -> None:
        """Call ``stop`` on the way out, before the database and Redis go."""
        self.cleanups.callback(stop)


@contextlib.contextmanager
def own_world(name: str, *, keep_logs: bool = False) -> Iterator[World]:
    """Environment variables the bench needs (caps, egress) must be set before entering."""
    signal.signal(signal.SIGTERM, interrupted)
    var = Path(tempfile.mkdtemp(prefix=f"assure-bench-{name}-"))
    os.environ["ASSURE_VAR_DIR"] = str(var)
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    if not os.environ.get("ASSURE_SECRET_KEYS"):  # the bench's own database: a key of its own
        from cryptography.fernet import Fernet

        os.environ["ASSURE_SECRET_KEYS"] = Fernet.generate_key().decode()
    os.environ["DJANGO_SETTINGS_MODULE"] = "assure.settings"
    pg_url = os.environ.get("DATABASE_URL")
    bench_db = redis_server = redis_db = world = None
    try:
        if pg_url:
            import psycopg

            bench_db = f"assure_bench_{name}_{os.getpid()}"
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{bench_db}"')
            os.environ["DATABASE_URL"] = urlsplit(pg_url)._replace(path=f"/{bench_db}").geturl()

        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from assure.embedded import EmbeddedRedis

        if settings.EMBEDDED_REDIS:
            redis_server = EmbeddedRedis(var)
            redis_server.start()
        else:
            import redis

            redis_db = redis.Redis.from_url(settings.REDIS_URL)
            if redis_db.dbsize():
                redis_db = None  # not ours to empty afterwards
                print("warning: the Redis database in REDIS_URL is not empty; another process's Celery worker "
                      "there would take this bench's tasks, and this bench will not empty it", flush=True)
        call_command("migrate", verbosity=0)
        world = World(var=var, embedded_redis=settings.EMBEDDED_REDIS)
        yield world
    finally:
        # A second Ctrl-C (or timeout's TERM to the whole group) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if world is not None:
            world.cleanups.close()
        if redis_server is not None:
            redis_server.stop()
        if redis_db is not None:
            redis_db.flushdb()  # it was empty: what is there now is this bench's queues and groups
        if bench_db:  # FORCE: whatever still holds a connection to it (this process too) is cut off
            from django.db import connections

            connections.close_all()
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{bench_db}" WITH (FORCE)')
        if keep_logs:
            print(f"logs kept in {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)
