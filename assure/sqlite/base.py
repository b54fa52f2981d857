"""The embedded SQLite backend: Django's, with the writers of every process queued on a file lock.

SQLite lets one writer in at a time. One that finds the database locked retries in SQLite's busy
handler, which sleeps 1, 2, 5, 10, 15 … ms between tries, however soon the lock is free: with two
worker processes, daphne and beat each writing hundreds of short transactions a second, those
sleeps were most of a write's wait, and a writer that had slept longest kept losing to the ones
that had just arrived. Here a transaction first takes an exclusive ``flock`` on a file beside the
database, tried again every millisecond or less, and starts SQLite's transaction only once it
holds it; it lets go when the transaction ends. Statements written outside a transaction do not
take it: they hold SQLite's lock for one statement, and a transaction waits for them in the busy
handler as before.

Past ``timeout`` (the ``OPTIONS`` one, 30 s here) the transaction starts anyway and SQLite's own
busy timeout decides, so a transaction left open somewhere fails the others as it always did,
instead of holding them forever.
"""

from __future__ import annotations

import fcntl
import os
import time

from django.db.backends.sqlite3 import base

FIRST_RETRY_SECONDS = 0.0001
LONGEST_RETRY_SECONDS = 0.001


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._write_lock_fd: int | None = None
        self._write_lock_held = False

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
            if self._write_lock_fd is not None:
                os.close(self._write_lock_fd)
                self._write_lock_fd = None

    def _take_write_lock(self) -> None:
        if self.is_in_memory_db():
            return
        if self._write_lock_fd is None:
            self._write_lock_fd = os.open(f"{self.settings_dict['NAME']}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + float(self.settings_dict["OPTIONS"].get("timeout", 5))
        retry = FIRST_RETRY_SECONDS
        while True:
            try:
                fcntl.flock(self._write_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # SQLite's own busy timeout decides from here
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
