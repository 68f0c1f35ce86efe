"""Shared helpers for the auth tests: users, tokens, CSRF tokens scraped from pages."""

from __future__ import annotations

import re

from app.access.accounts import create_user
from app.access.tokens import issue_access_token

PASSWORD = "correct horse battery"


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def make_user(session, role="patient", email="ann@example.test", **links):
    user = await create_user(session, role=role, email=email, password=PASSWORD, **links)
    return user


def bearer(settings, user) -> dict[str, str]:
    token = issue_access_token(settings.secret_key, user_id=user.id, role=user.role)
    return {"Authorization": f"Bearer {token}"}


async def browser_login(client, email="ann@example.test", password=PASSWORD):
    token = csrf_from((await client.get("/login")).text)
    return await client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )
