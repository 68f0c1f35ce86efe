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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_POOL_SIZE", "many"),
        ("DB_POOL_SIZE", "-1"),
        ("DB_POOL_TIMEOUT", "0"),
        ("DATABASE_URL", "mysql://u@h/d"),
        ("DATABASE_READ_URL", "sqlite:///x"),
        ("REDIS_URL", "unix:///tmp/redis.sock"),
        ("SECRET_KEY", "short"),
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
