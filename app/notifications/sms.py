"""SMS through a Twilio-style HTTP API: one form POST per message, one pooled client.

`POST {SMS_API_URL}/Accounts/{SMS_ACCOUNT}/Messages.json` with `To`, `From`, `Body`, HTTP
basic auth (account, token); the answer's `sid` is the provider's message id. Each
request carries `Idempotency-Key: medbook-notification-<row id>`: a provider that honours
it turns a resend after a lost answer into the original message (closing the
at-least-once window, docs/notifications.md); one that ignores it is unaffected.

One `httpx.AsyncClient` per worker process (review S-2): bounded pool, keep-alive, and
explicit connect/read/write/pool timeouts, created in the worker's startup.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from app.notifications.outbox import SendFailed
from app.settings import Settings

# 408 and 429 are "try later"; every other 4xx means this request will never work.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def create_client(settings: Settings) -> httpx.AsyncClient:
    """The process's pooled client for the SMS API."""
    timeout = settings.notify_send_timeout_seconds
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(5.0, timeout), pool=min(5.0, timeout)),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30),
        headers={"User-Agent": "medbook-notifications"},
    )


@dataclass(frozen=True)
class SmsSender:
    url: str
    account: str
    token: str
    sender: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SmsSender | None:
        if not settings.sms_api_url:
            return None
        return cls(
            f"{settings.sms_api_url}/Accounts/{settings.sms_account or ''}/Messages.json",
            settings.sms_account or "",
            settings.sms_token or "",
            settings.sms_from or "medbook",
        )

    async def send(
        self, client: httpx.AsyncClient, *, notification_id: int, to: str | None, body: str
    ) -> str:
        """Send one SMS and return the provider's message id (`sid`).

        Raises:
            SendFailed: permanent for a 4xx other than 408/409/425/429, else transient.
        """
        if not to:
            raise SendFailed("the patient has no phone number", permanent=True)
        try:
            response = await client.post(
                self.url,
                data={"To": to, "From": self.sender, "Body": body},
                auth=(self.account, self.token),
                headers={"Idempotency-Key": f"medbook-notification-{notification_id}"},
            )
        except httpx.HTTPError as exc:
            raise SendFailed(f"SMS API: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            permanent = response.status_code < 500 and response.status_code not in RETRYABLE_4XX
            raise SendFailed(
                f"SMS API {response.status_code}: {response.text[:200]}", permanent=permanent
            )
        try:
            sid = response.json()["sid"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SendFailed(f"SMS API answered without a sid: {response.text[:200]}") from exc
        return str(sid)
