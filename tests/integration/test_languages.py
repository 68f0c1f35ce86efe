"""Languages end to end: a German patient's pages, API errors and reminder e-mail are in
German; a visitor's Accept-Language is honoured; the header's switcher persists (a cookie
for visitors, the profile for patients, which their reminders then follow)."""

import datetime as dt

import pytest
from sqlalchemy import select, update

from app.web.i18n import COOKIE_NAME
from db.models import Patient
from tasks.reminders import dispatch
from tests.integration.notification_servers import (
    SmtpSink,
    eventually,
    notify_settings,
    running_worker,
)
from tests.integration.notification_world import book_api, outbox_rows, world_with_contacts
from tests.integration.world import at, day_after_tomorrow

GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}


@pytest.fixture
async def world(client, session, settings):
    world = await world_with_contacts(
        session,
        settings.secret_key,
        [("anna@patients.test", None, "email"), ("ben@patients.test", None, "email")],
    )
    await session.execute(
        update(Patient).where(Patient.id == world.patients[0]).values(language="de")
    )
    await session.commit()
    return world


async def test_a_german_patient_sees_german_pages_whatever_the_browser_says(client, world):
    english_browser = {"Accept-Language": "en-US,en;q=0.9", **world.headers("patient0")}
    mine = await client.get("/me/appointments", headers=english_browser)
    assert mine.status_code == 200
    assert '<html lang="de">' in mine.text
    assert "<h1>Meine Termine</h1>" in mine.text and "Nichts gebucht." in mine.text
    assert "My appointments</h1>" not in mine.text
    day = day_after_tomorrow()
    week = await client.get(f"/doctors/{world.doctor_id}/slots?date={day}", headers=english_browser)
    assert "Zeiten in Europe/Berlin" in week.text and "Später" in week.text
    # The other patient (English, the default) with the same browser: English.
    other = await client.get("/me/appointments", headers=world.headers("patient1"))
    assert "<h1>My appointments</h1>" in other.text and '<html lang="en">' in other.text


async def test_a_visitors_accept_language_is_honoured(client, world):
    german = await client.get("/doctors", headers=GERMAN)
    assert "<h1>Ärztin oder Arzt finden</h1>" in german.text
    assert (await client.get("/doctors")).text.count("<h1>Find a doctor</h1>") == 1
    unknown = await client.get("/doctors", headers={"Accept-Language": "fr-FR, ja;q=0.5"})
    assert "<h1>Find a doctor</h1>" in unknown.text  # nothing we speak: DEFAULT_LANGUAGE


async def test_api_errors_speak_the_patients_language(client, world):
    past = at(day_after_tomorrow() - dt.timedelta(days=5), 10)
    body = {"doctor_id": world.doctor_id, "start": past.isoformat()}
    german = await client.post("/api/appointments", json=body, headers=world.headers("patient0"))
    assert german.status_code == 422
    assert german.json()["detail"] == "diese Zeit liegt in der Vergangenheit"
    english = await client.post("/api/appointments", json=body, headers=world.headers("patient1"))
    assert english.json()["detail"] == "this time is in the past"
    asked = await client.post(
        "/api/appointments", json=body, headers={**world.headers("patient1"), **GERMAN}
    )
    assert asked.json()["detail"] == "this time is in the past"  # the saved choice wins


async def test_the_switcher_sets_a_cookie_for_a_visitor(client, world):
    page = await client.get("/doctors")
    token = client.cookies.get("medbook_csrf")
    assert 'action="/language"' in page.text and token
    chosen = await client.post(
        "/language",
        data={"language": "de", "next": "/doctors", "csrf_token": token},
        follow_redirects=False,
    )
    assert chosen.status_code == 303 and chosen.headers["location"] == "/doctors"
    assert client.cookies.get(COOKIE_NAME) == "de"
    assert "<h1>Ärztin oder Arzt finden</h1>" in (await client.get("/doctors")).text
    away = await client.post(
        "/language",
        data={"language": "de", "next": "//evil.test/", "csrf_token": token},
        follow_redirects=False,
    )
    assert away.headers["location"] == "/"  # only our own pages
    refused = await client.post("/language", data={"language": "xx", "csrf_token": token})
    assert refused.status_code == 422 and "Bitte wählen Sie" in refused.json()["detail"]


async def test_the_switcher_saves_a_patients_choice_and_their_reminder_follows(
    client, world, session, settings, engine, monkeypatch
):
    headers = world.headers("patient1")
    page = await client.get("/me/appointments", headers=headers)
    assert "<h1>My appointments</h1>" in page.text
    switched = await client.post(
        "/language", data={"language": "de"}, headers=headers, follow_redirects=False
    )
    assert switched.status_code == 303
    client.cookies.clear()  # the saved choice, not the cookie, carries it from now on
    assert "<h1>Meine Termine</h1>" in (await client.get("/me/appointments", headers=headers)).text
    saved = await session.scalar(
        select(Patient.language)
        .where(Patient.id == world.patients[1])
        .execution_options(populate_existing=True)
    )
    assert saved == "de"

    start = at(day_after_tomorrow(), 10)

    async def delivered(count):
        return len(sink.messages) >= count

    with SmtpSink() as sink:
        worker_settings = notify_settings(settings, smtp=sink)
        async with running_worker(worker_settings, monkeypatch) as worker:
            await book_api(client, world, start, who="patient1")
            await eventually(lambda: delivered(1))
            (row,) = await outbox_rows(session, kind="reminder_24h")
            await dispatch(engine, worker.queue, worker_settings, now=row.due_at)
            await eventually(lambda: delivered(2))
    confirmation, reminder = sink.messages
    assert confirmation.message["Subject"].startswith("Termin bestätigt")
    assert reminder.message["Subject"].startswith("Erinnerung: Ihr Termin morgen")
    local = start.strftime("%d").lstrip("0")
    assert "Eine Erinnerung an Ihren Termin morgen." in reminder.text
    assert f", {local}. " in reminder.text and "10:00 C" in reminder.text
    assert "Wann:" in reminder.text and 'lang="de"' in reminder.html
    assert "SUMMARY:Termin bei Dr. Berlin" in reminder.ics.replace("\r\n ", "")


@pytest.mark.parametrize(
    ("who", "path", "heading"),
    [
        ("desk", "/desk", "Sprechstunde ohne Termin buchen"),
        ("desk", "/desk/waitlist", "<h1>Warteliste</h1>"),
        ("doctor", "/doctor/day", "Vorheriger Tag"),
        ("admin", "/admin/clinics", "Praxis hinzufügen"),
        ("admin", "/admin/doctors", "Ärztin/Arzt hinzufügen"),
        ("admin", "/admin/doctors/{doctor}/schedule", "Wochenzeiten speichern"),
        ("admin", "/admin/doctors/{doctor}/visit-types", "Besuchsart hinzufügen"),
        ("admin", "/admin/users", "Personalkonten"),
        ("admin", "/admin/audit", "Protokoll"),
        ("admin", "/admin/notifications", "Unzugestellte Nachrichten"),
        ("admin", "/admin/mailbox", "Entwickler-Postfach"),
        ("admin", "/analytics", "Beliebte Zeiten"),
        ("admin", "/analytics/exports", "Termine als CSV exportieren"),
        ("patient0", "/me", "Passwort ändern"),
        ("patient0", "/me/profile", "Mein Profil"),
        ("patient0", "/me/notifications", "Bestätigungen und Erinnerungen"),
        ("patient0", "/me/access-log", "Wer Ihre Befunde gesehen hat"),
    ],
)
async def test_every_role_gets_its_pages_in_german(client, world, who, path, heading):
    headers = {**world.headers(who), **GERMAN}
    page = await client.get(path.format(doctor=world.doctor_id), headers=headers)
    assert page.status_code == 200, page.text[:300]
    assert heading in page.text and '<html lang="de">' in page.text


async def test_a_clinics_page_speaks_its_language_when_we_speak_none_the_browser_asks_for(
    client, world
):
    day = day_after_tomorrow()
    berlin = f"/doctors/{world.doctor_id}/slots?date={day}"
    new_york = f"/doctors/{world.other_doctor_id}/slots?date={day}"
    french = {"Accept-Language": "fr-FR, ja;q=0.5"}
    page = await client.get(berlin, headers=french)
    assert "Zeiten in Europe/Berlin" in page.text
    assert '&lang=de"' in page.text  # its live fragments too
    assert "times in America/New_York" in (await client.get(new_york, headers=french)).text
    english = await client.get(berlin, headers={"Accept-Language": "en"})
    assert "times in Europe/Berlin" in english.text  # the browser's choice wins
    # No Accept-Language at all (an API client, a script): DEFAULT_LANGUAGE everywhere.
    assert "times in Europe/Berlin" in (await client.get(berlin)).text
    assert "<h1>Find a doctor</h1>" in (await client.get("/doctors", headers=french)).text


async def test_the_switcher_offers_only_the_interfaces_languages_on_every_page(client, world):
    profile = await client.get("/me/profile", headers=world.headers("patient1"))
    switcher = profile.text.split('id="language-choice"')[1].split("</select>")[0]
    assert switcher.count("<option") == 2 and "English" in switcher and "Deutsch" in switcher


async def test_refusals_before_anyone_is_known_speak_the_language_asked_for(client, world):
    """The CSRF refusal and the refused access token come before a user is known: the
    cookie's or Accept-Language's language, as for a visitor's pages."""
    forged = await client.post("/language", data={"language": "de"}, headers=GERMAN)
    assert forged.status_code == 403
    assert forged.json()["detail"] == (
        "das Sicherheitstoken des Formulars fehlt oder ist veraltet; laden Sie die Seite neu"
    )
    english = await client.post("/language", data={"language": "de"})
    assert "security token is missing" in english.json()["detail"]
    bad_token = {"Authorization": "Bearer not-a-token"}
    german = await client.get("/api/appointments", headers={**bad_token, **GERMAN})
    assert german.status_code == 401
    assert german.json()["detail"] == "das Zugriffstoken ist ungültig oder abgelaufen"
    by_cookie = await client.get(
        "/api/appointments", headers={**bad_token, "Cookie": f"{COOKIE_NAME}=de"}
    )
    assert by_cookie.json()["detail"] == "das Zugriffstoken ist ungültig oder abgelaufen"
    plain = await client.get("/api/appointments", headers=bad_token)
    assert plain.json()["detail"] == "the access token is invalid or expired"


async def test_the_fhir_api_answers_in_english_whatever_is_asked(client, world):
    """By decision (docs/fhir.md): OperationOutcome diagnostics are for integrators."""
    refused = await client.get(
        "/fhir/R4/Practitioner", headers={"Authorization": "Bearer not-a-token", **GERMAN}
    )
    assert refused.status_code == 401
    assert refused.json()["issue"][0]["diagnostics"] == "the access token is invalid or expired"
    past = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": "2020-01-01T09:00:00+01:00",
        "participant": [
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"}
        ],
    }
    german_patient = {**world.headers("patient0"), **GERMAN}
    answer = await client.post("/fhir/R4/Appointment/$book", json=past, headers=german_patient)
    assert answer.status_code == 422
    assert answer.json()["issue"][0]["diagnostics"] == "this time is in the past"
