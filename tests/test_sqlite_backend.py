"""The embedded SQLite backend queues the writers of every process on a file lock beside the
database: held for exactly as long as a transaction, and never longer than SQLite would wait."""

import contextlib
import fcntl
import os
import threading

import pytest
from django.db import OperationalError
from django.db.utils import ConnectionHandler

from assure.env import database_config


@pytest.fixture
def connections(tmp_path, django_db_blocker):
    """Two connections to a database file of their own, as two processes would have."""
    config = database_config(None, sqlite_path=str(tmp_path / "db.sqlite3"))
    handler = ConnectionHandler({"default": dict(config), "two": dict(config)})
    one, two = handler["default"], handler["two"]
    two.inc_thread_sharing()  # the tests write with it from a thread of their own
    with django_db_blocker.unblock():
        yield one, two
        handler.close_all()


@contextlib.contextmanager
def transaction(connection):
    """What ``transaction.atomic`` does on SQLite, on a connection outside Django's registry."""
    connection.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    try:
        yield
    except BaseException:
        if connection.connection is not None:
            connection.rollback()
        raise
    else:
        connection.commit()
    finally:
        if connection.connection is not None:
            connection.set_autocommit(True)


def lock_is_free(path) -> bool:
    """Whether another process could take the write lock now (a fresh open file, as another process has)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_transaction_holds_the_write_lock_until_it_commits_or_rolls_back(connections):
    one, _ = connections
    lock = f"{one.settings_dict['NAME']}-writelock"
    one.cursor().execute("CREATE TABLE t (x int)")  # outside a transaction: no lock taken
    assert lock_is_free(lock)
    with transaction(one):
        one.cursor().execute("INSERT INTO t VALUES (1)")
        assert not lock_is_free(lock)
    assert lock_is_free(lock)
    with pytest.raises(ZeroDivisionError):
        with transaction(one):
            assert not lock_is_free(lock)
            1 / 0
    assert lock_is_free(lock)
    one.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    assert not lock_is_free(lock)
    one.close()  # a connection closed mid-transaction lets go too
    assert lock_is_free(lock)


def test_a_second_writer_waits_for_the_first_then_goes_on(connections):
    one, two = connections
    one.cursor().execute("CREATE TABLE t (x int)")
    first_in, second_done, order = threading.Event(), threading.Event(), []

    def second():
        with transaction(two):
            order.append("second in")
            two.cursor().execute("INSERT INTO t VALUES (2)")
        two.close()
        second_done.set()

    with transaction(one):
        one.cursor().execute("INSERT INTO t VALUES (1)")
        thread = threading.Thread(target=second)
        thread.start()
        first_in.set()
        assert not second_done.wait(0.2)  # it waits while the first transaction is open
        order.append("first commits")
    assert second_done.wait(10)
    thread.join()
    assert order == ["first commits", "second in"]
    assert sorted(x for (x,) in one.cursor().execute("SELECT x FROM t").fetchall()) == [1, 2]


def test_a_writer_that_cannot_get_the_lock_in_time_fails_as_sqlite_would(connections):
    one, two = connections
    two.settings_dict["OPTIONS"] = {**two.settings_dict["OPTIONS"], "timeout": 0.2}
    one.cursor().execute("CREATE TABLE t (x int)")
    failed = []

    def second():
        try:
            with transaction(two):
                two.cursor().execute("INSERT INTO t VALUES (2)")
        except OperationalError as exc:
            failed.append(str(exc))
        finally:
            two.close()

    with transaction(one):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(30)
    assert failed and "locked" in failed[0]


def test_a_write_outside_a_transaction_takes_its_turn_and_a_read_needs_none(connections):
    one, _ = connections
    lock = f"{one.settings_dict['NAME']}-writelock"
    one.cursor().execute("CREATE TABLE t (x int)")
    one.connection.create_function("lock_free", 0, lambda: int(lock_is_free(lock)))  # seen from inside a statement

    one.cursor().execute("INSERT INTO t VALUES (lock_free())")  # autocommit: one statement's turn
    assert one.cursor().execute("SELECT x, lock_free() FROM t").fetchall() == [(0, 1)]
    assert lock_is_free(lock)
