"""Languages (app/i18n.py): every message extracted today has a finished German
translation whose placeholders match, the catalogues compile, the language is chosen in
the documented order, and dates, times and templates follow it."""

import datetime as dt
import io

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import DictLoader, Environment

from app import i18n
from app.analytics.reports import PopularSlots, ReportScope
from app.notifications import mail
from app.settings import PROJECT_ROOT
from tests.unit.test_notifications import outgoing

KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}


def fresh_extraction() -> set[str]:
    """Every msgid in app/, tasks/ and templates/ now, by babel.cfg (what `make messages`
    extracts), so a message added without a translation fails here, not in production."""
    with (PROJECT_ROOT / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    found = set()
    for _, _, message, _, _ in extract_from_dir(
        str(PROJECT_ROOT), method_map, options_map, keywords=KEYWORDS
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def catalogue(language: str):
    path = i18n.LOCALES_DIR / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as f:
        return read_po(f, locale=language)


@pytest.fixture(scope="module")
def extracted() -> set[str]:
    return fresh_extraction()


def test_there_is_something_to_translate(extracted):
    assert len(extracted) > 300 and "Cancel" in extracted and "Reminders" in extracted


@pytest.mark.parametrize("language", i18n.LANGUAGES[1:])
def test_every_extracted_message_has_a_finished_translation(extracted, language):
    translated = {}
    for message in catalogue(language):
        if not message.id:
            continue
        key = message.id if isinstance(message.id, str) else message.id[0]
        strings = [message.string] if isinstance(message.string, str) else message.string
        if all(strings) and not message.fuzzy:
            translated[key] = message
    missing = sorted(extracted - set(translated))
    assert not missing, f"{language}: {len(missing)} without a translation, e.g. {missing[:5]}"


def test_the_template_on_disk_is_the_fresh_extraction(extracted):
    """app/locales/messages.pot is what translators start from: `make messages` keeps it."""
    with (i18n.LOCALES_DIR / "messages.pot").open("rb") as f:
        pot = {m.id if isinstance(m.id, str) else m.id[0] for m in read_po(f) if m.id}
    assert pot == extracted


@pytest.mark.parametrize("language", i18n.LANGUAGES[1:])
def test_translations_keep_their_placeholders(language):
    problems = [
        (message.id, [str(e) for e in errors]) for message, errors in catalogue(language).check()
    ]
    assert not problems


@pytest.mark.parametrize("language", i18n.LANGUAGES[1:])
def test_catalogues_compile(language):
    data = i18n.compile_catalogue(language)
    german = Translations(io.BytesIO(data))
    assert german.gettext("Cancel") != "Cancel"
    assert german.ngettext(
        "%(count)s appointment this day conflicts with leave or a closure: "
        "select it to move or cancel.",
        "%(count)s appointments this day conflict with leave or a closure: "
        "select them to move or cancel.",
        2,
    ).startswith("%(count)s Termine")


def test_negotiation_prefers_the_saved_choice_then_the_browser_then_the_clinic():
    assert i18n.negotiate("de", "en-US,en;q=0.9", "en") == "de"
    assert i18n.negotiate(None, "fr-CH, de;q=0.8, en;q=0.5", "en") == "de"
    assert i18n.negotiate(None, "en;q=0.2, de-AT;q=0.9", None) == "de"
    assert i18n.negotiate(None, "fr, es", "de") == "de"  # nothing we speak: the clinic's
    assert i18n.negotiate(None, "", None, default="de") == "de"
    assert i18n.negotiate(None, None, None) == "en"
    # A saved language without a catalogue (the profile also offers fr, es) is no choice.
    assert i18n.negotiate("fr", "de", None) == "de"


def test_accept_language_weights_and_junk():
    assert i18n.accepted("de;q=0.5, en;q=0.9, *") == ["en", "de"]
    assert i18n.accepted("de;q=0, en") == ["en"]
    assert i18n.accepted("de;q=abc, en") == ["en"]
    assert i18n.accepted("") == []


def test_a_clinics_default_comes_from_its_zone():
    assert i18n.clinic_language("Europe/Berlin") == "de"
    assert i18n.clinic_language("America/New_York") == "en"
    assert i18n.clinic_language("America/New_York", default="de") == "de"


def test_dates_and_times_follow_the_language_in_the_clinics_zone():
    instant = dt.datetime(2027, 3, 30, 7, 30, tzinfo=dt.UTC)
    assert i18n.moment(instant, "Europe/Berlin") == "Tue 30 Mar 2027, 09:30 CEST"
    with i18n.use_language("de"):
        assert i18n.moment(instant, "Europe/Berlin") == "Di., 30. März 2027, 09:30 CEST"
        assert i18n.time(instant, "America/New_York") == "03:30"
        assert i18n.weekdays([0, 6]) == "Mo., So."
        assert i18n.number(1234.5) == "1.234,5"
    assert i18n.current() == "en"  # the block ends, the language is restored


def test_templates_translate_with_variables_escaped():
    env = Environment(
        loader=DictLoader({"t.html": "{% trans when=name %}Book {{ when }}{% endtrans %}"}),
        autoescape=True,
    )
    i18n.install_jinja(env)
    with i18n.use_language("de"):
        assert env.get_template("t.html").render(name="<b>") == "&lt;b&gt; buchen"
    assert env.get_template("t.html").render(name="x") == "Book x"


def test_a_reminder_is_written_in_the_patients_language():
    item = outgoing("reminder_24h", language="de")
    subject, text, html = mail.render_text(item, "https://m.test")
    assert subject.startswith("Erinnerung: Ihr Termin morgen: So. 28. März 09:00 CEST")
    assert "Eine Erinnerung an Ihren Termin morgen." in text and "Wann:" in text
    assert 'lang="de"' in html and "Praxis" in html
    sms = mail.render_sms(outgoing("reminder_24h", language="de"), "https://m.test")
    assert sms.startswith("medbook: Erinnerung: Termin morgen: So. 28. März 09:00 CEST")
    assert "SUMMARY:Termin bei Dr. Anna Becker" in mail.calendar(
        item, "https://m.test", dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    )
    assert i18n.current() == "en"


def test_what_a_person_asks_for_is_told_apart_from_the_defaults():
    assert i18n.preferred(None, "de-CH") == "de"
    assert i18n.preferred("en", "de") == "en"
    assert i18n.preferred(None, "fr, ja;q=0.5") is None  # the clinic's default may apply
    assert i18n.preferred(None, None) is None


def test_the_heat_maps_busiest_hours_name_weekdays_in_the_language():
    day = dt.date(2026, 12, 7)
    popular = PopularSlots(ReportScope(day, day, None), {(1, 10): 4, (0, 9): 2})
    assert popular.busiest == [("Tue 10:00", 4), ("Mon 09:00", 2)]
    with i18n.use_language("de"):
        assert popular.busiest == [("Di. 10:00", 4), ("Mo. 09:00", 2)]


def test_the_dashboards_groupings_and_row_labels_follow_the_language():
    """Rows keep English labels for the API and the CSV; the page shows them translated."""
    from app.analytics import reports
    from app.analytics.rollups import LEAD_BUCKETS

    assert reports.shown_label("weekday", 0, "Mon") == "Mon"
    assert reports.shown_label("lead_time", 0, LEAD_BUCKETS[0]) == "under 1 day"
    assert reports.group_name("lead_time") == "lead time"
    with i18n.use_language("de"):
        assert reports.shown_label("weekday", 0, "Mon") == "Mo."
        assert reports.shown_label("lead_time", 0, LEAD_BUCKETS[0]) == "unter 1 Tag"
        assert reports.shown_label("lead_time", 5, LEAD_BUCKETS[5]) == "über 30 Tage"
        assert reports.shown_label("hour", 9, "09:00") == "09:00"
        assert reports.shown_label("doctor", 7, "Dr. Weber") == "Dr. Weber"
        assert [reports.group_name(g) for g in reports.GROUPS] == [
            "Praxis",
            "Ärztin/Arzt",
            "Wochentag",
            "Stunde",
            "Vorlaufzeit",
        ]
