"""Settings fail at start-up with a message that names the variable and what it expected."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from assure.env import database_config, env_bool, env_int, env_list, env_str, env_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("YES", True), ("off", False), ("0", False)])
def test_env_bool_reads_the_usual_spellings(raw, expected):
    assert env_bool("X", not expected, environ={"X": raw}) is expected


def test_env_bool_rejects_anything_else():
    with pytest.raises(ImproperlyConfigured, match=r"X must be one of true/false.*'maybe'"):
        env_bool("X", False, environ={"X": "maybe"})


def test_env_int_checks_type_and_range():
    assert env_int("N", 5, environ={}) == 5
    assert env_int("N", 5, environ={"N": " 12 "}) == 12
    with pytest.raises(ImproperlyConfigured, match="N must be a whole number, got 'ten'"):
        env_int("N", 5, environ={"N": "ten"})
    with pytest.raises(ImproperlyConfigured, match="N must be at least 1, got 0"):
        env_int("N", 5, minimum=1, environ={"N": "0"})
    with pytest.raises(ImproperlyConfigured, match="N must be at most 10, got 11"):
        env_int("N", 5, maximum=10, environ={"N": "11"})


def test_env_list_and_str():
    assert env_list("H", ["a"], environ={}) == ["a"]
    assert env_list("H", ["a"], environ={"H": "x.com, y.com,,"}) == ["x.com", "y.com"]
    assert env_str("S", "d", environ={"S": ""}) == "d"


def test_env_url_checks_scheme_and_host():
    assert env_url("U", schemes=("redis",), environ={}) is None
    assert env_url("U", schemes=("redis",), environ={"U": "redis://h:6379/0"}) == "redis://h:6379/0"
    with pytest.raises(ImproperlyConfigured, match=r"U must be a URL starting with redis://.*'http://h'"):
        env_url("U", schemes=("redis",), environ={"U": "http://h"})
    with pytest.raises(ImproperlyConfigured, match="U has no host name"):
        env_url("U", schemes=("redis",), environ={"U": "redis:///0"})


def test_database_config_embedded_sqlite_is_wal_with_busy_timeout(tmp_path):
    config = database_config(None, sqlite_path=str(tmp_path / "a.sqlite3"))
    assert config["ENGINE"] == "assure.sqlite"
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["OPTIONS"]["timeout"] >= 5
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_database_config_parses_postgres_and_refuses_other_engines():
    config = database_config("postgres://u:p@db.internal:5433/assure", sqlite_path="unused")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"], config["USER"]) == ("db.internal", 5433, "assure", "u")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL must be a postgres://"):
        database_config("mysql://u@h/db", sqlite_path="unused")


def _import_settings(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    clean.update({"ASSURE_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "assure.settings"})
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DEBUG": "perhaps"}, "DEBUG must be one of true/false"),
        ({"DATABASE_URL": "mysql://root@127.0.0.1/x"}, "DATABASE_URL must be a URL starting with postgres://"),
        ({"REDIS_URL": "amqp://guest@127.0.0.1//"}, "REDIS_URL must be a URL starting with redis://"),
        ({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test"}, "SECRET_KEY must be set when DATABASE_URL is set"),
        ({"DEFAULT_MAX_PARALLEL_RUNS": "0"}, "DEFAULT_MAX_PARALLEL_RUNS must be at least 1"),
    ],
)
def test_bad_environment_stops_start_up_with_a_clear_message(env, message, tmp_path):
    result = _import_settings(env, tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_embedded_default_keeps_one_secret_key_per_checkout(tmp_path):
    assert _import_settings({}, tmp_path).returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50
    assert _import_settings({}, tmp_path).returncode == 0
    assert (tmp_path / "secret_key").read_text() == key
