"""Medical records over HTTP with the local-disk store: who may read what (every role by
relationship), an audit row for every read, signed download URLs (bytes, expiry,
tampering), upload validation, no orphans, and the live channel's handshake."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import shutil
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, text

from app.access import audit
from app.access.identity import Principal
from app.live.effects import Effects
from app.records import records
from app.records.documents import FOLDER
from app.services import Services
from app.storage import URL_SECONDS, DiskStore
from app.web.asgi import create_app
from db.models import Appointment, AuditEvent, MedicalRecord, User
from tests.integration.auth_helpers import csrf_from
from tests.integration.world import PASSWORD, World, at, make_world

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x01" * 500
REASON = "unconscious patient in the emergency room"


@dataclasses.dataclass
class RecordsWorld:
    world: World
    care: int  # patient0: booked with the doctor
    cancelled: int  # patient1: only a cancelled appointment
    no_show: int  # patient2: only a no-show
    store: DiskStore

    def h(self, name: str) -> dict[str, str]:
        return self.world.headers(name)


async def add_appointment(
    session, world: World, patient_id: int, status: str, hour: int, doctor=None
):
    day = dt.date.today() - dt.timedelta(days=3)
    session.add(
        Appointment(
            doctor_id=doctor or world.doctor_id,
            patient_id=patient_id,
            clinic_id=world.clinic_id if doctor is None else world.other_clinic_id,
            starts_at=at(day, hour),
            ends_at=at(day, hour, 30),
            status=status,
        )
    )
    await session.commit()


@pytest.fixture(autouse=True)
def empty_documents(settings):
    """The database is emptied per test; so is the documents folder that goes with it."""
    shutil.rmtree(settings.documents_dir / "patients", ignore_errors=True)


@pytest.fixture
async def rw(client, session, settings) -> RecordsWorld:
    world = await make_world(session, settings.secret_key, patients=3)
    care, cancelled, no_show = world.patients
    await add_appointment(session, world, care, "booked", 9)
    await add_appointment(session, world, cancelled, "cancelled", 10)
    await add_appointment(session, world, no_show, "no_show", 11)
    return RecordsWorld(world, care, cancelled, no_show, Services.of(client.app).documents)


async def upload(
    client, headers, patient_id, data=PDF, record_type="lab_result", title="Blood count"
):
    return await client.post(
        f"/api/patients/{patient_id}/records",
        files={"file": ("report.pdf", data, "application/pdf")},
        data={"record_type": record_type, "title": title},
        headers=headers,
    )


async def events(session, action=None):
    query = select(AuditEvent).order_by(AuditEvent.id)
    if action:
        query = query.where(AuditEvent.action == action)
    return (await session.scalars(query)).all()


async def test_disk_store_is_chosen_without_a_bucket(rw):
    assert isinstance(rw.store, DiskStore)


async def test_upload_list_and_download_through_the_signed_url(client, rw, session):
    created = await upload(client, rw.h("doctor"), rw.care, data=PDF)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["content_type"] == "application/pdf" and body["size"] == len(PDF)
    import hashlib

    assert body["sha256"] == hashlib.sha256(PDF).hexdigest()
    await upload(client, rw.h("doctor"), rw.care, data=PNG, record_type="imaging", title="X-ray")

    listed = await client.get(f"/api/patients/{rw.care}/records", headers=rw.h("doctor"))
    assert listed.status_code == 200
    payload = listed.json()
    assert payload["patient_id"] == rw.care
    assert [r["title"] for r in payload["records"]] == ["X-ray", "Blood count"]  # newest first
    first = payload["records"][0]
    assert set(first) == {
        "id",
        "record_type",
        "title",
        "doctor_name",
        "uploaded_at",
        "content_type",
        "size",
        "document_url",
    }
    assert first["doctor_name"] == "Dr. Berlin" and first["content_type"] == "image/png"
    for record, data in zip(payload["records"], (PNG, PDF), strict=True):
        url = record["document_url"]
        expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
        assert 0 < expires - time.time() <= 15 * 60
        got = await client.get(url)  # no credentials: the signature is the credential
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"].startswith(record["content_type"])
        assert got.headers["content-disposition"].startswith("attachment")


async def test_expired_and_tampered_download_urls_are_refused(client, rw, session):
    await upload(client, rw.h("doctor"), rw.care)
    key = await session.scalar(select(MedicalRecord.storage_key))
    (old,) = rw.store.urls([key], now=time.time() - URL_SECONDS - 1)
    expired = await client.get(old)
    assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    (url,) = rw.store.urls([key])
    path, _, query = url.partition("?")
    params = dict(parse_qsl(query))
    flipped = params["sig"][:-1] + ("a" if params["sig"][-1] != "a" else "b")
    for bad in (
        f"{path}?expires={params['expires']}&sig={flipped}",
        f"{path}?expires={int(params['expires']) + 86400}&sig={params['sig']}",
        f"{path}",
        f"/documents/patients/{rw.care}/{'0' * 32}.pdf?{query}",  # a signature for another key
        "/documents/..%2Fsecret_key?expires=9999999999&sig=x",
    ):
        refused = await client.get(bad)
        assert refused.status_code == 404, bad
    assert (await client.get(url)).status_code == 200


async def test_a_download_through_the_signed_url_is_audited_as_its_user(client, rw, session):
    await upload(client, rw.h("doctor"), rw.care)
    listed = await client.get(f"/api/patients/{rw.care}/records", headers=rw.h("patient0"))
    (record,) = listed.json()["records"]
    url = record["document_url"]
    params = dict(parse_qsl(urlsplit(url).query))
    patient0 = rw.world.users["patient0"].id
    assert params["u"] == str(patient0)  # the URL names whom it was issued to, signed
    for someone_else in ("u=999999", f"u={rw.world.users['doctor'].id}", "u="):
        forged = url.replace(f"u={patient0}", someone_else)
        assert (await client.get(forged)).status_code == 404, forged
    assert await events(session, audit.RECORD_DOWNLOADED) == []
    got = await client.get(url)
    assert got.status_code == 200 and got.content == PDF
    (download,) = await events(session, audit.RECORD_DOWNLOADED)
    assert (download.actor_user_id, download.subject_type, download.subject_id) == (
        patient0,
        "medical_record",
        record["id"],
    )
    assert download.patient_id == rw.care and download.details == {"via": "signed_url"}
    # The patient's own access log shows it among the reads.
    log = await audit.record_access_log(session, rw.care)
    assert audit.RECORD_DOWNLOADED in [row.action for row in log]


# --- access matrix: every role by relationship ------------------------------------------


@pytest.mark.parametrize(
    ("who", "patient", "reason", "expected"),
    [
        ("anonymous", "care", None, 401),
        ("patient0", "care", None, 200),  # own
        ("patient0", "cancelled", None, 404),  # another patient's: not found, no leak
        ("patient1", "cancelled", None, 200),
        ("doctor", "care", None, 200),  # booked with this doctor
        ("doctor", "cancelled", None, 403),  # a cancelled appointment is no care
        ("doctor", "no_show", None, 403),
        ("doctor", "cancelled", "too short", 403),  # the reason must say something
        ("doctor", "cancelled", REASON, 200),  # break-glass
        ("doctor", "unknown", REASON, 404),
        ("desk", "care", None, 403),  # own clinic's patient, still never content
        ("desk", "care", REASON, 403),
        ("other_desk", "care", None, 403),
        ("admin", "care", None, 403),  # break-glass only
        ("admin", "care", REASON, 200),
        ("admin", "unknown", REASON, 404),
    ],
)
async def test_who_may_list_whose_records(client, rw, session, who, patient, reason, expected):
    await upload(client, rw.h("doctor"), rw.care)
    ids = {"care": rw.care, "cancelled": rw.cancelled, "no_show": rw.no_show, "unknown": 987654}
    headers = {} if who == "anonymous" else rw.h(who)
    params = {"break_glass_reason": reason} if reason else {}
    before = len(await events(session))
    response = await client.get(
        f"/api/patients/{ids[patient]}/records", params=params, headers=headers
    )
    assert response.status_code == expected, response.text
    new = (await events(session))[before:]
    if expected == 200:
        (event,) = new
        assert event.patient_id == ids[patient]
        assert event.flagged is (reason is not None)
        assert event.action == (audit.BREAK_GLASS if reason else audit.RECORD_READ)
        if reason:
            assert event.details["reason"] == reason
    elif expected == 401:
        assert new == []  # nobody to name: the guard answers before any read
    else:
        # A refused read issues no URL and no read event, but leaves its own trace.
        (event,) = new
        why = {"desk": "wrong_role", "other_desk": "wrong_role", "patient0": "not_own"}
        assert event.action == audit.RECORD_REFUSED
        assert event.actor_user_id == rw.world.users[who].id
        assert event.details["asked_patient_id"] == ids[patient]
        assert event.details["reason"] == (
            "not_found" if patient == "unknown" else why.get(who, "not_in_care")
        )
        # The patient column only names a patient who exists (a foreign key).
        assert event.patient_id == (None if patient == "unknown" else ids[patient])
        assert event.flagged is (who != "doctor" and who != "admin")
    if expected == 403 and who == "doctor":
        assert "break-glass" in response.json()["detail"]


@pytest.mark.parametrize(
    ("status", "allowed"),
    [
        ("booked", True),
        ("checked_in", True),
        ("completed", True),
        ("cancelled", False),
        ("no_show", False),
    ],
)
async def test_care_is_a_booked_checked_in_or_completed_appointment(
    client, session, settings, status, allowed
):
    world = await make_world(session, settings.secret_key, patients=1)
    await add_appointment(session, world, world.patients[0], status, 9)
    response = await client.get(
        f"/api/patients/{world.patients[0]}/records", headers=world.headers("doctor")
    )
    assert response.status_code == (200 if allowed else 403)


async def test_another_doctors_patient_needs_break_glass(client, rw, session, settings):
    """A doctor's care covers their own patients only, not a colleague's."""
    session.add(
        User(
            email="doc2@t.test",
            password_hash=(await session.get(User, rw.world.users["doctor"].id)).password_hash,
            role="doctor",
            doctor_id=rw.world.other_doctor_id,
        )
    )
    await session.commit()
    token = (
        await client.post("/api/auth/token", json={"email": "doc2@t.test", "password": PASSWORD})
    ).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert (
        await client.get(f"/api/patients/{rw.care}/records", headers=headers)
    ).status_code == 403
    await add_appointment(
        session, rw.world, rw.care, "completed", 14, doctor=rw.world.other_doctor_id
    )
    assert (
        await client.get(f"/api/patients/{rw.care}/records", headers=headers)
    ).status_code == 200


async def test_every_read_is_audited_with_viewer_patient_and_record_ids(client, rw, session):
    ids = []
    for title in ("One", "Two", "Three"):
        ids.append((await upload(client, rw.h("doctor"), rw.care, title=title)).json()["id"])
    doctor_user = rw.world.users["doctor"].id
    await client.get(f"/api/patients/{rw.care}/records", headers=rw.h("doctor"))
    one = await client.get(f"/api/patients/{rw.care}/records/{ids[1]}", headers=rw.h("doctor"))
    assert one.status_code == 200 and one.json()["title"] == "Two" and one.json()["document_url"]
    missing = await client.get(f"/api/patients/{rw.care}/records/987654", headers=rw.h("doctor"))
    assert missing.status_code == 404
    await client.get(f"/api/patients/{rw.care}/records", headers=rw.h("patient0"))
    await client.get(
        f"/api/patients/{rw.care}/records",
        params={"break_glass_reason": REASON},
        headers=rw.h("admin"),
    )
    reads = await events(session, audit.RECORD_READ)
    assert [
        (e.actor_user_id, e.patient_id, e.details["record_ids"], e.subject_id) for e in reads
    ] == [
        (doctor_user, rw.care, ids[::-1], None),  # the list: every record whose URL left
        (doctor_user, rw.care, [ids[1]], ids[1]),  # one record
        (doctor_user, rw.care, [], 987654),  # a miss is still a recorded attempt
        (rw.world.users["patient0"].id, rw.care, ids[::-1], None),
    ]
    (glass,) = await events(session, audit.BREAK_GLASS)
    assert glass.flagged and glass.actor_user_id == rw.world.users["admin"].id
    assert glass.details["record_ids"] == ids[::-1] and glass.details["reason"] == REASON
    uploads = await events(session, records.RECORD_UPLOADED)
    assert [e.details["record_ids"] for e in uploads] == [[i] for i in ids]

    # The patient sees who looked, break-glass included.
    log = await client.get("/me/access-log", headers=rw.h("patient0"))
    assert "doc@t.test" in log.text and "admin@t.test" in log.text and "break-glass" in log.text


# --- uploads ------------------------------------------------------------------------------


async def stored_files(store: DiskStore) -> list[str]:
    return [key for key, _ in await store.keys(FOLDER)]


async def test_upload_validation_says_why(client, rw, session, settings):
    doctor = rw.h("doctor")
    wrong = await upload(client, doctor, rw.care, data=b"MZ\x90\x00 not a pdf at all")
    assert wrong.status_code == 415 and "PDF, PNG or JPEG" in wrong.json()["detail"]
    html_as_pdf = await upload(client, doctor, rw.care, data=b"<html>%PDF-1.4</html>")
    assert html_as_pdf.status_code == 415
    assert (await upload(client, doctor, rw.care, data=b"")).status_code == 422
    kind = await upload(client, doctor, rw.care, record_type="selfie")
    assert kind.status_code == 400 and "record_type" in kind.text  # the schema's enum
    assert (await upload(client, doctor, rw.care, title="   ")).status_code == 422
    assert (await upload(client, doctor, rw.care, title="a\x00b")).status_code == 422
    unknown = await upload(client, doctor, 987654)
    assert unknown.status_code == 404
    no_care = await upload(client, doctor, rw.cancelled)
    assert no_care.status_code == 403 and "appointment" in no_care.json()["detail"]
    assert (await upload(client, rw.h("patient0"), rw.care)).status_code == 403
    assert (await upload(client, rw.h("desk"), rw.care)).status_code == 403
    assert (await upload(client, rw.h("admin"), rw.care)).status_code == 403
    no_file = await client.post(
        f"/api/patients/{rw.care}/records",
        data={"record_type": "note", "title": "x"},
        headers=doctor,
    )
    assert no_file.status_code in (400, 422) and no_file.status_code < 500
    for data in (PNG, JPEG):
        assert (await upload(client, doctor, rw.care, data=data)).status_code == 201
    # Nothing half-done: exactly the two good uploads, each with its object.
    rows = (await session.scalars(select(MedicalRecord))).all()
    assert sorted(await stored_files(rw.store)) == sorted(r.storage_key for r in rows)
    assert [r.content_type for r in rows] == ["image/png", "image/jpeg"]


async def test_size_limit_from_settings(db, redis, settings, session):
    small = dataclasses.replace(settings, records_max_bytes=4096, rate_limit_user_per_minute=0)
    app = create_app(small)
    world = await make_world(session, settings.secret_key, patients=1)
    await add_appointment(session, world, world.patients[0], "checked_in", 9)
    async with AsyncTestClient(app=app) as client:
        doctor = world.headers("doctor")
        fits = await upload(client, doctor, world.patients[0], data=PDF + b"0" * (4096 - len(PDF)))
        assert fits.status_code == 201
        over = await upload(client, doctor, world.patients[0], data=PDF + b"0" * 4096)
        assert over.status_code == 413 and "limit is 4,096 bytes" in over.json()["detail"]
        # Far beyond the route's body limit: refused before the body is read.
        huge = await upload(client, doctor, world.patients[0], data=PDF + b"0" * 2_000_000)
        assert huge.status_code == 413
        # Other routes keep the app-wide 1 MiB limit; this one accepts 20 MB by default.
        store = Services.of(app).documents
        assert len(await stored_files(store)) == 1
    assert settings.records_max_bytes == 20 * 1024 * 1024


async def test_default_limit_accepts_a_five_megabyte_scan(client, rw):
    big = JPEG + os.urandom(5 * 1024 * 1024)
    created = await upload(client, rw.h("doctor"), rw.care, data=big, record_type="imaging")
    assert created.status_code == 201 and created.json()["size"] == len(big)


async def test_a_failing_row_leaves_no_object(rw, session, engine, redis):
    """The object is written first; when the row's transaction fails, it is deleted."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_record() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_record BEFORE INSERT ON medical_records "
                "FOR EACH ROW EXECUTE FUNCTION refuse_record()"
            )
        )
    try:
        actor = Principal(
            id=rw.world.users["doctor"].id,
            email="doc@t.test",
            role="doctor",
            doctor_id=rw.world.doctor_id,
        )
        with pytest.raises(Exception, match="disk full"):
            await records.upload(
                session,
                rw.store,
                actor,
                rw.care,
                data=PDF,
                record_type="note",
                title="Never stored",
                max_bytes=1 << 20,
                effects=Effects(redis),
            )
        assert await stored_files(rw.store) == []
        assert await session.scalar(select(func.count()).select_from(MedicalRecord)) == 0
    finally:
        await session.rollback()  # release the table before dropping the trigger
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER refuse_record ON medical_records"))
            await conn.execute(text("DROP FUNCTION refuse_record()"))


async def test_sweep_removes_stray_objects_and_reports_missing_ones(client, rw, session):
    kept = (await upload(client, rw.h("doctor"), rw.care)).json()["id"]
    stray_old = f"patients/{rw.care}/{'a' * 32}.pdf"
    stray_new = f"patients/{rw.care}/{'b' * 32}.pdf"
    for key in (stray_old, stray_new):
        await rw.store.put(key, PDF, "application/pdf")
    old = time.time() - 2 * 3600
    os.utime(rw.store.path(stray_old), (old, old))
    kept_key = await session.scalar(
        select(MedicalRecord.storage_key).where(MedicalRecord.id == kept)
    )
    lost = MedicalRecord(
        patient_id=rw.care,
        record_type="note",
        title="lost",
        storage_key=f"patients/{rw.care}/{'c' * 32}.pdf",
        content_type="application/pdf",
        size=1,
        sha256="0" * 64,
    )
    session.add(lost)
    await session.commit()
    report = await records.sweep_strays(session, rw.store, now=dt.datetime.now(dt.UTC))
    assert report.objects_deleted == [stray_old]  # the young one may still be committing
    assert report.rows_without_object == [lost.id]
    assert sorted(await stored_files(rw.store)) == sorted([kept_key, stray_new])


# --- pages --------------------------------------------------------------------------------


async def browser(client, email):
    token = csrf_from((await client.get("/login")).text)
    await client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    return csrf_from((await client.get("/me")).text)


async def test_doctor_day_opens_the_panel_and_uploads_from_it(client, rw, session):
    day = dt.date.today() - dt.timedelta(days=3)
    token = await browser(client, "doc@t.test")
    page = await client.get("/doctor/day", params={"date": day.isoformat()})
    assert (
        f'hx-get="/patients/{rw.care}/records"' in page.text
        and 'hx-target="#record-panel"' in page.text
    )
    hx = {"HX-Request": "true", "X-CSRF-Token": token}
    panel = await client.get(f"/patients/{rw.care}/records", headers=hx)
    assert panel.status_code == 200 and "<html" not in panel.text
    assert (
        f"view=records&amp;patient_id={rw.care}" in panel.text
        or f"view=records&patient_id={rw.care}" in panel.text
    )
    assert "Upload a document" in panel.text and "No records yet" in panel.text
    sent = await client.post(
        f"/patients/{rw.care}/records/upload",
        files={"file": ("scan.png", PNG, "image/png")},
        data={"record_type": "imaging", "title": "Knee <MRI>"},
        headers=hx,
    )
    assert sent.status_code == 200 and "Uploaded" in sent.text and "&lt;MRI&gt;" in sent.text
    refused = await client.post(
        f"/patients/{rw.care}/records/upload",
        files={"file": ("scan.pdf", b"not really", "application/pdf")},
        data={"record_type": "imaging", "title": "x"},
        headers=hx,
    )
    assert refused.status_code == 200 and 'class="error"' in refused.text
    listed = await client.get(f"/patients/{rw.care}/records", params={"part": "list"}, headers=hx)
    assert "Knee &lt;MRI&gt;" in listed.text and "Upload a document" not in listed.text
    assert "/documents/patients/" in listed.text
    # No care: the panel asks for a break-glass reason instead of showing anything.
    glass = await client.get(f"/patients/{rw.cancelled}/records", headers=hx)
    assert "Break-glass reason" in glass.text and "Download" not in glass.text
    opened = await client.get(
        f"/patients/{rw.cancelled}/records", params={"break_glass_reason": REASON}, headers=hx
    )
    assert "logged and flagged" in opened.text and "Upload a document" not in opened.text
    page_events = [e for e in await events(session) if e.details.get("via") == "page"]
    assert [e.action for e in page_events] == [
        audit.RECORD_READ,
        audit.RECORD_READ,
        audit.RECORD_REFUSED,  # the break-glass form: refused until a reason is given
        audit.BREAK_GLASS,
    ]
    assert page_events[-1].flagged


async def test_patient_sees_own_records_page_and_desk_never(client, rw):
    await upload(client, rw.h("doctor"), rw.care, title="Discharge letter")
    await browser(client, "p0@t.test")
    mine = await client.get("/me/records")
    assert mine.status_code == 200 and "Discharge letter" in mine.text and "<html" in mine.text
    assert "Upload a document" not in mine.text
    assert (await client.get(f"/patients/{rw.cancelled}/records")).status_code == 404
    client.cookies.clear()
    await browser(client, "desk@t.test")
    assert (await client.get(f"/patients/{rw.care}/records")).status_code == 403


# --- live channel handshake and delivery (a real server process) ---------------------------


async def test_records_channel_admits_only_readers_and_delivers_uploads(rw, live_server, settings):
    import websockets

    url = live_server.url.replace("http", "ws") + "/ws/live?view=records&patient_id={}&after={}"
    origin = live_server.url

    async def connect(name, patient_id, after=0):
        return await websockets.connect(
            url.format(patient_id, after),
            origin=origin,
            additional_headers=rw.h(name),
            open_timeout=5,
        )

    # Refused in the handshake (before accept: the browser sees 403, i.e. close 1008).
    for name, patient in (
        ("desk", rw.care),
        ("admin", rw.care),  # break-glass is per read, never a subscription
        ("doctor", rw.cancelled),  # no care relationship
        ("patient1", rw.care),  # another patient
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(name, patient)
        assert refused.value.response.status_code == 403, name
    doctor = await connect("doctor", rw.care)
    patient = await connect("patient0", rw.care)
    await asyncio.sleep(0.3)  # let the subscriptions register
    import httpx

    async with httpx.AsyncClient(base_url=live_server.url) as http:
        created = await http.post(
            f"/api/patients/{rw.care}/records",
            files={"file": ("r.pdf", PDF, "application/pdf")},
            data={"record_type": "note", "title": "Live one"},
            headers=rw.h("doctor"),
        )
    assert created.status_code == 201
    for ws in (doctor, patient):
        message = await asyncio.wait_for(ws.recv(), 5)
        assert f'id="records-refresh-{rw.care}"' in message and "hx-swap-oob" in message
        assert "Live one" not in message  # ids only: the list itself comes from an audited read
        await ws.close()
    # A panel that reconnects after missing an upload is told to reload; an up-to-date one is not.
    stale = await connect("doctor", rw.care, after=0)
    assert "records-refresh" in await asyncio.wait_for(stale.recv(), 5)
    await stale.close()
    fresh = await connect("doctor", rw.care, after=created.json()["id"])
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fresh.recv(), 1)
    await fresh.close()
