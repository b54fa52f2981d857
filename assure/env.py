"""Typed readers for environment variables.

Every setting the product reads from the environment goes through one of these, so a bad value
stops start-up with an ``ImproperlyConfigured`` that names the variable and what it expected,
instead of surfacing later as a confusing failure deep inside a worker.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str | None = None, *, environ: Mapping[str, str] | None = None) -> str | None:
    value = _raw(name, environ)
    return default if value in (None, "") else value


def env_required(name: str, *, why: str, environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    if not value:
        raise ImproperlyConfigured(f"{name} must be set: {why}")
    return value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of true/false/1/0/yes/no/on/off, got {value!r}")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float, maximum: float,
              environ: Mapping[str, str] | None = None) -> float:
    value = _raw(name, environ)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if not minimum <= number <= maximum:
        raise ImproperlyConfigured(f"{name} must be between {minimum:g} and {maximum:g}, got {number:g}")
    return number


def env_list(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(
    name: str, *, schemes: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str | None:
    """A URL whose scheme is one of ``schemes``, or None when unset."""
    value = env_str(name, environ=environ)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, got {value!r}"
        )
    if parts.scheme not in ("unix", "redis+socket", "sqlite") and not parts.hostname:
        raise ImproperlyConfigured(f"{name} has no host name: {value!r}")
    return value


GENERATE_FERNET_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


def fernet_keys(value: str, *, source: str) -> list[str]:
    """Comma-separated Fernet keys, in order; ``source`` names where they came from in the error.

    The message never repeats a key: it is a secret, and start-up errors end up in logs.
    """
    keys = [item.strip() for item in value.split(",") if item.strip()]
    if not keys:
        raise ImproperlyConfigured(f"{source} holds no key. Generate one with `{GENERATE_FERNET_KEY}`.")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ImproperlyConfigured(
                f"{source}: key {position} of {len(keys)} is not a Fernet key (32 url-safe base64-encoded "
                f"bytes). Generate one with `{GENERATE_FERNET_KEY}`."
            ) from None
    return keys


def env_fernet_keys(name: str, *, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The Fernet keys in ``name`` (comma-separated, the first one encrypts), or None when unset."""
    value = env_str(name, environ=environ)
    return None if value is None else fernet_keys(value, source=name)


def database_config(url: str | None, *, sqlite_path: str) -> dict:
    """Django DATABASES['default'] for ``DATABASE_URL``, or the embedded SQLite file when unset."""
    if url is None:
        return {
            # Django's SQLite backend, with writers of every process queued on a file lock.
            "ENGINE": "assure.sqlite",
            "NAME": sqlite_path,
            "OPTIONS": {
                # WAL lets the web process read while a worker writes; IMMEDIATE transactions take the
                # write lock up front, so two writers queue on the busy timeout instead of one failing
                # with "database is locked" when it upgrades a read lock mid-transaction.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # A file (worker processes started by tests must open it too), private to this process
            # so two test runs from one checkout never share it.
            "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"assure-test-{os.getpid()}.sqlite3")},
        }
    import dj_database_url

    scheme = urlsplit(url).scheme
    if scheme not in ("postgres", "postgresql", "pgsql", "sqlite"):
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a postgres:// (or sqlite://) URL, got scheme {scheme!r}"
        )
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL could not be parsed: {exc}") from None
    if config["ENGINE"].endswith("sqlite3"):
        embedded = database_config(None, sqlite_path=config["NAME"])
        config["ENGINE"], config["OPTIONS"] = embedded["ENGINE"], embedded["OPTIONS"]
        config["CONN_MAX_AGE"] = 0
    return config
