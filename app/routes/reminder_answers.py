"""Answering a reminder without signing in: the e-mail's link and the SMS webhook."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.response import Response, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app import i18n
from app.errors import DomainError
from app.i18n import gettext
from app.live.effects import Effects
from app.notifications import answer_links, answers
from app.notifications.mail import local_time
from app.routes.views import environment, render
from app.settings import Settings
from app.web.guards import PUBLIC

WEBHOOK = "/api/webhooks/sms"


def _page(**context: Any) -> Template:
    return Template(template_name="patient/answer.html", context=context)


def _shown(found: answers.Visit) -> dict[str, Any]:
    return {"visit": found, "when": local_time(found.starts_at, found.timezone)}


@get("/r/{token:str}", opt=PUBLIC, include_in_schema=False)
async def answer_page(
    db_session: AsyncSession,
    settings: Settings,
    now: dt.datetime,
    token: str,
) -> Template:
    """The appointment a reminder's link names, with Confirm and Cancel; opening it
    changes nothing (mail scanners open links)."""
    try:
        appointment_id = answer_links.read_token(settings.secret_key, token, now)
        found = await answers.visit(db_session, appointment_id)
    except DomainError as exc:
        return _page(message=exc.detail, error=True)
    return _page(token=token, **_shown(found))


@post("/r/{token:str}", opt=PUBLIC, include_in_schema=False, status_code=200)
async def answer_link(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    settings: Settings,
    now: dt.datetime,
    token: str,
) -> Template:
    """Confirm (`action=confirm`) or cancel (`action=cancel`) once, from the link."""
    action = (await request.form()).get("action")
    try:
        appointment_id = answer_links.read_token(settings.secret_key, token, now)
        if action not in ("confirm", "cancel"):
            found = await answers.visit(db_session, appointment_id)
            return _page(token=token, **_shown(found))
        found = await answers.answer(
            db_session, effects, appointment_id, action, now=now, via="link"
        )
    except DomainError as exc:
        return _page(message=exc.detail, error=True)
    if action == "confirm":
        said = gettext("Thank you: your visit is confirmed.")
    else:
        said = gettext("Cancelled.")
    return _page(message=said, **_shown(found))


@post(WEBHOOK, opt=PUBLIC, include_in_schema=False, status_code=200)
async def sms_reply(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    effects: Effects,
    settings: Settings,
    now: dt.datetime,
) -> Response[str]:
    """The SMS provider posts a patient's reply here (Twilio style); answered with TwiML.

    The provider's signature is checked first: without SMS_TOKEN, or with a signature
    that does not match, nothing is read (403)."""
    form = {name: str(value) for name, value in (await request.form()).items()}
    signature = request.headers.get("x-twilio-signature", "")
    url = settings.public_origin.rstrip("/") + WEBHOOK
    if not answers.signed_by_provider(settings.sms_token, url, form, signature):
        raise PermissionDeniedException("not signed by the SMS provider")
    action = answers.SMS_ACTIONS.get(form.get("Body", "").strip().upper())
    if action is None:
        reply = gettext("Reply C to confirm or X to cancel your appointment.")
    else:
        try:
            appointment_id = await answers.reminded_appointment(
                db_session, form.get("From", ""), now
            )
            found = await answers.answer(
                db_session, effects, appointment_id, action, now=now, via="sms", single_use=False
            )
            with i18n.use_language(found.language):  # the patient's, as their reminder was
                when = local_time(found.starts_at, found.timezone)
                if action == "confirm":
                    reply = gettext("Your appointment on %(when)s is confirmed.") % {"when": when}
                else:
                    reply = gettext("Your appointment on %(when)s is cancelled.") % {"when": when}
        except DomainError:
            reply = gettext("We found no appointment to answer; please call the clinic.")
    body = render(environment(request.app), "notifications/sms_reply.xml", message=reply)
    return Response(body, media_type="application/xml")


ROUTES = [answer_page, answer_link, sms_reply]
