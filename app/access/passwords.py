"""Password hashing with argon2id, and the rules a new password must meet."""

from __future__ import annotations

import asyncio
import string
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.errors import Overloaded
from app.i18n import gettext
from app.settings import Settings, get_settings

# argon2id at the parameters of the settings (ARGON2_*; app/settings.py says why these
# defaults, docs/security.md), read once per process at the first hash or verification.
_hasher: PasswordHasher | None = None
T = TypeVar("T")

# A hash takes tens to hundreds of milliseconds of CPU; on the event loop it stalled every
# request of the process (issue #17: 148 inserts logged as slow while 320 patients signed
# in). argon2-cffi releases the GIL, so threads hash while the loop serves. Two threads:
# the machines we run on have two cores; more would only queue in the kernel. Beyond
# HASH_THREADS + HASH_WAITING hashes in flight a burst is shed (503 + Retry-After).
HASH_THREADS = 2
HASH_WAITING = 30
# A sign-in whose hash has not started within this many seconds is refused (503 +
# Retry-After) and its hash skipped: nothing waits longer than that for a thread (on a
# machine shared with busy neighbours sign-ins waited tens of seconds in the mixed
# benchmark, bench/README.md); the client retries, and no hash is computed for nobody.
HASH_MAX_WAIT_SECONDS = 2.0
# A sign-in is refused at once (503 + Retry-After) when the hashes already waiting would
# keep it from a thread longer than this, at the pace hashes have been taking (issue #17's
# overload target: accepted requests answered within 250 ms at p99). Waiting up to
# HASH_WAITING deep, sign-ins were the slowest accepted answers of the mixed benchmark's
# overload run (bench/README.md, sixth session: shed17c).
HASH_QUEUE_SECONDS = 0.1
# The weight of each hash's time in the average pace (about the last five hashes).
HASH_TIME_WEIGHT = 0.2

MIN_LENGTH = 10
STAFF_MIN_LENGTH = 12  # staff see every patient's data: a stronger floor (issue #22)
STAFF_ROLES = ("doctor", "front_desk", "admin")
_LOCAL_PART_MIN = 3  # a shorter local part ("a@…") would forbid half the alphabet
MAX_LENGTH = 256  # argon2 takes any length; this bounds the work one request can ask for
_COMMON = Path(__file__).with_name("common_passwords.txt")


def use_parameters(settings: Settings) -> None:
    """Hash and verify with the argon2 parameters of `settings` from now on in this process
    (the settings read at the first use otherwise; tests of hashing itself switch so)."""
    global _hasher
    _hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_lanes,
    )
    _dummy_hash.cache_clear()  # its cost must stay that of a real verification


def _current() -> PasswordHasher:
    if _hasher is None:
        use_parameters(get_settings())
    assert _hasher is not None
    return _hasher


def hash_password(password: str) -> str:
    return _current().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _current().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _current().hash("not a password anyone has")


def verify_unknown_user(password: str) -> bool:
    """Spend the time a real verification takes, so an unknown email cannot be timed."""
    verify_password(_dummy_hash(), password)
    return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with older parameters than today's."""
    return _current().check_needs_rehash(password_hash)


class HashPool:
    """A few threads for argon2, and a bound on the hashes waiting for them."""

    def __init__(
        self,
        threads: int = HASH_THREADS,
        waiting: int = HASH_WAITING,
        max_wait: float = HASH_MAX_WAIT_SECONDS,
        max_queue_seconds: float = HASH_QUEUE_SECONDS,
    ) -> None:
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="argon2")
        self._thread_count = threads
        self._limit = threads + waiting
        self._max_wait = max_wait
        self._max_queue = max_queue_seconds
        self._in_flight = 0
        # How long a thread takes for one hash, on average (0 until the first is done:
        # the first sets it).
        self.hash_seconds = 0.0

    async def run(self, work: Callable[..., T], *args: str) -> T:
        """Run `work(*args)` in a thread.

        Raises:
            Overloaded: the threads are busy and enough hashes already wait (more than
                `waiting`, or more than the threads get through in `max_queue_seconds` at
                the recent pace), or no thread took this one within `max_wait` seconds
                (it is then skipped).
        """
        ahead = self._in_flight - self._thread_count  # waiting for a thread, if positive
        if self._in_flight >= self._limit or (
            ahead >= 0
            and (
                (ahead + 1) * self.hash_seconds > self._max_queue * self._thread_count
                # No pace known yet (a new process's first burst): one round of hashes
                # may wait, not the whole queue, until the first hash tells the pace.
                or (not self.hash_seconds and ahead >= self._thread_count)
            )
        ):
            raise Overloaded("too many sign-ins at once")
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        # Taken by the thread as it starts the work, or by the caller as it gives up:
        # whoever takes it first decides, so a hash is never both refused and computed.
        claim = threading.Lock()

        def start(*args: str) -> T:
            if not claim.acquire(blocking=False):
                raise _Skipped
            loop.call_soon_threadsafe(_set_started, started)
            began = time.perf_counter()
            try:
                return work(*args)
            finally:  # two threads may race here: an update lost to the other is harmless
                took = time.perf_counter() - began
                if self.hash_seconds:
                    self.hash_seconds += HASH_TIME_WEIGHT * (took - self.hash_seconds)
                else:  # the first hash is the pace, not a fifth of it
                    self.hash_seconds = took

        done = loop.run_in_executor(self._threads, start, *args)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(started), self._max_wait)
            except TimeoutError:
                if claim.acquire(blocking=False):
                    # The claim is ours now, so the handler below cannot tell: the skipped
                    # hash's future ends in _Skipped, read here rather than logged as an
                    # exception never retrieved.
                    done.add_done_callback(_retrieve)  # type: ignore[arg-type]
                    raise Overloaded("sign-ins are waiting too long; try again") from None
            return await done
        except BaseException:
            if claim.acquire(blocking=False):  # given up (or cancelled) before it started
                done.add_done_callback(_retrieve)  # type: ignore[arg-type]
            raise
        finally:
            self._in_flight -= 1


class _Skipped(Exception):
    """A queued hash whose caller stopped waiting before a thread took it."""


def _set_started(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


def _retrieve(done: asyncio.Future[object]) -> None:
    """Read a skipped hash's outcome, so asyncio does not log it as never retrieved."""
    if not done.cancelled():
        done.exception()


pool = HashPool()


async def hash_off_loop(password: str) -> str:
    """`hash_password` in the hashing threads (see HashPool)."""
    return await pool.run(hash_password, password)


async def verify_off_loop(password_hash: str, password: str) -> bool:
    """`verify_password` in the hashing threads (see HashPool)."""
    return await pool.run(verify_password, password_hash, password)


async def verify_unknown_user_off_loop(password: str) -> bool:
    """`verify_unknown_user` in the hashing threads (see HashPool)."""
    return await pool.run(verify_unknown_user, password)


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
        return gettext("password must be at least %(minimum)s characters") % {"minimum": minimum}
    if len(password) > MAX_LENGTH:
        return gettext("password must be at most %(maximum)s characters") % {"maximum": MAX_LENGTH}
    if password.strip().lower() in common_passwords():
        return gettext("this password is one of the most common ones; choose another")
    core = password.lower().strip(string.digits + string.punctuation + string.whitespace)
    if staff and core in common_passwords():
        return gettext("this password is a common one with digits or symbols added; choose another")
    local = email.strip().split("@")[0].lower()
    if staff and len(local) >= _LOCAL_PART_MIN and local in password.lower():
        return gettext("a staff password must not contain the name part of the email address")
    return None
