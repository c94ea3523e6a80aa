"""Slow and partial input: a request head must arrive within the head timeout, on every parser.

The interface under test: ``asgi_hijack.core.HEAD_TIMEOUT`` (default 10 s, or the
``ASGI_HIJACK_HEAD_TIMEOUT`` environment variable), read per connection from the class
attribute ``HijackSettings.head_timeout`` when the protocol is constructed, so a
subclass or a patched attribute changes it. The clock runs from the moment the server
waits for a head (a new connection, or a response completed on a keep-alive connection)
until the head is complete; bytes trickling in do not restart it. It never applies to a
request whose head is complete (slow apps, slow bodies) nor to a hijacked connection.

A connection cut by the head timeout is closed, optionally after a ``408`` response.
Here the timeout is 0.25 s and keep-alive 60 s, so only the head timeout can close.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.importer import import_from_string

from asgi_hijack import hijack
from asgi_hijack.settings import HijackSettings
from asgi_hijack.testing import RunningServer, serve
from tests.helpers import (
    PARSERS,
    ROOT,
    Closing,
    ServerProcess,
    assert_serving,
    connect,
    parse_responses,
    recv_exactly,
    recv_to_close,
    recv_until,
)

HEAD_TIMEOUT = 0.25
EARLY = 0.05
"""Timer slack: asyncio may fire a timer up to its clock resolution early."""
BOUND = 8.0
"""How long a test waits for a close that must come after HEAD_TIMEOUT (less than the 10 s default,
so that a subclass or environment setting that did not take effect cannot pass)."""
PARTIAL = b"GET /plain HTTP/1.1\r\nHost: x\r\nX-Half: "


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        async with await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")]) as conn:
            while data := await conn.reader.read(65536):
                await conn.send(data)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/slow":
        await asyncio.sleep(2 * HEAD_TIMEOUT)
    answer = b"ok" if path == "/plain" else b"%s:%d" % (path.encode(), len(body))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module", params=PARSERS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HijackSettings, "head_timeout", HEAD_TIMEOUT)
        with serve(slow_app, request.param, timeout_keep_alive=60, timeout_graceful_shutdown=1) as running:
            yield running


def assert_cut(closing: Closing, since: float, timeout: float = HEAD_TIMEOUT) -> None:
    """The server closed (EOF or reset) no earlier than ``timeout`` after ``since``, with nothing or a 408.

    ``since`` is taken before the client did what starts the clock, so the clock cannot
    have started earlier.
    """
    assert closing.how in ("eof", "reset"), f"still open after {closing.seconds:.1f}s: the head timeout did not fire"
    elapsed = closing.at - since
    assert elapsed >= timeout - EARLY, f"closed after {elapsed:.3f}s, before the head timeout"
    responses, rest = parse_responses(closing.data)
    assert rest == b"" and [r.status for r in responses] in ([], [408]), closing.data


def test_a_silent_new_connection_is_closed(server: RunningServer) -> None:
    since = time.monotonic()
    with connect(server.address) as sock:
        assert_cut(recv_to_close(sock, BOUND), since)
    assert_serving(server)


def test_half_a_head_on_a_new_connection_is_closed(server: RunningServer) -> None:
    since = time.monotonic()
    with connect(server.address) as sock:
        sock.sendall(PARTIAL)
        assert_cut(recv_to_close(sock, BOUND), since)
    assert_serving(server)


def test_a_partial_http2_preface_is_closed(server: RunningServer) -> None:
    # ZttpHijackProtocol waits for 24 bytes to tell HTTP/2 prior knowledge from HTTP/1.1.
    since = time.monotonic()
    with connect(server.address) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n")
        assert_cut(recv_to_close(sock, BOUND), since)
    assert_serving(server)


def test_half_a_head_after_a_keep_alive_response_is_closed(server: RunningServer) -> None:
    with connect(server.address) as sock:
        since = time.monotonic()
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, b"ok").endswith(b"\r\n\r\nok")
        time.sleep(HEAD_TIMEOUT / 2)  # part of the wait happens before the partial head
        sock.sendall(PARTIAL)
        assert_cut(recv_to_close(sock, BOUND), since)
    assert_serving(server)


def test_a_trickled_head_is_cut_at_the_head_timeout(server: RunningServer) -> None:
    """One byte every 50 ms never completes the head; the bytes must not restart the clock."""
    since = time.monotonic()
    with connect(server.address) as sock:
        sock.sendall(PARTIAL)
        closing = Closing(b"", "open", 0.0)
        while time.monotonic() - since < BOUND:
            try:
                sock.sendall(b"a")
            except OSError:
                closing = Closing(b"", "reset", 0.0, time.monotonic())
                break
            closing = recv_to_close(sock, 0.05)
            if closing.how != "open":
                break
        assert_cut(closing, since)
    assert_serving(server)


def test_a_slow_app_is_not_cut(server: RunningServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, b"/slow:0", timeout=BOUND).endswith(b"\r\n\r\n/slow:0")


def test_a_slow_body_is_not_cut(server: RunningServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for piece in (b"sl", b"ow", b"bo", b"dy"):
            time.sleep(HEAD_TIMEOUT / 2)
            sock.sendall(piece)
        assert recv_until(sock, b"/upload:8", timeout=BOUND).endswith(b"\r\n\r\n/upload:8")


def test_a_hijacked_connection_is_not_cut(server: RunningServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
        recv_until(sock, b"\r\n\r\n")
        time.sleep(2 * HEAD_TIMEOUT)
        sock.sendall(b"still mine")
        assert recv_exactly(sock, 10) == b"still mine"


def test_a_pipelined_partial_head_does_not_cut_the_response_before_it(server: RunningServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + PARTIAL)
        closing = recv_to_close(sock, BOUND + 2 * HEAD_TIMEOUT)
    responses, _ = parse_responses(closing.data)
    assert responses and responses[0].status == 200 and responses[0].body == b"/slow:0", closing.data
    assert closing.how in ("eof", "reset"), "the partial head after the response was never cut"
    assert [r.status for r in responses[1:]] in ([], [408]), closing.data


H1_PROTOCOLS = {
    "h11": "asgi_hijack:H11HijackProtocol",
    "httptools": "asgi_hijack:HttpToolsHijackProtocol",
    "zttp": "asgi_hijack.zttp_h1:ZttpH1HijackProtocol",
}


@pytest.mark.parametrize("parser", PARSERS)
def test_a_subclass_sets_its_own_head_timeout(parser: str) -> None:
    base = import_from_string(H1_PROTOCOLS[parser])
    protocol = type(f"Quick{base.__name__}", (base,), {"head_timeout": 0.3})
    with serve(slow_app, protocol, timeout_keep_alive=60, timeout_graceful_shutdown=1) as running:
        since = time.monotonic()
        with connect(running.address) as sock:
            sock.sendall(PARTIAL)
            assert_cut(recv_to_close(sock, BOUND), since, 0.3)
        assert_serving(running)


def test_the_default_is_ten_seconds() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ASGI_HIJACK_HEAD_TIMEOUT"}
    code = "from asgi_hijack.core import HEAD_TIMEOUT, HijackServerMixin as M; print(HEAD_TIMEOUT, M.head_timeout)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, timeout=60, check=True)
    assert out.stdout.split() == [b"10.0", b"10.0"]


@pytest.mark.parametrize("parser", PARSERS)
def test_the_environment_variable_sets_the_head_timeout(parser: str) -> None:
    with ServerProcess(parser, env={"ASGI_HIJACK_HEAD_TIMEOUT": "0.25"}) as running:
        since = time.monotonic()
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            sock.sendall(PARTIAL)
            assert_cut(recv_to_close(sock, BOUND), since, 0.25)
        assert running.problems() == [], running.stderr()
