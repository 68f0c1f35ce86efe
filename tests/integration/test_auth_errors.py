"""Error answers: domain errors and bad input become 4xx JSON that says what is wrong."""

from litestar import get
from litestar.testing import AsyncTestClient

from app.errors import Conflict
from app.web.asgi import create_app
from app.web.guards import PUBLIC


@get("/test-domain-error", opt=PUBLIC)
async def _raise_conflict() -> None:
    raise Conflict("this slot is taken", slot="2026-01-01T09:00:00+00:00")


async def test_domain_error_becomes_its_status_with_detail_and_extra(settings, db, redis):
    app = create_app(settings)
    app.register(_raise_conflict)
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/test-domain-error")
    assert response.status_code == 409
    assert response.json() == {
        "status_code": 409,
        "detail": "this slot is taken",
        "slot": "2026-01-01T09:00:00+00:00",
    }
