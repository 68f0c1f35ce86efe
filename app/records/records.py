"""Medical records: who may read them, the one-query list with download URLs, uploads.

Access (docs/security.md): a patient reads their own records; a doctor those of patients
with a booked, checked-in or completed appointment with them; anyone else only through
break-glass (doctors and admins, with a written reason, flagged in the audit); front desks
never. Every list, view and URL issued writes an audit event in the same transaction, and
the URLs are handed out only after it commits; a refused read writes a `records.refused`
event (who, whose, why); a download through a signed URL of the disk store, its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.access import audit
from app.access.identity import Principal
from app.errors import DomainError, Forbidden, Invalid, NotFound
from app.i18n import gettext
from app.live.effects import Effects
from app.records.documents import (
    CONTENT_TYPES,
    FOLDER,
    content_disposition,
    download_name,
    new_key,
)
from app.storage import Store as DocumentStore
from app.zones import zone
from db.models import RECORD_TYPES, Appointment, AuditEvent, MedicalRecord, Patient
from db.session import NativeStatement, driver_fetch, driver_fetchall, session_factory

RECORD_UPLOADED = "records.uploaded"
# A doctor's appointment in one of these makes the patient theirs to read.
CARE_STATUSES = ("booked", "checked_in", "completed")
MIN_REASON_CHARS = 10
MAX_REASON_CHARS = 1000  # longer reasons are cut to this in the log
MAX_TITLE_CHARS = 200

# Magic bytes: the type is decided by what the file is, never by its name.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
)


class TooLarge(DomainError):
    status_code = 413


class UnsupportedType(DomainError):
    status_code = 415


class BreakGlassRequired(Forbidden):
    """No care relationship: reading needs break-glass with a written reason. It says
    nothing about the patient: whoever meets it may not see them."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Why this actor may read this patient's records."""

    patient_id: int
    patient_name: str
    basis: str  # own, care or break_glass
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RecordItem:
    id: int
    record_type: str
    title: str
    doctor_name: str | None
    uploaded_at: dt.datetime
    content_type: str
    size: int
    document_url: str | None
    timezone: str = "UTC"  # the author's clinic's, for showing the time

    @property
    def uploaded_local(self) -> dt.datetime:
        """When it was uploaded, in its clinic's time zone."""
        return self.uploaded_at.astimezone(zone(self.timezone))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "record_type": self.record_type,
            "title": self.title,
            "doctor_name": self.doctor_name,
            "uploaded_at": self.uploaded_at.isoformat(),
            "content_type": self.content_type,
            "size": self.size,
            "document_url": self.document_url,
        }


def _care(doctor_id: int, patient_id: int) -> Any:
    return exists().where(
        Appointment.patient_id == patient_id,
        Appointment.doctor_id == doctor_id,
        Appointment.status.in_(CARE_STATUSES),
    )


async def grant(
    session: AsyncSession, actor: Principal, patient_id: int, *, reason: str | None = None
) -> Grant:
    """Decide whether `actor` may read `patient_id`'s records, and on what basis.

    Args:
        reason: the break-glass justification, for readers without a care relationship.

    Raises:
        NotFound: no such patient, or another patient's records (no existence leak).
        BreakGlassRequired: a doctor without care, or an admin, gave no (long enough) reason.
        Forbidden: front desks, who never see record content.
    """
    _refuse_early(actor, patient_id)
    care = None
    if actor.role == "doctor" and actor.doctor_id is not None:
        care = _care(actor.doctor_id, patient_id)
    columns: list[Any] = [Patient.full_name]
    if care is not None:
        columns.append(care)
    row = (await session.execute(select(*columns).where(Patient.id == patient_id))).one_or_none()
    if row is None:
        raise NotFound(gettext("patient %(patient_id)s not found") % {"patient_id": patient_id})
    return _decide(actor, patient_id, row[0], care is not None and bool(row[1]), reason)


def _refuse_early(actor: Principal, patient_id: int) -> None:
    if actor.role == "front_desk":
        raise Forbidden(gettext("front desks never see medical records"))
    if actor.role == "patient" and actor.patient_id != patient_id:
        raise NotFound(gettext("patient %(patient_id)s not found") % {"patient_id": patient_id})


def _decide(
    actor: Principal, patient_id: int, patient_name: str, care: bool, reason: str | None
) -> Grant:
    if actor.role == "patient":
        return Grant(patient_id, patient_name, "own")
    if care:
        return Grant(patient_id, patient_name, "care")
    reason = _break_glass_reason(reason)
    if reason is None:
        who = "you have no booked, checked-in or completed appointment with this patient"
        if actor.role == "admin":
            who = "admins read records only through break-glass"
        raise BreakGlassRequired(
            f"{who}; to read them anyway, give a break-glass reason of at least "
            f"{MIN_REASON_CHARS} characters (it is logged and flagged for review)"
        )
    return Grant(patient_id, patient_name, "break_glass", reason)


def _break_glass_reason(reason: str | None) -> str | None:
    """The reason as logged, or None when it is too short to count."""
    reason = (reason or "").strip()
    return reason[:MAX_REASON_CHARS] if len(reason) >= MIN_REASON_CHARS else None


async def may_follow(session: AsyncSession, actor: Principal, patient_id: int) -> bool:
    """Whether live updates of this patient's records may reach `actor`: the patient
    themself and doctors with care only (break-glass is per read, never a subscription)."""
    if actor.role == "patient":
        return actor.patient_id == patient_id
    if actor.role == "doctor" and actor.doctor_id is not None:
        return bool(await session.scalar(select(_care(actor.doctor_id, patient_id))))
    return False


async def newer_than(session: AsyncSession, patient_id: int, record_id: int) -> bool:
    """Whether the patient has a record newer than `record_id` (no content read)."""
    query = select(
        exists().where(MedicalRecord.patient_id == patient_id, MedicalRecord.id > record_id)
    )
    return bool(await session.scalar(query))


# One statement per read (C-2): the access decision, the list and the audit event, in one
# round trip and one implicit transaction. `g` decides the basis like `_decide` (own; care:
# a booked, checked-in or completed appointment with the doctor; break-glass when a reason
# was given), `r` reads the records only when there is a basis, through
# ix_medical_records_patient_uploaded with a primary-key join for the author's name, and
# `audit` inserts the event naming every record id only when there is a basis (a
# data-modifying CTE runs whether or not the outer query reads it). No rows: no such
# patient. A NULL basis: refused, nothing read and nothing written. Plain SQL, compiled once:
# building the equivalent expression per request cost more than executing it.
READ_AND_AUDIT = text(
    """
WITH g AS (
    SELECT p.full_name AS patient_name,
           CASE
               WHEN CAST(:own AS boolean) THEN 'own'
               WHEN EXISTS (
                   SELECT FROM appointments a
                   WHERE a.patient_id = p.id
                     AND a.doctor_id = CAST(:doctor_id AS bigint)
                     AND a.status IN ('booked', 'checked_in', 'completed')
               ) THEN 'care'
               WHEN CAST(:reason AS text) IS NOT NULL THEN 'break_glass'
           END AS basis
    FROM patients p
    WHERE p.id = CAST(:patient_id AS bigint)
),
r AS (
    SELECT m.id, m.record_type, m.title, d.full_name AS doctor_name, m.uploaded_at,
           m.content_type, m.size, m.storage_key, c.timezone
    FROM g
    JOIN medical_records m
      ON g.basis IS NOT NULL
     AND m.patient_id = CAST(:patient_id AS bigint)
     AND (CAST(:record_id AS bigint) IS NULL OR m.id = CAST(:record_id AS bigint))
    LEFT JOIN doctors d ON d.id = m.author_doctor_id
    LEFT JOIN clinics c ON c.id = d.clinic_id
),
audit AS (
    INSERT INTO audit_events
        (actor_user_id, action, subject_type, subject_id, patient_id, client_addr, flagged,
         details)
    SELECT CAST(:actor_user_id AS bigint),
           CASE g.basis WHEN 'break_glass' THEN :break_glass_action ELSE :read_action END,
           CAST(:subject_type AS text),
           CAST(:record_id AS bigint),
           CAST(:patient_id AS bigint),
           CAST(:client_addr AS inet),
           g.basis = 'break_glass',
           jsonb_build_object(
               'record_ids',
               (SELECT coalesce(jsonb_agg(r.id ORDER BY r.uploaded_at DESC, r.id DESC), '[]')
                FROM r),
               'urls_issued', (SELECT count(*) FROM r),
               'basis', g.basis,
               'via', CAST(:via AS text)
           )
           || CASE WHEN g.basis = 'break_glass'
                   THEN jsonb_build_object('reason', CAST(:reason AS text))
                   ELSE '{}'::jsonb END
    FROM g
    WHERE g.basis IS NOT NULL
)
SELECT g.patient_name, g.basis, r.id, r.record_type, r.title, r.doctor_name, r.uploaded_at,
       r.content_type, r.size, r.storage_key, r.timezone
FROM g LEFT JOIN r ON true
ORDER BY r.uploaded_at DESC, r.id DESC
"""
)
_READ_AND_AUDIT = NativeStatement.of(READ_AND_AUDIT)


async def _run_once(
    session: AsyncSession | AsyncEngine, statement: NativeStatement, params: dict[str, Any]
) -> list[Any]:
    """Run one statement and commit it, in as few round trips as possible, straight
    through asyncpg (`driver_fetch`: SQLAlchemy's layers around it cost more CPU than
    the driver's work, bench/README.md); rows are read by name.

    A session that has not begun is given an autocommit connection: the statement is its
    own transaction (atomic, committed when it returns), with no BEGIN or COMMIT round
    trips. A session already in a transaction (the caller changed something first) runs it
    there and commits, so the caller's changes are never split from it. An engine lends a
    pooled connection for the statement alone (autocommit as well), with no session.
    """
    if isinstance(session, AsyncEngine):
        return await driver_fetchall(session, statement.sql, *statement.args(params))
    if session.in_transaction():
        await session.flush()  # as session.execute would: the statement sees them
        rows = await driver_fetch(await session.connection(), statement.sql, statement.args(params))
        await session.commit()
        return rows
    conn = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    try:
        rows = await driver_fetch(conn, statement.sql, statement.args(params))
    except BaseException:
        await session.rollback()
        raise
    await session.commit()  # ends the session's transaction: the connection goes back
    return rows


def _refusal_reason(actor: Principal, patient_id: int, refusal: DomainError) -> str:
    if isinstance(refusal, BreakGlassRequired):
        return "not_in_care"  # a doctor without care, or an admin, and no break-glass reason
    if isinstance(refusal, Forbidden):
        return "wrong_role"
    if actor.role == "patient" and actor.patient_id != patient_id:
        return "not_own"
    return "not_found"


async def _audit_refusal(
    session: AsyncSession,
    actor: Principal,
    patient_id: int,
    record_id: int | None,
    refusal: DomainError,
    *,
    client_addr: str | None,
    via: str,
) -> None:
    """One `records.refused` event, committed: who asked for whose records and why they
    were refused. The patient column is set only when that patient exists (the foreign
    key); the id asked for is always in the details. Like a read, it commits with whatever
    the caller's transaction holds."""
    reason = _refusal_reason(actor, patient_id, refusal)
    await session.execute(
        insert(AuditEvent).values(
            actor_user_id=actor.id,
            action=audit.RECORD_REFUSED,
            subject_type="medical_record" if record_id is not None else "medical_record_list",
            subject_id=record_id,
            patient_id=select(Patient.id).where(Patient.id == patient_id).scalar_subquery(),
            client_addr=audit.inet(client_addr),
            # A patient trying another's id, or a front desk at records: worth a look.
            flagged=reason in ("not_own", "wrong_role"),
            details={
                "reason": reason,
                "role": actor.role,
                "asked_patient_id": patient_id,
                "via": via,
            },
        )
    )
    await session.commit()


async def _read(
    session: AsyncSession | AsyncEngine,
    store: DocumentStore,
    actor: Principal,
    patient_id: int,
    *,
    record_id: int | None,
    reason: str | None,
    client_addr: str | None,
    via: str,
) -> tuple[Grant, list[RecordItem]]:
    try:
        _refuse_early(actor, patient_id)
        reason = _break_glass_reason(reason) if actor.role in ("doctor", "admin") else None
        found = await _run_once(
            session,
            _READ_AND_AUDIT,
            {
                "own": actor.role == "patient",
                "doctor_id": actor.doctor_id if actor.role == "doctor" else None,
                "reason": reason,
                "patient_id": patient_id,
                "record_id": record_id,
                "actor_user_id": actor.id,
                "break_glass_action": audit.BREAK_GLASS,
                "read_action": audit.RECORD_READ,
                "subject_type": "medical_record"
                if record_id is not None
                else "medical_record_list",
                "client_addr": audit.inet(client_addr),  # the ORM path normalises it alike
                "via": via,
            },
        )
        if not found:
            raise NotFound(gettext("patient %(patient_id)s not found") % {"patient_id": patient_id})
        first = found[0]
        the_grant = _decide(
            actor, patient_id, first["patient_name"], first["basis"] == "care", reason
        )
    except (Forbidden, NotFound) as refusal:
        if isinstance(session, AsyncEngine):
            async with session_factory(session)() as own:
                await _audit_refusal(
                    own, actor, patient_id, record_id, refusal, client_addr=client_addr, via=via
                )
        else:
            await _audit_refusal(
                session, actor, patient_id, record_id, refusal, client_addr=client_addr, via=via
            )
        raise
    if the_grant.basis != first["basis"]:  # never hand out a URL without its audit row
        raise RuntimeError(f"access basis {the_grant.basis} != audited {first['basis']}")
    rows = [row for row in found if row["id"] is not None]
    urls = store.urls(
        [row["storage_key"] for row in rows],
        issued_to=actor.id,
        dispositions=_dispositions(store, rows),
    )
    items = [
        RecordItem(
            row["id"],
            row["record_type"],
            row["title"],
            row["doctor_name"],
            row["uploaded_at"],
            row["content_type"],
            row["size"],
            url,
            row["timezone"] or "UTC",
        )
        for row, url in zip(rows, urls, strict=True)
    ]
    return the_grant, items


def _dispositions(store: DocumentStore, rows: list[Any]) -> list[str] | None:
    """The download name of each record, for a store that signs it into the URL (S3);
    None for the disk store, whose download route names the file itself (app/routes/
    records.py), so a list does not pay for names it would not use (bench/README.md,
    cpu17g)."""
    if store.kind != "s3":
        return None
    return [
        content_disposition(download_name(row["title"], row["record_type"], row["content_type"]))
        for row in rows
    ]


async def list_records(
    session: AsyncSession | AsyncEngine,
    store: DocumentStore,
    actor: Principal,
    patient_id: int,
    *,
    reason: str | None = None,
    client_addr: str | None = None,
    via: str = "api",
) -> tuple[Grant, list[RecordItem]]:
    """All of a patient's records, newest first, each with a fresh download URL (C-2).

    One statement decides access and reads the list, the URLs are signed in process
    (microseconds each), and one audit event naming every record id is committed before
    the URLs are returned. Given an engine instead of a session, the statement runs on a
    pooled connection outside any session (a refusal opens one for its audit event).

    Returns:
        The grant (basis of access, patient name) and the records.

    Raises:
        NotFound, BreakGlassRequired, Forbidden: as `grant`.
    """
    return await _read(
        session,
        store,
        actor,
        patient_id,
        record_id=None,
        reason=reason,
        client_addr=client_addr,
        via=via,
    )


async def view_record(
    session: AsyncSession,
    store: DocumentStore,
    actor: Principal,
    patient_id: int,
    record_id: int,
    *,
    reason: str | None = None,
    client_addr: str | None = None,
) -> RecordItem:
    """One record with a fresh download URL (audited like a list of one)."""
    _, items = await _read(
        session,
        store,
        actor,
        patient_id,
        record_id=record_id,
        reason=reason,
        client_addr=client_addr,
        via="api",
    )
    if not items:
        raise NotFound(gettext("record %(record_id)s not found") % {"record_id": record_id})
    return items[0]


async def audit_download(
    session: AsyncSession, key: str, *, issued_to: int | None, client_addr: str | None
) -> tuple[str, str] | None:
    """Record a download of a document through its signed URL (the disk store's route).
    Commits before the file is sent.

    Args:
        issued_to: the user the URL was issued to (signed into it), who is taken as the
            actor: the URL is their credential.

    Returns:
        The name the document downloads as (its title and type) and its content type;
        None when no record names `key` (a stray object): nothing is served then.
    """
    found = (
        await session.execute(
            select(
                MedicalRecord.id,
                MedicalRecord.patient_id,
                MedicalRecord.title,
                MedicalRecord.record_type,
                MedicalRecord.content_type,
            ).where(MedicalRecord.storage_key == key)
        )
    ).one_or_none()
    if found is None:
        return None
    await audit.record(
        session,
        actor_user_id=issued_to,
        action=audit.RECORD_DOWNLOADED,
        subject_type="medical_record",
        subject_id=found.id,
        patient_id=found.patient_id,
        client_addr=client_addr,
        details={"via": "signed_url"},
    )
    await session.commit()
    return download_name(found.title, found.record_type, found.content_type), found.content_type


def sniff(data: bytes) -> str | None:
    """The extension (pdf, png, jpg) the content really is, or None."""
    for magic, extension in SIGNATURES:
        if data.startswith(magic):
            return extension
    return None


async def upload(
    session: AsyncSession,
    store: DocumentStore,
    actor: Principal,
    patient_id: int,
    *,
    data: bytes,
    record_type: str,
    title: str,
    max_bytes: int,
    effects: Effects,
    client_addr: str | None = None,
) -> MedicalRecord:
    """Store a document and its row: the object first, then the row in one transaction;
    if the row fails the object is deleted, so neither exists without the other (a crash
    between the two leaves an object that `sweep_strays` removes). Once it is committed,
    `effects` tells every open records panel of the patient (ids only).

    Raises:
        NotFound, Forbidden: unknown patient, no care relationship (no break-glass writes).
        TooLarge (413), UnsupportedType (415), Invalid (422): the reason is in the detail.
    """
    if actor.role != "doctor" or actor.doctor_id is None:
        raise Forbidden(gettext("only doctors upload records"))
    the_grant = await grant(session, actor, patient_id)  # BreakGlassRequired without care
    if len(data) > max_bytes:
        raise TooLarge(f"the file is {len(data):,} bytes; the limit is {max_bytes:,} bytes")
    if not data:
        raise Invalid(gettext("the file is empty"))
    extension = sniff(data)
    if extension is None:
        raise UnsupportedType("the file is not a PDF, PNG or JPEG (checked by its content)")
    if record_type not in RECORD_TYPES:
        raise Invalid(
            gettext("record_type must be one of %(choices)s") % {"choices": ", ".join(RECORD_TYPES)}
        )
    title = " ".join(title.split())
    if not title or len(title) > MAX_TITLE_CHARS or not title.isprintable():
        raise Invalid(
            gettext("give a title of 1 to %(max_title_chars)s characters")
            % {"max_title_chars": MAX_TITLE_CHARS}
        )
    key = new_key(patient_id, extension)
    content_type = CONTENT_TYPES[extension]
    digest = hashlib.sha256(data).hexdigest()
    await store.put(key, data, content_type)
    try:
        record = MedicalRecord(
            patient_id=the_grant.patient_id,
            author_doctor_id=actor.doctor_id,
            record_type=record_type,
            title=title,
            storage_key=key,
            content_type=content_type,
            size=len(data),
            sha256=digest,
        )
        session.add(record)
        await session.flush()
        await audit.record(
            session,
            actor_user_id=actor.id,
            action=RECORD_UPLOADED,
            subject_type="medical_record",
            subject_id=record.id,
            patient_id=patient_id,
            client_addr=client_addr,
            details={"record_ids": [record.id], "size": len(data), "sha256": digest},
        )
        await session.commit()
    except BaseException:
        await session.rollback()
        await store.delete(key)
        raise
    await effects.record_uploaded(patient_id, record.id)
    return record


@dataclass(frozen=True, slots=True)
class SweepReport:
    objects_deleted: list[str]
    rows_without_object: list[int]


async def sweep_strays(
    session: AsyncSession,
    store: DocumentStore,
    *,
    now: dt.datetime,
    grace: dt.timedelta = dt.timedelta(hours=1),
    delete: bool = True,
) -> SweepReport:
    """Delete stored objects that no row names (an upload that died between its two
    steps), and report rows whose object is missing. Objects younger than `grace` are
    left alone: their upload may still be committing."""
    stored = dict(await store.keys(FOLDER))
    known = {
        key: record_id
        for record_id, key in (
            await session.execute(select(MedicalRecord.id, MedicalRecord.storage_key))
        ).all()
    }
    strays = sorted(k for k, at in stored.items() if k not in known and at < now - grace)
    if delete:
        for key in strays:
            await store.delete(key)
    missing = sorted(
        record_id
        for key, record_id in known.items()
        if key.startswith("patients/") and key not in stored
    )
    return SweepReport(strays, missing)
