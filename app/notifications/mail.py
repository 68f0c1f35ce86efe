"""Message text for every notification kind, and email over SMTP (aiosmtplib).

Templates live in templates/mail/: `<kind>.txt` and `<kind>.html` for email (the two
reminders share `reminder.*`; account messages `password_reset.*`, `email_verify.*`),
`sms.txt` for SMS. A message carries what the patient needs
— doctor, clinic, the local time with its zone, how to cancel — and nothing more: no
reason for the visit, no name, no record. Emails have an `.ics` attachment.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, parseaddr
from typing import Any

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app import i18n
from app.i18n import N_, gettext
from app.notifications.answer_links import answer_token
from app.notifications.outbox import AccountMessage, Outgoing, SendFailed
from app.settings import PROJECT_ROOT, Settings

_env = Environment(
    loader=FileSystemLoader(PROJECT_ROOT / "templates" / "mail"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # templates change with a deploy, not while running
)
i18n.install_jinja(_env)
_TEMPLATE = {
    "confirmation": "confirmation",
    "reminder_24h": "reminder",
    "reminder_1h": "reminder",
    "cancellation": "cancellation",
    "exception": "cancellation",
    "offer": "offer",
}
# msgids: each is translated into the patient's language when the message is rendered.
SUBJECTS = {
    "confirmation": N_("Appointment confirmed"),
    "reminder_24h": N_("Reminder: your appointment tomorrow"),
    "reminder_1h": N_("Reminder: your appointment in one hour"),
    "cancellation": N_("Appointment cancelled"),
    "exception": N_("Appointment cancelled by the clinic"),
    "offer": N_("An earlier appointment is free for you"),
}
# Messages that come with no calendar event: an offer is not an appointment yet.
WITHOUT_CALENDAR = frozenset({"offer"})


ACCOUNT_SUBJECTS = {
    "password_reset": N_("Reset your medbook password"),
    "email_verify": N_("Confirm your new email address for medbook"),
}


def local_time(instant: dt.datetime, timezone: str) -> str:
    """`Tuesday 30 March 2027, 09:00 CEST (Europe/Berlin)`: the clinic's wall time and zone,
    in the current language."""
    return i18n.letter_moment(instant, timezone)


def short_time(instant: dt.datetime, timezone: str) -> str:
    """`Tue 30 Mar 09:00 CEST` for SMS, in the current language."""
    return i18n.sms_moment(instant, timezone)


def context(item: Outgoing, origin: str, secret: str = "") -> dict[str, Any]:
    """What a message's templates show; with the app's `secret`, the 24 h reminder also
    carries its signed link to confirm or cancel (app/notifications/answers.py)."""
    answer_url = None
    if secret and item.kind == "reminder_24h":
        token = answer_token(secret, item.appointment_id, item.starts_at)
        answer_url = f"{origin.rstrip('/')}/r/{token}"
    return {
        "answer_url": answer_url,
        "answers_by_sms": item.kind == "reminder_24h",
        "kind": item.kind,
        "subject": gettext(SUBJECTS[item.kind]),
        "doctor": item.doctor_name,
        "clinic": item.clinic_name,
        "address": item.clinic_address,
        "when": local_time(item.starts_at, item.timezone),
        "when_short": short_time(item.starts_at, item.timezone),
        "manage_url": f"{origin.rstrip('/')}/me/appointments",
        "by_clinic": item.kind == "exception",
    }


def render_text(item: Outgoing, origin: str, secret: str = "") -> tuple[str, str, str]:
    """Subject, plain text and HTML of the email for `item`, in the patient's language."""
    with i18n.use_language(item.language):
        values = context(item, origin, secret)
        name = _TEMPLATE[item.kind]
        text = _env.get_template(f"{name}.txt").render(values)
        html = _env.get_template(f"{name}.html").render(values)
    return f"{values['subject']}: {values['when_short']}", text, html


def render_account(item: AccountMessage, origin: str) -> tuple[str, str, str]:
    """Subject, plain text and HTML of an account message; its link must be set."""
    assert item.link is not None  # moot() voids a message whose link expired
    with i18n.use_language(item.language):
        subject = gettext(ACCOUNT_SUBJECTS[item.kind])
        values = {"kind": item.kind, "subject": subject, "link": origin.rstrip("/") + item.link}
        text = _env.get_template(f"{item.kind}.txt").render(values)
        html = _env.get_template(f"{item.kind}.html").render(values)
    return subject, text, html


def render_sms(item: Outgoing, origin: str) -> str:
    """The SMS for `item`, in the patient's language."""
    with i18n.use_language(item.language):
        return _env.get_template("sms.txt").render(context(item, origin)).strip()


def _ics_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _fold(line: str) -> str:
    """RFC 5545 folding: lines of at most 75 octets, continued with a leading space."""
    if len(line.encode()) <= 75:
        return line
    out, current = [], ""
    for char in line:
        if len((current + char).encode()) > 75:
            out.append(current)
            current = " " + char
        else:
            current += char
    out.append(current)
    return "\r\n".join(out)


def _utc(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def calendar(item: Outgoing, origin: str, now: dt.datetime) -> str:
    """An iCalendar (RFC 5545) event for the appointment; cancelled for cancellations.

    The UID is the appointment's, and SEQUENCE grows with every change, so calendars
    update (or cancel) the event they already have instead of adding another.
    """
    host = origin.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0] or "medbook"
    cancelled = item.kind not in ("confirmation", "reminder_24h", "reminder_1h")
    location = item.clinic_name + (f", {item.clinic_address}" if item.clinic_address else "")
    with i18n.use_language(item.language):
        manage = gettext("To cancel or reschedule: %(url)s") % {
            "url": f"{origin.rstrip('/')}/me/appointments"
        }
        summary = gettext("Appointment with %(doctor)s") % {"doctor": item.doctor_name}
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//medbook//notifications//EN",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:appointment-{item.appointment_id}@{host}",
        f"SEQUENCE:{int(item.updated_at.timestamp())}",
        f"DTSTAMP:{_utc(now)}",
        f"DTSTART:{_utc(item.starts_at)}",
        f"DTEND:{_utc(item.ends_at)}",
        f"SUMMARY:{_ics_text(summary)}",
        f"LOCATION:{_ics_text(location)}",
        f"DESCRIPTION:{_ics_text(manage)}",
        f"STATUS:{'CANCELLED' if cancelled else 'CONFIRMED'}",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"


def message_id(notification_id: int, sender: str) -> str:
    """One Message-ID per outbox row: a retry of the same row carries the same id."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "medbook.invalid"
    return f"<notification-{notification_id}@{domain}>"


def build_email(
    item: Outgoing | AccountMessage,
    *,
    sender: str,
    origin: str,
    now: dt.datetime,
    secret: str = "",
) -> Message:
    """The email for `item`: text and HTML alternatives, and for an appointment an
    `appointment.ics`.

    Built with the compat32 MIME classes: the modern `EmailMessage` API parses every
    header it sets and costs ten times more a message (bench/reminders_bench.py, figures in
    bench/README.md).
    """
    if not item.email:
        raise SendFailed("the patient has no email address", permanent=True)
    if isinstance(item, AccountMessage):
        subject, text, html = render_account(item, origin)
    else:
        subject, text, html = render_text(item, origin, secret)
    message = MIMEMultipart("mixed")
    message["From"] = sender
    message["To"] = item.email
    message["Subject"] = str(Header(subject, "utf-8"))
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(item.id, sender)
    message["Auto-Submitted"] = "auto-generated"
    body = MIMEMultipart("alternative")
    body.attach(MIMEText(text, "plain", "utf-8"))
    body.attach(MIMEText(html, "html", "utf-8"))
    message.attach(body)
    if isinstance(item, Outgoing) and item.kind not in WITHOUT_CALENDAR:
        ics = MIMEText(calendar(item, origin, now), "calendar", "utf-8")
        ics.set_param("method", "PUBLISH")
        ics.add_header("Content-Disposition", "attachment", filename="appointment.ics")
        message.attach(ics)
    return message


def provider_id(message_id: str, reply: str) -> str:
    """What we record as an email's provider id: our Message-ID, then the server's answer
    to DATA, e.g. `<notification-41@clinic.test> (2.0.0 Ok: queued as 4XyZ12)`. The
    Message-ID finds the message at the patient's end; the queue id in the answer (which
    every MTA words its own way, hence kept whole) finds it in the relay's logs."""
    answer = " ".join(reply.split())
    return f"{message_id} ({answer})" if answer else message_id


@dataclass
class SmtpMailer:
    """SMTP settings; `connection()` opens one session that sends a whole batch."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: str  # starttls, tls, none
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpMailer | None:
        if not settings.smtp_host:
            return None
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_user,
            settings.smtp_password,
            settings.smtp_tls,
            settings.notify_send_timeout_seconds,
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[SmtpConnection]:
        conn = SmtpConnection(self)
        try:
            yield conn
        finally:
            await conn.close()


class SmtpConnection:
    """A lazily opened SMTP session, reopened after a failure."""

    def __init__(self, mailer: SmtpMailer) -> None:
        self.mailer = mailer
        self._smtp: aiosmtplib.SMTP | None = None

    async def _open(self) -> aiosmtplib.SMTP:
        m = self.mailer
        smtp = aiosmtplib.SMTP(
            hostname=m.host,
            port=m.port,
            timeout=m.timeout,
            use_tls=m.tls == "tls",
            start_tls=m.tls == "starttls",
            tls_context=ssl.create_default_context() if m.tls != "none" else None,
        )
        await smtp.connect()
        if m.username:
            await smtp.login(m.username, m.password or "")
        return smtp

    async def send(self, message: Message) -> str:
        """Send one message; returns its provider id (`provider_id`).

        Raises:
            SendFailed: permanent for a refused recipient or message (5xx), else transient.
        """
        try:
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._open()
            _, reply = await self._smtp.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise SendFailed(f"recipient refused: {exc}", permanent=min(codes) >= 500) from exc
        except (aiosmtplib.SMTPDataError, aiosmtplib.SMTPRecipientRefused) as exc:
            await self.close()
            raise SendFailed(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            raise SendFailed(f"SMTP: {type(exc).__name__}: {exc}") from exc
        return provider_id(str(message["Message-ID"]), reply)

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit(timeout=2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()
