"""Server settings (asgi_hijack.settings) work the same on every public protocol class.

A server wrapper subclasses a class and sets ``head_timeout``, ``drain_timeout`` or
``conn_state_hooks``; ``ZttpHijackProtocol`` serves HTTP/1.1 itself and forwards them to its
HTTP/2 protocol. Each test runs a real server with the subclass and talks to it over a socket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from asgi_hijack import hijack
from asgi_hijack.lifecycle import ConnectionInfo, ConnState
from asgi_hijack.testing import serve
from tests.apps import respond
from tests.helpers import (
    PARSERS,
    connect,
    connect_retry,
    free_port,
    recv_to_close,
    recv_until,
    wait_until,
    with_settings,
)

CLASSES = {"h11": "H11HijackProtocol", "httptools": "HttpToolsHijackProtocol", "zttp": "ZttpHijackProtocol"}


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/hijack":
        async with await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")]) as conn:
            await conn.send(b"mine")
    else:
        await respond(send, 200, b"ok")


@pytest.mark.parametrize("parser", PARSERS)
def test_a_subclass_head_timeout_cuts_a_half_sent_head(parser: str) -> None:
    with serve(hello, with_settings(parser, head_timeout=0.3), timeout_keep_alive=60) as server:
        started = time.monotonic()
        with connect(server) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            closing = recv_to_close(sock, 5)
        assert closing.how in ("eof", "reset"), closing
        assert 0.25 <= closing.at - started < 3, closing
        assert closing.data.startswith(b"HTTP/1.1 408 "), closing


@pytest.mark.parametrize("parser", PARSERS)
def test_subclass_conn_state_hooks_see_every_transition(parser: str) -> None:
    seen: list[tuple[int, str, int]] = []

    def hook(info: ConnectionInfo, state: ConnState) -> None:
        seen.append((info.id, state.value, info.request_index))

    with serve(hello, with_settings(parser, conn_state_hooks=(hook,))) as server:
        with connect(server) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"ok")
            sock.sendall(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_until(sock, b"mine").endswith(b"mine")
        assert wait_until(lambda: len(seen) >= 5)
    ids = {conn_id for conn_id, _, _ in seen}
    assert len(ids) == 1
    assert [(state, index) for _, state, index in seen] == [
        ("new", 0),
        ("active", 0),
        ("idle", 0),
        ("active", 1),
        ("hijacked", 1),
    ]


async def info_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    conn = await hijack(scope, receive, send)
    async with conn:
        info = conn.info
        assert info is not None
        public = sorted(name for name in dir(info) if not name.startswith("_"))
        info.state["seen"] = True
        await conn.send(json.dumps([public, info.id == scope["extensions"]["http.connection"]["id"]]).encode())


@pytest.mark.parametrize("parser", PARSERS)
def test_conn_info_exposes_only_the_documented_identity(parser: str) -> None:
    with serve(info_app, parser) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_to_close(sock).data
    names, same_id = json.loads(data)
    assert same_id is True
    assert names == [
        "client",
        "conn_state",
        "id",
        "peer_credentials",
        "proxy",
        "request_index",
        "requests",
        "server",
        "state",
    ]


DRAIN_SERVER = textwrap.dedent(
    """
    import sys, uvicorn, asgi_hijack
    from asgi_hijack import hijack

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")])
        await conn.send(b"ready")
        await conn.wait_closed()   # ignores the shutdown notice

    base = getattr(asgi_hijack, sys.argv[1])
    protocol = type("Drain", (base,), {"drain_timeout": float(sys.argv[3])}) if sys.argv[3] != "-" else base
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), http=protocol, log_level="warning", lifespan="off")
    """
)


@pytest.mark.parametrize(("parser", "drain"), [(p, "0.5") for p in PARSERS] + [("httptools", "-")])
def test_shutdown_closes_hijacked_connections_after_the_drain_timeout(parser: str, drain: str) -> None:
    """Without --timeout-graceful-shutdown an owner that ignores the notice is cut after the drain."""
    expected = 0.5 if drain != "-" else float(os.environ.get("ASGI_HIJACK_DRAIN_TIMEOUT", "5"))
    port = free_port()
    command = [sys.executable, "-c", DRAIN_SERVER, CLASSES[parser], str(port), drain]
    with subprocess.Popen(command, stderr=subprocess.PIPE) as proc:
        try:
            connect_retry(("127.0.0.1", port), timeout=20).close()
            with connect(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert recv_until(sock, b"ready").endswith(b"ready")
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                closing = recv_to_close(sock, expected + 5)
            assert closing.how in ("eof", "reset"), closing
            assert expected - 0.1 <= closing.at - signalled < expected + 3, closing
            assert proc.wait(timeout=10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        finally:
            if proc.poll() is None:
                proc.kill()
