"""Access-token verification, including the remembered signatures (app/access/tokens.py)."""

import jwt
import pytest

from app.access import tokens
from app.access.tokens import issue_access_token, verify_access_token

SECRET = "s" * 48


@pytest.fixture(autouse=True)
def forget_verified():
    tokens._verified.clear()
    yield
    tokens._verified.clear()


def test_a_valid_token_gives_its_claims_every_time():
    token = issue_access_token(SECRET, user_id=7, role="doctor")
    first, second = verify_access_token(SECRET, token), verify_access_token(SECRET, token)
    assert first is not None and first.user_id == 7 and first.role == "doctor"
    assert second == first


def test_a_remembered_token_is_not_decoded_again(monkeypatch):
    token = issue_access_token(SECRET, user_id=7, role="patient")
    assert verify_access_token(SECRET, token) is not None
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert verify_access_token(SECRET, token) is not None
    assert calls == []


def test_a_remembered_token_still_expires(monkeypatch):
    token = issue_access_token(SECRET, user_id=7, role="patient", ttl_seconds=60)
    claims = verify_access_token(SECRET, token)
    assert claims is not None
    monkeypatch.setattr(tokens.time, "time", lambda: claims.expires_at)  # exp <= now: expired
    assert verify_access_token(SECRET, token) is None


def test_another_secret_or_a_changed_token_is_checked_afresh():
    token = issue_access_token(SECRET, user_id=7, role="patient")
    assert verify_access_token(SECRET, token) is not None
    assert verify_access_token("t" * 48, token) is None
    header, payload, signature = token.split(".")
    forged = jwt.encode({"sub": "1", "role": "admin", "exp": 2**40}, "x" * 48)
    assert verify_access_token(SECRET, f"{header}.{forged.split('.')[1]}.{signature}") is None
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert verify_access_token(SECRET, f"{header}.{payload}.{flipped}") is None


def test_expired_and_invalid_tokens_are_refused_and_not_remembered():
    expired = issue_access_token(SECRET, user_id=7, role="patient", ttl_seconds=-1)
    assert verify_access_token(SECRET, expired) is None
    assert verify_access_token(SECRET, "not-a-token") is None
    assert tokens._verified == {}


def test_the_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(tokens, "VERIFIED_MAX", 3)
    for user in range(10):
        assert verify_access_token(SECRET, issue_access_token(SECRET, user_id=user, role="x"))
        assert len(tokens._verified) <= 3
