"""Reminders a patient can answer: confirm or cancel from the 24 h reminder.

Two ways, neither needing a sign-in:

- a link in the e-mail, `/r/{token}`: the token names the appointment and expires when
  the visit starts, signed with HMAC-SHA256 under the app's secret (nothing stored). It is
  single-use: once the appointment is confirmed or no longer booked, the link only says
  so. Opening it changes nothing (mail scanners open links); the page's buttons do.
- an SMS reply, `C` (confirm) or `X` (cancel), which the provider posts to our webhook
  in the Twilio style; its `X-Twilio-Signature` (HMAC-SHA1 of the URL and the sorted form
  fields under SMS_TOKEN) is checked before anything is read. The reply answers the
  earliest coming booked appointment of the patient with that phone number whose 24 h
  reminder went out by SMS.

A confirmation stamps `confirmed_at` (the desk board shows it); a cancellation is the
patient's own cancellation through the ordinary path (`commands.set_status`), so the
slot is free at once and everything that follows a cancel follows this one.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.appointments import commands
from app.errors import Invalid, NotFound
from app.i18n import gettext
from app.live.effects import AppointmentChange, Effects
from app.scheduling.slots import local_days

Action = Literal["confirm", "cancel"]
CANCEL_REASON = "cancelled from the reminder"
# SMS replies the webhook understands (case and blanks ignored).
SMS_ACTIONS: dict[str, Action] = {"C": "confirm", "X": "cancel"}


@dataclass(frozen=True, slots=True)
class Visit:
    """What the answer page shows of the appointment."""

    id: int
    status: str
    starts_at: dt.datetime
    timezone: str
    doctor_name: str
    clinic_name: str
    confirmed_at: dt.datetime | None
    language: str = "en"  # the patient's: an SMS reply is written in it

    @property
    def open(self) -> bool:
        """Whether it can still be answered: booked and not yet confirmed."""
        return self.status == "booked" and self.confirmed_at is None


_VISIT = text(
    """
SELECT a.id, a.status, a.starts_at, c.timezone, d.full_name AS doctor_name,
       c.name AS clinic_name, a.confirmed_at, a.patient_id, a.ends_at, a.doctor_id,
       a.clinic_id, u.id AS user_id, p.language
  FROM appointments a
  JOIN patients p ON p.id = a.patient_id
  JOIN doctors d ON d.id = a.doctor_id
  JOIN clinics c ON c.id = a.clinic_id
  LEFT JOIN users u ON u.patient_id = a.patient_id
 WHERE a.id = :id
"""
)


def _visit(row: Any) -> Visit:
    return Visit(
        row.id,
        row.status,
        row.starts_at,
        row.timezone,
        row.doctor_name,
        row.clinic_name,
        row.confirmed_at,
        row.language,
    )


async def visit(session: AsyncSession, appointment_id: int) -> Visit:
    """The appointment a valid token names.

    Raises:
        NotFound: it no longer exists.
    """
    row = (await session.execute(_VISIT, {"id": appointment_id})).one_or_none()
    if row is None:
        raise NotFound(gettext("this appointment no longer exists"))
    return _visit(row)


_CONFIRM = text(
    """
UPDATE appointments SET confirmed_at = :now
 WHERE id = :id AND status = 'booked' AND confirmed_at IS NULL AND starts_at > :now
RETURNING id
"""
)


async def answer(
    session: AsyncSession,
    effects: Effects,
    appointment_id: int,
    action: Action,
    *,
    now: dt.datetime,
    via: Literal["link", "sms"],
    single_use: bool = True,
) -> Visit:
    """Confirm or cancel the appointment for its patient, audited. Commits.

    Args:
        single_use: refuse once answered (a link); an SMS `X` may still cancel a
            confirmed appointment.

    Returns:
        The appointment as it is now.

    Raises:
        NotFound: the appointment no longer exists.
        Invalid: already answered (a link), no longer booked, or begun.
    """
    row = (await session.execute(_VISIT, {"id": appointment_id})).one_or_none()
    if row is None:
        raise NotFound(gettext("this appointment no longer exists"))
    current = _visit(row)
    if current.status != "booked" or (single_use and current.confirmed_at is not None):
        raise Invalid(gettext("this appointment has already been answered"))
    if current.starts_at <= now:
        raise Invalid(gettext("this appointment has begun"))
    details = {"via": via}
    if action == "confirm":
        if current.confirmed_at is not None:
            return current  # an SMS "C" twice: nothing more to do
        done = (await session.execute(_CONFIRM, {"id": appointment_id, "now": now})).first()
        if done is None:  # changed meanwhile
            await session.rollback()
            raise Invalid(gettext("this appointment has already been answered"))
        await audit.record(
            session,
            actor_user_id=row.user_id,
            action=audit.APPOINTMENT_CONFIRMED,
            subject_type="appointment",
            subject_id=appointment_id,
            patient_id=row.patient_id,
            details=details,
        )
        await session.commit()
    else:
        rows = await commands.set_status(
            session,
            [appointment_id],
            "cancelled",
            setter="patient",
            actor_user_id=row.user_id,
            now=now,
            seen={"see_clinic": None, "see_doctor": None, "see_patient": row.patient_id},
            reason=CANCEL_REASON,
            details=details,
        )
        await session.commit()
        if not rows or rows[0].id is None:
            raise Invalid(gettext("this appointment has already been answered"))
    days = tuple(local_days(row.starts_at, row.ends_at, row.timezone))
    await effects.appointments_changed(
        [
            AppointmentChange(
                appointment_id,
                row.doctor_id,
                row.clinic_id,
                days,
                "confirmed" if action == "confirm" else "cancelled",
                row.patient_id,
            )
        ]
    )
    return await visit(session, appointment_id)


def twilio_signature(token: str, url: str, form: Mapping[str, str]) -> str:
    """The provider's signature of a webhook request: base64 HMAC-SHA1 of the full URL
    followed by each form field's name and value, sorted by name."""
    data = url + "".join(name + form[name] for name in sorted(form))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signed_by_provider(token: str | None, url: str, form: Mapping[str, str], given: str) -> bool:
    """Whether `given` is the provider's signature of this request (never without a token)."""
    expected = twilio_signature(token or "", url, form)
    return bool(token) and hmac.compare_digest(given.encode(), expected.encode())


def phone_key(number: str) -> str:
    """A phone number as compared: its digits, with a leading + kept."""
    digits = "".join(ch for ch in number if ch.isdigit())
    return ("+" if number.strip().startswith("+") else "") + digits


_REMINDED = text(
    """
SELECT a.id
  FROM patients p
  JOIN appointments a ON a.patient_id = p.id
 WHERE regexp_replace(coalesce(p.phone, ''), '[^0-9+]', '', 'g') = :phone
   AND a.status = 'booked' AND a.starts_at > :now
   AND EXISTS (SELECT FROM notifications n
                WHERE n.appointment_id = a.id AND n.kind = 'reminder_24h'
                  AND n.channel = 'sms' AND n.status = 'sent')
 ORDER BY a.starts_at
 LIMIT 1
"""
)


async def reminded_appointment(session: AsyncSession, phone: str, now: dt.datetime) -> int:
    """The appointment an SMS reply from `phone` answers.

    Raises:
        NotFound: none of that number's coming appointments had its reminder by SMS.
    """
    found = await session.scalar(_REMINDED, {"phone": phone_key(phone), "now": now})
    if found is None:
        raise NotFound(gettext("no reminded appointment for this number"))
    return int(found)
