"""User accounts: creation with the right link for each role, sign-in (password, then the
staff's second factor), passwords and their reset, a patient's profile and the
verification of a new e-mail address, roles."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app import i18n
from app.access import audit, rate_limit, totp
from app.access.browser_sessions import end_user_sessions
from app.access.identity import forget_principal
from app.access.passwords import (
    STAFF_ROLES,
    hash_off_loop,
    needs_rehash,
    password_problem,
    verify_off_loop,
    verify_unknown_user_off_loop,
)
from app.access.rate_limit import LoginLimits
from app.access.tokens import issue_refresh_token, revoke_user_tokens, signed_in
from app.errors import Conflict, DomainError, Invalid, NotFound
from app.i18n import gettext
from app.notifications import preferences
from db.models import LANGUAGES, ROLES, Clinic, Doctor, Notification, Patient, User
from db.session import driver_fetchrow

log = logging.getLogger(__name__)

RESET_TTL_SECONDS = 30 * 60
VERIFY_TTL_SECONDS = 24 * 3600
_VERIFY_PREFIX = "email-verify:"
# An account message's token, under its outbox row's `ref`, until the link expires.
_LINK_PREFIX = "account-link:"
LINK_PATHS = {"password_reset": "/password-reset/", "email_verify": "/email-verify/"}
_RESET_PREFIX = "password-reset:"
_USER_RESETS_PREFIX = "password-resets:"  # a set of a user's live reset keys, to void them all
BAD_CREDENTIALS = "the email or password is wrong"
PROFILE_CHANGED = "profile.changed"
EMAIL_CHANGE_REQUESTED = "email.change_requested"
EMAIL_CHANGED = "email.changed"


class BadCredentials(DomainError):
    """401 with one message for an unknown email and a wrong password alike."""

    status_code = 401


class SecondFactorRequired(DomainError):
    """401: the password was right; the account's authentication code is still needed.

    `user_id` and `email` are for the sign-in page's next step, never for the answer.
    """

    status_code = 401

    def __init__(self, detail: str, *, user_id: int, email: str) -> None:
        super().__init__(detail)
        self.user_id = user_id
        self.email = email


class EnrolmentRequired(SecondFactorRequired):
    """401: the password was right, but an admin requires a second factor not yet set up."""


CODE_REQUIRED = "this account needs the code from its authenticator app: send it as `totp`"
ENROLMENT_REQUIRED = (
    "this account must set up a second factor first: sign in on the web page to do so"
)


def normalise_email(email: str) -> str:
    email = email.strip()
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise Invalid(gettext("%(email)r is not an email address") % {"email": email})
    return email


async def create_user(
    session: AsyncSession,
    *,
    role: str,
    email: str,
    password: str,
    full_name: str | None = None,
    clinic_id: int | None = None,
    doctor_id: int | None = None,
    password_hash: str | None = None,
    date_of_birth: dt.date | None = None,
    phone: str | None = None,
) -> User:
    """Create a login, with a patient profile for patients. Commits.

    Args:
        role: patient, doctor, front_desk or admin.
        full_name: the patient's name (patients only).
        clinic_id: the front desk's clinic (required for front_desk).
        doctor_id: the doctor this login belongs to (required for doctor).
        password_hash: a precomputed hash (seed data hashes one password once).

    Raises:
        Invalid: unknown role, missing link, weak password.
        Conflict: the email is already registered.
    """
    if role not in ROLES:
        raise Invalid(gettext("role must be one of %(choices)s") % {"choices": ", ".join(ROLES)})
    email = normalise_email(email)
    if password_hash is None:
        if problem := password_problem(password, role=role, email=email):
            raise Invalid(problem)
        password_hash = await hash_off_loop(password)
    user = User(email=email, password_hash=password_hash, role=role)
    if role == "patient":
        patient = Patient(
            full_name=full_name or email.split("@")[0],
            email=email,
            date_of_birth=date_of_birth,
            phone=phone,
            # The language they registered in (the request's); their messages follow it.
            language=i18n.current(),
        )
        session.add(patient)
        await session.flush()
        user.patient_id = patient.id
    elif role == "doctor":
        if doctor_id is None or await session.get(Doctor, doctor_id) is None:
            raise Invalid(gettext("a doctor login needs an existing doctor id"))
        user.doctor_id = doctor_id
        user.clinic_id = (await session.get_one(Doctor, doctor_id)).clinic_id
    elif role == "front_desk":
        if clinic_id is None or await session.get(Clinic, clinic_id) is None:
            raise Invalid(gettext("a front desk login needs an existing clinic id"))
        user.clinic_id = clinic_id
    if await session.scalar(select(User.id).where(func.lower(User.email) == email.lower())):
        raise Conflict(gettext("this email is already registered"))
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(gettext("this email is already registered")) from None
    return user


async def register_patient(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    full_name: str,
    date_of_birth: dt.date | None = None,
    phone: str | None = None,
    client_addr: str | None = None,
) -> User:
    """A patient's self-registration, audited. Commits.

    Raises:
        Invalid: a missing name, a birth date in the future, a weak password.
        Conflict: the email is already registered.
    """
    full_name = full_name.strip()
    if not full_name:
        raise Invalid(gettext("full_name must not be empty"))
    if date_of_birth is not None and date_of_birth > dt.date.today():
        raise Invalid(gettext("date_of_birth must not be in the future"))
    user = await create_user(
        session,
        role="patient",
        email=email,
        password=password,
        full_name=full_name,
        date_of_birth=date_of_birth,
        phone=(phone or "").strip() or None,
    )
    await audit.record(
        session,
        actor_user_id=user.id,
        action=audit.ACCOUNT_REGISTERED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
    )
    await session.commit()
    return user


async def _user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


@dataclass(frozen=True, slots=True)
class _Account:
    """What the password check needs of an account (read by email)."""

    id: int
    password_hash: str
    is_active: bool


async def authenticate(
    session: AsyncSession,
    redis: Redis,
    *,
    email: str,
    password: str,
    limits: LoginLimits,
    client_addr: str | None = None,
    totp_code: str | None = None,
) -> User:
    """Check a login, with throttling and an audit trail. Commits.

    An unknown email costs the same argon2 verification as a known one and gets the same
    answer, so neither the message nor the time tells whether an account exists. An
    account with a second factor also needs `totp_code` (a TOTP or recovery code).

    Raises:
        TooManyAttempts: this account or address failed too often recently, or too many
            wrong codes.
        BadCredentials: unknown email, wrong password or deactivated account.
        SecondFactorRequired: the password is right and a code is needed (none given).
        EnrolmentRequired: the password is right; the second factor must be set up first.
        totp.WrongCode: the code is wrong or already used.
    """
    await _not_locked(redis, email, client_addr)
    user = await _user_by_email(session, email)
    # Hand the connection back while the password hashes: a burst of sign-ins would
    # otherwise hold the pool's connections for their whole wait for the hashing threads.
    await session.commit()
    account = None if user is None else _Account(user.id, user.password_hash, user.is_active)
    await _check_password(session, redis, account, email, password, limits, client_addr)
    assert user is not None
    return await _after_password(session, redis, user, password, limits, client_addr, totp_code)


# The account a sign-in names, for `sign_in_for_tokens`: one statement on a pooled
# connection (the unique index on lower(email)).
_ACCOUNT_SQL = """
SELECT id, role, password_hash, is_active, totp_secret IS NOT NULL AS has_second_factor,
       totp_required
  FROM users WHERE lower(email) = $1
"""


async def sign_in_for_tokens(
    session: AsyncSession,
    redis: Redis,
    engine: AsyncEngine,
    *,
    email: str,
    password: str,
    limits: LoginLimits,
    client_addr: str | None = None,
    totp_code: str | None = None,
) -> tuple[int, str, str]:
    """`authenticate` for the API's token pair, with the pair's refresh token. Commits.

    The same checks, answers and audit events as `authenticate`, and the same work before
    the password's verdict for every email (one statement, one verification). The usual
    account (active, no second factor, a hash of today's parameters) then takes one
    statement for its audit event and refresh token together (`tokens.signed_in`): the
    ORM's three transactions cost a sign-in several ms of CPU besides the hash
    (bench/README.md). Any other account continues as `authenticate` does.

    Returns:
        (user id, role, refresh token).

    Raises:
        As `authenticate`.
    """
    await _not_locked(redis, email, client_addr)
    row = await driver_fetchrow(engine, _ACCOUNT_SQL, email.strip().lower())
    account = None if row is None else _Account(row["id"], row["password_hash"], row["is_active"])
    await _check_password(session, redis, account, email, password, limits, client_addr)
    assert row is not None
    usual = not (
        row["has_second_factor"]
        or (row["totp_required"] and row["role"] in STAFF_ROLES)
        or needs_rehash(row["password_hash"])
    )
    if usual:
        await rate_limit.login_succeeded(redis, email)
        refresh = await signed_in(engine, row["id"], audit.inet(client_addr))
        return row["id"], row["role"], refresh
    user = await session.get(User, row["id"])
    if user is None or not user.is_active:  # deleted or deactivated since the read
        await session.commit()
        raise BadCredentials(BAD_CREDENTIALS)
    user = await _after_password(session, redis, user, password, limits, client_addr, totp_code)
    refresh = await issue_refresh_token(session, user.id)
    await session.commit()
    return user.id, user.role, refresh


async def _not_locked(redis: Redis, email: str, client_addr: str | None) -> None:
    if wait := await rate_limit.login_lock_remaining(redis, email, client_addr):
        raise rate_limit.TooManyAttempts(
            gettext("too many failed sign-ins; try again later"), retry_after=wait
        )


async def _check_password(
    session: AsyncSession,
    redis: Redis,
    account: _Account | None,
    email: str,
    password: str,
    limits: LoginLimits,
    client_addr: str | None,
) -> None:
    """One verification whatever the account; a failure audited, counted and refused.

    Raises:
        BadCredentials: unknown email, wrong password or deactivated account.
    """
    if account is None or not account.is_active:
        ok = await verify_unknown_user_off_loop(password) if account is None else False
        if account is not None:
            await verify_off_loop(account.password_hash, password)  # same work as a real check
    else:
        ok = await verify_off_loop(account.password_hash, password)
    if ok:
        return
    await audit.record(
        session,
        actor_user_id=account.id if account is not None else None,
        action=audit.LOGIN_FAILED,
        subject_type="user",
        subject_id=account.id if account is not None else None,
        client_addr=client_addr,
        details={"email": email.strip()[:200]},
    )
    locked = await rate_limit.login_failed(
        redis,
        email,
        client_addr,
        max_failures=limits.max_failures,
        max_lock=limits.max_lock_seconds,
    )
    if locked:
        await audit.record(
            session,
            actor_user_id=None,
            action=audit.LOGIN_LOCKED,
            client_addr=client_addr,
            flagged=True,
            details={"email": email.strip()[:200], "seconds": locked},
        )
    await session.commit()
    raise BadCredentials(BAD_CREDENTIALS)


async def _after_password(
    session: AsyncSession,
    redis: Redis,
    user: User,
    password: str,
    limits: LoginLimits,
    client_addr: str | None,
    totp_code: str | None,
) -> User:
    """The steps after a right password: a rehash at today's parameters, the second
    factor, then the success (audited, committed)."""
    if needs_rehash(user.password_hash):
        user.password_hash = await hash_off_loop(password)
    if user.totp_secret is None and user.totp_required and user.role in STAFF_ROLES:
        await session.commit()
        raise EnrolmentRequired(ENROLMENT_REQUIRED, user_id=user.id, email=user.email)
    if user.totp_secret is not None:
        if not totp_code:
            await session.commit()
            raise SecondFactorRequired(CODE_REQUIRED, user_id=user.id, email=user.email)
        await totp.check_code(
            session, redis, user=user, code=totp_code, limits=limits, client_addr=client_addr
        )
    await _signed_in(session, redis, user, client_addr)
    return user


async def _signed_in(
    session: AsyncSession, redis: Redis, user: User, client_addr: str | None
) -> None:
    await rate_limit.login_succeeded(redis, user.email)
    await audit.record(
        session,
        actor_user_id=user.id,
        action=audit.LOGIN_SUCCEEDED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
    )
    await session.commit()


SIGN_IN_EXPIRED = "this sign-in expired; enter your email and password again"


async def _pending_user(session: AsyncSession, redis: Redis, token: str, enrol: bool) -> User:
    step = await totp.pending(redis, token)
    user = await session.get(User, step.user_id) if step and step.enrol == enrol else None
    if user is None or not user.is_active:
        raise Invalid(SIGN_IN_EXPIRED)
    return user


async def finish_sign_in(
    session: AsyncSession,
    redis: Redis,
    *,
    pending: str,
    code: str,
    limits: LoginLimits,
    client_addr: str | None = None,
) -> User:
    """The second step of a browser sign-in: the code after the password. Commits.

    Args:
        pending: the token the password step handed out (`totp.start_pending`).

    Raises:
        Invalid: the pending sign-in is unknown or expired.
        totp.WrongCode, TooManyAttempts: as `totp.check_code`.
    """
    user = await _pending_user(session, redis, pending, enrol=False)
    await totp.check_code(
        session, redis, user=user, code=code, limits=limits, client_addr=client_addr
    )
    await totp.end_pending(redis, pending)
    await _signed_in(session, redis, user, client_addr)
    return user


async def enrol_and_sign_in(
    session: AsyncSession,
    redis: Redis,
    *,
    pending: str,
    code: str,
    client_addr: str | None = None,
) -> tuple[User, list[str]]:
    """The second step of a sign-in whose second factor an admin requires but which has
    none yet: confirm the offered secret with a code. Commits.

    Returns:
        The user and their recovery codes (shown once).

    Raises:
        Invalid: the pending sign-in expired, or the code does not match.
    """
    user = await _pending_user(session, redis, pending, enrol=True)
    codes = await totp.confirm_enrolment(
        session, redis, user=user, code=code, client_addr=client_addr
    )
    await totp.end_pending(redis, pending)
    await _signed_in(session, redis, user, client_addr)
    return user, codes


def _password_problem(user: User, password: str) -> str | None:
    return password_problem(password, role=user.role, email=user.email)


async def sign_out_everywhere(
    session: AsyncSession,
    redis: Redis,
    *,
    user_id: int,
    reason: str,
    actor_user_id: int | None,
    keep_session: str | None = None,
    client_addr: str | None = None,
) -> None:
    """End the user's browser sessions (but `keep_session`) and refresh-token families,
    audited as `sessions.revoked` with the reason; no commit.

    The refresh tokens are revoked in the caller's transaction; the browser sessions live
    in Redis and end at once, so a rolled-back change still signs the user out (harmless).
    """
    families = await revoke_user_tokens(session, user_id)
    ended = await end_user_sessions(redis, user_id, keep=keep_session)
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=audit.SESSIONS_REVOKED,
        subject_type="user",
        subject_id=user_id,
        client_addr=client_addr,
        details={"reason": reason, "browser_sessions": ended, "token_families": families},
    )


async def _set_password(
    session: AsyncSession,
    redis: Redis,
    user: User,
    new_password: str,
    *,
    reason: str,
    keep_session: str | None = None,
    client_addr: str | None = None,
) -> None:
    if problem := _password_problem(user, new_password):
        raise Invalid(problem)
    user.password_hash = await hash_off_loop(new_password)
    user.password_changed_at = dt.datetime.now(dt.UTC)
    await _void_reset_links(redis, user.id)
    await sign_out_everywhere(
        session,
        redis,
        user_id=user.id,
        reason=reason,
        actor_user_id=user.id,
        keep_session=keep_session,
        client_addr=client_addr,
    )


async def change_password(
    session: AsyncSession,
    redis: Redis,
    *,
    user_id: int,
    current_password: str,
    new_password: str,
    keep_session: str | None = None,
    client_addr: str | None = None,
) -> None:
    """Change one's own password; every other session and refresh token ends. Commits.

    Raises:
        BadCredentials: the current password is wrong.
        Invalid: the new password is refused.
    """
    user = await session.get_one(User, user_id)
    if not await verify_off_loop(user.password_hash, current_password):
        raise BadCredentials("the current password is wrong")
    await _set_password(
        session,
        redis,
        user,
        new_password,
        reason=audit.PASSWORD_CHANGED,
        keep_session=keep_session,
        client_addr=client_addr,
    )
    await audit.record(
        session,
        actor_user_id=user_id,
        action=audit.PASSWORD_CHANGED,
        subject_type="user",
        subject_id=user_id,
        client_addr=client_addr,
    )
    await session.commit()


def _reset_key(token: str) -> str:
    return _RESET_PREFIX + hashlib.sha256(token.encode()).hexdigest()


async def _void_reset_links(redis: Redis, user_id: int) -> None:
    """Every reset link issued to the user stops working (a reset or change happened)."""
    index = f"{_USER_RESETS_PREFIX}{user_id}"
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in await redis.smembers(index)]  # type: ignore[misc]
    await redis.delete(index, *keys)


def link_key(ref: str) -> str:
    """Where the sender finds the token of the account message with this `ref`."""
    return _LINK_PREFIX + ref


async def _mail_link(
    session: AsyncSession, redis: Redis, *, user_id: int, kind: str, token: str, ttl: int
) -> None:
    """Put the e-mail that carries `token` in the outbox (the caller commits).

    The row holds a random `ref`, never the token: the token waits in Redis under that
    ref for as long as the link lives (where the link's own state lives too), and the
    sender renders the link from it (docs/notifications.md).
    """
    ref = secrets.token_urlsafe(16)
    await redis.set(link_key(ref), token, ex=ttl)
    now = dt.datetime.now(dt.UTC)
    session.add(Notification(user_id=user_id, channel="email", kind=kind, due_at=now, ref=ref))


async def start_password_reset(
    session: AsyncSession, redis: Redis, *, email: str, client_addr: str | None = None
) -> str | None:
    """Make a one-time reset token for the account with this email and e-mail its link
    through the outbox. Commits.

    Only the token's sha256 is kept as the link's state (in Redis, expiring after 30
    minutes: a lost token is simply requested again), and listed under the user, so that
    a completed reset or a password change voids every link still out. The caller must
    never show the token to the requester, nor reveal whether the account exists.

    Returns:
        The token (for tests), or None when no active account has this email.
    """
    user = await _user_by_email(session, email)
    if user is None or not user.is_active:
        return None
    token = secrets.token_urlsafe(32)
    index = f"{_USER_RESETS_PREFIX}{user.id}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(_reset_key(token), user.id, ex=RESET_TTL_SECONDS)
        pipe.sadd(index, _reset_key(token))
        pipe.expire(index, RESET_TTL_SECONDS)  # the newest link outlives every older one
        await pipe.execute()
    await _mail_link(
        session,
        redis,
        user_id=user.id,
        kind="password_reset",
        token=token,
        ttl=RESET_TTL_SECONDS,
    )
    await audit.record(
        session,
        actor_user_id=None,
        action=audit.PASSWORD_RESET_REQUESTED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
    )
    await session.commit()
    return token


async def finish_password_reset(
    session: AsyncSession,
    redis: Redis,
    *,
    token: str,
    new_password: str,
    client_addr: str | None = None,
) -> None:
    """Set a new password with a reset token. Commits.

    The token is spent, every other reset link of the account is voided, and every
    browser session and refresh-token family of the account ends.

    Raises:
        Invalid: unknown, used, voided or expired token, or a refused password.
    """
    expired = Invalid("this reset link is invalid or has expired; ask for a new one")
    raw = await redis.get(_reset_key(token))
    user = await session.get(User, int(raw)) if raw is not None else None
    if user is None or not user.is_active:
        raise expired
    if problem := _password_problem(user, new_password):
        raise Invalid(problem)  # before spending the token, so a typo does not waste it
    if await redis.getdel(_reset_key(token)) is None:
        raise expired  # spent meanwhile by a parallel request
    await _set_password(
        session, redis, user, new_password, reason=audit.PASSWORD_RESET, client_addr=client_addr
    )
    await audit.record(
        session,
        actor_user_id=user.id,
        action=audit.PASSWORD_RESET,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
    )
    await session.commit()


@dataclass(frozen=True, slots=True)
class Profile:
    email: str
    pending_email: str | None
    full_name: str
    phone: str | None
    language: str
    notify_by: str


async def get_profile(session: AsyncSession, user_id: int) -> Profile:
    """A patient's own profile.

    Raises:
        NotFound: no patient account with this id.
    """
    row = (
        await session.execute(
            select(
                User.email,
                Patient.pending_email,
                Patient.full_name,
                Patient.phone,
                Patient.language,
                Patient.notify_by,
            )
            .join(Patient, Patient.id == User.patient_id)
            .where(User.id == user_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(gettext("no patient profile"))
    return Profile(*row)


async def update_profile(
    session: AsyncSession,
    *,
    user_id: int,
    full_name: str,
    language: str,
    client_addr: str | None = None,
) -> None:
    """A patient changes their name and language, audited; no commit (the channels and
    phone follow through `preferences.set_preference`, which commits).

    Raises:
        Invalid: an empty name or an unknown language.
    """
    full_name = full_name.strip()
    if not full_name:
        raise Invalid(gettext("full name must not be empty"))
    if len(full_name) > 200:
        raise Invalid(gettext("full name must be at most 200 characters"))
    if language not in LANGUAGES:
        raise Invalid(
            gettext("language must be one of %(choices)s") % {"choices": ", ".join(LANGUAGES)}
        )
    user = await session.get_one(User, user_id)
    if user.patient_id is None:
        raise Invalid(gettext("only patients have a profile"))
    patient = await session.get_one(Patient, user.patient_id, with_for_update=True)
    patient.full_name, patient.language = full_name, language
    await audit.record(
        session,
        actor_user_id=user_id,
        action=PROFILE_CHANGED,
        subject_type="patient",
        subject_id=patient.id,
        patient_id=patient.id,
        client_addr=client_addr,
    )


async def save_language(
    session: AsyncSession, redis: Redis, *, user_id: int, language: str
) -> None:
    """A patient's language from the page header's switcher: saved (their reminders
    follow it) and committed, and their cached Principal dropped so the next request
    carries it. Other roles keep their choice in a cookie only (app/web/i18n.py).

    Raises:
        Invalid: a language medbook has no catalogue for.
    """
    if language not in i18n.LANGUAGES:
        raise Invalid(
            gettext("language must be one of %(choices)s") % {"choices": ", ".join(i18n.LANGUAGES)}
        )
    user = await session.get_one(User, user_id)
    if user.patient_id is None:
        return
    patient = await session.get_one(Patient, user.patient_id, with_for_update=True)
    patient.language = language
    await session.commit()
    await forget_principal(redis, user_id)


async def _email_taken(session: AsyncSession, email: str, user_id: int) -> bool:
    found = await session.scalar(
        select(User.id).where(func.lower(User.email) == email.lower(), User.id != user_id)
    )
    return found is not None


async def _new_email(session: AsyncSession, user_id: int, new_email: str) -> str:
    email = normalise_email(new_email)
    user = await session.get_one(User, user_id)
    if user.patient_id is None:
        raise Invalid(gettext("only patients have a profile"))
    if email.lower() == user.email.lower():
        raise Invalid(gettext("that is already your email address"))
    if await _email_taken(session, email, user_id):
        raise Conflict(gettext("this email is already registered"))
    return email


async def save_profile(
    session: AsyncSession,
    redis: Redis,
    *,
    user_id: int,
    full_name: str,
    email: str,
    phone: str,
    language: str,
    by_email: bool,
    by_sms: bool,
    now: dt.datetime,
    client_addr: str | None = None,
) -> bool:
    """A patient saves their profile page: name, language, phone, channels (any of
    e-mail and SMS), and a new address (verified before use). All checked before
    anything is saved; commits.

    Returns:
        Whether a verification link went to a new address.

    Raises:
        Invalid, Conflict: as `update_profile`, `preferences.set_preference` and
            `request_email_change`; nothing is saved then.
    """
    user = await session.get_one(User, user_id)
    current = {user.email.lower()}
    if user.patient_id is not None:
        pending = await session.scalar(
            select(Patient.pending_email).where(Patient.id == user.patient_id)
        )
        current.add((pending or "").lower())
    changed = email.strip().lower() not in current
    if changed:
        await _new_email(session, user_id, email)
    notify_by = {(True, True): "both", (True, False): "email", (False, True): "sms"}.get(
        (by_email, by_sms), "none"
    )
    await update_profile(
        session, user_id=user_id, full_name=full_name, language=language, client_addr=client_addr
    )
    assert user.patient_id is not None  # update_profile checked
    await preferences.set_preference(
        session,
        user.patient_id,
        notify_by=notify_by,
        phone=phone,
        actor_user_id=user_id,
        now=now,
    )
    if changed:
        await request_email_change(
            session, redis, user_id=user_id, new_email=email, client_addr=client_addr
        )
    # The cached Principal carries the language the pages speak (app/web/i18n.py).
    await forget_principal(redis, user_id)
    return changed


async def request_email_change(
    session: AsyncSession,
    redis: Redis,
    *,
    user_id: int,
    new_email: str,
    client_addr: str | None = None,
) -> None:
    """A patient asks for a new address: it is pending until the link e-mailed to it
    (through the outbox) is followed; the old address stays in use meanwhile. A newer
    request supersedes older links. Commits.

    Raises:
        Invalid: not an address, or the current one.
        Conflict: another account has it.
    """
    email = await _new_email(session, user_id, new_email)
    user = await session.get_one(User, user_id)
    assert user.patient_id is not None  # _new_email checked
    patient = await session.get_one(Patient, user.patient_id, with_for_update=True)
    patient.pending_email = email
    token = secrets.token_urlsafe(32)
    key = _VERIFY_PREFIX + hashlib.sha256(token.encode()).hexdigest()
    await redis.set(key, f"{user_id}:{email}", ex=VERIFY_TTL_SECONDS)
    await _mail_link(
        session,
        redis,
        user_id=user_id,
        kind="email_verify",
        token=token,
        ttl=VERIFY_TTL_SECONDS,
    )
    await audit.record(
        session,
        actor_user_id=user_id,
        action=EMAIL_CHANGE_REQUESTED,
        subject_type="user",
        subject_id=user_id,
        patient_id=patient.id,
        client_addr=client_addr,
    )
    await session.commit()


async def confirm_email_change(
    session: AsyncSession, redis: Redis, *, token: str, client_addr: str | None = None
) -> str:
    """Follow a verification link: the pending address becomes the account's (sign-in
    and messages alike). Commits.

    Returns:
        The new address.

    Raises:
        Invalid: an unknown, used, expired or superseded link.
        Conflict: another account took the address meanwhile.
    """
    expired = Invalid("this confirmation link is invalid or has expired; ask for a new one")
    key = _VERIFY_PREFIX + hashlib.sha256(token.encode()).hexdigest()
    raw = await redis.get(key)
    if raw is None:
        raise expired
    user_id_text, _, email = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(":")
    user = await session.get(User, int(user_id_text))
    patient = await session.get(Patient, user.patient_id) if user and user.patient_id else None
    if user is None or patient is None or not user.is_active or patient.pending_email != email:
        raise expired  # a newer request superseded this link
    if await _email_taken(session, email, user.id):
        raise Conflict(gettext("this email is already registered"))
    if await redis.getdel(key) is None:
        raise expired  # followed meanwhile by a parallel request
    user.email, patient.email, patient.pending_email = email, email, None
    await audit.record(
        session,
        actor_user_id=user.id,
        action=EMAIL_CHANGED,
        subject_type="user",
        subject_id=user.id,
        patient_id=patient.id,
        client_addr=client_addr,
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(gettext("this email is already registered")) from None
    await forget_principal(redis, user.id)
    return email


async def create_staff_account(
    session: AsyncSession,
    *,
    actor_user_id: int,
    role: str,
    email: str,
    password: str,
    full_name: str | None = None,
    clinic_id: int | None = None,
    doctor_id: int | None = None,
    client_addr: str | None = None,
) -> User:
    """An admin creates any account (doctor, front desk, admin, or a patient). Commits."""
    user = await create_user(
        session,
        role=role,
        email=email,
        password=password,
        full_name=full_name,
        clinic_id=clinic_id,
        doctor_id=doctor_id,
    )
    await audit.record(
        session,
        actor_user_id=actor_user_id,
        action=audit.ACCOUNT_CREATED,
        subject_type="user",
        subject_id=user.id,
        client_addr=client_addr,
        details={"role": role, "clinic_id": clinic_id, "doctor_id": doctor_id},
    )
    await session.commit()
    return user


async def update_account(
    session: AsyncSession,
    redis: Redis,
    *,
    actor_user_id: int,
    user_id: int,
    role: str | None = None,
    clinic_id: int | None = None,
    doctor_id: int | None = None,
    is_active: bool | None = None,
    totp_required: bool | None = None,
    remove_totp: bool = False,
    client_addr: str | None = None,
) -> User:
    """An admin changes a user's role (with its link), deactivates/reactivates them,
    requires a second factor of a staff account, or removes one (a lost phone).

    Deactivation ends the user's sessions and refresh tokens at once; access tokens stop
    working on their next request (the middleware loads only active users). Commits.

    Raises:
        NotFound: no such user.
        Invalid: unknown role, missing link, an admin deactivating or demoting themself,
            a second factor asked of a patient, an admin removing their own.
    """
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(gettext("no such user"))
    if user_id == actor_user_id and (is_active is False or (role and role != user.role)):
        raise Invalid(gettext("admins cannot demote or deactivate themselves"))
    # The queries below (audit, sign-out) flush the change: a doctor who already has a
    # login breaks uq_users_doctor_id there or at the commit, a Conflict either way.
    try:
        if role is not None and role != user.role:
            if role not in ROLES:
                raise Invalid(
                    gettext("role must be one of %(choices)s") % {"choices": ", ".join(ROLES)}
                )
            if role == "patient" and user.patient_id is None:
                raise Invalid(
                    gettext("a staff account cannot become a patient; register one instead")
                )
            doctor = None
            if role == "doctor":
                doctor = await session.get(Doctor, doctor_id) if doctor_id is not None else None
                if doctor is None:
                    raise Invalid(gettext("a doctor login needs an existing doctor id"))
            if role == "front_desk" and (
                clinic_id is None or await session.get(Clinic, clinic_id) is None
            ):
                raise Invalid(gettext("a front desk login needs an existing clinic id"))
            before = user.role
            user.role = role
            user.doctor_id = doctor.id if doctor is not None else None
            if doctor is not None:
                user.clinic_id = doctor.clinic_id
            else:
                user.clinic_id = clinic_id if role == "front_desk" else None
            await audit.record(
                session,
                actor_user_id=actor_user_id,
                action=audit.ACCOUNT_ROLE_CHANGED,
                subject_type="user",
                subject_id=user_id,
                client_addr=client_addr,
                details={"from": before, "to": role, "clinic_id": user.clinic_id},
            )
        if is_active is not None and is_active != user.is_active:
            user.is_active = is_active
            if not is_active:
                await sign_out_everywhere(
                    session,
                    redis,
                    user_id=user_id,
                    reason=audit.ACCOUNT_DEACTIVATED,
                    actor_user_id=actor_user_id,
                    client_addr=client_addr,
                )
            await audit.record(
                session,
                actor_user_id=actor_user_id,
                action=audit.ACCOUNT_REACTIVATED if is_active else audit.ACCOUNT_DEACTIVATED,
                subject_type="user",
                subject_id=user_id,
                client_addr=client_addr,
            )
        await _second_factor_change(
            session, user, actor_user_id, totp_required, remove_totp, client_addr
        )
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(gettext("that doctor already has a login")) from None
    await forget_principal(redis, user_id)
    return user


async def _second_factor_change(
    session: AsyncSession,
    user: User,
    actor_user_id: int,
    required: bool | None,
    remove: bool,
    client_addr: str | None,
) -> None:
    if (required or remove) and user.role not in STAFF_ROLES:
        raise Invalid(gettext("a second factor is for staff accounts (doctor, front desk, admin)"))
    if remove and user.totp_secret is not None:
        if user.id == actor_user_id:
            raise Invalid(
                gettext("remove your own second factor from your account page, with a code")
            )
        await totp.remove(session, user=user, actor_user_id=actor_user_id, client_addr=client_addr)
    if required is not None and required != user.totp_required:
        user.totp_required = required
        await audit.record(
            session,
            actor_user_id=actor_user_id,
            action=audit.TOTP_REQUIRED,
            subject_type="user",
            subject_id=user.id,
            client_addr=client_addr,
            details={"required": required},
        )


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    email: str
    role: str
    clinic_id: int | None
    doctor_id: int | None
    patient_id: int | None
    is_active: bool
    created_at: dt.datetime
    totp_enabled: bool
    totp_required: bool


async def list_accounts(
    session: AsyncSession, *, role: str | None = None, staff_only: bool = False, limit: int = 200
) -> list[AccountRow]:
    """Accounts for the admin page, newest first."""
    query = select(
        User.id,
        User.email,
        User.role,
        User.clinic_id,
        User.doctor_id,
        User.patient_id,
        User.is_active,
        User.created_at,
        User.totp_secret.is_not(None).label("totp_enabled"),
        User.totp_required,
    ).order_by(User.id.desc())
    if role:
        query = query.where(User.role == role)
    if staff_only:
        query = query.where(User.role != "patient")
    rows = (await session.execute(query.limit(limit))).all()
    return [AccountRow(**row._asdict()) for row in rows]


async def display_name(session: AsyncSession, user_id: int) -> str:
    """What the page header calls a user: a patient's or doctor's name, else the email."""
    row = (
        await session.execute(
            select(User.email, Patient.full_name, Doctor.full_name)
            .outerjoin(Patient, Patient.id == User.patient_id)
            .outerjoin(Doctor, Doctor.id == User.doctor_id)
            .where(User.id == user_id)
        )
    ).one_or_none()
    if row is None:
        return ""
    return str(row[1] or row[2] or row[0])
