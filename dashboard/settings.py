"""Django settings. Everything that differs between machines comes from the environment.

See docs/settings.md for the list; `dashboard.env` parses each value strictly.
"""

from __future__ import annotations

import ipaddress
import os
import re
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from whitenoise.compress import Compressor

from dashboard import assets
from dashboard.env import (
    EnvError,
    env_bind,
    env_bool,
    env_dir,
    env_fernet_key,
    env_float,
    env_int,
    env_str,
    env_url,
    env_url_map,
)
from dashboard.oidc_env import env_group_roles, env_issuer
from endpoints_app.egress import parse_allow_list
from endpoints_app.observability import logformat

# Nothing we start may phone home (MLflow 3.2+ sends usage data by default).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

BASE_DIR = Path(__file__).resolve().parent.parent

# A checkout keeps its data in var/ beside the code; an installed wheel (no checkout to write into)
# in the user's data folder, as the XDG base directory spec places it.
_DEFAULT_DATA_DIR = (
    Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "modelfleet"
    if assets.PACKAGED
    else BASE_DIR / "var"
)
DATA_DIR = env_dir("MODELFLEET_DATA_DIR", str(_DEFAULT_DATA_DIR))
BIND = env_bind("MODELFLEET_BIND", "127.0.0.1:8000")
PUBLIC_URL = env_url("MODELFLEET_PUBLIC_URL", ("http", "https")) or f"http://{BIND.host}:{BIND.port}"


def _public_host(url: str) -> str:
    host = urlsplit(url).hostname or "localhost"
    return f"[{host}]" if ":" in host else host


DEBUG = env_bool("MODELFLEET_DEBUG", False)
# "production" makes the settings refuse what is only fine on a laptop (a missing or weak secret
# key); docker-compose.yml sets it. "development" (the default, `make run`) generates what it needs.
ENVIRONMENT = env_str("MODELFLEET_ENV", "development")
if ENVIRONMENT not in ("development", "production"):
    raise EnvError(f"MODELFLEET_ENV must be 'development' or 'production', not {ENVIRONMENT!r}")
_secret_key = env_str("MODELFLEET_SECRET_KEY")  # generated into the data dir when unset (SECRET_KEY, below)
# Keys that were ever published (examples, old compose files): a session signed with one can be forged.
_KNOWN_SECRET_KEYS = {"change-me-in-production", "change-me", "changeme", "secret", "insecure", "modelfleet"}
if _secret_key is not None and (
    _secret_key.strip().lower() in _KNOWN_SECRET_KEYS or _secret_key.startswith("django-insecure-")
):
    raise EnvError(
        "MODELFLEET_SECRET_KEY is a published example value: set a random one (python -c "
        "'import secrets; print(secrets.token_urlsafe(50))')"
    )
if ENVIRONMENT == "production" and DEBUG:
    raise EnvError("MODELFLEET_DEBUG must be off in production (MODELFLEET_ENV=production): it shows settings and code")
if ENVIRONMENT == "production" and (_secret_key is None or len(_secret_key) < 50 or len(set(_secret_key)) < 10):
    raise EnvError(
        "MODELFLEET_SECRET_KEY must be set in production (MODELFLEET_ENV=production) to a random value of at "
        "least 50 characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
# Encrypts secret values at rest. When unset, generated on first use into DATA_DIR / "secrets_key"
# (endpoints_app.encryption); every process that reads secrets must see the same key.
SECRETS_KEY = env_fernet_key("MODELFLEET_SECRETS_KEY")

# --- web security (docs/settings.md): every value parsed strictly, a bad one stops start-up ----
_HOST_RE = re.compile(r"^(\*|\.?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")
_ORIGIN_RE = re.compile(r"^https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def _env_list(name: str, default: str, pattern: re.Pattern[str], what: str) -> list[str]:
    items = [i.strip() for i in (env_str(name, default) or "").split(",") if i.strip()]
    bad = [i for i in items if not pattern.match(i)]
    if bad:
        raise EnvError(f"{name}: {bad[0]!r} is not {what}")
    return items


# Which Host headers the web process answers (a request naming another host gets 400): the
# loopback names by default, plus the host of MODELFLEET_PUBLIC_URL; "*" only if set explicitly.
ALLOWED_HOSTS = _env_list(
    "MODELFLEET_ALLOWED_HOSTS",
    ",".join(dict.fromkeys(["localhost", "127.0.0.1", "[::1]", _public_host(PUBLIC_URL)])),
    _HOST_RE,
    "a host name, .domain, IP address, [IPv6] or *",
)
# Origins (scheme://host[:port]) whose POSTs pass the CSRF check besides this site's own, e.g. the
# public https origin when a proxy terminates TLS.
CSRF_TRUSTED_ORIGINS = _env_list(
    "MODELFLEET_CSRF_TRUSTED_ORIGINS", "", _ORIGIN_RE, "an origin like https://modelfleet.example.com"
)
# Cookies only over HTTPS: on by default when the public URL is https.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("MODELFLEET_SECURE_COOKIES", PUBLIC_URL.startswith("https://"))
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
# Strict-Transport-Security for this many seconds (0: not sent; it is only sent over HTTPS).
SECURE_HSTS_SECONDS = env_int("MODELFLEET_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("MODELFLEET_HSTS_INCLUDE_SUBDOMAINS", False)
# Trust X-Forwarded-Proto: https from the proxy in front (only when one is there and sets it).
if env_bool("MODELFLEET_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Pages load scripts, styles, fonts and images from this site only (htmx, Chart.js and the page
# scripts are static files; no inline script, style or event handler): see SecurityHeadersMiddleware.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

# --- sign-in throttling (endpoints_app.auth_throttle) -----------------------------------------
# Failed sign-ins and bad tokens one client address may make per window before it is refused
# (429) for the rest of the window; counted in Redis, shared by every process.
AUTH_FAILURE_LIMIT = env_int("MODELFLEET_AUTH_FAILURE_LIMIT", 10, minimum=1)
AUTH_FAILURE_WINDOW_SECONDS = env_int("MODELFLEET_AUTH_FAILURE_WINDOW_SECONDS", 300, minimum=1)
# The throttled password backend (which refuses when MODELFLEET_LOCAL_LOGIN is false), and the one
# that keeps single sign-on sessions.
AUTHENTICATION_BACKENDS = ["endpoints_app.pages.sso.LocalLoginBackend", "endpoints_app.pages.sso.SsoBackend"]

# --- single sign-on: OpenID Connect (endpoints_app.pages.sso, endpoints_app.services.sso) --------
# The provider's issuer URL (discovery at ISSUER/.well-known/openid-configuration); unset: no SSO.
OIDC_ISSUER = env_issuer("MODELFLEET_OIDC_ISSUER")
OIDC_CLIENT_ID = env_str("MODELFLEET_OIDC_CLIENT_ID", "")
OIDC_CLIENT_SECRET = env_str("MODELFLEET_OIDC_CLIENT_SECRET", "")
OIDC_SCOPES = env_str("MODELFLEET_OIDC_SCOPES", "openid email profile")
OIDC_GROUPS_CLAIM = env_str("MODELFLEET_OIDC_GROUPS_CLAIM", "groups")
OIDC_USERNAME_CLAIM = env_str("MODELFLEET_OIDC_USERNAME_CLAIM", "preferred_username")
OIDC_PROVIDER_NAME = env_str("MODELFLEET_OIDC_PROVIDER_NAME", "single sign-on")  # the button's label
# Provider group → global role, for groups with no mapping set through the API.
OIDC_GROUP_ROLES = env_group_roles("MODELFLEET_OIDC_GROUP_ROLES")
if OIDC_ISSUER and not (OIDC_CLIENT_ID and OIDC_CLIENT_SECRET):
    raise EnvError("MODELFLEET_OIDC_ISSUER needs MODELFLEET_OIDC_CLIENT_ID and MODELFLEET_OIDC_CLIENT_SECRET")
if "openid" not in OIDC_SCOPES.split():
    raise EnvError(f"MODELFLEET_OIDC_SCOPES={OIDC_SCOPES!r} must include openid")
# Password sign-in (dashboard and admin); when false only the break-glass admin may use it.
LOCAL_LOGIN = env_bool("MODELFLEET_LOCAL_LOGIN", True)
BREAK_GLASS_ADMIN = env_str("MODELFLEET_BREAK_GLASS_ADMIN", "admin")
if not LOCAL_LOGIN and not OIDC_ISSUER:
    raise EnvError("MODELFLEET_LOCAL_LOGIN=false needs single sign-on (MODELFLEET_OIDC_ISSUER)")

# --- database -------------------------------------------------------------------------------
_database_url = env_str("DATABASE_URL")
DATABASES: dict[str, dj_database_url.DBConfig]
if _database_url is None:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "modelfleet.sqlite3"),
            # WAL lets the web, worker and runtime processes read while one writes; IMMEDIATE
            # transactions take the write lock up front instead of failing half-way.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            "TEST": {"NAME": str(DATA_DIR / "test-modelfleet.sqlite3")},
        }
    }
else:
    try:
        _db = dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # dj_database_url raises ValueError / its own errors
        raise EnvError(f"DATABASE_URL is malformed: {exc}") from None
    if not _db.get("ENGINE") or not _db.get("NAME"):
        raise EnvError("DATABASE_URL is malformed: it names no engine or database")
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["OPTIONS"] = {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 30}
    DATABASES = {"default": _db}

# --- redis / celery ---------------------------------------------------------------------------
REDIS_SOCKET = DATA_DIR / "redis.sock"
_redis_url = env_url("REDIS_URL", ("redis", "rediss", "unix"))
REDIS_IS_EMBEDDED = _redis_url is None
REDIS_URL = _redis_url or f"unix://{REDIS_SOCKET}"
CELERY_BROKER_URL = f"redis+socket://{REDIS_SOCKET}" if REDIS_IS_EMBEDDED else REDIS_URL
if CELERY_BROKER_URL.startswith("unix://"):
    CELERY_BROKER_URL = "redis+socket://" + CELERY_BROKER_URL[len("unix://") :]
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
# The worker's processes (the prefork pool). Polling waits on replicas and remote workspaces more
# than it computes: on 2 cores, 4 processes sweep 10,000 endpoints in ~14 s where 2 took ~22 s
# (benchmarks/bench_monitoring.py). Each process holds ~100-150 MB.
CELERY_WORKER_CONCURRENCY = env_int("MODELFLEET_WORKER_CONCURRENCY", 4, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- mlflow registry -----------------------------------------------------------------------
MLFLOW_TRACKING_URI = (
    env_url("MLFLOW_TRACKING_URI", ("sqlite", "postgresql", "postgresql+psycopg", "mysql", "http", "https", "file"))
    or f"sqlite:///{DATA_DIR / 'mlflow.sqlite3'}"
)
MODEL_STORE_DIR = DATA_DIR / "models"  # where registered model directories are copied to

# --- runtime ----------------------------------------------------------------------------------
BOOTSTRAP_TOKEN = env_str("MODELFLEET_BOOTSTRAP_TOKEN")
RUNTIME_DIR = DATA_DIR / "runtime"
RUNTIME_BIND_HOST = env_str("MODELFLEET_RUNTIME_BIND_HOST", "127.0.0.1")
RUNTIME_ADVERTISE_HOST = env_str("MODELFLEET_RUNTIME_ADVERTISE_HOST", "127.0.0.1")
# How long a rollout may take before it is marked UPDATE_FAILED.
ROLLOUT_TIMEOUT_SECONDS = env_float("MODELFLEET_ROLLOUT_TIMEOUT_SECONDS", 600.0, minimum=1.0)
# How long the gateway may serve a cached route table; replicas removed by a rollout are kept
# alive at least this long (plus in-flight requests) so no request meets a stopped replica.
GATEWAY_ROUTE_TTL_SECONDS = env_float("MODELFLEET_GATEWAY_ROUTE_TTL_SECONDS", 1.0, minimum=0.0)
GATEWAY_TIMEOUT_SECONDS = env_float("MODELFLEET_GATEWAY_TIMEOUT_SECONDS", 297.0, minimum=1.0)
# Hostile input costs little (endpoints_app.http_limits, gateway.app): request bodies over these are
# refused with 413 before anything reads them (queries, the management API and pages, model uploads);
# queries in flight per web process (429 past it) and queries held for a scale-from-zero wake-up
# (503 past it) are capped, both answered with Retry-After; guardrails over long texts run in
# this many worker processes.
MAX_QUERY_BYTES = env_int("MODELFLEET_MAX_QUERY_BYTES", 16 * 1024 * 1024, minimum=1)
MAX_API_BODY_BYTES = env_int("MODELFLEET_MAX_API_BODY_BYTES", 1024 * 1024, minimum=1)
MAX_UPLOAD_BYTES = env_int("MODELFLEET_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
GATEWAY_MAX_INFLIGHT = env_int("MODELFLEET_GATEWAY_MAX_INFLIGHT", 512, minimum=1)
GATEWAY_MAX_WAKE_WAITERS = env_int("MODELFLEET_GATEWAY_MAX_WAKE_WAITERS", 128, minimum=1)
# Shadow traffic (gateway.shadow): mirrored queries waiting to be sent per web process (past either
# bound a mirror is dropped and counted), and how many are sent at once.
GATEWAY_SHADOW_QUEUE_SIZE = env_int("MODELFLEET_GATEWAY_SHADOW_QUEUE_SIZE", 1000, minimum=1)
GATEWAY_SHADOW_QUEUE_BYTES = env_int("MODELFLEET_GATEWAY_SHADOW_QUEUE_BYTES", 64 * 1024 * 1024, minimum=1)
GATEWAY_SHADOW_CONCURRENCY = env_int("MODELFLEET_GATEWAY_SHADOW_CONCURRENCY", 16, minimum=1)
GUARDRAIL_WORKERS = env_int("MODELFLEET_GUARDRAIL_WORKERS", 2, minimum=1)
# Where external model providers' APIs are reached when the endpoint's config does not say (e.g. an
# egress proxy): provider=URL pairs; the defaults are the providers' public APIs. "microsoft-entra"
# is the Entra ID authority Azure OpenAI's client credentials sign in at (a sovereign cloud's).
PROVIDER_BASE_URLS = env_url_map(
    "MODELFLEET_PROVIDER_BASE_URLS",
    (
        "openai",
        "anthropic",
        "cohere",
        "ai21labs",
        "amazon-bedrock",
        "google-cloud-vertex-ai",
        "palm",
        "microsoft-entra",
    ),
)
# Non-public addresses external-model calls may reach anyway (endpoints_app.egress): comma-separated
# host[:port] or CIDR entries; a malformed one stops start-up. An egress proxy named above goes here too.
try:
    EGRESS_ALLOW = parse_allow_list(env_str("MODELFLEET_EGRESS_ALLOW") or "")
except ValueError as _exc:
    raise EnvError(str(_exc)) from None
REPLICA_START_ATTEMPTS = env_int("MODELFLEET_REPLICA_START_ATTEMPTS", 3, minimum=1)
REPLICA_READY_TIMEOUT_SECONDS = env_float("MODELFLEET_REPLICA_READY_TIMEOUT_SECONDS", 120.0, minimum=1.0)
WORKSPACE_ID = env_str("MODELFLEET_WORKSPACE_ID", "1000000000000001")

# --- scaling ----------------------------------------------------------------------------------
# Requests one replica takes at a time: provisioned concurrency / this = replicas.
REPLICA_CONCURRENCY = env_int("MODELFLEET_REPLICA_CONCURRENCY", 4, minimum=1)
# Memory one model-server replica is budgeted at when checking whether a config fits the host.
REPLICA_MEMORY_MB = env_int("MODELFLEET_REPLICA_MEMORY_MB", 350, minimum=1)
# Share of the host's memory the runtime may fill with replicas.
RUNTIME_MEMORY_FRACTION = env_float("MODELFLEET_RUNTIME_MEMORY_FRACTION", 0.8, minimum=0.01)
AUTOSCALE_TARGET_IN_FLIGHT = env_float("MODELFLEET_AUTOSCALE_TARGET_IN_FLIGHT", 3.0, minimum=0.1)
AUTOSCALE_UP_DELAY_SECONDS = env_float("MODELFLEET_AUTOSCALE_UP_DELAY_SECONDS", 5.0, minimum=0.0)
AUTOSCALE_DOWN_DELAY_SECONDS = env_float("MODELFLEET_AUTOSCALE_DOWN_DELAY_SECONDS", 120.0, minimum=0.0)
SCALE_TO_ZERO_IDLE_SECONDS = env_float("MODELFLEET_SCALE_TO_ZERO_IDLE_SECONDS", 900.0, minimum=1.0)
# How long the gateway holds a query while a scaled-to-zero entity wakes up.
SCALE_FROM_ZERO_WAIT_SECONDS = env_float("MODELFLEET_SCALE_FROM_ZERO_WAIT_SECONDS", 60.0, minimum=1.0)
# A replica that keeps crashing: this many exits within the window fail the deployment.
CRASH_LOOP_RESTARTS = env_int("MODELFLEET_CRASH_LOOP_RESTARTS", 5, minimum=1)
CRASH_LOOP_WINDOW_SECONDS = env_float("MODELFLEET_CRASH_LOOP_WINDOW_SECONDS", 600.0, minimum=1.0)

# Keep one pre-imported model server waiting, so wake-ups and scale-ups skip Python's imports.
RUNTIME_STANDBY = env_bool("MODELFLEET_RUNTIME_STANDBY", True)

# --- serving backend (endpoints_app/backends) ----------------------------------------------------
# "local": model servers on this host (the runtime agent); "ray": on the nodes of an existing Ray
# cluster at MODELFLEET_RAY_ADDRESS ("ray://head:10001" from outside the cluster, or the GCS's
# "host:port" where this host is a Ray node). Replicas request 1 CPU and 4 GB per request they take
# at a time (Small's 4 CPU and 16 GB for its 4), times MODELFLEET_RAY_RESOURCE_SCALE.
SERVING_BACKEND = env_str("MODELFLEET_BACKEND", "local")
if SERVING_BACKEND not in ("local", "ray"):
    raise EnvError(f"MODELFLEET_BACKEND must be local or ray, not {SERVING_BACKEND!r}")
RAY_ADDRESS = env_str("MODELFLEET_RAY_ADDRESS", "")
if SERVING_BACKEND == "ray" and not RAY_ADDRESS:
    raise EnvError("MODELFLEET_BACKEND=ray needs MODELFLEET_RAY_ADDRESS (ray://head:10001 or host:port)")
RAY_RESOURCE_SCALE = env_float("MODELFLEET_RAY_RESOURCE_SCALE", 1.0, minimum=0.0001)
# A replica whose actor does not answer for this long is lost (its node died): it is replaced.
RAY_NODE_LOST_SECONDS = env_float("MODELFLEET_RAY_NODE_LOST_SECONDS", 3.0, minimum=0.5)
# Keep one warm spare per node where room allows (an actor holding a pre-imported model server,
# reserving one CPU replica's resources): replacements and scale-ups start in about a second.
RAY_WARM_SPARES = env_bool("MODELFLEET_RAY_WARM_SPARES", True)

# --- monitoring -------------------------------------------------------------------------------
POLL_STATUS_SECONDS = env_float("MODELFLEET_POLL_STATUS_SECONDS", 10.0, minimum=1.0)
POLL_METRICS_SECONDS = env_float("MODELFLEET_POLL_METRICS_SECONDS", 15.0, minimum=1.0)
POLL_LOGS_SECONDS = env_float("MODELFLEET_POLL_LOGS_SECONDS", 10.0, minimum=1.0)
POLL_HTTP_TIMEOUT_SECONDS = env_float("MODELFLEET_POLL_HTTP_TIMEOUT_SECONDS", 2.0, minimum=0.1)
POLL_MAX_BACKOFF_SECONDS = env_float("MODELFLEET_POLL_MAX_BACKOFF_SECONDS", 300.0, minimum=1.0)
# Remote workspaces (issue 16): one sweep of each every this many seconds, each within a deadline.
REMOTE_POLL_SECONDS = env_float("MODELFLEET_REMOTE_POLL_SECONDS", 15.0, minimum=1.0)
REMOTE_POLL_DEADLINE_SECONDS = env_float("MODELFLEET_REMOTE_POLL_DEADLINE_SECONDS", 60.0, minimum=1.0)
ALERT_EVALUATION_SECONDS = env_float("MODELFLEET_ALERT_EVALUATION_SECONDS", 30.0, minimum=1.0)
# How often running rollout plans are judged (a gate breach rolls back within one interval).
ROLLOUT_PLAN_EVALUATION_SECONDS = env_float("MODELFLEET_ROLLOUT_PLAN_EVALUATION_SECONDS", 15.0, minimum=0.2)
# Retention of each metric resolution (seconds → hours kept).
METRICS_RETENTION_HOURS = {
    15: env_float("MODELFLEET_METRICS_15S_RETENTION_HOURS", 48.0, minimum=1.0),
    60: env_float("MODELFLEET_METRICS_1M_RETENTION_HOURS", 14 * 24.0, minimum=1.0),
    3600: env_float("MODELFLEET_METRICS_1H_RETENTION_HOURS", 90 * 24.0, minimum=1.0),
}
# How long the hot, uncompressed metric rows are kept (minutes), beside the compact chunks
# (monitoring.store): 15 s points for alerts, health and the fleet list; 1 min points for the
# fleet list's sparklines and until the hour they belong to has been downsampled (≥ 75 min).
METRICS_HOT_MINUTES = {
    15: env_float("MODELFLEET_METRICS_15S_HOT_MINUTES", 30.0, minimum=10.0),
    60: env_float("MODELFLEET_METRICS_1M_HOT_MINUTES", 80.0, minimum=75.0),
}
LOG_RETENTION_DAYS = env_float("MODELFLEET_LOG_RETENTION_DAYS", 14.0, minimum=0.01)
PAYLOAD_RETENTION_DAYS = env_float("MODELFLEET_PAYLOAD_RETENTION_DAYS", 30.0, minimum=0.01)
USAGE_RETENTION_DAYS = env_float("MODELFLEET_USAGE_RETENTION_DAYS", 90.0, minimum=1.0)
POLL_RUN_RETENTION_DAYS = env_float("MODELFLEET_POLL_RUN_RETENTION_DAYS", 2.0, minimum=0.01)

# --- operations: /healthz, /readyz, /metrics, logs (endpoints_app.api.operations, observability) ---
# The fleet-wide Prometheus scrape at /metrics answers a caller that sends this bearer token or
# whose address is in the allow-list (comma-separated IP addresses or CIDR blocks; loopback only by
# default). Either suffices; a malformed entry stops start-up.
METRICS_TOKEN = env_str("MODELFLEET_METRICS_TOKEN")
if METRICS_TOKEN is not None and len(METRICS_TOKEN) < 16:
    raise EnvError("MODELFLEET_METRICS_TOKEN must be at least 16 characters (a random value)")
METRICS_ALLOW: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
for _entry in (env_str("MODELFLEET_METRICS_ALLOW", "127.0.0.0/8,::1/128") or "").split(","):
    if _entry.strip():
        try:
            METRICS_ALLOW.append(ipaddress.ip_network(_entry.strip(), strict=False))
        except ValueError:
            raise EnvError(
                f"MODELFLEET_METRICS_ALLOW: {_entry.strip()!r} is not an IP address or CIDR block like 10.0.0.0/8"
            ) from None
# How long each readiness check (database, Redis, model registry) may take before /readyz says 503.
READINESS_TIMEOUT_SECONDS = env_float("MODELFLEET_READINESS_TIMEOUT_SECONDS", 3.0, minimum=0.1)
# Log lines as text, or one JSON object per line (ts, level, logger, message, request_id, process).
LOG_FORMAT = env_str("MODELFLEET_LOG_FORMAT", "text")
if LOG_FORMAT not in logformat.FORMATS:
    raise EnvError(f"MODELFLEET_LOG_FORMAT must be 'text' or 'json', not {LOG_FORMAT!r}")

# --- email (notifications) ----------------------------------------------------------------------
EMAIL_HOST = env_str("MODELFLEET_EMAIL_HOST")
EMAIL_PORT = env_int("MODELFLEET_EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("MODELFLEET_EMAIL_USER", "") or ""
EMAIL_HOST_PASSWORD = env_str("MODELFLEET_EMAIL_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("MODELFLEET_EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("MODELFLEET_EMAIL_FROM", "modelfleet@localhost")
# Without an SMTP host, mail is written to the worker's log instead of being sent.
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)

# --- django -----------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "endpoints_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "endpoints_app.security_headers.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "endpoints_app.audit.AuditSourceMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "endpoints_app.pages.errors.PageErrorMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [assets.TEMPLATES_DIR],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "endpoints_app.pages.context.navigation",
                "endpoints_app.pages.sso.sign_in_options",
            ],
        },
    },
]

WSGI_APPLICATION = "dashboard.wsgi.application"
ASGI_APPLICATION = "dashboard.asgi.application"

# Django's standard validators, enforced wherever a password is set (services.users.check_password).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The pages' own files and the front-end packages' built files (dashboard.assets says where each
# lives in a checkout and in a wheel). `modelfleet up` (and the image's build) runs collectstatic,
# which copies them to STATIC_ROOT with a content hash in every name and a gzip and brotli copy
# beside each; WhiteNoise serves them from there with far-future cache headers.
STATICFILES_DIRS = [assets.STATIC_DIR]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "dashboard.staticfinders.VendorFinder",
]
STATIC_ROOT = env_dir("MODELFLEET_STATIC_ROOT", str(DATA_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# With MODELFLEET_DEBUG the pages name unhashed files and WhiteNoise finds them in the sources, so
# an edited stylesheet shows on reload without collecting again.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
# Pages name every file by its hashed name, so the unhashed copies are not kept (nor compressed);
# source maps are fetched by a browser's developer tools only, and compressing Chart.js's 1 MB map
# at brotli's best level cost seconds at every first start.
WHITENOISE_KEEP_ONLY_HASHED_FILES = True
WHITENOISE_SKIP_COMPRESS_EXTENSIONS = (*Compressor.SKIP_COMPRESS_EXTENSIONS, "map")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing one
# WhiteNoise hands Django a file iterator, which Django's ASGI handler reads in a thread and warns
# about on every static file; that is the intended cost here (small files), not a fault to log.
warnings.filterwarnings(
    "ignore", message="StreamingHttpResponse must consume synchronous iterators", module="django.core.handlers.asgi"
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "endpoints_app.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["endpoints_app.api.parsers.BoundedJSONParser"],  # depth and NUL checked
    "EXCEPTION_HANDLER": "endpoints_app.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "endpoints_app.observability.requestid.RequestIdFilter"}},
    "formatters": {
        "text": {"format": logformat.TEXT_FORMAT},
        "json": {"()": "endpoints_app.observability.logformat.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": env_str("MODELFLEET_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per task run every few seconds is noise; failures still log at ERROR.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
        # One line per query to an external model provider is noise (the gateway counts queries).
        "httpx": {"level": "WARNING"},
        # uvicorn configures its own handlers before Django loads; these take them over, so its
        # lines have the same format (and are JSON when asked). Its start-up chatter stays out, as
        # `modelfleet up`'s --log-level warning always kept it; its errors still show.
        "uvicorn": {"handlers": ["console"], "propagate": False, "level": "WARNING"},
        "uvicorn.access": {"handlers": ["console"], "propagate": False, "level": "WARNING"},
    },
}

if _secret_key is None:
    # Generated once into the data dir with owner-only permissions, so sessions survive restarts.
    _key_file = DATA_DIR / "secret_key"
    if _key_file.exists():
        _secret_key = _key_file.read_text().strip()
    else:
        import secrets as _secrets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        _secret_key = _secrets.token_urlsafe(50)
        try:
            _fd = os.open(_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            _secret_key = _key_file.read_text().strip()
        else:
            with os.fdopen(_fd, "w") as _fh:
                _fh.write(_secret_key)
SECRET_KEY: str = _secret_key
