"""Which failures reach the error log: a 5xx (a bug) with its traceback; an expected 4xx
answer (a taken slot, a bad query, a rate limit) never."""

import logging

from litestar import get
from litestar.testing import AsyncTestClient

from app.web.asgi import create_app
from app.web.guards import PUBLIC
from tests.integration.world import day_after_tomorrow, make_world


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@get("/test-only/boom", opt=PUBLIC, sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("a bug")


async def test_4xx_answers_are_not_logged_as_errors_and_5xx_are(db, redis, session, settings):
    world = await make_world(session, settings.secret_key, patients=2)
    app = create_app(settings)
    app.register(boom)
    # Litestar's logging config replaces the root handlers (and so pytest's caplog).
    log = Captured()
    litestar_log = logging.getLogger("litestar")
    litestar_log.addHandler(log)
    try:
        async with AsyncTestClient(app=app) as client:
            slot = {"doctor_id": world.doctor_id, "start": f"{day_after_tomorrow()}T10:00:00+01:00"}
            first = await client.post(
                "/api/appointments", json=slot, headers=world.headers("patient0")
            )
            taken = await client.post(
                "/api/appointments", json=slot, headers=world.headers("patient1")
            )
            bad = await client.get(
                "/api/appointments/available-slots",
                params={"doctor_id": "x", "date": "2026-01-01"},
                headers=world.headers("patient0"),
            )
            anonymous = await client.get("/api/auth/me")
            missing = await client.get("/api/no-such-thing", headers=world.headers("patient0"))
            assert (taken.status_code, bad.status_code, anonymous.status_code) == (409, 400, 401)
            assert first.status_code in (201, 422) and missing.status_code == 404
            assert [r for r in log.records if r.levelno >= logging.ERROR] == []

            failed = await client.get("/test-only/boom")
    finally:
        litestar_log.removeHandler(log)
    assert failed.status_code == 500
    errors = [logging.Formatter().format(r) for r in log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "/test-only/boom" in errors[0]
    assert "Traceback" in errors[0] and "RuntimeError: a bug" in errors[0]
