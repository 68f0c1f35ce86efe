"""The front desk's walk-ins: registering a patient new to the clinic, and making sure the
patient booked is the one the desk still sees selected."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.access.identity import Principal
from app.errors import Conflict, Forbidden, Invalid
from app.i18n import gettext
from db.models import Patient

PATIENT_REGISTERED = "patient.registered"
MAX_NAME_CHARS = 200
OLDEST_BIRTH = dt.date(1900, 1, 1)


def _words(text: str) -> str:
    return " ".join(text.lower().split())


def shown_by(full_name: str, search: str) -> bool:
    """Whether the desk's patient search for `search` lists `full_name` (as
    app/live/boards.py `search_patients` does: a word of the name, or a part after a
    hyphen, starts with it; at least two letters)."""
    text, name = _words(search), _words(full_name)
    if len(text) < 2:
        return False
    return name.startswith(text) or f" {text}" in name or f"-{text}" in name


async def selected_patient(session: AsyncSession, patient_id: int, search: str) -> str:
    """The name of the patient the desk chose, checked against what its search box says
    now: a choice left over from an earlier search is never booked.

    Raises:
        Invalid: no such patient, or the search no longer lists them.
    """
    name = await session.scalar(select(Patient.full_name).where(Patient.id == patient_id))
    if name is None or not shown_by(name, search):
        raise Invalid(gettext("the patient search has changed: choose the patient again"))
    return name


async def register_patient(
    session: AsyncSession,
    actor: Principal,
    *,
    full_name: str,
    date_of_birth: dt.date,
    today: dt.date,
    phone: str | None = None,
    email: str | None = None,
    client_addr: str | None = None,
) -> Patient:
    """A patient new to medbook, registered at the desk (no login yet). Commits, with an
    audit event.

    Args:
        today: the clinic's date, which a date of birth may not be after.

    Raises:
        Forbidden: not the front desk or an admin.
        Invalid: a missing or too long name, a date of birth in the future or before
            1900, an e-mail address without @.
        Conflict: a patient with this name and date of birth exists (find them instead).
    """
    if actor.role not in ("front_desk", "admin"):
        raise Forbidden(gettext("only the front desk and admins register patients"))
    full_name = " ".join(full_name.split())
    if len(full_name) < 2 or len(full_name) > MAX_NAME_CHARS or not full_name.isprintable():
        raise Invalid(
            gettext("give the patient's full name (2 to %(max_name_chars)s characters)")
            % {"max_name_chars": MAX_NAME_CHARS}
        )
    if not OLDEST_BIRTH <= date_of_birth <= today:
        raise Invalid(gettext("the date of birth must be a past date"))
    phone = (phone or "").strip() or None
    email = (email or "").strip() or None
    if email is not None and ("@" not in email or len(email) > 254):
        raise Invalid(gettext("the e-mail address is not valid"))
    twin = await session.scalar(
        select(Patient.id).where(
            func.lower(Patient.full_name) == full_name.lower(),
            Patient.date_of_birth == date_of_birth,
        )
    )
    if twin is not None:
        raise Conflict(
            gettext("a patient with this name and date of birth is registered: search for them")
        )
    patient = Patient(
        full_name=full_name,
        date_of_birth=date_of_birth,
        phone=phone,
        email=email,
        notify_by="email" if email else "sms" if phone else "none",
    )
    session.add(patient)
    await session.flush()
    await audit.record(
        session,
        actor_user_id=actor.id,
        action=PATIENT_REGISTERED,
        subject_type="patient",
        subject_id=patient.id,
        patient_id=patient.id,
        client_addr=client_addr,
    )
    await session.commit()
    return patient
