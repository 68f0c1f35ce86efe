"""Settings: parsing, defaults, and one clear error naming the bad variable."""

import pytest

from app.settings import SettingsError, async_database_url, load_settings

BASE = {
    "DATABASE_URL": "postgresql://u:p@db.example:5432/medbook",
    "REDIS_URL": "redis://cache.example:6379/0",
    "SECRET_KEY": "k" * 40,
}


def test_plain_postgres_url_gets_the_asyncpg_driver():
    settings = load_settings(BASE)
    assert settings.database_url == "postgresql+asyncpg://u:p@db.example:5432/medbook"
    assert async_database_url("postgres://x@h/d") == "postgresql+asyncpg://x@h/d"
    assert settings.database_read_url is None


def test_defaults_and_overrides():
    settings = load_settings({**BASE, "DB_POOL_SIZE": "25", "DB_STATEMENT_TIMEOUT_MS": "1500"})
    assert settings.db_pool_size == 25
    assert settings.statement_timeout_ms == 1500
    assert settings.db_max_overflow == 5
    assert settings.database_pool_mode == "session"
    assert load_settings({**BASE, "DATABASE_POOL_MODE": "Transaction"}).database_pool_mode == (
        "transaction"
    )
    # SAQ's own sweep period by default; tests shorten it (tests/topology/).
    assert settings.worker_sweep_seconds == 60
    assert load_settings({**BASE, "WORKER_SWEEP_SECONDS": "5"}).worker_sweep_seconds == 5


def test_production_hashes_passwords_at_owasp_s_argon2id_parameters():
    """Only the environment lowers the cost (the test suite does, conftest.py): settings
    built from a clean environment hash at 19 MiB, 2 passes, one lane."""
    settings = load_settings(BASE)
    assert (settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_lanes) == (
        2,
        19 * 1024,
        1,
    )
    cheap = load_settings(
        {**BASE, "ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "8", "ARGON2_LANES": "1"}
    )
    assert (cheap.argon2_time_cost, cheap.argon2_memory_kib, cheap.argon2_lanes) == (1, 8, 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_POOL_SIZE", "many"),
        ("DB_POOL_SIZE", "-1"),
        ("DB_POOL_TIMEOUT", "0"),
        ("DATABASE_URL", "mysql://u@h/d"),
        ("DATABASE_READ_URL", "sqlite:///x"),
        ("DATABASE_URL", "postgresql://x@127.0.0.1:abc/db"),
        ("DATABASE_URL", "postgresql://x@h1:5432,h2:99999/db"),
        ("REDIS_URL", "memcached://cache.example:11211"),
        ("REDIS_URL", "redis://cache.example:port/0"),
        ("REDIS_URL", "redis://cache.example:70000/0"),
        ("REDIS_URL", "redis://cache.example:6379/zero"),
        ("REDIS_URL", "unix://relative/redis.sock"),
        ("REDIS_URL", "unix:///var/redis.sock?db=first"),
        ("SECRET_KEY", "short"),
        ("LOG_LEVEL", "bogus"),
        ("S3_SSE", "rot13"),
        ("MEDBOOK_PUBLIC_ORIGIN", "medbook.example"),
        ("MEDBOOK_PUBLIC_ORIGIN", "ftp://medbook.example"),
        ("MEDBOOK_PUBLIC_ORIGIN", "https://medbook.example/app"),
        ("MEDBOOK_PUBLIC_ORIGIN", "https://medbook.example:https"),
        ("NOTIFY_MAX_ATTEMPTS", "4"),
        ("NOTIFY_MAX_ATTEMPTS", "five"),
        ("WORKER_SWEEP_SECONDS", "0"),
        ("WORKER_SWEEP_SECONDS", "0.5"),
        ("DATABASE_POOL_MODE", "statement"),
        ("REDIS_URL", "redis+sentinel://s1:26379,s2:26379"),
        ("REDIS_URL", "redis+sentinel://s1:port/medbook/0"),
        ("REDIS_URL", "redis+sentinel://s1:26379/medbook/zero"),
        ("ARGON2_TIME_COST", "0"),
        ("ARGON2_MEMORY_KIB", "4"),
        ("ARGON2_LANES", "none"),
    ],
)
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, name: value})
    assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_key_is_required_in_server_mode():
    env = {k: v for k, v in BASE.items() if k != "SECRET_KEY"}
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(env)


def test_embedded_mode_generates_and_keeps_a_secret_key(tmp_path):
    env = {**BASE, "MEDBOOK_EMBEDDED": "1", "MEDBOOK_DATA_DIR": str(tmp_path)}
    del env["SECRET_KEY"]
    first = load_settings(env).secret_key
    second = load_settings(env).secret_key
    assert len(first) >= 32
    assert first == second
    assert (tmp_path / "secret_key").read_text() == first


def test_a_bad_url_is_reported_without_its_password():
    with pytest.raises(SettingsError) as info:
        load_settings({**BASE, "DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:abc/db"})
    assert "DATABASE_URL" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_sentinel_url_names_sentinels_service_database_and_password():
    from app.settings import sentinel_target

    url = "redis+sentinel://:s%40cret@s1:26379,s2:26380,s3/medbook/2"
    assert load_settings({**BASE, "REDIS_URL": url}).redis_url == url
    target = sentinel_target(url)
    assert target is not None
    assert target.sentinels == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert (target.service, target.db, target.password) == ("medbook", 2, "s@cret")
    assert sentinel_target("redis://h:6379/0") is None


def test_the_embedded_redis_socket_url_is_accepted():
    url = "unix:///srv/medbook/var/redis.sock?db=0"
    assert load_settings({**BASE, "REDIS_URL": url}).redis_url == url
    assert load_settings({**BASE, "REDIS_URL": "rediss://:pw@cache.example:6380/2"}).redis_url


def test_values_are_normalised_to_what_their_consumers_expect():
    settings = load_settings(
        {
            **BASE,
            "LOG_LEVEL": "debug",
            "S3_SSE": "aws:KMS",
            "MEDBOOK_PUBLIC_ORIGIN": "https://medbook.example:8443/",
            "NOTIFY_MAX_ATTEMPTS": "5",
        }
    )
    assert settings.log_level == "DEBUG"
    assert settings.s3_sse == "aws:kms"  # S3 wants this exact spelling
    assert settings.public_origin == "https://medbook.example:8443"
    assert settings.notify_max_attempts == 5
