"""The `medbook` command, run as a user would run it."""

import os
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from db.models import Appointment, Clinic, User

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def medbook(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_a_bad_setting_stops_with_one_clear_line():
    result = medbook("db", "current", env={"DB_POOL_SIZE": "lots"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DB_POOL_SIZE" in lines[0]
    assert "Traceback" not in result.stderr


def test_db_current_reports_head(db):
    result = medbook("db", "current")
    assert result.returncode == 0, result.stderr
    assert "(head)" in result.stdout


async def test_seed_demo_is_idempotent(session):
    first = medbook("seed", "demo")
    assert first.returncode == 0, first.stderr
    assert "loaded" in first.stdout
    counts = (
        await session.scalar(select(func.count()).select_from(Clinic)),
        await session.scalar(select(func.count()).select_from(Appointment)),
        await session.scalar(select(func.count()).select_from(User)),
    )
    assert counts[0] == 2
    assert counts[1] > 20
    second = medbook("seed", "demo")
    assert second.returncode == 0
    assert "already" in second.stdout
    assert counts == (
        await session.scalar(select(func.count()).select_from(Clinic)),
        await session.scalar(select(func.count()).select_from(Appointment)),
        await session.scalar(select(func.count()).select_from(User)),
    )
    roles = set(await session.scalars(select(User.role)))
    assert roles == {"patient", "doctor", "front_desk", "admin"}


@pytest.mark.parametrize("role", ["admin", "front_desk"])
async def test_users_create(session, role):
    medbook("seed", "demo")
    args = [
        "users",
        "create",
        "--role",
        role,
        "--email",
        f"New.{role}@Example.com",
        "--password",
        "a-long-enough-password",
    ]
    if role == "front_desk":
        args += ["--clinic", "1"]
    result = medbook(*args)
    assert result.returncode == 0, result.stderr
    user = await session.scalar(select(User).where(User.email == f"New.{role}@Example.com"))
    assert user is not None and user.role == role
    assert user.password_hash.startswith("$argon2id$")
    again = medbook(*args[:4], "--email", f"new.{role}@example.COM", *args[6:])
    assert again.returncode != 0
    assert "already registered" in again.stderr


def test_users_create_refuses_a_front_desk_without_a_clinic(db):
    result = medbook(
        "users",
        "create",
        "--role",
        "front_desk",
        "--email",
        "d@x.test",
        "--password",
        "a-long-enough-password",
    )
    assert result.returncode != 0
    assert "clinic" in result.stderr
