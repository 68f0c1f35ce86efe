"""The patient's choice of email, SMS, both or none, and what it does to unsent messages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.errors import Invalid, NotFound
from app.i18n import gettext
from app.notifications.planning import REMINDERS, UNSENT, choose_channels, plan
from db.models import NOTIFY_CHOICES, Appointment, Clinic, Notification, Patient

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
        raise NotFound(gettext("patient %(patient_id)s not found") % {"patient_id": patient_id})
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
    """Choose email, SMS, both or none (optionally with a new phone number). Unsent
    messages of the patient's upcoming appointments follow the new choice at once: a
    message on a channel no longer chosen moves to a chosen one (or becomes void when it
    already goes there, or nothing is chosen); reminders missing on a chosen channel are
    added. Commits.

    Raises:
        Invalid: an unknown choice, or a channel without an address.
    """
    if notify_by not in NOTIFY_CHOICES:
        raise Invalid(
            gettext("notify_by must be one of %(choices)s") % {"choices": ", ".join(NOTIFY_CHOICES)}
        )
    patient = await session.get(Patient, patient_id, with_for_update=True)
    if patient is None:
        raise NotFound(gettext("patient %(patient_id)s not found") % {"patient_id": patient_id})
    if phone is not None:
        phone = phone.strip()
        if phone and not _looks_like_phone(phone):
            raise Invalid(gettext("phone must be an international number such as +4930123456"))
        patient.phone = phone or None
    if notify_by in ("sms", "both") and not patient.phone:
        raise Invalid(gettext("add a mobile number to get messages by SMS"))
    if notify_by in ("email", "both") and not patient.email:
        raise Invalid(gettext("there is no email address to send to"))
    patient.notify_by = notify_by
    await _follow_choice(session, patient, now)
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


async def _follow_choice(session: AsyncSession, patient: Patient, now: dt.datetime) -> None:
    """Make the unsent messages of the patient's upcoming appointments match the choice."""
    channels = choose_channels(patient.notify_by, patient.email, patient.phone)
    upcoming = (
        await session.execute(
            select(Appointment.id, Appointment.starts_at, Clinic.timezone)
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .where(
                Appointment.patient_id == patient.id,
                Appointment.status == "booked",
                Appointment.starts_at > now,
            )
        )
    ).all()
    ids = [row.id for row in upcoming]
    if not ids:
        return
    rows = (
        await session.execute(
            select(
                Notification.id,
                Notification.appointment_id,
                Notification.kind,
                Notification.channel,
                Notification.status,
            )
            .where(
                Notification.appointment_id.in_(ids),
                Notification.status.in_(("pending", "queued", "sent", "dead")),
            )
            .order_by(Notification.id)
        )
    ).all()
    have = {(r.appointment_id, r.kind, r.channel) for r in rows if r.channel in channels}
    for row in rows:
        if row.status not in UNSENT or row.channel in channels:
            continue
        free = [c for c in channels if (row.appointment_id, row.kind, c) not in have]
        if free:  # moved, not duplicated
            have.add((row.appointment_id, row.kind, free[0]))
            values = {"channel": free[0]}
        else:
            values = {"status": "void", "last_error": "opted out"}
        await session.execute(
            update(Notification).where(Notification.id == row.id).values(**values)
        )
    session.add_all(
        Notification(appointment_id=row.id, channel=channel, kind=p.kind, due_at=p.due_at)
        for row in upcoming
        for p in plan(row.starts_at, row.timezone, now)
        for channel in channels
        if p.kind in REMINDERS and (row.id, p.kind, channel) not in have
    )


def _looks_like_phone(phone: str) -> bool:
    digits = phone[1:] if phone.startswith("+") else phone
    return phone.startswith("+") and digits.isdigit() and 7 <= len(digits) <= 15
