"""The embedded SQLite backend: Django's, with the writers of every process queued on a file lock.

SQLite lets one writer in at a time. One that finds the database locked retries in SQLite's busy
handler, which sleeps 1, 2, 5, 10, 15 … ms between tries, however soon the lock is free: with two
worker processes, daphne and beat each writing hundreds of short transactions a second, those
sleeps were most of a write's wait, and a writer that had slept longest kept losing to the ones
that had just arrived. Here every write first takes an exclusive ``flock`` on a file beside the
database, tried again every millisecond or less: a transaction from its start to its end, a
statement written outside a transaction for that statement. Reads outside a transaction take
nothing (WAL lets them run beside a writer).

A write that cannot get the lock within ``timeout`` (the ``OPTIONS`` one, 30 s here) fails with
"database is locked", as SQLite's own lock would have made it fail. Where the lock file cannot be
opened (a read-only directory), writes fall back on SQLite's busy handler alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

from django.db import OperationalError
from django.db.backends.sqlite3 import base

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.0001
LONGEST_RETRY_SECONDS = 0.001
# Statements that only read: outside a transaction they need no turn at the lock.
READ_STATEMENTS = ("SELECT", "EXPLAIN")
NO_LOCK_FILE = -1


class CursorWrapper(base.SQLiteCursorWrapper):
    """Django's cursor, taking the write lock for a write made outside a transaction."""

    database: DatabaseWrapper

    def execute(self, query, params=None):
        with self.database.write_lock_for(query):
            return super().execute(query, params)

    def executemany(self, query, param_list):
        with self.database.write_lock_for(query):
            return super().executemany(query, param_list)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._write_lock_fd: int | None = None
        self._write_lock_pid = 0
        self._write_lock_held = False

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=CursorWrapper)
        cursor.database = self
        return cursor

    def _start_transaction_under_autocommit(self):
        self._take_write_lock()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_write_lock()
            if self._write_lock_fd not in (None, NO_LOCK_FILE):
                os.close(self._write_lock_fd)
            self._write_lock_fd = None

    @contextlib.contextmanager
    def write_lock_for(self, query: str):
        """The write lock around ``query``, if it writes outside a transaction."""
        if (self._write_lock_held or self.connection.in_transaction
                or query.lstrip()[:7].upper().startswith(READ_STATEMENTS)):
            yield
            return
        self._take_write_lock()
        try:
            yield
        finally:
            self._release_write_lock()

    def _lock_file(self) -> int:
        if self._write_lock_fd is not None and self._write_lock_pid != os.getpid():
            # A forked child shares its parent's open file, and so its lock: it opens its own.
            if self._write_lock_fd != NO_LOCK_FILE:
                os.close(self._write_lock_fd)
            self._write_lock_fd, self._write_lock_held = None, False
        if self._write_lock_fd is None:
            path = f"{self.settings_dict['NAME']}-writelock"
            try:
                self._write_lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                try:  # another user's file (web and workers under different users): flock needs no write access
                    self._write_lock_fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    logger.warning("cannot open %s (%s): SQLite's busy handler alone queues the writers", path, exc)
                    self._write_lock_fd = NO_LOCK_FILE
            self._write_lock_pid = os.getpid()
        return self._write_lock_fd

    def _take_write_lock(self) -> None:
        if self.is_in_memory_db() or self._write_lock_held:
            return
        fd = self._lock_file()
        if fd == NO_LOCK_FILE:
            return
        timeout = float(self.settings_dict["OPTIONS"].get("timeout", 5))
        deadline = time.monotonic() + timeout
        retry = FIRST_RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OperationalError(f"database is locked (no turn to write within {timeout:g} s)") from None
                time.sleep(retry)
                retry = min(retry * 2, LONGEST_RETRY_SECONDS)
                continue
            self._write_lock_held = True
            return

    def _release_write_lock(self) -> None:
        if self._write_lock_held:
            self._write_lock_held = False
            fcntl.flock(self._write_lock_fd, fcntl.LOCK_UN)


class DatabaseCreation(base.DatabaseCreation):
    def _destroy_test_db(self, test_database_name, verbosity):
        super()._destroy_test_db(test_database_name, verbosity)
        if test_database_name and not self.is_in_memory_db(test_database_name):
            # The files SQLite (the WAL and its index) and the write lock keep beside a database.
            for suffix in ("-wal", "-shm", "-writelock"):
                try:
                    os.remove(f"{test_database_name}{suffix}")
                except FileNotFoundError:
                    pass


DatabaseWrapper.creation_class = DatabaseCreation
