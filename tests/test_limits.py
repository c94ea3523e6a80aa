"""Limits on hijacked connections: the ``max_hijacked`` cap and uvicorn's ``--limit-concurrency``.

Hijacked connections leave uvicorn's request bookkeeping, so both limits count them
explicitly. Over the cap, ``hijack()`` raises ``HijackLimitError`` before writing anything
and the app answers 503 itself.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
from typing import Any

import pytest

from asgi_hijack import HijackLimitError, hijack
from asgi_hijack.testing import serve
from tests.apps import respond
from tests.helpers import (
    PARSERS,
    connect,
    connect_retry,
    free_port,
    recv_all,
    recv_until,
    uvicorn_command,
    wait_until,
    with_settings,
)

UPGRADE = b"GET /hijack HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n"


async def holding_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/hijack``: hijack, say ``held``, hold until the client closes. Over the cap: 503 with the error."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/hijack":
        await respond(send, 200, b"ok")
        return
    try:
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")])
    except HijackLimitError as exc:
        body = str(exc).encode()
        headers = [(b"content-length", b"%d" % len(body)), (b"retry-after", b"1")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    async with conn:
        await conn.send(b"held")
        await conn.reader.read()  # until the client closes


def hold(address: tuple[str, int]) -> socket.socket:
    sock = connect(address)
    sock.sendall(UPGRADE)
    assert recv_until(sock, b"held").endswith(b"held")
    return sock


def refused(address: tuple[str, int]) -> bytes:
    with connect(address) as sock:
        sock.sendall(UPGRADE)
        return recv_all(sock)


@pytest.mark.parametrize("parser", PARSERS)
def test_over_the_cap_hijack_raises_before_writing_and_the_app_answers_503(parser: str) -> None:
    with serve(holding_app, with_settings(parser, max_hijacked=2)) as server:
        held = [hold(server.address) for _ in range(2)]
        answer = refused(server.address)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"2 hijacked connections are open" in answer and b"max_hijacked=2" in answer
        assert b"retry-after: 1" in answer.lower()
        held.pop().close()  # one fewer: the next hijack fits again
        assert wait_until(lambda: hold(server.address).close() is None, timeout=5)
        for sock in held:
            sock.close()


def test_the_environment_sets_the_cap() -> None:
    port = free_port()
    command = uvicorn_command(
        "tests.test_limits:holding_app",
        "asgi_hijack:HttpToolsHijackProtocol",
        *("--port", str(port), "--lifespan", "off", "--log-level", "warning"),
    )
    with subprocess.Popen(command, env={**os.environ, "ASGI_HIJACK_MAX_HIJACKED": "1"}) as proc:
        try:
            connect_retry(("127.0.0.1", port), timeout=20).close()
            first = hold(("127.0.0.1", port))
            assert refused(("127.0.0.1", port)).startswith(b"HTTP/1.1 503 ")
            first.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.parametrize("parser", PARSERS)
def test_under_load_exactly_the_cap_is_hijacked(parser: str) -> None:
    """60 clients at once against a cap of 10: 10 are hijacked, 50 get the 503, none anything else."""
    with serve(holding_app, with_settings(parser, max_hijacked=10)) as server:

        def one(i: int) -> tuple[str, socket.socket | None]:
            sock = connect(server.address, timeout=10)
            sock.sendall(UPGRADE)
            data = b""
            while not data.endswith(b"held"):  # a refused upgrade is answered, then closed
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"HTTP/1.1 101 ") and data.endswith(b"held"):
                return "hijacked", sock
            sock.close()
            return ("refused" if data.startswith(b"HTTP/1.1 503 ") else f"other: {data[:80]!r}"), None

        with concurrent.futures.ThreadPoolExecutor(60) as pool:
            outcomes = list(pool.map(one, range(60)))
        kinds = [kind for kind, _ in outcomes]
        assert kinds.count("hijacked") == 10, kinds
        assert kinds.count("refused") == 50, kinds
        for _, sock in outcomes:
            if sock is not None:
                sock.close()
        # Every hijacked connection closed: the count is back to zero, so ten fit again.
        assert wait_until(lambda: _fits(server.address, 10), timeout=10)


def _fits(address: tuple[str, int], count: int) -> bool:
    socks = []
    try:
        for _ in range(count):
            sock = connect(address)
            sock.sendall(UPGRADE)
            socks.append(sock)
            if not recv_until(sock, b"held").endswith(b"held"):
                return False
        return True
    except (AssertionError, OSError):
        return False
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("parser", PARSERS)
def test_limit_concurrency_counts_hijacked_connections(parser: str) -> None:
    # uvicorn counts the connection being served too: 2 hijacked + this one reach the limit of 3.
    with serve(holding_app, parser, limit_concurrency=3) as server:
        held = [hold(server.address) for _ in range(2)]
        with connect(server.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = recv_until(sock, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        for sock in held:
            sock.close()
        assert wait_until(lambda: _plain_ok(server.address), timeout=5)


def _plain_ok(address: tuple[str, int]) -> bool:
    with connect(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return recv_all(sock).startswith(b"HTTP/1.1 200 ")
