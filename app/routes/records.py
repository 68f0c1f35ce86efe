"""Medical records: the JSON API, the records panel (doctor's day, patient's page), uploads,
and the signed download route of the local-disk store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from litestar import Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.response import File, Response, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.errors import DomainError, Invalid
from app.i18n import gettext
from app.live.effects import Effects
from app.records import records
from app.records.documents import content_disposition
from app.routes.inputs import Id
from app.routes.responses import BY_ID_RULES, answers
from app.routes.responses import SIGNED_IN as SIGNED_IN_ANSWERS
from app.routes.views import message, page
from app.services import Services
from app.settings import Settings
from app.storage import DiskStore
from app.storage import Store as DocumentStore
from app.web.guards import PUBLIC, allow, client_addr
from db.models import RECORD_TYPES

# Reads admit every signed-in role: records.py refuses front desks (403) itself, so the
# refusal is audited like every other (a guard's 403 would leave no trace).
SIGNED_IN = allow()
# Multipart framing and the form's other fields, on top of the file itself.
MULTIPART_OVERHEAD = 256 * 1024
PRINTABLE_TITLE = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
if TYPE_CHECKING:
    RecordType = str
else:
    RecordType = Literal[RECORD_TYPES]
# Why someone outside the patient's care reads their records (logged, flagged for review).
BreakGlassReason = Annotated[str | None, Parameter(max_length=records.MAX_REASON_CHARS)]


def _store(request: Request[Any, Any, Any]) -> DocumentStore:
    return Services.of(request.app).documents


@get("/api/patients/{patient_id:int}/records", guards=[SIGNED_IN], responses=BY_ID_RULES)
async def list_api(
    request: Request[Any, Any, Any],
    actor: Principal,
    patient_id: Id,
    break_glass_reason: BreakGlassReason = None,
) -> dict[str, Any]:
    """All of a patient's records with download URLs (valid 10 minutes), in one response.

    The read runs on a pooled connection outside any session (none is made for it):
    bench/README.md, cpu17b."""
    _, items = await records.list_records(
        Services.of(request.app).engine,
        _store(request),
        actor,
        patient_id,
        reason=break_glass_reason,
        client_addr=client_addr(request),
    )
    return {"patient_id": patient_id, "records": [item.as_json() for item in items]}


@get(
    "/api/patients/{patient_id:int}/records/{record_id:int}",
    guards=[SIGNED_IN],
    responses=BY_ID_RULES,
)
async def view_api(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    patient_id: Id,
    record_id: Id,
    break_glass_reason: BreakGlassReason = None,
) -> dict[str, Any]:
    """One record with a fresh download URL (the list returns them all at once)."""
    item = await records.view_record(
        db_session,
        _store(request),
        actor,
        patient_id,
        record_id,
        reason=break_glass_reason,
        client_addr=client_addr(request),
    )
    return item.as_json()


@dataclass
class RecordUpload:
    """The upload API's multipart body, as its schema states it (records.upload checks
    the same rules for the panel's form, and the file's content: PDF, PNG or JPEG)."""

    file: UploadFile
    record_type: RecordType
    # Printable text (records.upload also refuses what Python deems unprintable).
    title: Annotated[
        str,
        Parameter(min_length=1, max_length=records.MAX_TITLE_CHARS, pattern=PRINTABLE_TITLE),
    ]


async def _form(request: Request[Any, Any, Any]) -> tuple[bytes, str, str]:
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise Invalid(gettext("attach the document as the multipart field `file`"))
    data = await upload.read()
    return data, str(form.get("record_type") or ""), str(form.get("title") or "")


def upload_routes(settings: Settings) -> list[Any]:
    """The upload handlers, with the body limit raised to RECORDS_MAX_BYTES for them only."""
    limit = settings.records_max_bytes + MULTIPART_OVERHEAD

    @post(
        "/api/patients/{patient_id:int}/records",
        guards=[allow("doctor")],
        request_max_body_size=limit,
        status_code=201,
        responses=answers(*SIGNED_IN_ANSWERS, 404, 413, 422),
    )
    async def upload_api(
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        actor: Principal,
        effects: Effects,
        patient_id: Id,
        data: Annotated[RecordUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> dict[str, Any]:
        """Multipart `file`, `record_type`, `title`: a PDF, PNG or JPEG for a patient in
        the doctor's care."""
        record = await records.upload(
            db_session,
            _store(request),
            actor,
            patient_id,
            data=await data.file.read(),
            record_type=data.record_type,
            title=data.title,
            max_bytes=settings.records_max_bytes,
            effects=effects,
            client_addr=client_addr(request),
        )
        return {
            "id": record.id,
            "patient_id": record.patient_id,
            "record_type": record.record_type,
            "title": record.title,
            "content_type": record.content_type,
            "size": record.size,
            "sha256": record.sha256,
            "uploaded_at": record.uploaded_at.isoformat(),
        }

    @post(
        "/patients/{patient_id:int}/records/upload",
        guards=[allow("doctor")],
        request_max_body_size=limit,
        include_in_schema=False,
        status_code=200,
    )
    async def upload_page(
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        actor: Principal,
        effects: Effects,
        patient_id: Id,
    ) -> Response[str]:
        """The panel's upload form; the new row reaches every open panel over the socket."""
        try:
            data, record_type, title = await _form(request)
            record = await records.upload(
                db_session,
                _store(request),
                actor,
                patient_id,
                data=data,
                record_type=record_type,
                title=title,
                max_bytes=settings.records_max_bytes,
                effects=effects,
                client_addr=client_addr(request),
            )
        except DomainError as exc:  # htmx swaps only 2xx: say why in the panel
            return _upload_message(request, patient_id, exc.detail, error=True)
        return _upload_message(
            request, patient_id, gettext("Uploaded “%(title)s”.") % {"title": record.title}
        )

    return [upload_api, upload_page]


def _upload_message(
    request: Request[Any, Any, Any], patient_id: int, text: str, error: bool = False
) -> Response[str]:
    """Replaces the panel's upload message (records/panel.html)."""
    element = f"records-upload-msg-{patient_id}"
    return message(request, element, text, error=error, polite=False)


async def _panel(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    patient_id: Id,
    reason: str | None,
    part: str,
) -> Template | Response[str]:
    context: dict[str, Any] = {
        "patient_id": patient_id,
        "record_types": RECORD_TYPES,
        "can_upload": False,
        "records": [],
        "need_reason": None,
        "patient_name": None,
    }
    try:
        the_grant, items = await records.list_records(
            db_session,
            _store(request),
            actor,
            patient_id,
            reason=reason,
            client_addr=client_addr(request),
            via="page",
        )
    except records.BreakGlassRequired as exc:
        # Nothing about a patient the reader may not see: not even the name.
        context.update(need_reason=exc.detail)
        return page(request, "records/panel.html", "panel", **context)
    context.update(
        patient_name=the_grant.patient_name,
        basis=the_grant.basis,
        records=items,
        latest_id=max((item.id for item in items), default=0),
        live=the_grant.basis in ("own", "care"),
        can_upload=the_grant.basis == "care",
    )
    return page(request, "records/panel.html", "list" if part == "list" else "panel", **context)


@get("/patients/{patient_id:int}/records", guards=[SIGNED_IN], include_in_schema=False)
async def panel_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    actor: Principal,
    patient_id: Id,
    break_glass_reason: BreakGlassReason = None,
    part: str = "panel",
) -> Template | Response[str]:
    """A patient's records: the whole page, the panel for the doctor's day (htmx), or just
    the list when a live update asks for it. Each is an audited read."""
    return await _panel(request, db_session, actor, patient_id, break_glass_reason, part)


@get("/me/records", guards=[allow("patient")], include_in_schema=False)
async def my_records(
    request: Request[Any, Any, Any], db_session: AsyncSession, actor: Principal
) -> Template | Response[str]:
    """The signed-in patient's own records."""
    assert actor.patient_id is not None
    return await _panel(request, db_session, actor, actor.patient_id, None, "panel")


def _gone(status: int, detail: str) -> Response[dict[str, Any]]:
    return Response({"status_code": status, "detail": detail}, status_code=status)


@get("/documents/{key:path}", opt=PUBLIC, include_in_schema=False)
async def download(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    key: str,
    expires: str = "",
    sig: str = "",
    u: str = "",
) -> File | Response[dict[str, Any]]:
    """A document of the local-disk store, saved under its title and type. Public on
    purpose: the signed, expiring URL is the credential, issued only by an audited read to
    the user `u` it names; each download is audited in turn."""
    store = _store(request)
    key = key.lstrip("/")
    if not isinstance(store, DiskStore):
        return _gone(404, "not found")
    verdict = store.verify(key, expires, sig, issued_to=u)
    if verdict == "invalid":  # tampered, made up or not ours: say nothing more
        return _gone(404, "not found")
    if verdict == "expired":
        return _gone(410, "this link has expired; open the records list again for a fresh one")
    path = store.path(key)
    if not path.is_file():
        return _gone(404, "not found")
    issued_to = int(u) if u else None
    stored = await records.audit_download(
        db_session, key, issued_to=issued_to, client_addr=client_addr(request)
    )
    if stored is None:
        return _gone(404, "not found")
    filename, content_type = stored
    return File(
        path=path,
        filename=filename,
        media_type=content_type,
        headers={"content-disposition": content_disposition(filename)},
    )


ROUTES = [list_api, view_api, panel_page, my_records, download]
