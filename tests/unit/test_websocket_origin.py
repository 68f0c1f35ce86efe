"""The websocket handshake check: our Origin and a signed-in user, or code 1008."""

import dataclasses

import pytest
from litestar.connection import ASGIConnection
from litestar.exceptions import WebSocketDisconnect

from app.access.identity import Principal
from app.settings import load_settings
from app.web.guards import check_websocket_origin

SETTINGS = dataclasses.replace(
    load_settings(
        {"DATABASE_URL": "postgresql://x@h/db", "REDIS_URL": "redis://h", "SECRET_KEY": "k" * 40}
    ),
    public_origin="https://medbook.example",
)
ANN = Principal(id=1, email="ann@example.test", role="patient", patient_id=1)


def connection(origin: str | None, user: Principal | None = ANN, host: str = "medbook.example"):
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {"type": "websocket", "headers": headers, "scheme": "wss", "user": user}
    return ASGIConnection(scope)  # type: ignore[arg-type]


def test_our_origin_with_a_user_passes():
    check_websocket_origin(connection("https://medbook.example"), SETTINGS)
    check_websocket_origin(connection("HTTPS://MEDBOOK.EXAMPLE"), SETTINGS)


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "",
        "null",
        "https://evil.example",
        "http://medbook.example",
        "https://medbook.example.evil",
    ],
)
def test_other_or_missing_origins_are_refused(origin):
    with pytest.raises(WebSocketDisconnect) as refused:
        check_websocket_origin(connection(origin), SETTINGS)
    assert refused.value.code == 1008


def test_the_host_the_browser_used_counts_as_ours():
    # A demo reached through a forwarded port: the page and the socket share that origin.
    check_websocket_origin(connection("https://localhost:8443", host="localhost:8443"), SETTINGS)


def test_anonymous_handshakes_are_refused_even_from_our_origin():
    with pytest.raises(WebSocketDisconnect) as refused:
        check_websocket_origin(connection("https://medbook.example", user=None), SETTINGS)
    assert "sign in" in str(refused.value.detail)
