"""Who is asking: the `Principal` every request carries, loaded from the users table."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import User


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in user, with the links that scope what they may see."""

    id: int
    email: str
    role: str
    patient_id: int | None = None
    doctor_id: int | None = None
    clinic_id: int | None = None


async def load_principal(session: AsyncSession, user_id: int) -> Principal | None:
    """The active user with this id, or None (unknown or deactivated)."""
    row = (
        await session.execute(
            select(
                User.id, User.email, User.role, User.patient_id, User.doctor_id, User.clinic_id
            ).where(User.id == user_id, User.is_active.is_(True))
        )
    ).one_or_none()
    return Principal(*row) if row else None
