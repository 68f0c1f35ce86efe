"""The slow-query page: admins only; pg_stat_statements' top statements when the
extension is installed and preloaded, otherwise how to enable it."""

from sqlalchemy import text

from app.analytics.query_stats import ENABLE_HINT
from tests.integration.auth_helpers import bearer, make_user


async def test_only_admins_see_the_queries_page(client, session, settings):
    users = {
        role: await make_user(session, role, f"{role}@example.test")
        for role in ("patient", "admin")
    }
    await session.commit()
    assert (await client.get("/admin/queries")).status_code == 401
    refused = await client.get("/admin/queries", headers=bearer(settings, users["patient"]))
    assert refused.status_code == 403
    page = await client.get("/admin/queries", headers=bearer(settings, users["admin"]))
    assert page.status_code == 200 and "<h1>Slow queries</h1>" in page.text


async def test_the_page_lists_statements_or_says_how_to_enable_them(client, session, settings):
    admin = await make_user(session, "admin", "root@example.test")
    await session.commit()
    preloaded = "pg_stat_statements" in (
        await session.scalar(text("SHOW shared_preload_libraries")) or ""
    )
    if preloaded:  # the embedded PostgreSQL; creating the extension needs its owner rights
        await session.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        await session.commit()
    page = await client.get("/admin/queries", headers=bearer(settings, admin))
    assert page.status_code == 200
    if preloaded:
        assert "By total time" in page.text and "By mean time" in page.text
        assert "pg_stat_statements" in page.text and ENABLE_HINT.split(".")[0] not in page.text
    else:
        hint = ENABLE_HINT.split(". ")[0]
        assert hint in page.text and "shared_preload_libraries" in page.text
        # Installed but not preloaded: reading fails, and the page still answers with the hint.
        await session.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        await session.commit()
        try:
            page = await client.get("/admin/queries", headers=bearer(settings, admin))
            assert page.status_code == 200 and hint in page.text
        finally:
            await session.execute(text("DROP EXTENSION pg_stat_statements"))
            await session.commit()
