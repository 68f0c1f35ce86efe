"""`medbook analytics backfill`, run as an operator would, rebuilds history exactly."""

import datetime as dt

from sqlalchemy import text

from app.cli import ROLLUP_TABLES
from tests.integration.analytics_data import (
    add_random_appointments,
    expected_rollups,
    stored_rollups,
)
from tests.integration.test_cli import medbook
from tests.integration.world import make_world

DAYS = [dt.date(2026, 2, 20) + dt.timedelta(days=i) for i in range(12)]


async def test_backfill_rebuilds_the_range_with_a_progress_bar(session, settings):
    world = await make_world(session, settings.secret_key, patients=3)
    await add_random_appointments(session, world, DAYS, seed=21)
    result = medbook(
        "analytics", "backfill", "--from", "2026-02-20", "--to", "2026-03-03", "--chunk-days", "5"
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt 12 days of rollups" in result.stdout
    assert await stored_rollups(session, DAYS) == await expected_rollups(session, DAYS)
    analysed = await session.execute(
        text(
            "SELECT relname FROM pg_stat_user_tables "
            "WHERE relname = ANY(:tables) AND last_analyze IS NOT NULL"
        ),
        {"tables": list(ROLLUP_TABLES)},
    )
    assert sorted(analysed.scalars()) == sorted(ROLLUP_TABLES)  # the planner has statistics

    reversed_range = medbook("analytics", "backfill", "--from", "2026-03-03", "--to", "2026-02-20")
    assert reversed_range.returncode != 0
    assert "--to is before --from" in reversed_range.stderr
