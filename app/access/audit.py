"""The audit trail: who did what to whose data, from where. Append-only: PostgreSQL refuses
UPDATE, DELETE and TRUNCATE of audit_events (migration 0009, docs/security.md)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AuditEvent, User

# Action names, in one place so pages and tests agree on them.
LOGIN_SUCCEEDED = "login.succeeded"
LOGIN_FAILED = "login.failed"
LOGIN_LOCKED = "login.locked"
LOGOUT = "logout"
TOKEN_ISSUED = "token.issued"  # noqa: S105
TOKEN_REFRESH_REUSED = "token.refresh_reused"  # noqa: S105
ACCOUNT_REGISTERED = "account.registered"
ACCOUNT_CREATED = "account.created"
ACCOUNT_ROLE_CHANGED = "account.role_changed"
ACCOUNT_DEACTIVATED = "account.deactivated"
ACCOUNT_REACTIVATED = "account.reactivated"
PASSWORD_CHANGED = "password.changed"  # noqa: S105
PASSWORD_RESET_REQUESTED = "password.reset_requested"  # noqa: S105
PASSWORD_RESET = "password.reset"  # noqa: S105
SESSIONS_REVOKED = "sessions.revoked"
TOTP_ENROLLED = "totp.enrolled"
TOTP_REMOVED = "totp.removed"
TOTP_REQUIRED = "totp.required"
RECOVERY_CODE_USED = "totp.recovery_code_used"
BREAK_GLASS = "records.break_glass"
APPOINTMENT_STATUS_CHANGED = "appointment.status_changed"
APPOINTMENT_RESCHEDULED = "appointment.rescheduled"
APPOINTMENT_CHECK_IN_UNDONE = "appointment.check_in_undone"
APPOINTMENT_LIMIT_OVERRIDDEN = "appointment.limit_overridden"  # staff, with a reason
APPOINTMENT_CONFIRMED = "appointment.confirmed"  # by the patient, from the reminder
RECORD_READ = "records.read"
# A Patient or Appointment read through the FHIR API (app/fhir/people.py), one per resource.
FHIR_READ = "fhir.read"
SCHEDULE_EXCEPTION_CHANGED = "schedule_exception.changed"
SCHEDULE_EXCEPTION_WITHDRAWN = "schedule_exception.withdrawn"
RECORD_REFUSED = "records.refused"  # details.reason: not_found, not_own, wrong_role, not_in_care
RECORD_DOWNLOADED = "records.downloaded"  # through a signed URL of the local-disk store
SCHEDULE_REPLACED = "schedule.replaced"
WAITLIST_JOINED = "waitlist.joined"
WAITLIST_LEFT = "waitlist.left"
OFFER_ACCEPTED = "waitlist.offer_accepted"  # the hold became this appointment
OFFER_DECLINED = "waitlist.offer_declined"
EXCEPTION_ADDED = "schedule.exception_added"
VISIT_TYPE_CREATED = "visit_type.created"
VISIT_TYPE_CHANGED = "visit_type.changed"
VISIT_TYPE_DELETED = "visit_type.deleted"

# What a patient's access log shows: reads and downloads of their records.
RECORD_ACCESS_ACTIONS = (RECORD_READ, BREAK_GLASS, RECORD_DOWNLOADED)


def inet(client_addr: str | None) -> str | None:
    """An address PostgreSQL's inet accepts, or None (test clients call themselves names)."""
    if not client_addr:
        return None
    try:
        return str(ipaddress.ip_address(client_addr))
    except ValueError:
        return None


async def record(
    session: AsyncSession,
    *,
    actor_user_id: int | None,
    action: str,
    subject_type: str | None = None,
    subject_id: int | None = None,
    patient_id: int | None = None,
    client_addr: str | None = None,
    flagged: bool = False,
    details: dict[str, Any] | None = None,
) -> None:
    """Add one audit event to the session's transaction; the caller commits.

    Committing with the change it describes means an audited change never lands
    without its trace, and a rolled-back one leaves none.

    Args:
        actor_user_id: who acted; None for an unknown or anonymous caller.
        action: one of the constants above, e.g. `login.failed`.
        patient_id: whose medical data this concerns, for the patient's access log.
        flagged: draws an admin's attention (break-glass, token reuse).
    """
    session.add(
        AuditEvent(
            actor_user_id=actor_user_id,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            patient_id=patient_id,
            client_addr=inet(client_addr),
            flagged=flagged,
            details=details or {},
        )
    )
    await session.flush()


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: dt.datetime
    actor_user_id: int | None
    actor_email: str | None
    actor_role: str | None
    action: str
    subject_type: str | None
    subject_id: int | None
    patient_id: int | None
    client_addr: str | None
    flagged: bool
    details: dict[str, Any]


async def list_events(
    session: AsyncSession,
    *,
    action: str | None = None,
    actions: Sequence[str] | None = None,
    actor_user_id: int | None = None,
    patient_id: int | None = None,
    flagged_only: bool = False,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditRow]:
    """Events newest first, filtered; `before_id` pages backwards (keyset, not OFFSET)."""
    query = (
        select(
            AuditEvent.id,
            AuditEvent.at,
            AuditEvent.actor_user_id,
            User.email,
            User.role,
            AuditEvent.action,
            AuditEvent.subject_type,
            AuditEvent.subject_id,
            AuditEvent.patient_id,
            AuditEvent.client_addr,
            AuditEvent.flagged,
            AuditEvent.details,
        )
        .outerjoin(User, User.id == AuditEvent.actor_user_id)
        .order_by(AuditEvent.id.desc())
        .limit(min(max(limit, 1), 500))
    )
    if action:
        query = query.where(AuditEvent.action == action)
    if actions is not None:
        query = query.where(AuditEvent.action.in_(actions))
    if actor_user_id is not None:
        query = query.where(AuditEvent.actor_user_id == actor_user_id)
    if patient_id is not None:
        query = query.where(AuditEvent.patient_id == patient_id)
    if flagged_only:
        query = query.where(AuditEvent.flagged.is_(True))
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    rows = (await session.execute(query)).all()
    return [
        AuditRow(
            id=row.id,
            at=row.at,
            actor_user_id=row.actor_user_id,
            actor_email=row.email,
            actor_role=row.role,
            action=row.action,
            subject_type=row.subject_type,
            subject_id=row.subject_id,
            patient_id=row.patient_id,
            client_addr=str(row.client_addr) if row.client_addr is not None else None,
            flagged=row.flagged,
            details=row.details,
        )
        for row in rows
    ]


async def record_access_log(session: AsyncSession, patient_id: int) -> Sequence[AuditRow]:
    """Who read this patient's records, newest first (filled by the records feature)."""
    return await list_events(
        session, patient_id=patient_id, actions=RECORD_ACCESS_ACTIONS, limit=500
    )
