"""CSV exports: appointments streamed with COPY by a SAQ job, report tables in one go.

An appointment export is a row in `export_jobs` plus a SAQ job (`tasks.analytics.run_export`)
that streams `COPY (SELECT …) TO STDOUT` from the read engine straight into a file, a
chunk at a time, so memory stays flat whatever the range; progress (rows written) goes to
the job row on the primary every half second. The finished file is stored as
`exports/{id}.csv` (app/storage.py: under `settings.data_dir`, or in S3 when `S3_BUCKET`
is set) until it expires.

What a CSV holds is deliberately little (docs/analytics.md): ids, times, status, doctor
and clinic. No names, no reason for the visit (free text that may hold health details):
whoever needs a person's details looks them up with the access checks and audit trail of
the app itself. Requesting and downloading are audited.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app import storage
from app.access import audit
from app.access.identity import Principal
from app.analytics.reports import (
    WEEKDAYS,
    Cancellations,
    NoShowReport,
    PopularSlots,
    ReportScope,
    Utilisation,
    timed_out,
)
from app.errors import NotFound
from app.i18n import gettext
from app.settings import Settings
from app.storage import DiskStore, S3Store, Store
from db.models import ExportJob

log = logging.getLogger(__name__)

EXPORT_REQUESTED = "export.requested"
EXPORT_DOWNLOADED = "export.downloaded"
EXPORT_TTL = dt.timedelta(hours=24)
PROGRESS_EVERY_SECONDS = 0.5
COLUMNS = (
    "id",
    "clinic_id",
    "doctor_id",
    "patient_id",
    "starts_at",
    "ends_at",
    "status",
    "booked_at",
    "cancelled_at",
)

# Clinic-local days, as the reports count them; the UTC bounds let the scan use
# ix_appointments_clinic_starts (one clinic) or a range of the table (all clinics).
_WHERE = """
FROM appointments a JOIN clinics c ON c.id = a.clinic_id
WHERE a.starts_at >= CAST($1 AS date) - interval '1 day'
  AND a.starts_at < CAST($2 AS date) + interval '2 days'
  AND (a.starts_at AT TIME ZONE c.timezone)::date BETWEEN $1 AND $2
  AND ($3::bigint IS NULL OR a.clinic_id = $3)
  AND a.status <> 'held'"""
EXPORT_SQL = f"""
SELECT a.id, a.clinic_id, a.doctor_id, a.patient_id, a.starts_at, a.ends_at, a.status,
       a.created_at AS booked_at, a.cancelled_at
{_WHERE}
ORDER BY a.starts_at, a.id"""
COUNT_SQL = f"SELECT count(*) {_WHERE}"


@dataclass(frozen=True, slots=True)
class ExportView:
    """What the page and the API show of an export."""

    id: str
    status: str
    first_day: dt.date
    last_day: dt.date
    clinic_id: int | None
    rows_total: int | None
    rows_done: int
    size_bytes: int
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    expires_at: dt.datetime | None

    @property
    def percent(self) -> int:
        if self.status == "done":
            return 100
        if not self.rows_total:
            return 0
        return min(99, self.rows_done * 100 // self.rows_total)

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def filename(self) -> str:
        clinic = f"clinic{self.clinic_id}" if self.clinic_id else "all-clinics"
        return f"appointments-{clinic}-{self.first_day}-{self.last_day}.csv"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "from": self.first_day.isoformat(),
            "to": self.last_day.isoformat(),
            "clinic_id": self.clinic_id,
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "percent": self.percent,
            "size_bytes": self.size_bytes,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "download_url": f"/api/analytics/exports/{self.id}/file"
            if self.status == "done"
            else None,
        }


def _view(job: ExportJob) -> ExportView:
    return ExportView(
        job.id,
        job.status,
        job.first_day,
        job.last_day,
        job.clinic_id,
        job.rows_total,
        job.rows_done,
        job.size_bytes,
        job.error,
        job.created_at,
        job.finished_at,
        job.expires_at,
    )


async def create_export(
    session: AsyncSession, actor: Principal, scope: ReportScope, client_addr: str | None
) -> ExportView:
    """Record an export request (audited) and commit; the caller then enqueues the job."""
    job = ExportJob(
        id=uuid.uuid4().hex,
        requested_by=actor.id,
        clinic_id=scope.clinic_id,
        first_day=scope.first_day,
        last_day=scope.last_day,
    )
    session.add(job)
    await session.flush()
    await audit.record(
        session,
        actor_user_id=actor.id,
        action=EXPORT_REQUESTED,
        subject_type="export",
        client_addr=client_addr,
        details={
            "export_id": job.id,
            "from": scope.first_day.isoformat(),
            "to": scope.last_day.isoformat(),
            "clinic_id": scope.clinic_id,
        },
    )
    await session.commit()
    await session.refresh(job)
    return _view(job)


async def _owned(session: AsyncSession, actor: Principal, export_id: str) -> ExportJob:
    """The export if the actor made it (admins see all); otherwise 404, never 403."""
    job = await session.get(ExportJob, export_id)
    if job is None or (actor.role != "admin" and job.requested_by != actor.id):
        raise NotFound(gettext("no such export"))
    return job


async def mark_failed(session: AsyncSession, export_id: str, message: str) -> None:
    """Record why an export will not run (its job could not be queued)."""
    await session.execute(
        update(ExportJob)
        .where(ExportJob.id == export_id)
        .values(status="failed", error=message, finished_at=dt.datetime.now(dt.UTC))
    )
    await session.commit()


async def get_export(session: AsyncSession, actor: Principal, export_id: str) -> ExportView:
    return _view(await _owned(session, actor, export_id))


async def my_exports(session: AsyncSession, actor: Principal, limit: int = 20) -> list[ExportView]:
    rows = await session.scalars(
        select(ExportJob)
        .where(ExportJob.requested_by == actor.id)
        .order_by(ExportJob.created_at.desc())
        .limit(limit)
    )
    return [_view(j) for j in rows]


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Download:
    """Either a local file to send or a (pre-signed) URL to redirect to."""

    path: Path | None = None
    url: str | None = None


def export_store(settings: Settings) -> Store:
    """Where finished exports live: the S3 bucket, or `data_dir` (keys `exports/{id}.csv`)."""
    return storage.create_store(settings, settings.data_dir)


def work_dir(settings: Settings) -> Path:
    """Where an export is written before it is stored (beside its place on the disk)."""
    return settings.data_dir / "exports"


def _key(export_id: str) -> str:
    return f"exports/{export_id}.csv"


def stored_file(store: Store, key: str, filename: str, until: dt.datetime) -> Download:
    """The stored file itself on disk, or a pre-signed URL that lives until the export
    expires (between one and fifteen minutes).

    Raises:
        NotFound: the file is no longer on the disk.
    """
    if isinstance(store, DiskStore):
        path = store.path(key)
        if not path.is_file():
            raise NotFound(gettext("this export's file is gone; request it again"))
        return Download(path=path)
    assert isinstance(store, S3Store)
    seconds = max(60, min(900, int((until - dt.datetime.now(dt.UTC)).total_seconds())))
    return Download(url=store.download_url(key, filename, seconds))


async def download(
    session: AsyncSession,
    store: Store,
    actor: Principal,
    export_id: str,
    client_addr: str | None,
    now: dt.datetime,
) -> tuple[ExportView, Download]:
    """The file of a finished export (audited).

    Raises:
        NotFound: unknown, someone else's, not finished, or expired.
    """
    job = await _owned(session, actor, export_id)
    if job.status != "done" or job.storage_key is None:
        raise NotFound("this export is not ready" if job.status != "expired" else "expired")
    if job.expires_at is not None and job.expires_at <= now:
        raise NotFound(gettext("this export has expired; request it again"))
    view = _view(job)
    assert view.expires_at is not None
    found = stored_file(store, job.storage_key, view.filename, view.expires_at)
    await audit.record(
        session,
        actor_user_id=actor.id,
        action=EXPORT_DOWNLOADED,
        subject_type="export",
        client_addr=client_addr,
        details={"export_id": job.id, "rows": job.rows_done},
    )
    await session.commit()
    return view, found


# --- the job ----------------------------------------------------------------------------------


async def copy_appointments(
    read_engine: AsyncEngine,
    first_day: dt.date,
    last_day: dt.date,
    clinic_id: int | None,
    output: Callable[[bytes], Awaitable[None]],
) -> None:
    """Stream the appointments of a range as CSV (with a header) into `output`, chunk by
    chunk, with COPY TO STDOUT on the read engine (its statement timeout applies)."""
    async with read_engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.copy_from_query(
            EXPORT_SQL, first_day, last_day, clinic_id, output=output, format="csv", header=True
        )


async def count_appointments(
    read_engine: AsyncEngine, first_day: dt.date, last_day: dt.date, clinic_id: int | None
) -> int:
    async with read_engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        return int(await driver.fetchval(COUNT_SQL, first_day, last_day, clinic_id))


async def run_export(
    engine: AsyncEngine, read_engine: AsyncEngine, store: Store, work: Path, export_id: str
) -> ExportView:
    """Write one export's CSV and mark it done. Safe to run again: a finished export is
    left alone, an unfinished one starts over.

    Args:
        engine: the primary, where the job row is kept.
        read_engine: where appointments are read (the replica when configured).
        work: the folder the file is written in before it is stored (`work_dir`).
    """
    async with AsyncSession(engine, expire_on_commit=False) as session:
        job = await session.get(ExportJob, export_id)
        if job is None:
            raise NotFound(
                gettext("export %(export_id)s does not exist") % {"export_id": export_id}
            )
        if job.status in ("done", "expired"):
            return _view(job)
        first_day, last_day, clinic_id = job.first_day, job.last_day, job.clinic_id

    async def set_fields(**values: Any) -> None:
        async with engine.begin() as conn:
            await conn.execute(update(ExportJob).where(ExportJob.id == export_id).values(**values))

    started = dt.datetime.now(dt.UTC)
    await set_fields(status="running", started_at=started, rows_done=0, error=None)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    partial = work / f"{export_id}.part"
    rows, size, last = -1, 0, time.monotonic()  # -1: the header line is not a row
    try:
        total = await count_appointments(read_engine, first_day, last_day, clinic_id)
        await set_fields(rows_total=total)
        with partial.open("wb") as file:

            async def write(chunk: bytes) -> None:
                nonlocal rows, size, last
                file.write(chunk)
                # Only ids, times and a status: no field can hold a newline.
                rows += chunk.count(b"\n")
                size += len(chunk)
                if time.monotonic() - last >= PROGRESS_EVERY_SECONDS:
                    last = time.monotonic()
                    await set_fields(rows_done=max(rows, 0), size_bytes=size)

            await copy_appointments(read_engine, first_day, last_day, clinic_id, write)
        key = _key(export_id)
        await store.put_file(key, partial, "text/csv")
    except Exception as exc:
        partial.unlink(missing_ok=True)
        message = (
            "the export took longer than the analytics time limit and was cancelled"
            if timed_out(exc)
            else f"the export failed: {type(exc).__name__}"
        )
        await set_fields(status="failed", error=message, finished_at=dt.datetime.now(dt.UTC))
        if not timed_out(exc):
            raise  # a lost connection or a full disk: SAQ retries
        # Running it again would only time out again: the row says why it failed.
        log.warning("export %s cancelled by its statement timeout", export_id)
    else:
        finished = dt.datetime.now(dt.UTC)
        await set_fields(
            status="done",
            rows_done=max(rows, 0),
            size_bytes=size,
            storage_key=key,
            finished_at=finished,
            expires_at=finished + EXPORT_TTL,
        )
    async with AsyncSession(engine) as session:
        job = await session.get(ExportJob, export_id)
        assert job is not None
        return _view(job)


async def purge_expired(engine: AsyncEngine, store: Store, now: dt.datetime) -> int:
    """Delete the files of expired exports and mark them expired; returns how many."""
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                text(
                    "UPDATE export_jobs SET status = 'expired' WHERE status = 'done' "
                    "AND expires_at <= :now RETURNING storage_key"
                ),
                {"now": now},
            )
        ).all()
    for (key,) in rows:
        if key:
            await store.delete(key)
    return len(rows)


# --- report tables as CSV ---------------------------------------------------------------------


def _csv(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def no_shows_csv(report: NoShowReport) -> str:
    return _csv(
        (report.group_by, "label", "appointments", "attended", "no_show", "no_show_rate"),
        ((r.key, r.label, r.appointments, r.attended, r.no_show, r.rate) for r in report.rows),
    )


def popular_slots_csv(report: PopularSlots) -> str:
    return _csv(
        ("weekday", "hour", "bookings"),
        ((WEEKDAYS[w], h, n) for (w, h), n in sorted(report.counts.items())),
    )


def utilisation_csv(report: Utilisation) -> str:
    return _csv(
        (report.by, "label", "available_minutes", "booked_minutes", "utilisation"),
        (
            (r.key, r.label, r.available_minutes, r.booked_minutes, r.utilisation)
            for r in report.rows
        ),
    )


def cancellations_csv(report: Cancellations) -> str:
    return _csv(("cancelled_before_start", "cancellations"), report.by_lead)
