import os

import pytest

from tests.factories import MembershipFactory, UserFactory, WorkspaceFactory


@pytest.fixture
def workspace(db):
    return WorkspaceFactory()


@pytest.fixture
def other_workspace(db):
    return WorkspaceFactory()


@pytest.fixture
def member(workspace):
    """A staff user who owns ``workspace`` and nothing else."""
    user = UserFactory(is_staff=True)
    MembershipFactory(workspace=workspace, user=user, role="owner")
    return user


@pytest.fixture
def member_client(client, member):
    client.force_login(member)
    return client


@pytest.fixture(scope="session", autouse=True)
def shared_secret_keys():
    """Workers and daphne started by tests run with DATABASE_URL set, so they need ASSURE_SECRET_KEYS:
    the keys of this process (the Makefile's, or the embedded default's var/secret_keys), or they
    could not read the secrets it writes."""
    from django.conf import settings

    os.environ.setdefault("ASSURE_SECRET_KEYS", ",".join(settings.ASSURE_SECRET_KEYS))


# Redis for the test session ----------------------------------------------------------------------
# Each test process gets its own Redis: on the embedded default a private embedded server, against
# a real Redis its own database number, so parallel test processes (and a `make up` running from
# the same checkout) never share a queue.

from urllib.parse import urlsplit, urlunsplit  # noqa: E402


def _own_redis_db(url: str, worker_id: str) -> str:
    number = 1 + (int(worker_id[2:]) if worker_id.startswith("gw") else 0)
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


@pytest.fixture(scope="session", autouse=True)
def test_redis_url(tmp_path_factory, worker_id):
    from django.conf import settings

    from assure.celery import app as celery_app
    from assure.embedded import EmbeddedRedis
    from assure.settings import celery_broker_url, channel_layers

    server = None
    if settings.EMBEDDED_REDIS:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        server.start()
        url = server.url
    else:
        import redis

        url = _own_redis_db(os.environ["REDIS_URL"], worker_id)
        redis.Redis.from_url(url).flushdb()
    celery_app.conf.broker_url = celery_broker_url(url)
    celery_app._pool = None  # reconnect to the test Redis
    settings.CHANNEL_LAYERS = channel_layers(url)
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    # The cache (the API throttle's counters) on the same Redis; the signal resets Django's handler.
    from django.test.signals import setting_changed

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}
    setting_changed.send(sender=None, setting="CACHES", value=settings.CACHES, enter=True)
    yield url
    if server is not None:
        server.stop()


@pytest.fixture(autouse=True)
def fresh_channel_layer(test_redis_url):
    """Each test gets its own Channels layer object. The layer keeps process-wide receive state (a
    lock and a count, bound to the event loop that created them); tests drive consumers from a new
    loop each time (``async_to_sync``), and a loop that closed mid-receive must not leave that
    state to the next test. Daphne has one loop for its lifetime, so this concerns tests only."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="session", autouse=True)
def no_sessions_left_at_teardown(django_db_setup, django_db_blocker):
    """Before the test database is dropped (PostgreSQL refuses while anyone is connected), end the
    sessions a just-stopped worker or daphne may still hold for a moment."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def api(client, workspace):
    """The test client authenticated with an API token of ``workspace``."""
    from assure.services import api_token_create

    _, key = api_token_create(workspace=workspace, name="tests")
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {key}"
    return client
