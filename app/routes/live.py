"""The websocket behind every live page, and how each audience's fragment is rendered."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.status_codes import WS_1008_POLICY_VIOLATION

from app import i18n
from app.access.identity import Principal
from app.appointments.rules import MAY_BOOK_STAFF_ONLY, BookingRules
from app.errors import NotFound
from app.live import boards
from app.live.realtime import (
    CLIENT_LEFT,
    CLOSE_GRACE_SECONDS,
    CLOSE_RESYNC,
    SEND_TIMEOUT_SECONDS,
    SUBSCRIBE_TIMEOUT_SECONDS,
    Hub,
    LiveSocket,
    clinic_channel,
    doctor_channel,
    parse_channel,
    patient_channel,
    records_channel,
    waitlist_channel,
)
from app.records import records
from app.routes import views
from app.routes.deps import booking_rules
from app.routes.inputs import parse_day, parse_id
from app.scheduling import directory, visit_types
from app.services import Services
from app.waitlist import entries as waitlist_entries
from app.waitlist import offers as waitlist_offers
from app.web.guards import PUBLIC, check_websocket_origin, current_user
from app.web.i18n import language_of
from db.models import Clinic, Doctor, VisitType

MAX_DAYS = 14
STAFF_SLOTS = "slots-staff"  # the slot pages of staff, whose chooser has staff-only types
OFFER_BANNER = "waitlist/_offer_banner.html"
DESK_WAITLIST = "desk/waitlist.html"
log = logging.getLogger(__name__)


def make_renderer(app: Any) -> Any:
    """Render one event for one audience in the current language; the hub calls it once per
    event, audience and language (app/live/realtime.py sets the language around the call)."""

    async def render(channel: str, audience: str, payload: dict[str, Any]) -> str:
        services = Services.of(app)
        env = views.environment(app)
        if audience == "records" and channel.startswith("records:"):
            # Ids only: each viewer's panel then reloads its list through the audited read.
            return views.render(env, "records/_refresh.html", patient_id=int(payload["patient_id"]))
        if audience == "my_appointments" and channel.startswith("patient:"):
            # The channel is the patient's own: one render per event, for their sockets.
            async with services.sessions() as session:
                now = dt.datetime.now(dt.UTC)
                patient_id = int(channel.split(":")[1])
                upcoming, past = await boards.my_appointments(session, patient_id, now)
                waitlist = await waitlist_offers.patient_waitlist(session, patient_id)
            return views.render(
                env,
                "patient/appointments.html",
                "list",
                upcoming=upcoming,
                past=past,
                oob=True,
                **waitlist,
            )
        if audience in ("offers", "waitlist"):
            return await _render_waitlist(services, env, channel, audience)
        kind, ident, day = parse_channel(channel)
        if audience.startswith("slots") and kind == "doctor":
            # One audience per visit type (`slots:{id}`) and per chooser (staff's
            # `slots-staff:{id}`): each event on the doctor's day is rendered once for
            # each type's viewers, in that type's shape. The slots come through the slot
            # cache: no session (opening and closing an unused one cost ~75 us a render).
            rules: BookingRules = booking_rules(services.settings)
            now = dt.datetime.now(dt.UTC)
            shown = slots_visit_type(audience)
            choice = ""
            if payload.get("action") == "visit_types":  # the chooser changes too
                staff = audience.startswith(STAFF_SLOTS)
                async with services.sessions() as session:
                    choice = await _visit_type_choice(session, env, ident, shown, staff)
            try:
                _, (view,) = await boards.doctor_days(
                    services.slot_cache, ident, day, 1, rules, now, shown
                )
            except NotFound:  # the type was deleted while its page was open
                return choice
            return choice + views.render(env, "patient/_day.html", day=view, oob=True)
        async with services.sessions() as session:
            if audience == "board" and kind == "doctor":
                # The board watches its doctors' channels for schedule changes only (their
                # appointments come on the clinic channel). Hours make the clinic's time
                # grid, which every column shares, so every column is redrawn.
                if payload.get("action") != "schedule":
                    return ""
                doctor = await session.get_one(Doctor, ident)
                _, columns = await boards.clinic_board(
                    session, services.slot_cache, doctor.clinic_id, day
                )
                return "".join(
                    views.render(env, "desk/_column.html", column=c, oob=True) for c in columns
                )
            if audience == "board" and kind == "clinic":
                doctor = await session.get_one(Doctor, int(payload["doctor_id"]))
                column = await boards.board_column(
                    session, services.slot_cache, doctor.id, doctor.full_name, day
                )
                return views.render(env, "desk/_column.html", column=column, oob=True)
            if audience == "doctor_day" and kind == "doctor":
                doctor, _, cards = await boards.doctor_day(session, ident, day)
                return views.render(
                    env, "doctor/_day.html", doctor=doctor, day=day, cards=cards, oob=True
                )
        raise ValueError(f"no fragment for {audience} on {channel}")

    return render


async def _visit_type_choice(
    session: Any, env: Any, doctor_id: int, shown: int | None, staff: bool
) -> str:
    """The slot page's chooser after an edit of the doctor's types, the type shown still
    selected (or a notice that it is gone); the staff's lists the staff-only types too,
    as their page does."""
    offered = await visit_types.list_visit_types(session, doctor_id, staff_only_too=staff)
    gone = shown is not None and all(t.id != shown for t in offered)
    return views.render(
        env,
        "patient/_visit_type_choice.html",
        visit_types=offered,
        visit_type_id=shown,
        gone=gone,
        oob=True,
    )


async def _render_waitlist(services: Services, env: Any, channel: str, audience: str) -> str:
    """A patient's open offers (the banner of every page), or a clinic's waiting list (the
    desk's waitlist page)."""
    kind, _, ident = channel.partition(":")
    async with services.sessions() as session:
        if audience == "offers" and kind == "patient":
            found = await waitlist_offers.listed(session, int(ident), open_only=True)
            return views.render(env, OFFER_BANNER, "offers", offers=found, oob=True)
        if audience == "waitlist" and kind == "waitlist":
            clinic_id = int(ident)
            waiting = await waitlist_entries.clinic_waiting(session, clinic_id)
            return views.render(
                env, DESK_WAITLIST, "entries", entries=waiting, clinic_id=clinic_id, oob=True
            )
    raise ValueError(f"no fragment for {audience} on {channel}")


async def _waitlist_channels(
    socket: WebSocket[Any, Any, Any], user: Principal | None
) -> tuple[str, list[str]]:
    """The waitlist's views: a patient's own offers (the banner of every page), a clinic's
    list (its desk, or an admin)."""
    params = socket.query_params
    view = params.get("view", "")
    try:
        if view == "offers" and user is not None and user.patient_id is not None:
            return "offers", [patient_channel(user.patient_id)]  # only one's own
        if view == "waitlist" and user is not None and user.role in ("front_desk", "admin"):
            clinic_id = parse_id(params.get("clinic_id", ""))
            mine = user.role == "admin" or clinic_id == user.clinic_id
            if mine and await _exists(socket, Clinic, clinic_id):
                return "waitlist", [waitlist_channel(clinic_id)]
    except ValueError:
        pass
    raise WebSocketDisconnect(code=WS_1008_POLICY_VIOLATION, detail="not a channel you may see")


async def _channels(
    socket: WebSocket[Any, Any, Any], user: Principal | None
) -> tuple[str, list[str]]:
    """Which channels this socket may watch, from its query and its user's role; a
    visitor (no user) only the free times."""
    params = socket.query_params
    view = params.get("view", "")
    if view == "my_appointments" and user is not None and user.patient_id is not None:
        return "my_appointments", [patient_channel(user.patient_id)]  # only one's own
    if view in ("offers", "waitlist"):
        return await _waitlist_channels(socket, user)
    if view == "records" and user is not None:  # only who may read the patient's records
        try:
            patient_id = parse_id(params.get("patient_id", ""))
            async with Services.of(socket.app).sessions() as session:
                if await records.may_follow(session, user, patient_id):
                    return "records", [records_channel(patient_id)]
        except ValueError:
            pass
        raise WebSocketDisconnect(code=WS_1008_POLICY_VIOLATION, detail="not a channel you may see")
    try:
        first = parse_day(params.get("date", ""))
        if view == "slots":
            doctor_id = parse_id(params.get("doctor_id", ""))
            days = min(max(int(params.get("days", "1")), 1), MAX_DAYS)
            if not await _exists(socket, Doctor, doctor_id):
                raise LookupError
            # Staff and everyone else see different choosers: one audience each.
            staff = user is not None and user.role in MAY_BOOK_STAFF_ONLY
            audience = STAFF_SLOTS if staff else "slots"
            if params.get("visit_type_id"):
                visit_type_id = parse_id(params["visit_type_id"])
                await _check_visit_type(socket, user, doctor_id, visit_type_id)
                audience = f"{audience}:{visit_type_id}"
            return audience, [
                doctor_channel(doctor_id, first + dt.timedelta(days=i)) for i in range(days)
            ]
        if user is None:
            raise PermissionError
        if view == "board" and user.role in ("front_desk", "admin"):
            clinic_id = parse_id(params.get("clinic_id", ""))
            if user.role == "front_desk" and clinic_id != user.clinic_id:
                raise PermissionError
            if not await _exists(socket, Clinic, clinic_id):
                raise LookupError
            return "board", [clinic_channel(clinic_id, first)]
        if view == "doctor_day" and user.role == "doctor" and user.doctor_id is not None:
            return "doctor_day", [doctor_channel(user.doctor_id, first)]
    except (ValueError, PermissionError, LookupError):
        pass
    raise WebSocketDisconnect(code=WS_1008_POLICY_VIOLATION, detail="not a channel you may see")


def slots_visit_type(audience: str) -> int | None:
    """The visit type of a slots audience (`slots`, `slots:{id}`, `slots-staff:{id}`...)."""
    _, _, ident = audience.partition(":")
    return int(ident) if ident else None


async def _check_visit_type(
    socket: WebSocket[Any, Any, Any], user: Principal | None, doctor_id: int, visit_type_id: int
) -> None:
    """Raises LookupError unless the type is the doctor's, PermissionError when it is
    staff-only and the viewer is not staff (as the available-slots API answers)."""
    async with Services.of(socket.app).sessions() as session:
        found = await session.get(VisitType, visit_type_id)
    if found is None or found.doctor_id != doctor_id:
        raise LookupError
    if not found.online and (user is None or user.role not in MAY_BOOK_STAFF_ONLY):
        raise PermissionError


async def _exists(
    socket: WebSocket[Any, Any, Any], model: type[Doctor | Clinic], ident: int
) -> bool:
    """Whether the doctor or clinic a socket asks for exists: an unknown one is refused
    before the handshake is accepted (1008), not accepted and then crashed on."""
    async with Services.of(socket.app).sessions() as session:
        return await session.get(model, ident) is not None


@websocket("/ws/live", opt=PUBLIC)
async def live(socket: WebSocket[Any, Any, Any]) -> None:
    """Streams HTML fragments (hx-swap-oob) for the page's view until the client leaves.

    On every (re)connect the whole view is sent first, so a browser that missed messages
    while disconnected is back in sync; htmx-ext-ws never replays missed messages itself.
    The view is rendered only after Redis has confirmed the subscriptions, so an event is
    either already in it or delivered after it.
    """
    services = Services.of(socket.app)
    settings = services.settings
    # Free times are no one's secret: visitors may watch them (read-only: the socket
    # ignores what the client sends). Every other view needs a session.
    check_websocket_origin(socket, settings, signed_in=socket.query_params.get("view") != "slots")
    user = current_user(socket)
    audience, channels = await _channels(socket, user)
    hub = services.hub
    assert hub is not None  # the web app serves its sockets through one
    doctors: list[int] = []
    watched = list(channels)
    if audience == "board":  # its doctors' schedule changes reshape its columns
        _, clinic_id, day = parse_channel(channels[0])
        doctors = await _clinic_doctors(socket, clinic_id)
        watched += [doctor_channel(doctor, day) for doctor in doctors]
    await socket.accept()
    # The page's language (it may be its clinic's default), else the request's.
    language = i18n.supported(socket.query_params.get("lang")) or language_of(socket.scope)
    subscription: LiveSocket = hub.join(audience, watched, language)
    try:
        if not await hub.subscribed(subscription, SUBSCRIBE_TIMEOUT_SECONDS):
            # Redis is away or slow: the browser comes back later (htmx-ext-ws reconnects
            # on 1013) rather than showing a view that would not update.
            await socket.close(code=CLOSE_RESYNC)
            return
        if audience == "records":
            await _records_resync(socket, subscription, hub, channels[0])
            await _pump(socket, subscription, hub)
            return
        for channel in channels:  # resync: the current state of everything watched
            if audience == "board":
                for doctor in doctors:
                    payload = {"doctor_id": doctor}
                    subscription.offer(await hub.render(channel, audience, payload))
                continue
            subscription.offer(await hub.render(channel, audience, {}))
        await _pump(socket, subscription, hub)
    finally:
        hub.leave(subscription)


async def _records_resync(
    socket: WebSocket[Any, Any, Any], subscription: LiveSocket, hub: Hub, channel: str
) -> None:
    """Reloading the list is an audited read, so it happens only when the panel (which
    says the newest record it shows) has really missed an upload while disconnected."""
    patient_id = int(channel.split(":")[1])
    try:
        after = int(socket.query_params.get("after", "0"))
    except ValueError:
        after = 0
    async with Services.of(socket.app).sessions() as session:
        missed = await records.newer_than(session, patient_id, after)
    if missed:
        subscription.offer(await hub.render(channel, "records", {"patient_id": patient_id}))


async def _clinic_doctors(socket: WebSocket[Any, Any, Any], clinic_id: int) -> list[int]:
    async with Services.of(socket.app).sessions() as session:
        return [d.id for d in await directory.find_doctors(session, clinic_id=clinic_id)]


async def _pump(socket: WebSocket[Any, Any, Any], subscription: LiveSocket, hub: Hub) -> None:
    """Send queued fragments; stop when the client goes, the hub asks us to close, or a
    send cannot finish (the client stopped reading).

    One task reads the client only to notice it leave, and then queues CLIENT_LEFT; the
    pump itself just waits on its queue (no task per fragment: with thousands of sockets
    a fan-out is that many wake-ups)."""

    async def client_gone() -> None:
        try:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await socket.receive_data(mode="text")
        finally:
            subscription.close(CLIENT_LEFT)

    watcher = asyncio.create_task(client_gone())
    try:
        while True:
            item = await subscription.queue.get()
            if item == CLIENT_LEFT:
                return
            if isinstance(item, int):  # a close code: fell behind, or Redis went away
                # The hub has already let it go. The close frame may wait behind unread
                # fragments, so it gets the same grace as a stuck send's.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                        await socket.close(code=item)
                return
            try:
                async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                    await socket.send_text(item)
            except TimeoutError:
                await _drop_stuck(socket, subscription, hub)
                return
    except (WebSocketDisconnect, OSError):  # the client went (uvicorn: ClientDisconnected)
        return
    except RuntimeError as exc:
        # uvicorn's way of saying the client closed first (it has answered the close
        # frame, so nothing more may be sent): the same as a disconnect, not an error.
        if "websocket.close" not in str(exc):
            raise
    finally:
        watcher.cancel()


async def _drop_stuck(socket: WebSocket[Any, Any, Any], subscription: LiveSocket, hub: Hub) -> None:
    """A client that stopped reading: forget it now (no more renders or queueing for it),
    then say 1013 so the page resyncs when it reads again. The close frame waits for room
    in the same full buffers, so it gets CLOSE_GRACE_SECONDS; after that the handler
    returns and the server closes the connection (the browser sees 1006 and also resyncs).
    """
    hub.leave(subscription)
    log.info("live socket stopped reading for %ss: dropped", SEND_TIMEOUT_SECONDS)
    with contextlib.suppress(TimeoutError, WebSocketDisconnect, RuntimeError):
        async with asyncio.timeout(CLOSE_GRACE_SECONDS):
            await socket.close(code=CLOSE_RESYNC)
