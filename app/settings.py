"""The one settings object, read from the environment once per process."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from app import i18n

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about medbook. Built by `load_settings`, never mutated."""

    database_url: str
    database_read_url: str | None
    redis_url: str
    secret_key: str
    data_dir: Path
    embedded: bool

    # What sits between medbook and PostgreSQL (docs/deploy.md, "PgBouncer"): `session`
    # (PostgreSQL itself, or a session-mode pooler) or `transaction` (a transaction-mode
    # pooler such as PgBouncer: no prepared statements kept, no session state, timeouts set
    # per transaction). Applies to DATABASE_URL and DATABASE_READ_URL alike.
    database_pool_mode: str = "session"

    # Connection pool and query limits (review S-2, S-4, S-5, M-5).
    db_pool_size: int = 10
    db_max_overflow: int = 5
    db_pool_timeout: float = 5.0
    db_pool_recycle: int = 1800
    statement_timeout_ms: int = 5000
    analytics_statement_timeout_ms: int = 60000
    idle_in_transaction_timeout_ms: int = 15000
    slow_query_ms: int = 200
    redis_timeout: float = 2.0

    # Documents.
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_sse: str | None = None
    # Largest medical record upload (docs/records.md); the upload route alone accepts it.
    records_max_bytes: int = 20 * 1024 * 1024

    # Booking rules.
    booking_min_notice_minutes: int = 60
    booking_horizon_days: int = 90
    max_future_appointments_per_doctor: int = 3

    # Web.
    public_origin: str = "http://127.0.0.1:8000"
    # Peers whose X-Forwarded-For/-Proto are believed (the TLS proxy); comma-separated.
    forwarded_allow_ips: str = "127.0.0.1"
    request_max_body_bytes: int = 1024 * 1024
    # Admission control per server process (issue #17, app/web/admission.py): requests in
    # flight (default: the pool's connections), how many may wait, and for how long; the
    # event-loop lag over which the limit shrinks (0: a fixed limit), and how long nine in
    # ten admitted requests may hold their slot before it shrinks too (0: no such bound).
    admission_max_in_flight: int = 15
    admission_max_queue: int = 60
    admission_max_wait_ms: int = 30
    admission_lag_target_ms: int = 10
    admission_service_target_ms: int = 50

    # Rate limits (review S-6): requests per minute, Redis fixed windows.
    rate_limit_auth_per_minute: int = 30
    rate_limit_anonymous_per_minute: int = 300
    rate_limit_user_per_minute: int = 1000
    # Failed logins for one account (or, times four, one address) before a lock that
    # doubles with every further failure, up to the maximum.
    login_max_failures: int = 5
    login_lock_max_seconds: int = 900
    # Password hashing, argon2id (app/access/passwords.py): OWASP's recommended parameters
    # for a web service (19 MiB, 2 passes, one lane), not argon2-cffi's defaults (64 MiB,
    # 3 passes, 4 lanes), which cost about eight times the CPU per sign-in (bench/README.md).
    # Hashes made with other parameters are re-hashed at the next sign-in. Only the test
    # suite lowers them (conftest.py): production keeps these.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_lanes: int = 1
    log_level: str = "INFO"
    # The interface's language when neither the user, the browser nor the clinic says.
    default_language: str = "en"

    # Notifications (docs/notifications.md). Email goes over SMTP when SMTP_HOST is set,
    # SMS to a Twilio-style HTTP API when SMS_API_URL is set; otherwise, in embedded mode
    # (or with NOTIFY_DEV_MAILBOX=1), to the dev mailbox page, and in server mode the send
    # fails and the row ends on the undelivered page (nothing is dropped silently).
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "medbook <no-reply@medbook.invalid>"
    smtp_tls: str = "starttls"  # starttls, tls (implicit, port 465) or none
    sms_api_url: str | None = None
    sms_account: str | None = None
    sms_token: str | None = None
    sms_from: str | None = None
    notify_dev_mailbox: bool = False
    notify_max_attempts: int = 6
    notify_retry_base_seconds: float = 30.0
    notify_retry_max_seconds: float = 1800.0
    notify_send_timeout_seconds: float = 15.0
    notify_lease_seconds: int = 300
    notify_batch_size: int = 50
    notify_breaker_threshold: int = 5
    notify_breaker_cooldown_seconds: float = 30.0
    # How long a freed slot is held for the waitlister it is offered to (15 minutes).
    waitlist_hold_seconds: int = 900
    # How often a job worker looks for jobs left "active" by a worker that died or lost
    # Redis mid-job (SAQ's sweep; 60 s is SAQ's own default). Tests shorten it.
    worker_sweep_seconds: int = 60

    @property
    def documents_dir(self) -> Path:
        return self.data_dir / "documents"


def async_database_url(url: str) -> str:
    """Accept a plain `postgresql://` URL and choose the asyncpg driver.

    Args:
        url: any PostgreSQL URL (postgres://, postgresql://, postgresql+asyncpg://).

    Returns:
        The same URL with the `postgresql+asyncpg` scheme.

    Raises:
        ValueError: for another scheme, or a host list with a port that is not a number
            (asyncpg would fail later, with a traceback, on the first connection).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in {"postgres", "postgresql"}:
        raise ValueError("must start with postgresql://")
    _check_hosts(urlsplit(url).netloc)
    return f"postgresql+asyncpg://{rest}"


def _check_hosts(netloc: str) -> None:
    """Every `host[:port]` of a (possibly multi-host, libpq-style) authority is sane."""
    hosts = netloc.rpartition("@")[2]
    for host in hosts.split(",") if hosts else []:
        name, port = host, ""
        if host.startswith("["):  # [::1]:5432
            name, _, after = host[1:].partition("]")
            port = after.removeprefix(":")
        elif host.count(":") == 1:
            name, port = host.split(":")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"port {port!r} is not a number from 1 to 65535")
        if any(c.isspace() or c in "/?#" for c in name):
            raise ValueError(f"host {name!r} is not a host name")


def plain_database_url(url: str) -> str:
    """The libpq form of a URL (for asyncpg.connect, psql and Alembic's offline mode)."""
    _, _, rest = async_database_url(url).partition("://")
    return f"postgresql://{rest}"


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}={redact(raw)!r} is not valid: {exc}") from None


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, safe to print or log."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not sep or not at or ":" not in userinfo.split("/")[0]:
        return url
    return f"{scheme}://{userinfo.split(':')[0]}:***@{hosts}"


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be more than zero")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError("must be 1 or 0")
    return value in ("1", "true", "yes")


def _at_least_one(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _redis_url(raw: str) -> str:
    """`redis://`, `rediss://`, `redis+sentinel://host:port,…/service[/db]` (Redis with
    Sentinel, app/redis.py) or `unix:///path/to/redis.sock?db=N` (embedded mode).

    Every client is built with redis-py's `from_url`, which takes all three: app/redis.py,
    tasks/queue.py and broadcaster's RedisBackend (app/live/realtime.py constructs it itself,
    since `Broadcast(url)` would accept only redis://).
    """
    parts = urlsplit(raw)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        if parts.hostname or not parts.path.startswith("/"):
            raise ValueError("a unix:// URL needs an absolute socket path (unix:///…)")
        db = (query.get("db") or ["0"])[0]
    elif parts.scheme in ("redis", "rediss"):
        _check_hosts(parts.netloc)
        if len(parts.netloc.rpartition("@")[2].split(",")) > 1:
            raise ValueError("takes one host")
        db = parts.path.strip("/") or (query.get("db") or ["0"])[0]
    elif parts.scheme == "redis+sentinel":
        sentinel_target(raw)
        return raw
    else:
        raise ValueError("must start with redis://, rediss://, redis+sentinel:// or unix://")
    if not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return raw


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    password: str | None


def sentinel_target(url: str) -> SentinelTarget | None:
    """The sentinels, service, database and password of a `redis+sentinel://` URL; None
    for any other URL.

    Raises:
        ValueError: a Sentinel URL without hosts or service, or with a bad port or db.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        return None
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in hosts.split(",") if hosts else []:
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel {host!r} is not host:port")
        sentinels.append((name, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise ValueError("a Sentinel URL is redis+sentinel://host:port[,host:port…]/service[/db]")
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    password = unquote(parts.password) if parts.password else None
    return SentinelTarget(sentinels, path[0], int(db), password)


def _language(raw: str) -> str:
    if (language := i18n.supported(raw)) is None:
        raise ValueError(f"must be one of {', '.join(i18n.LANGUAGES)}")
    return language


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value


# How medbook reaches PostgreSQL: directly (or through a session-mode pooler), or through a
# transaction-mode pooler (PgBouncer `pool_mode = transaction`).
DATABASE_POOL_MODES = ("session", "transaction")

# The values S3 accepts for x-amz-server-side-encryption, spelled as S3 wants them.
S3_SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _s3_sse(raw: str) -> str:
    for value in S3_SSE_VALUES:
        if raw.strip().lower() == value.lower():
            return value
    raise ValueError(f"must be one of {', '.join(S3_SSE_VALUES)}")


def _origin(raw: str) -> str:
    """An http(s) origin: scheme, host and optional port, nothing after (a trailing
    slash is forgiven). Websocket Origin checks and links in emails depend on it."""
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// origin, e.g. https://medbook.example")
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("must be an origin only (scheme, host, port), without a path")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    return value


def _attempts(raw: str) -> int:
    value = int(raw)
    if value < MIN_NOTIFY_ATTEMPTS:
        raise ValueError(f"must be {MIN_NOTIFY_ATTEMPTS} or more (docs/notifications.md)")
    return value


# Issue 5 (notifications): a message is tried at least five times before it is undelivered.
MIN_NOTIFY_ATTEMPTS = 5


def _embedded_secret(data_dir: Path) -> str:
    """Generate once and keep under the data folder, so sessions survive restarts."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment.

    Args:
        env: the variables to read; `os.environ` when omitted.

    Returns:
        A frozen `Settings`.

    Raises:
        SettingsError: naming the first variable that is missing or malformed.
    """
    env = os.environ if env is None else env
    data_dir = Path(env.get("MEDBOOK_DATA_DIR") or PROJECT_ROOT / "var").resolve()
    raw_db = env.get("DATABASE_URL")
    raw_redis = env.get("REDIS_URL")
    embedded = env.get("MEDBOOK_EMBEDDED") == "1"
    if not raw_db or not raw_redis:
        raise SettingsError(
            "DATABASE_URL and REDIS_URL must be set (the `medbook` command starts embedded "
            "services and sets them when they are missing)"
        )
    database_url = _read(env, "DATABASE_URL", async_database_url, "")
    read_url = _read(env, "DATABASE_READ_URL", async_database_url, None)
    redis_url = _read(env, "REDIS_URL", _redis_url, "")
    secret_key = env.get("SECRET_KEY") or ""
    if not secret_key:
        if not embedded:
            raise SettingsError("SECRET_KEY is required when DATABASE_URL is set")
        secret_key = _embedded_secret(data_dir)
    if len(secret_key) < 32:
        raise SettingsError("SECRET_KEY must be at least 32 characters")
    pool_size = _read(env, "DB_POOL_SIZE", _positive_int, 10)
    max_overflow = _read(env, "DB_MAX_OVERFLOW", _positive_int, 5)
    in_flight = _read(
        env, "ADMISSION_MAX_IN_FLIGHT", _at_least_one, max(pool_size + max_overflow, 1)
    )
    argon2_lanes = _read(env, "ARGON2_LANES", _at_least_one, 1)
    argon2_memory_kib = _read(env, "ARGON2_MEMORY_KIB", _at_least_one, 19 * 1024)
    if argon2_memory_kib < 8 * argon2_lanes:  # argon2's own floor
        raise SettingsError(
            f"ARGON2_MEMORY_KIB={argon2_memory_kib} is not valid: must be at least 8 KiB per "
            f"lane (ARGON2_LANES={argon2_lanes})"
        )
    return Settings(
        database_url=database_url,
        database_read_url=read_url,
        redis_url=redis_url,
        secret_key=secret_key,
        data_dir=data_dir,
        embedded=embedded,
        database_pool_mode=_read(
            env, "DATABASE_POOL_MODE", _choice(*DATABASE_POOL_MODES), "session"
        ),
        db_pool_size=pool_size,
        db_max_overflow=max_overflow,
        db_pool_timeout=_read(env, "DB_POOL_TIMEOUT", _positive_float, 5.0),
        db_pool_recycle=_read(env, "DB_POOL_RECYCLE", _positive_int, 1800),
        statement_timeout_ms=_read(env, "DB_STATEMENT_TIMEOUT_MS", _positive_int, 5000),
        analytics_statement_timeout_ms=_read(
            env, "DB_ANALYTICS_STATEMENT_TIMEOUT_MS", _positive_int, 60000
        ),
        idle_in_transaction_timeout_ms=_read(
            env, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", _positive_int, 15000
        ),
        slow_query_ms=_read(env, "DB_SLOW_QUERY_MS", _positive_int, 200),
        redis_timeout=_read(env, "REDIS_TIMEOUT", _positive_float, 2.0),
        s3_bucket=env.get("S3_BUCKET") or None,
        s3_region=env.get("S3_REGION") or "us-east-1",
        s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
        s3_access_key_id=env.get("S3_ACCESS_KEY_ID") or None,
        s3_secret_access_key=env.get("S3_SECRET_ACCESS_KEY") or None,
        s3_sse=_read(env, "S3_SSE", _s3_sse, None),
        records_max_bytes=_read(env, "RECORDS_MAX_BYTES", _at_least_one, 20 * 1024 * 1024),
        booking_min_notice_minutes=_read(env, "BOOKING_MIN_NOTICE_MINUTES", _positive_int, 60),
        booking_horizon_days=_read(env, "BOOKING_HORIZON_DAYS", _positive_int, 90),
        max_future_appointments_per_doctor=_read(
            env, "BOOKING_MAX_FUTURE_PER_DOCTOR", _positive_int, 3
        ),
        public_origin=_read(env, "MEDBOOK_PUBLIC_ORIGIN", _origin, "http://127.0.0.1:8000"),
        forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS") or "127.0.0.1",
        request_max_body_bytes=_read(env, "REQUEST_MAX_BODY_BYTES", _positive_int, 1024 * 1024),
        admission_max_in_flight=in_flight,
        admission_max_queue=_read(env, "ADMISSION_MAX_QUEUE", _positive_int, 4 * in_flight),
        admission_max_wait_ms=_read(env, "ADMISSION_MAX_WAIT_MS", _positive_int, 30),
        admission_lag_target_ms=_read(env, "ADMISSION_LAG_TARGET_MS", _positive_int, 10),
        admission_service_target_ms=_read(env, "ADMISSION_SERVICE_TARGET_MS", _positive_int, 50),
        rate_limit_auth_per_minute=_read(env, "RATE_LIMIT_AUTH_PER_MINUTE", _positive_int, 30),
        rate_limit_anonymous_per_minute=_read(
            env, "RATE_LIMIT_ANONYMOUS_PER_MINUTE", _positive_int, 300
        ),
        rate_limit_user_per_minute=_read(env, "RATE_LIMIT_USER_PER_MINUTE", _positive_int, 1000),
        login_max_failures=_read(env, "LOGIN_MAX_FAILURES", _positive_int, 5),
        login_lock_max_seconds=_read(env, "LOGIN_LOCK_MAX_SECONDS", _positive_int, 900),
        argon2_time_cost=_read(env, "ARGON2_TIME_COST", _at_least_one, 2),
        argon2_memory_kib=argon2_memory_kib,
        argon2_lanes=argon2_lanes,
        log_level=_read(env, "LOG_LEVEL", _log_level, "INFO"),
        default_language=_read(env, "DEFAULT_LANGUAGE", _language, "en"),
        smtp_host=env.get("SMTP_HOST") or None,
        smtp_port=_read(env, "SMTP_PORT", _at_least_one, 587),
        smtp_user=env.get("SMTP_USER") or None,
        smtp_password=env.get("SMTP_PASSWORD") or None,
        smtp_from=env.get("SMTP_FROM") or "medbook <no-reply@medbook.invalid>",
        smtp_tls=_read(env, "SMTP_TLS", _choice("starttls", "tls", "none"), "starttls"),
        sms_api_url=(env.get("SMS_API_URL") or "").rstrip("/") or None,
        sms_account=env.get("SMS_ACCOUNT") or None,
        sms_token=env.get("SMS_TOKEN") or None,
        sms_from=env.get("SMS_FROM") or None,
        notify_dev_mailbox=_read(env, "NOTIFY_DEV_MAILBOX", _flag, embedded),
        notify_max_attempts=_read(env, "NOTIFY_MAX_ATTEMPTS", _attempts, 6),
        notify_retry_base_seconds=_read(env, "NOTIFY_RETRY_BASE_SECONDS", _positive_float, 30.0),
        notify_retry_max_seconds=_read(env, "NOTIFY_RETRY_MAX_SECONDS", _positive_float, 1800.0),
        notify_send_timeout_seconds=_read(
            env, "NOTIFY_SEND_TIMEOUT_SECONDS", _positive_float, 15.0
        ),
        notify_lease_seconds=_read(env, "NOTIFY_LEASE_SECONDS", _at_least_one, 300),
        notify_batch_size=_read(env, "NOTIFY_BATCH_SIZE", _at_least_one, 50),
        notify_breaker_threshold=_read(env, "NOTIFY_BREAKER_THRESHOLD", _at_least_one, 5),
        notify_breaker_cooldown_seconds=_read(
            env, "NOTIFY_BREAKER_COOLDOWN_SECONDS", _positive_float, 30.0
        ),
        waitlist_hold_seconds=_read(env, "WAITLIST_HOLD_SECONDS", _at_least_one, 900),
        worker_sweep_seconds=_read(env, "WORKER_SWEEP_SECONDS", _at_least_one, 60),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from `os.environ` on first use."""
    return load_settings()
