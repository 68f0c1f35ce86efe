"""Password hashing with argon2id, and the rules a new password must meet."""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

MIN_LENGTH = 10
STAFF_MIN_LENGTH = 12  # staff see every patient's data: a stronger floor (issue #22)
STAFF_ROLES = ("doctor", "front_desk", "admin")
_LOCAL_PART_MIN = 3  # a shorter local part ("a@…") would forbid half the alphabet
MAX_LENGTH = 256  # argon2 takes any length; this bounds the work one request can ask for
_COMMON = Path(__file__).with_name("common_passwords.txt")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("not a password anyone has")


def verify_unknown_user(password: str) -> bool:
    """Spend the time a real verification takes, so an unknown email cannot be timed."""
    verify_password(_dummy_hash(), password)
    return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with older parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list of the most common passwords, lower-cased."""
    lines = _COMMON.read_text().splitlines()
    return frozenset(line.strip().lower() for line in lines if line and not line.startswith("#"))


def password_problem(password: str, *, role: str = "patient", email: str = "") -> str | None:
    """Why a new password is refused, or None when it is acceptable.

    Args:
        role: staff roles get the stronger policy: 12 characters, not a common password
            with digits or symbols around it (`Password2026!`), and not containing the
            local part of their email.
        email: the account's email (staff only).
    """
    staff = role in STAFF_ROLES
    minimum = STAFF_MIN_LENGTH if staff else MIN_LENGTH
    if len(password) < minimum:
        return f"password must be at least {minimum} characters"
    if len(password) > MAX_LENGTH:
        return f"password must be at most {MAX_LENGTH} characters"
    if password.strip().lower() in common_passwords():
        return "this password is one of the most common ones; choose another"
    core = password.lower().strip(string.digits + string.punctuation + string.whitespace)
    if staff and core in common_passwords():
        return "this password is a common one with digits or symbols added; choose another"
    local = email.strip().split("@")[0].lower()
    if staff and len(local) >= _LOCAL_PART_MIN and local in password.lower():
        return "a staff password must not contain the name part of the email address"
    return None
