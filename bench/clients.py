"""Load generators for hijacked streams: lean uvloop protocols, one JSON line on stdout.

Run by :mod:`bench.run` pinned to the client core::

    python -m bench.clients handshake --port P --kind tcp|ws|close [--concurrency 50] [--seconds 10]
    python -m bench.clients bulk --port P --preface tcp|connect|none [--target PORT] [--bytes N]
    python -m bench.clients idle --port P --kind tcp|get|none --count N   # steps over stdin/stdout

Every stream speaks the line protocol of :mod:`bench.apps` after its preface.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import uvloop

from bench.procs import HOST, raise_nofile

PAYLOAD = bytes(range(64))
_WS_MASK = b"\x01\x02\x03\x04"
WS_FRAME = b"\x82\xc0" + _WS_MASK + bytes(b ^ _WS_MASK[i % 4] for i, b in enumerate(PAYLOAD))
PREFACES = {
    "tcp": (b"GET /stream HTTP/1.1\r\nHost: bench\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n", 101),
    "ws": (
        (
            b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        101,
    ),
    "get": (b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n", 200),
    "close": (b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", 200),
}
ECHOES = {"tcp": (b"echo\n" + PAYLOAD, PAYLOAD), "ws": (WS_FRAME, b"\x82\x40" + PAYLOAD), "close": (b"", b"")}
"""What a handshake client sends after the preface, and the reply it waits for."""
CHUNK = memoryview(bytes(1 << 20))


class Client(asyncio.Protocol):
    """Buffers (or only counts) what arrives, lets callers await a condition, honours write flow control."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.counting = False
        self.count = 0
        self.closed = False
        self._want: Callable[[], bool] = bool
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.counting:
            self.count += len(data)
        else:
            self.buf += data
        if self._waiter is not None and self._want():
            self._wake()

    def eof_received(self) -> None:
        self.closed = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def until(self, want: Callable[[], bool]) -> None:
        """Wait until ``want()`` holds; raise :class:`ConnectionError` if the peer closes first."""
        while not want():
            if self.closed:
                raise ConnectionError("connection closed by the server")
            self._want, self._waiter = want, self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def until_size(self, size: int) -> None:
        """Wait until at least ``size`` bytes are buffered."""
        await self.until(lambda: len(self.buf) >= size)

    async def write(self, data: bytes | memoryview) -> None:
        """Write ``data``; wait while the transport's buffer is above its high-water mark."""
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    async def head(self) -> int:
        """Consume one response head (and its Content-Length body); return the status code."""
        await self.until(lambda: b"\r\n\r\n" in self.buf)
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end]).lower()
        del self.buf[:end]
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            length = int(head[start + 17 : head.index(b"\r\n", start + 2)])
            await self.until_size(length)
            del self.buf[:length]
        return int(head[9:12])


async def connect(port: int, preface: str, target: int = 0) -> Client:
    """Open a connection and perform ``preface``: a ``tcp``/``ws``/``get``/``close`` request, ``connect``, ``none``."""
    _, client = await asyncio.get_running_loop().create_connection(Client, HOST, port)
    if preface == "none":
        return client
    if preface == "connect":
        authority = f"{HOST}:{target}".encode()
        request, expected = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority), 200
    else:
        request, expected = PREFACES[preface]
    client.transport.write(request)
    status = await client.head()
    if status != expected:
        client.transport.abort()
        raise ConnectionError(f"{preface}: expected {expected}, got {status}")
    return client


async def handshake(port: int, kind: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Connections per second of: connect, upgrade, one 64-byte echo round trip, close.

    ``close``: connect, a ``Connection: close`` GET and its response, close (no upgrade, no echo).
    """
    message, reply = ECHOES[kind]
    done = errors = 0

    async def worker(deadline: float) -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            try:
                client = await connect(port, kind)
                if message:
                    client.transport.write(message)
                await client.until_size(len(reply))
                client.transport.close()
                if client.buf != reply:
                    raise ConnectionError(f"bad echo {bytes(client.buf)!r}")
                done += 1
            except OSError:
                errors += 1

    start, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    if errors > done // 100:
        raise RuntimeError(f"{errors} failed handshakes out of {done + errors}")
    return {
        "value": done / elapsed,
        "count": done,
        "errors": errors,
        "client_cpu": (time.process_time() - cpu) / elapsed,
    }


async def bulk(port: int, preface: str, target: int, size: int) -> dict[str, Any]:
    """MiB/s of ``size`` bytes client->server (``sink``), then server->client (``source``), one connection."""
    client = await connect(port, preface, target)
    result: dict[str, Any] = {}
    begin = start = time.monotonic()
    cpu = time.process_time()
    await client.write(b"sink %d\n" % size)
    left = size
    while left > 0:
        chunk = CHUNK[: min(left, len(CHUNK))]
        await client.write(chunk)
        left -= len(chunk)
    await client.until(lambda: b"\n" in client.buf)
    if client.buf != b"ok\n":
        raise ConnectionError(f"bad sink reply {bytes(client.buf)!r}")
    result["upload"] = size / (1 << 20) / (time.monotonic() - start)
    client.counting = True
    start = time.monotonic()
    client.transport.write(b"source %d\n" % size)
    await client.until(lambda: client.count >= size)
    result["download"] = size / (1 << 20) / (time.monotonic() - start)
    client.transport.close()
    result["client_cpu"] = (time.process_time() - cpu) / (time.monotonic() - begin)
    return result


async def idle(port: int, kind: str, count: int, warm: int) -> None:
    """Hold ``count`` idle connections: upgraded (``tcp``), keep-alive (``get``) or bare (``none``).

    Prints ``warm`` after a warm-up (``warm`` connections opened and closed) and waits for a line;
    then opens the connections in two halves, after each prints a JSON line (``opened``: that
    half's, ``errors``) and waits for a line; then closes everything. The first half takes up
    what the server's allocators hold free after start-up, so the growth over the second half
    is what one more connection costs.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(256)
    errors = 0

    async def one() -> Client | None:
        nonlocal errors
        async with gate:
            try:
                client = await connect(port, kind)
                client.buf.clear()
                return client
            except OSError:
                errors += 1
                return None

    async def step(message: str) -> None:
        print(message, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

    for client in await asyncio.gather(*(one() for _ in range(warm))):
        if client is not None:
            client.transport.close()
    await asyncio.sleep(0.3)
    await step("warm")
    clients: list[Client] = []
    for half in (count // 2, count - count // 2):
        opened = [c for c in await asyncio.gather(*(one() for _ in range(half))) if c is not None]
        clients += opened
        await asyncio.sleep(0.5)
        await step(json.dumps({"opened": len(opened), "errors": errors}))
    for client in clients:
        client.transport.close()


def main() -> None:
    """Parse the subcommand, run it on uvloop, print its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    hs = sub.add_parser("handshake")
    hs.add_argument("--kind", choices=tuple(ECHOES), required=True)
    hs.add_argument("--concurrency", type=int, default=50)
    hs.add_argument("--seconds", type=float, default=10.0)
    bk = sub.add_parser("bulk")
    bk.add_argument("--preface", choices=("tcp", "connect", "none"), required=True)
    bk.add_argument("--target", type=int, default=0)
    bk.add_argument("--bytes", type=int, default=1 << 30)
    il = sub.add_parser("idle")
    il.add_argument("--kind", choices=("tcp", "get", "none"), required=True)
    il.add_argument("--count", type=int, default=10_000)
    il.add_argument("--warm", type=int, default=200)
    for p in (hs, bk, il):
        p.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    if args.mode == "handshake":
        result = uvloop.run(handshake(args.port, args.kind, args.concurrency, args.seconds))
    elif args.mode == "bulk":
        result = uvloop.run(bulk(args.port, args.preface, args.target, args.bytes))
    else:
        uvloop.run(idle(args.port, args.kind, args.count, args.warm))
        return
    print(json.dumps(result), flush=True)
    os._exit(0)  # skip interpreter teardown: it is not part of any measurement


if __name__ == "__main__":
    main()
