"""What the doctor sees of records (issue #23 item 12): times in the clinic's zone,
downloads named by title and type (S3's: tests/integration/test_records_s3.py), and a
refusal that says nothing about the patient."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.records.documents import content_disposition
from db.models import MedicalRecord
from tests.integration.auth_helpers import browser_login
from tests.integration.test_records import PDF, add_appointment, empty_documents, upload
from tests.integration.world import BERLIN, PASSWORD, make_world

__all__ = ["empty_documents"]  # the fixture that empties the documents folder per test
NAME = "Röntgen Thorax (imaging).pdf"


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=2)
    await add_appointment(session, world, world.patients[0], "booked", 9)
    await add_appointment(session, world, world.patients[1], "cancelled", 10)
    return world


async def test_a_download_is_named_by_title_and_type(client, world):
    doctor = world.headers("doctor")
    patient = world.patients[0]
    created = await upload(client, doctor, patient, record_type="imaging", title="Röntgen Thorax")
    assert created.status_code == 201, created.text
    (record,) = (await client.get(f"/api/patients/{patient}/records", headers=doctor)).json()[
        "records"
    ]
    got = await client.get(record["document_url"])
    assert got.status_code == 200 and got.content == PDF
    assert got.headers.get_list("content-disposition") == [content_disposition(NAME)]
    assert "filename*=UTF-8''R%C3%B6ntgen%20Thorax%20%28imaging%29.pdf" in content_disposition(NAME)


async def test_the_panel_shows_upload_times_in_the_clinics_zone(client, world, session):
    patient = world.patients[0]
    await upload(client, world.headers("doctor"), patient, title="Blood count")
    uploaded = await session.scalar(select(MedicalRecord.uploaded_at))
    await browser_login(client, email="doc@t.test", password=PASSWORD)
    panel = await client.get(f"/patients/{patient}/records")
    local = uploaded.astimezone(BERLIN)
    assert f'<time datetime="{local.isoformat()}">' in panel.text
    assert local.strftime("%Y-%m-%d %H:%M %Z") in panel.text  # CET or CEST, not UTC
    assert "(UTC)" not in panel.text


async def test_the_refusal_page_says_nothing_about_the_patient(client, world):
    await browser_login(client, email="doc@t.test", password=PASSWORD)
    refused = await client.get(f"/patients/{world.patients[1]}/records")
    assert "break-glass reason" in refused.text
    assert "Patient 1" not in refused.text
    panel = re.search(r'<section id="records-\d+".*?</section>', refused.text, re.S)
    assert panel and 'aria-label="Medical records"' in panel.group(0)
    allowed = await client.get(f"/patients/{world.patients[0]}/records")
    assert "Records — Patient 0" in allowed.text  # a patient in their care is named
