"""Server CPU of uvicorn's websocket keepalive pings, per ping (issue 17, cpu17f).

    .venv/bin/python bench/ws_ping_cost.py [--sockets 300] [--seconds 20] [--rounds 2]

The keepalive is uvicorn's and the websockets library's, whatever the app does with the
socket, so the server here is `uvicorn` with medbook's options (uvloop, httptools, no
compression) around a bare ASGI app that accepts each socket and waits. The clients do
not ping (a browser does not). Rounds alternate a ping every second with none; the
difference of the server's CPU (user + system, /proc) divided by the pings sent is one
ping's cost, pong included. Loopback only; the server is stopped with its process group.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys

import psutil
import websockets

APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
"""

SERVE = """
import sys, uvicorn
interval = None if sys.argv[2] == "off" else float(sys.argv[2])
uvicorn.run("ws_ping_app:app", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            ws_per_message_deflate=False, ws_ping_interval=interval,
            ws_ping_timeout=20.0, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(interval: str, sockets: int, seconds: float, folder: str) -> float:
    """Server CPU seconds over `seconds` with `sockets` open and idle."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port), interval],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": folder},
        start_new_session=True,
    )
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/"
        clients = [
            await websockets.connect(url, ping_interval=None, compression=None)
            for _ in range(sockets)
        ]
        await asyncio.sleep(1)
        before = cpu(server.pid)
        await asyncio.sleep(seconds)
        used = cpu(server.pid) - before
        for client in clients:
            await client.close()
        return used
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = f"/tmp/ws-ping-cost-{os.getpid()}"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/ws_ping_app.py", "w") as f:
        f.write(APP)
    pings = args.sockets * args.seconds  # one a second per socket
    print(f"load average {os.getloadavg()}; {args.sockets} sockets, {args.seconds} s a round")
    print("| round | CPU ms, pings every 1 s | CPU ms, no pings | µs per ping |")
    print("| ---: | ---: | ---: | ---: |")
    for r in range(args.rounds):
        order = ("1", "off") if r % 2 == 0 else ("off", "1")
        used = {name: await measure(name, args.sockets, args.seconds, folder) for name in order}
        per_ping = (used["1"] - used["off"]) / pings * 1e6
        print(f"| {r + 1} | {used['1'] * 1e3:.0f} | {used['off'] * 1e3:.0f} | {per_ping:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
