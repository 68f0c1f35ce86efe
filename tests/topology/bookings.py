"""The booking request the topology tests send, through whichever way in they test."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.integration.world import World


async def post_booking(
    http: Any, world: World, patient: str, start: dt.datetime, key: str | None = None
) -> Any:
    """POST /api/appointments for `patient` with the world's doctor at `start`, with an
    Idempotency-Key when given (a retry of it is then made once). `http`: an httpx or
    Litestar test client."""
    headers = world.headers(patient)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await http.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=headers,
    )
