"""What the notification tests share: patients with contact details, booking through the
API, and the outbox as PostgreSQL holds it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Notification, Patient
from tests.integration.world import World, make_world

# (email, phone, notify_by) per patient
Contact = tuple[str | None, str | None, str]


async def world_with_contacts(
    session: AsyncSession, secret: str, contacts: Sequence[Contact]
) -> World:
    """`make_world` with one patient per contact, each with that email, phone and choice."""
    world = await make_world(session, secret, patients=len(contacts))
    for patient_id, (email, phone, notify_by) in zip(world.patients, contacts, strict=True):
        await session.execute(
            update(Patient)
            .where(Patient.id == patient_id)
            .values(email=email, phone=phone, notify_by=notify_by)
        )
    await session.commit()
    return world


async def book_api(client: Any, world: World, start: dt.datetime, who: str = "patient0") -> int:
    """Book `start` with the world's Berlin doctor as `who`; the new appointment's id."""
    response = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start.isoformat()},
        headers=world.headers(who),
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def cancel_by_leave(
    client: Any, world: World, starts_at: dt.datetime, ends_at: dt.datetime
) -> dict[str, Any]:
    """The admin adds the Berlin doctor's leave and cancels the bookings it covers."""
    response = await client.post(
        f"/api/doctors/{world.doctor_id}/exceptions",
        json={
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "kind": "leave",
            "cancel_affected": True,
        },
        headers=world.headers("admin"),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def outbox_rows(session: AsyncSession, **where: Any) -> list[Notification]:
    """The outbox rows (fresh from the database) whose columns equal `where`, oldest first."""
    query = select(Notification).order_by(Notification.id)
    for name, value in where.items():
        query = query.where(getattr(Notification, name) == value)
    return list(await session.scalars(query.execution_options(populate_existing=True)))
