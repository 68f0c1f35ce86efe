"""The patient's choice of email, SMS or none, and what it does to unsent messages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.errors import Invalid, NotFound
from app.notifications.planning import REMINDERS, UNSENT, choose_channel, plan
from db.models import Appointment, Clinic, Notification, Patient

NOTIFY_CHOICES = ("email", "sms", "none")
NOTIFY_PREFERENCE_CHANGED = "notification.preference_changed"


@dataclass(frozen=True, slots=True)
class Preference:
    notify_by: str
    email: str | None
    phone: str | None


async def get_preference(session: AsyncSession, patient_id: int) -> Preference:
    row = (
        await session.execute(
            select(Patient.notify_by, Patient.email, Patient.phone).where(Patient.id == patient_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"patient {patient_id} not found")
    return Preference(*row)


async def set_preference(
    session: AsyncSession,
    patient_id: int,
    *,
    notify_by: str,
    phone: str | None = None,
    actor_user_id: int,
    now: dt.datetime,
) -> Preference:
    """Choose email, SMS or none (optionally with a new phone number). Unsent messages of
    the patient's upcoming appointments follow the new choice at once: they move to the
    new channel, or become void for `none`; reminders that were never planned (the patient
    had chosen none) are added. Commits.

    Raises:
        Invalid: an unknown choice, or a channel without an address.
    """
    if notify_by not in NOTIFY_CHOICES:
        raise Invalid(f"notify_by must be one of {', '.join(NOTIFY_CHOICES)}")
    patient = await session.get(Patient, patient_id, with_for_update=True)
    if patient is None:
        raise NotFound(f"patient {patient_id} not found")
    if phone is not None:
        phone = phone.strip()
        if phone and not _looks_like_phone(phone):
            raise Invalid("phone must be an international number such as +4930123456")
        patient.phone = phone or None
    if notify_by == "sms" and not patient.phone:
        raise Invalid("add a mobile number to get messages by SMS")
    if notify_by == "email" and not patient.email:
        raise Invalid("there is no email address to send to")
    patient.notify_by = notify_by
    channel = choose_channel(notify_by, patient.email, patient.phone)
    upcoming = (
        await session.execute(
            select(Appointment.id, Appointment.starts_at, Clinic.timezone)
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .where(
                Appointment.patient_id == patient_id,
                Appointment.status == "booked",
                Appointment.starts_at > now,
            )
        )
    ).all()
    ids = [row.id for row in upcoming]
    if ids:
        unsent = and_(
            Notification.appointment_id.in_(ids),
            Notification.status.in_(UNSENT),
        )
        if channel is None:
            await session.execute(
                update(Notification).where(unsent).values(status="void", last_error="opted out")
            )
        else:
            await session.execute(update(Notification).where(unsent).values(channel=channel))
            planned = await session.execute(
                select(Notification.appointment_id, Notification.kind).where(
                    Notification.appointment_id.in_(ids),
                    Notification.kind.in_(REMINDERS),
                    Notification.status.in_(("pending", "queued", "sent", "dead")),
                )
            )
            have = {(appointment_id, kind) for appointment_id, kind in planned}
            session.add_all(
                Notification(appointment_id=row.id, channel=channel, kind=p.kind, due_at=p.due_at)
                for row in upcoming
                for p in plan(row.starts_at, row.timezone, now)
                if p.kind in REMINDERS and (row.id, p.kind) not in have
            )
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=NOTIFY_PREFERENCE_CHANGED,
        subject_type="patient",
        subject_id=patient_id,
        patient_id=patient_id,
        details={"notify_by": notify_by},
    )
    await session.commit()
    return Preference(patient.notify_by, patient.email, patient.phone)


def _looks_like_phone(phone: str) -> bool:
    digits = phone[1:] if phone.startswith("+") else phone
    return phone.startswith("+") and digits.isdigit() and 7 <= len(digits) <= 15
