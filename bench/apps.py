"""ASGI apps served by uvicorn during the benchmark, and the stream protocol they speak.

Stream protocol (shared with ``go/hijack_server.go`` and ``node/upgrade_server.js``), one
command per line after the upgrade, repeated until EOF:

* ``echo``: echo everything until EOF;
* ``sink N``: read N bytes, answer ``ok``;
* ``source N``: write N bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.procs import HOST

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO = b"Hello, world!"
HELLO_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(HELLO))]
UPGRADE_HEADERS = [(b"upgrade", b"tcp"), (b"connection", b"Upgrade")]
_SOURCE = bytes(256 * 1024)
_READ = 1 << 16


async def serve_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speak the stream protocol on ``reader``/``writer`` until EOF (does not close)."""
    while line := await reader.readline():
        command, _, arg = line.strip().partition(b" ")
        if command == b"echo":
            while data := await reader.read(_READ):
                writer.write(data)
                await writer.drain()
            return
        if command == b"sink":
            left = int(arg)
            while left > 0:
                data = await reader.read(min(left, _READ))
                if not data:
                    return
                left -= len(data)
            writer.write(b"ok\n")
        elif command == b"source":
            left = int(arg)
            while left > 0:
                writer.write(_SOURCE if left >= len(_SOURCE) else _SOURCE[:left])
                left -= len(_SOURCE)
                await writer.drain()
        else:
            return


async def _serve_plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``asyncio.start_server`` callback: the baseline for hijacked streams."""
    with contextlib.suppress(ConnectionError):
        await serve_stream(reader, writer)
    writer.close()


async def _lifespan(receive: Receive, send: Send) -> None:
    """Start ``asyncio.start_server`` on the server's own loop when ``BENCH_PLAIN_PORT`` is set."""
    await receive()
    port = os.environ.get("BENCH_PLAIN_PORT")
    server = await asyncio.start_server(_serve_plain, HOST, int(port), backlog=2048) if port else None
    await send({"type": "lifespan.startup.complete"})
    await receive()
    if server is not None:
        server.close()
    await send({"type": "lifespan.shutdown.complete"})


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Plain ASGI hello world: the ordinary-request workload."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HELLO_HEADERS})
        await send({"type": "http.response.body", "body": HELLO})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


DOWNLOAD_BLOCK = bytes(range(256)) * 4096
"""One MiB of a known pattern: the unit of :func:`download`."""


async def download(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /?mib=N``: N (at least 1) MiB, one ``http.response.body`` message per MiB (the download workload)."""
    if scope["type"] != "http":
        return await hello(scope, receive, send)
    query = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part)
    mib = max(1, int(query.get("mib", "1")))
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % (mib * len(DOWNLOAD_BLOCK)))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for left in range(mib - 1, -1, -1):
        await send({"type": "http.response.body", "body": DOWNLOAD_BLOCK, "more_body": left > 0})


@functools.cache
def _hijack() -> Any:
    """``asgi_hijack.hijack``, imported on first use, once: a stock server never imports the library
    (a ``from ... import`` per request would add the import machinery to every hijack measured)."""
    from asgi_hijack import hijack

    return hijack


async def tcp_upgrade(scope: Scope, receive: Receive, send: Send) -> None:
    """``Upgrade: tcp`` requests are hijacked (101) and speak the stream protocol; others get :func:`hello`."""
    if scope["type"] != "http" or not any(k == b"upgrade" and v.lower() == b"tcp" for k, v in scope["headers"]):
        return await hello(scope, receive, send)
    conn = await _hijack()(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
    async with conn:
        with contextlib.suppress(ConnectionError):
            await serve_stream(conn.reader, conn.writer)


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """uvicorn's own WebSocket path: accept, echo one message, wait for the disconnect."""
    if scope["type"] != "websocket":
        return await hello(scope, receive, send)
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    while message["type"] == "websocket.receive":
        key = "text" if message.get("bytes") is None else "bytes"
        await send({"type": "websocket.send", key: message[key]})
        message = await receive()


def _connect_target(scope: Scope) -> tuple[str, int]:
    """``host:port`` of a CONNECT request: the request target if the server kept it, else ``Host``."""
    target = scope.get("raw_path") or scope["path"].encode()
    if b":" not in target.strip(b"/"):
        target = dict(scope["headers"]).get(b"host", b"")
    host, _, port = target.decode().strip("/").rpartition(":")
    return host.strip("[]"), int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` in 64 KiB chunks until EOF, then half-close ``writer``."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(_READ):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def connect_proxy_streams(scope: Scope, receive: Receive, send: Send) -> None:
    """CONNECT proxy relaying with an asyncio streams loop (``read``/``write``/``drain``), no allow-list.

    The baseline for ``examples/connect_proxy.py``, which relays the same tunnel with
    ``conn.relay()`` (transport-level forwarding, :mod:`asgi_hijack.relay`).
    """
    if scope["type"] != "http" or scope["method"] != "CONNECT":
        return await hello(scope, receive, send)
    up_reader, up_writer = await asyncio.open_connection(*_connect_target(scope))
    conn = await _hijack()(scope, receive, send, status=200)
    async with conn:
        await asyncio.gather(_pump(conn.reader, up_writer), _pump(up_reader, conn.writer))
    up_writer.close()
