"""Languages: the gettext catalogues (app/locales/<lang>/LC_MESSAGES/messages.po), the
language of the current request or message, how it is chosen, and dates, times and
numbers formatted for it with Babel in the clinic's time zone.

English is the source language: its messages are the msgids, so it needs no catalogue.
Another language is a catalogue compiled to `.mo` by `python -m app.i18n` (the install
step), or here on first use when the `.mo` is missing or older than its `.po`.
"""

from __future__ import annotations

import datetime as dt
import gettext as gettext_module
import io
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from functools import cache, lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime, format_time, get_timezone_name
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations
from jinja2 import Environment

LOCALES_DIR = Path(__file__).resolve().parent / "locales"
SOURCE_LANGUAGE = "en"
# Every language the interface speaks: the source language and one per catalogue.
LANGUAGES: tuple[str, ...] = (
    SOURCE_LANGUAGE,
    *sorted(p.name for p in LOCALES_DIR.iterdir() if (p / "LC_MESSAGES" / "messages.po").exists()),
)
NAMES = {"en": "English", "de": "Deutsch"}  # each in its own language, for the switcher
# A clinic's default when nothing else says: the language of its time zone's region.
ZONE_LANGUAGES = {
    "Europe/Berlin": "de",
    "Europe/Vienna": "de",
    "Europe/Zurich": "de",
    "Europe/Busingen": "de",
}


def N_(message: str) -> str:
    """Marks a message for extraction where it is defined; `gettext` translates it later."""
    return message


# The roles as people read them (the role's code where it is not listed).
ROLE_NAMES = {
    "patient": N_("patient"),
    "doctor": N_("doctor"),
    "front_desk": N_("front desk"),
    "admin": N_("admin"),
}

# An appointment's status as patients and staff read it.
STATUS_NAMES = {
    "booked": N_("booked"),
    "checked_in": N_("checked in"),
    "completed": N_("completed"),
    "cancelled": N_("cancelled"),
    "no_show": N_("no show"),
    "held": N_("held"),
}

# A medical record's type in words (templates: `_(record_type_names[t])`).
RECORD_TYPE_NAMES = {
    "lab_result": N_("lab result"),
    "prescription": N_("prescription"),
    "imaging": N_("imaging"),
    "referral": N_("referral"),
    "note": N_("note"),
    "other": N_("other"),
}

# A notification's kind in words (the undelivered page).
NOTICE_NAMES = {
    "confirmation": N_("confirmation"),
    "reminder_24h": N_("reminder 24h"),
    "reminder_1h": N_("reminder 1h"),
    "cancellation": N_("cancellation"),
    "exception": N_("exception"),
    "offer": N_("offer"),
    "password_reset": N_("password reset"),
    "email_verify": N_("email verify"),
}

_current: ContextVar[str] = ContextVar("language", default=SOURCE_LANGUAGE)


def _catalogue(language: str) -> tuple[Path, Path]:
    folder = LOCALES_DIR / language / "LC_MESSAGES"
    return folder / "messages.po", folder / "messages.mo"


def compile_catalogue(language: str) -> bytes:
    """The `.mo` bytes of a language's `.po`, written beside it when the folder is
    writable (an installed, read-only tree compiles in memory instead)."""
    po, mo = _catalogue(language)
    with po.open("rb") as f:
        catalog = read_po(f, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    data = buffer.getvalue()
    with suppress(OSError):
        mo.write_bytes(data)
    return data


@cache
def translations(language: str) -> gettext_module.NullTranslations:
    """The process's translations for `language` (English, or unknown: the msgids)."""
    if language == SOURCE_LANGUAGE or language not in LANGUAGES:
        return gettext_module.NullTranslations()
    po, mo = _catalogue(language)
    if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
        data = mo.read_bytes()
    else:
        data = compile_catalogue(language)
    return Translations(io.BytesIO(data))


def current() -> str:
    """The language of what is being rendered now (a request, a message, an event)."""
    return _current.get()


def set_language(language: str) -> None:
    """Make `language` the current one for the rest of this task (a request)."""
    _current.set(language if language in LANGUAGES else SOURCE_LANGUAGE)


@contextmanager
def use_language(language: str) -> Iterator[None]:
    """Render in `language` within the block (a reminder, a live fragment)."""
    token = _current.set(language if language in LANGUAGES else SOURCE_LANGUAGE)
    try:
        yield
    finally:
        _current.reset(token)


def gettext(message: str) -> str:
    return translations(_current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_current.get()).ngettext(singular, plural, n)


_ = gettext


def role_name(role: str) -> str:
    return gettext(ROLE_NAMES[role]) if role in ROLE_NAMES else role


def status_name(status: str) -> str:
    return gettext(STATUS_NAMES[status]) if status in STATUS_NAMES else status.replace("_", " ")


def supported(language: str | None) -> str | None:
    """`language` (or its primary subtag: de-AT → de) if the interface speaks it."""
    if not language:
        return None
    primary = language.strip().lower().replace("_", "-").split("-")[0]
    return primary if primary in LANGUAGES else None


def accepted(header: str) -> list[str]:
    """The languages of an Accept-Language header, best first (q=0 excluded)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):  # a header is short; bound it
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


def clinic_language(timezone: str | None, default: str = SOURCE_LANGUAGE) -> str:
    """A clinic's default language, from its time zone (Berlin → de), else `default`."""
    return ZONE_LANGUAGES.get(timezone or "", supported(default) or SOURCE_LANGUAGE)


def preferred(saved: str | None, accept_language: str | None) -> str | None:
    """What the person asks for: their saved choice, else the best language their browser
    accepts that we speak; None when neither says (the clinic's default then applies)."""
    if chosen := supported(saved):
        return chosen
    for tag in accepted(accept_language or ""):
        if chosen := supported(tag):
            return chosen
    return None


def negotiate(
    saved: str | None,
    accept_language: str | None,
    clinic_default: str | None,
    default: str = SOURCE_LANGUAGE,
) -> str:
    """The language to answer in: the user's saved choice, else the best the browser
    accepts that we speak, else the clinic's default, else `default`."""
    return (
        preferred(saved, accept_language)
        or supported(clinic_default)
        or supported(default)
        or SOURCE_LANGUAGE
    )


# Dates, times and numbers, in the current language and the clinic's zone.


def _locale() -> Locale:
    return _babel_locale(_current.get())


# English dates and times in the style the pages always had: 24-hour clock, day before month.
_FORMAT_LOCALES = {"en": "en_GB"}


@cache
def _babel_locale(language: str) -> Locale:
    return Locale.parse(_FORMAT_LOCALES.get(language, language))


# The few shapes the pages show, as CLDR patterns per language (English keeps the shapes
# the pages always had); a new language without its own falls back to Babel's styles.
PATTERNS = {
    "en": {
        "day": "EEE dd MMM",
        "weekday_day": "EEEE dd MMMM",
        "day_long": "EEEE dd MMMM y",
        "moment": "EEE dd MMM y, HH:mm",
        "slot": "EEE dd MMM, HH:mm",
        "letter": "EEEE d MMMM y, HH:mm",
        "sms": "EEE d MMM HH:mm",
    },
    "de": {
        "day": "EEE, d. MMM",
        "weekday_day": "EEEE, d. MMMM",
        "day_long": "EEEE, d. MMMM y",
        "moment": "EEE, d. MMM y, HH:mm",
        "slot": "EEE, d. MMM, HH:mm",
        "letter": "EEEE, d. MMMM y, HH:mm",
        "sms": "EEE d. MMM HH:mm",
    },
}
_STYLES = {
    "day": "medium",
    "weekday_day": "long",
    "day_long": "full",
    "moment": "medium",
    "slot": "medium",
    "letter": "full",
    "sms": "short",
}


def pattern(shape: str) -> str:
    """The pattern of a named shape (`day`, `day_long`, `moment`, `slot`) for the current
    language, or a Babel style where the language has none."""
    return PATTERNS.get(_current.get(), {}).get(shape) or _STYLES[shape]


def _local(value: dt.datetime, timezone: str | None) -> dt.datetime:
    return value.astimezone(ZoneInfo(timezone)) if timezone else value


def date(value: dt.date | dt.datetime, style: str = "medium") -> str:
    """A date: `style` is a shape of PATTERNS, Babel's (short, medium, long, full) or a
    CLDR pattern."""
    shape = pattern(style) if style in _STYLES else style
    if type(value) is dt.date:  # the same few days on every page: formatted once each
        return _cached_date(_current.get(), value, shape)
    return format_date(value, shape, locale=_locale())


@lru_cache(maxsize=4096)
def _cached_date(language: str, value: dt.date, shape: str) -> str:
    return format_date(value, shape, locale=_babel_locale(language))


def time(value: dt.datetime | dt.time, timezone: str | None = None, style: str = "short") -> str:
    """A wall-clock time (09:30, 9:30 AM) in the clinic's zone when given."""
    if isinstance(value, dt.datetime):
        value = _local(value, timezone).timetz().replace(tzinfo=None)
    return format_time(value, style, locale=_locale())


def datetime(value: dt.datetime, timezone: str | None = None, style: str = "medium") -> str:
    """A date and time in the clinic's zone, without the zone (see `zone`)."""
    local = _local(value, timezone).replace(tzinfo=None)
    return format_datetime(local, pattern(style) if style in _STYLES else style, locale=_locale())


def moment(value: dt.datetime, timezone: str) -> str:
    """`Tue 30 Mar 2027, 09:00 CEST`: a time in the clinic's zone, the zone shown."""
    return f"{datetime(value, timezone, 'moment')} {_local(value, timezone).tzname()}"


def letter_moment(value: dt.datetime, timezone: str) -> str:
    """`Tuesday 30 March 2027, 09:00 CEST (Europe/Berlin)`, for e-mails."""
    return f"{datetime(value, timezone, 'letter')} {zone(value, timezone)}"


def sms_moment(value: dt.datetime, timezone: str) -> str:
    """`Tue 30 Mar 09:00 CEST`, for SMS."""
    return f"{datetime(value, timezone, 'sms')} {_local(value, timezone).tzname()}"


def zone(value: dt.datetime, timezone: str) -> str:
    """The zone's abbreviation at that instant and its name: `CEST (Europe/Berlin)`."""
    return f"{_local(value, timezone).tzname()} ({timezone})"


def zone_name(timezone: str) -> str:
    """The zone in words for the language: `Mitteleuropäische Zeit`, `Eastern Time`."""
    return get_timezone_name(ZoneInfo(timezone), locale=_locale())


def number(value: float | int) -> str:
    return format_decimal(value, locale=_locale())


def weekday(index: int, width: str = "abbreviated") -> str:
    """Monday is 0, as in Python."""
    return str(_locale().days["format"][width][index])


def weekdays(indexes: Sequence[int], width: str = "abbreviated") -> str:
    return ", ".join(weekday(i, width) for i in indexes)


def install_jinja(env: Environment) -> None:
    """jinja2.ext.i18n with gettext that follows the current language (newstyle: Jinja
    escapes the variables and `%`-formats them in), and the Babel formatters as filters."""
    env.add_extension("jinja2.ext.i18n")
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext, ngettext, newstyle=True
    )
    env.globals.update(
        current_language=current,
        interface_languages=LANGUAGES,
        language_names=NAMES,
        record_type_names=RECORD_TYPE_NAMES,
        notice_names=NOTICE_NAMES,
        weekday=weekday,
        role_name=role_name,
        status_name=status_name,
    )
    env.filters.update(
        date=date,
        time=time,
        datetime=datetime,
        moment=moment,
        zone=zone,
        number=number,
        weekdays=weekdays,
    )


def main() -> None:
    """`python -m app.i18n`: compile every catalogue (the install step)."""
    for language in LANGUAGES[1:]:
        compile_catalogue(language)
        print(f"compiled {language}", file=sys.stderr)


if __name__ == "__main__":
    main()
