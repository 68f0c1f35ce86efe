"""The services a process shares (engines, Redis, the job queue, file stores, after-commit
effects, live updates), built and closed in one place for the web app and the worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from saq import Queue
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.analytics.exports import export_store
from app.live import realtime
from app.live.effects import AppointmentChange, Effects
from app.live.realtime import Hub, Renderer
from app.pipelined_redis import Commands, create_request_redis
from app.records.documents import create_store
from app.redis import create_redis
from app.scheduling.slots import SlotCache
from app.settings import Settings
from app.storage import Store
from app.waitlist import offers as waitlist_offers
from db.session import create_engine, session_factory
from tasks.queue import MedbookQueue, create_queue
from tasks.reminders import dispatch_job, enqueue_dispatch
from tasks.waitlist import enqueue_refills

if TYPE_CHECKING:
    from litestar import Litestar

log = logging.getLogger(__name__)

# Changes after which an outbox row may be due at once (a confirmation, a notice, an offer).
DISPATCH_ON = frozenset({"booked", "rescheduled", "cancelled", waitlist_offers.OFFERED})
# Changes that may free a slot for the waitlist (a move frees its old time).
FREES = frozenset({"cancelled", "rescheduled", waitlist_offers.RELEASED})


@dataclass(frozen=True, kw_only=True, eq=False)
class Services:
    """What a process's requests or jobs share; made by `start_services`, closed by `stop`."""

    settings: Settings
    engine: AsyncEngine  # the primary
    sessions: async_sessionmaker[AsyncSession]
    # Reports and exports: the replica when DATABASE_READ_URL is set, with the analytics
    # statement timeout. Rollups write, so they use the primary, with the same timeout.
    analytics_engine: AsyncEngine
    rollup_engine: AsyncEngine
    redis: Redis
    # The authentication script every request runs (app/access/identity.py), on one
    # pipelined connection: redis-py's layers cost more than the command (cpu17f).
    request_redis: Commands
    queue: MedbookQueue
    documents: Store  # one S3 client per process, shared with exports
    exports: Store
    effects: Effects
    slot_cache: SlotCache
    hub: Hub | None  # the web app's socket hub; the worker serves no sockets
    owns_queue: bool = True
    asking: set[asyncio.Task[None]] = field(default_factory=set)  # refill requests in flight

    @staticmethod
    def of(app: Litestar) -> Services:
        """The web app's services, which its lifespan started."""
        services = app.state.get("services")
        if not isinstance(services, Services):
            raise RuntimeError("the app's services are not started (outside its lifespan?)")
        return services

    async def stop(self) -> None:
        """Close everything `start_services` opened, the last of it even if Redis is down."""
        if self.hub is not None:
            await self.hub.stop()
        if self.asking:
            await asyncio.gather(*self.asking, return_exceptions=True)
        await self.effects.stop()
        if self.owns_queue:
            try:
                await self.queue.disconnect()
            except (RedisError, OSError) as exc:  # Redis down at shutdown must not stop it
                log.warning("job queue not closed cleanly: %s", exc)
        await self.redis.aclose()
        await self.request_redis.aclose()
        for engine in (self.engine, self.analytics_engine, self.rollup_engine):
            await engine.dispose()


async def start_services(
    settings: Settings,
    *,
    process: str,
    engine: AsyncEngine | None = None,
    queue: MedbookQueue | None = None,
    render: Renderer | None = None,
) -> Services:
    """Build a process's services and open the ones that connect at start.

    Args:
        process: `web` or `worker`; names the database connections (medbook-web...).
        engine: the primary engine when the caller made it already (the web app's
            SQLAlchemy plugin needs it before start); closed by `stop` all the same.
        queue: the worker's own SAQ queue, which SAQ connects and closes; otherwise a
            queue is made and connected here.
        render: turns a live-update event into a socket's HTML; given, a `Hub` serves
            this process's websockets and every after-commit change is published to them.
    """
    engine = engine or create_engine(settings, application_name=f"medbook-{process}")
    redis = create_redis(settings)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        analytics_engine=create_engine(
            settings,
            url=settings.database_read_url or settings.database_url,
            statement_timeout_ms=settings.analytics_statement_timeout_ms,
            application_name="medbook-analytics",
        ),
        rollup_engine=create_engine(
            settings,
            statement_timeout_ms=settings.analytics_statement_timeout_ms,
            application_name="medbook-rollups",
        ),
        redis=redis,
        request_redis=create_request_redis(settings),
        queue=queue or create_queue(settings),
        documents=create_store(settings),
        exports=export_store(settings),
        effects=Effects(redis),
        slot_cache=SlotCache(redis, engine),
        hub=Hub(settings.redis_url, redis, render) if render else None,
        owns_queue=queue is None,
    )
    _wire_effects(services)
    if services.owns_queue:
        await services.queue.connect()
    if services.hub is not None:
        await services.hub.start()
    return services


def _wire_effects(services: Services) -> None:
    """What follows a commit besides the cache invalidation `Effects` does itself: the live
    updates and the ask to the worker to send a confirmation now rather than at the next
    minute's cron (both on one Redis pipeline with the invalidation)."""
    effects, hub = services.effects, services.hub
    if hub is not None:
        effects.publishers.append(
            lambda pipe, changes: hub.queue_publish(pipe, realtime.change_messages(changes))
        )
        effects.schedule_publishers.append(
            lambda pipe, days: hub.queue_publish(pipe, realtime.schedule_messages(days))
        )
        effects.record_publishers.append(
            lambda pipe, patient_id, record_id: hub.queue_publish(
                pipe, realtime.record_messages(patient_id, record_id)
            )
        )
        effects.waitlist_publishers.append(
            lambda pipe, clinics: hub.queue_publish(pipe, realtime.waitlist_messages(clinics))
        )
        effects.type_publishers.append(
            lambda pipe, days: hub.queue_publish(pipe, realtime.visit_type_messages(days))
        )
        effects.live_days = services.settings.booking_horizon_days
    else:  # the worker's changes (waitlist offers) reach open pages all the same
        prefix = realtime.channel_prefix(services.redis)
        effects.publishers.append(
            lambda pipe, changes: realtime.queue_messages(
                pipe, prefix, realtime.change_messages(changes)
            )
        )
        effects.waitlist_publishers.append(
            lambda pipe, clinics: realtime.queue_messages(
                pipe, prefix, realtime.waitlist_messages(clinics)
            )
        )

    def ask_for_dispatch_on(pipe: Pipeline, changes: Sequence[AppointmentChange]) -> None:
        # On the invalidation's pipeline: no round trip of its own (bench/README.md,
        # cpu17c). A lost ask only means the cron finds the rows within a minute.
        if any(c.action in DISPATCH_ON for c in changes):
            services.queue.enqueue_on(pipe, "dispatch_notifications", **dispatch_job())

    effects.publishers.append(ask_for_dispatch_on)

    def ask_refill(doctor_days: Sequence[tuple[int, dt.date]]) -> None:
        # In the background, as the nudge: the answer need not wait for the enqueue, and a
        # lost ask only means the sweeper refills recent cancellations within a minute.
        if doctor_days:
            task = asyncio.create_task(ask_for_refill(services, doctor_days))
            services.asking.add(task)
            task.add_done_callback(services.asking.discard)

    async def refill(changes: Sequence[AppointmentChange]) -> None:
        ask_refill(
            [
                (c.doctor_id, day)
                for c in changes
                if c.action in FREES and c.someone_waits
                for day in c.days
            ]
        )

    async def schedule_refill(doctor_days: Sequence[tuple[int, dt.date]]) -> None:
        ask_refill(doctor_days)  # hours extended or leave withdrawn may free slots

    effects.listeners.append(refill)
    effects.schedule_listeners.append(schedule_refill)


async def ask_for_refill(services: Services, doctor_days: Sequence[tuple[int, dt.date]]) -> None:
    """Ask the worker to offer these doctor-days' free slots to the waitlist. Never fails
    the caller (the change is committed): the sweeper finds recent cancellations anyway."""
    horizon = dt.timedelta(days=services.settings.booking_horizon_days)
    try:
        await enqueue_refills(services.queue, doctor_days, dt.datetime.now(dt.UTC), horizon)
    except Exception as exc:
        log.warning("could not ask for a waitlist refill: %s", exc)


async def ask_for_dispatch(queue: Queue) -> None:
    """Ask the worker to send due notifications now. Never fails the caller: the dispatch
    cron finds the rows within a minute anyway."""
    try:
        await enqueue_dispatch(queue)
    except Exception as exc:
        log.warning("could not ask for a notification dispatch: %s", exc)
