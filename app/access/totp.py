"""The staff second factor: TOTP codes (RFC 6238, computed by pyotp), single-use recovery
codes, enrolment and removal, and the half-finished sign-in between password and code."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

import pyotp
from redis.asyncio import Redis
from sqlalchemy import any_, func, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit, rate_limit
from app.access.passwords import STAFF_ROLES
from app.errors import DomainError, Forbidden, Invalid
from app.i18n import gettext
from db.models import User

ISSUER = "medbook"
DRIFT_STEPS = 1  # also accept the 30-s step before and after: phone clocks drift
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
CANDIDATE_TTL_SECONDS = 15 * 60
PENDING_TTL_SECONDS = 5 * 60
_CANDIDATE_PREFIX = "totp-candidate:"
_PENDING_PREFIX = "login-pending:"


class WrongCode(DomainError):
    """401: the authentication code (or recovery code) was not accepted."""

    status_code = 401


def provisioning_uri(secret: str, email: str) -> str:
    """The otpauth:// URI an authenticator app takes (as a QR code or typed in)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _new_recovery_codes() -> list[str]:
    """Ten codes of 10 characters (50 bits each), shown as `abcde-fghjk`."""
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code this is (within the allowed drift), or None."""
    code = _normalise(code)
    if len(code) != 6 or not code.isdigit():
        return None
    try:
        return pyotp.TOTP(secret).verify_and_get_timecode(
            code, for_time=time.time() if now is None else now, valid_window=DRIFT_STEPS
        )
    except pyotp.exceptions.OTPVerificationError:
        return None


def _require_staff(user: User) -> None:
    if user.role not in STAFF_ROLES:
        raise Forbidden(
            gettext("a second factor is for staff accounts (doctor, front desk, admin)")
        )


async def candidate_secret(redis: Redis, user_id: int) -> str:
    """The secret offered for enrolment: the same one until it is confirmed or expires, so
    reloading the page does not invalidate what the phone already scanned."""
    key = f"{_CANDIDATE_PREFIX}{user_id}"
    fresh = pyotp.random_base32()
    await redis.set(key, fresh, ex=CANDIDATE_TTL_SECONDS, nx=True)
    raw = await redis.get(key)
    return raw.decode() if isinstance(raw, bytes) else str(raw or fresh)


async def confirm_enrolment(
    session: AsyncSession, redis: Redis, *, user: User, code: str, client_addr: str | None = None
) -> list[str]:
    """Switch the second factor on with a code from the offered secret. Commits.

    Returns:
        The ten recovery codes, in clear for the only time; only their sha256 is stored.

    Raises:
        Forbidden: not a staff account.
        Invalid: one is already on, no secret on offer (expired), or the code does not
            match it.
    """
    _require_staff(user)
    if user.totp_secret is not None:
        raise Invalid(gettext("a second factor is already on; switch it off first to change it"))
    raw = await redis.get(f"{_CANDIDATE_PREFIX}{user.id}")
    if raw is None:
        raise Invalid(gettext("the set-up expired; open the page again for a new secret"))
    secret = raw.decode() if isinstance(raw, bytes) else str(raw)
    step = matching_step(secret, code)
    if step is None:
        raise Invalid(gettext("that code does not match; check the phone's clock and try again"))
    codes = _new_recovery_codes()
    user.totp_secret = secret
    user.totp_last_step = step  # the confirming code cannot sign in as well
    user.totp_recovery_hashes = [_digest(_normalise(c)) for c in codes]
    await audit.record(
        session,
        actor_user_id=user.id,
        action=audit.TOTP_ENROLLED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
    )
    await session.commit()
    await redis.delete(f"{_CANDIDATE_PREFIX}{user.id}")
    return codes


async def _spend_step(session: AsyncSession, user_id: int, step: int) -> bool:
    """Record `step` as used unless it (or a later one) already was; atomic, so two
    requests racing with one code cannot both pass."""
    spent = await session.scalar(
        update(User)
        .where(
            User.id == user_id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .returning(User.id)
    )
    return spent is not None


async def _spend_recovery_code(session: AsyncSession, user_id: int, code: str) -> int | None:
    """Remove the code's hash if the user has it; how many remain, or None when not found."""
    digest = _digest(_normalise(code))
    return await session.scalar(
        update(User)
        .where(User.id == user_id, any_(User.totp_recovery_hashes) == digest)
        .values(totp_recovery_hashes=func.array_remove(User.totp_recovery_hashes, digest))
        .returning(func.cardinality(User.totp_recovery_hashes))
    )


async def check_code(
    session: AsyncSession,
    redis: Redis,
    *,
    user: User,
    code: str,
    limits: rate_limit.LoginLimits,
    client_addr: str | None = None,
) -> None:
    """Accept a TOTP code (each time step once) or an unused recovery code, spending it in
    the session's transaction: the caller commits it with the sign-in it allows.

    Wrong codes are audited as `login.failed` and counted per user; from the
    `max_failures`-th on, further codes wait (doubling, like password failures).

    Raises:
        TooManyAttempts: too many wrong codes recently.
        WrongCode: the code is wrong, already used, or the account has no second factor.
    """
    if wait := await rate_limit.code_lock_remaining(redis, user.id):
        raise rate_limit.TooManyAttempts(
            gettext("too many wrong codes; try again later"), retry_after=wait
        )
    secret = user.totp_secret
    step = matching_step(secret, code) if secret else None
    if step is not None and await _spend_step(session, user.id, step):
        await rate_limit.code_succeeded(redis, user.id)
        return
    left = await _spend_recovery_code(session, user.id, code) if secret else None
    if left is not None:
        await audit.record(
            session,
            actor_user_id=user.id,
            action=audit.RECOVERY_CODE_USED,
            subject_type="user",
            subject_id=user.id,
            client_addr=client_addr,
            flagged=True,  # a lost phone, or a stolen code sheet: worth an admin's look
            details={"remaining": left},
        )
        await rate_limit.code_succeeded(redis, user.id)
        return
    await audit.record(
        session,
        actor_user_id=user.id,
        action=audit.LOGIN_FAILED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
        details={"factor": "totp", "replayed": step is not None},
    )
    await session.commit()
    await rate_limit.code_failed(
        redis, user.id, max_failures=limits.max_failures, max_lock=limits.max_lock_seconds
    )
    if step is not None:
        raise WrongCode("this code was already used; wait for the next one")
    raise WrongCode("the authentication code is wrong")


async def remove(
    session: AsyncSession,
    *,
    user: User,
    actor_user_id: int,
    client_addr: str | None = None,
) -> None:
    """Switch the second factor off (the caller has checked who may); no commit."""
    user.totp_secret = None
    user.totp_last_step = None
    user.totp_recovery_hashes = []
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=audit.TOTP_REMOVED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
    )


async def remove_own(
    session: AsyncSession,
    redis: Redis,
    *,
    user: User,
    code: str,
    limits: rate_limit.LoginLimits,
    client_addr: str | None = None,
) -> None:
    """A user switches their own second factor off, proving it with a code. Commits.

    Raises:
        Invalid: an admin requires a second factor on this account, or none is set up.
        WrongCode, TooManyAttempts: as `check_code`.
    """
    if user.totp_secret is None:
        raise Invalid(gettext("this account has no second factor"))
    if user.totp_required:
        raise Invalid(
            gettext("an admin requires a second factor on this account; it cannot be removed")
        )
    await check_code(session, redis, user=user, code=code, limits=limits, client_addr=client_addr)
    await remove(session, user=user, actor_user_id=user.id, client_addr=client_addr)
    await session.commit()


# Between a correct password and the code, the browser holds a pending sign-in: a random
# token (stored as its sha256, five minutes) naming the user; it is not a session.


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    user_id: int
    enrol: bool  # the account must set up its second factor before it is signed in


async def start_pending(redis: Redis, user_id: int, *, enrol: bool) -> str:
    token = secrets.token_urlsafe(32)
    payload = json.dumps({"user_id": user_id, "enrol": enrol})
    await redis.set(_PENDING_PREFIX + _digest(token), payload, ex=PENDING_TTL_SECONDS)
    return token


async def pending(redis: Redis, token: str) -> PendingSignIn | None:
    raw = await redis.get(_PENDING_PREFIX + _digest(token))
    if raw is None:
        return None
    data = json.loads(raw)
    return PendingSignIn(int(data["user_id"]), bool(data["enrol"]))


async def end_pending(redis: Redis, token: str) -> None:
    await redis.delete(_PENDING_PREFIX + _digest(token))
