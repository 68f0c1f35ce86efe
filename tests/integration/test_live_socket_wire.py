"""What a live socket of `medbook serve` negotiates on the wire."""

import websockets

from tests.integration.world import day_after_tomorrow, make_world


async def test_live_sockets_are_not_compressed(session, settings, redis, live_server):
    """The server declines permessage-deflate, which browsers offer: compressing each
    fragment once per socket was a third of a fan-out's CPU, and each socket's compressor
    about half of its memory (bench/README.md, "Live updates")."""
    world = await make_world(session, settings.secret_key, patients=1)
    await session.commit()
    url = live_server.url.replace("http://", "ws://") + (
        f"/ws/live?view=slots&doctor_id={world.doctor_id}&date={day_after_tomorrow()}"
    )
    socket = await websockets.connect(
        url,
        origin=live_server.url,
        additional_headers=world.headers("patient0"),
        compression="deflate",  # offered, as a browser does
        open_timeout=10,
    )
    try:
        assert "<" in str(await socket.recv())  # the view arrives
        assert socket.protocol.extensions == []
        assert "Sec-WebSocket-Extensions" not in socket.response.headers
    finally:
        await socket.close()
