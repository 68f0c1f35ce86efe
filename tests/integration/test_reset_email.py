"""The password reset link reaches the account holder by e-mail through the outbox: a real
SMTP server in server mode, the dev mailbox in embedded mode; never the page or the log.
The outbox row carries a random ref, never the token."""

import logging
import re

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.access import accounts
from app.web.asgi import create_app
from db.models import AuditEvent, DevMessage, Notification
from tests.integration.auth_helpers import PASSWORD, browser_login, csrf_from, make_user
from tests.integration.notification_servers import (
    SmtpSink,
    eventually,
    notify_settings,
    running_worker,
)

LINK = re.compile(r"https://medbook\.test(/password-reset/[\w-]+)")


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _ask_for_reset(client: AsyncTestClient, *emails: str) -> None:
    token = csrf_from((await client.get("/password-reset")).text)
    for email in emails:
        sent = await client.post("/password-reset", data={"email": email, "csrf_token": token})
        assert sent.status_code == 200 and "/password-reset/" not in sent.text


async def test_the_reset_link_is_emailed_through_the_outbox_and_works_once(
    settings, db, redis, session, monkeypatch
):
    user_id = (await make_user(session)).id
    log = Captured()
    logging.getLogger().addHandler(log)
    with SmtpSink() as sink:
        server = notify_settings(settings, smtp=sink)
        try:
            async with (
                running_worker(server, monkeypatch),
                AsyncTestClient(app=create_app(settings)) as client,
            ):
                await _ask_for_reset(client, "nobody@example.test", "ann@example.test")
                await eventually(lambda: _sent(session, 1))
        finally:
            logging.getLogger().removeHandler(log)
    (message,) = sink.messages  # only the real account got one
    assert message.to == ["ann@example.test"]
    assert message.message["Subject"] == "Reset your medbook password"
    link = LINK.search(message.text)
    assert link and link.group(0) in message.html
    path = link.group(1)
    assert not any(path in line for line in log.messages)  # never in the server log

    (row,) = (await session.scalars(select(Notification))).all()
    assert (row.kind, row.user_id, row.appointment_id, row.status) == (
        "password_reset",
        user_id,
        None,
        "sent",
    )
    token = path.rsplit("/", 1)[1]
    assert row.ref and token not in row.ref and row.ref not in token  # the row holds no token
    assert await redis.get(accounts.link_key(row.ref)) is None  # the copy is gone once sent

    async with AsyncTestClient(app=create_app(settings)) as client:
        form = {"new_password": "a fresh long secret"}
        form["csrf_token"] = csrf_from((await client.get(path)).text)
        assert (await client.post(path, data=form)).url.path == "/login"
        assert (await browser_login(client, password="a fresh long secret")).status_code == 200
    requested = await session.scalar(
        select(AuditEvent).where(AuditEvent.action == "password.reset_requested")
    )
    assert requested is not None and requested.subject_id == user_id


async def test_embedded_mode_puts_the_reset_email_in_the_dev_mailbox(
    settings, db, redis, session, monkeypatch
):
    await make_user(session)
    demo = notify_settings(settings, notify_dev_mailbox=True)
    async with (
        running_worker(demo, monkeypatch),
        AsyncTestClient(app=create_app(settings)) as client,
    ):
        await _ask_for_reset(client, "ann@example.test")
        await eventually(lambda: _sent(session, 1))
    (stored,) = (await session.scalars(select(DevMessage))).all()
    assert stored.recipient == "ann@example.test" and stored.ics is None
    link = LINK.search(stored.body_text)
    assert link is not None
    async with AsyncTestClient(app=create_app(settings)) as client:
        page = await client.get(link.group(1))
        assert page.status_code == 200 and 'name="new_password"' in page.text


async def test_a_link_that_expired_before_sending_is_void_not_sent(
    settings, db, redis, session, monkeypatch
):
    """The token waits in Redis only as long as the link lives: once it is gone (expired,
    or Redis lost it with the reset itself) the message is void rather than a dead link."""
    await make_user(session)
    with SmtpSink() as sink:
        server = notify_settings(settings, smtp=sink)
        async with AsyncTestClient(app=create_app(settings)) as client:
            await _ask_for_reset(client, "ann@example.test")
        (row,) = (await session.scalars(select(Notification))).all()
        await redis.delete(accounts.link_key(row.ref))  # what its expiry does
        async with running_worker(server, monkeypatch) as worker:
            from tasks.reminders import dispatch

            await dispatch(db, worker.queue, server)
            await eventually(lambda: _status(session, "void"))
    assert sink.messages == []
    (row,) = (await session.scalars(select(Notification))).all()
    assert row.last_error == "the link has expired"


async def test_a_newer_reset_voids_the_link_of_an_older_email(settings, db, redis, session):
    await make_user(session)
    earlier = await accounts.start_password_reset(session, redis, email="ann@example.test")
    later = await accounts.start_password_reset(session, redis, email="ann@example.test")
    assert earlier and later
    await accounts.finish_password_reset(
        session, redis, token=later, new_password="a fresh long secret"
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        form = csrf_from((await client.get(f"/password-reset/{earlier}")).text)
        answer = await client.post(
            f"/password-reset/{earlier}",
            data={"new_password": "another fresh secret", "csrf_token": form},
        )
        assert "invalid or has expired" in answer.text
        assert (await browser_login(client, password=PASSWORD)).url.path == "/login"


async def _sent(session, count: int) -> bool:
    rows = (await session.scalars(select(Notification.status))).all()
    session.expire_all()
    return rows.count("sent") >= count


async def _status(session, status: str) -> bool:
    rows = (await session.scalars(select(Notification.status))).all()
    session.expire_all()
    return status in rows
