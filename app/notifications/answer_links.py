"""The signed link of a reminder's answer: which appointment, valid until it starts.

HMAC-SHA256 under the app's secret over the appointment id and the expiry; nothing is
stored, so a link costs no row, and it stops working when the visit begins. Single use is
the appointment's state (app/notifications/answers.py), not the token's.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

from app.errors import Invalid, NotFound
from app.i18n import gettext

_PURPOSE = b"medbook reminder answer v1:"


def _sign(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), _PURPOSE + payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def answer_token(secret: str, appointment_id: int, starts_at: dt.datetime) -> str:
    """The token of an appointment's answer link: valid until the visit starts."""
    payload = f"{appointment_id}.{int(starts_at.timestamp())}"
    return f"{payload}.{_sign(secret, payload)}"


def read_token(secret: str, token: str, now: dt.datetime) -> int:
    """The appointment id a token names.

    Raises:
        NotFound: not a token we signed (tampered, truncated, another secret's).
        Invalid: the visit has started: the link has expired.
    """
    appointment, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    payload = f"{appointment}.{expires}"
    if not (appointment.isdigit() and expires.isdigit()) or not hmac.compare_digest(
        signature.encode(), _sign(secret, payload).encode()
    ):
        raise NotFound(gettext("this link is not valid"))
    if now.timestamp() >= int(expires):
        raise Invalid(gettext("this link has expired: the appointment has begun"))
    return int(appointment)
