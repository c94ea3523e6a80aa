"""Shared fixtures: real uvicorn servers with our protocols, raw-socket helpers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from asgi_hijack.testing import RunningServer, serve
from soak.wire import recv_until
from tests.apps import probe_app

__all__ = ["PARSERS", "connect", "probe_server", "recv_all", "recv_until"]

PARSERS = ["h11", "httptools", "zttp"]


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the server closes the connection."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@pytest.fixture(scope="module", params=[(p, loop) for loop in ("asyncio", "uvloop") for p in PARSERS], ids="-".join)
def probe_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The probe app (tests/apps.py) on each of our HTTP/1.x protocols, on both event loops."""
    parser, loop = request.param
    with serve(probe_app, parser, loop=loop) as server:
        yield server
