"""The load client: many hijacked connections echoing random-sized payloads, every byte checked.

Each connection sends ``GET /echo`` with ``Upgrade`` and its first payload in the same
write (so it travels through the server's pending buffer), waits for the ``101`` head,
then streams payloads of random sizes while reading the echo concurrently. Every
received byte is compared with the byte sent at the same offset (a reordered, lost,
duplicated or corrupted byte fails at once), and a CRC-32 of each direction is compared
at the end. In-flight bytes per connection are bounded by a window, so memory stays flat.

All connections complete the hijack before any starts streaming: ``connections`` are
held concurrently, not one after another.
"""

from __future__ import annotations

import asyncio
import random
import resource
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

REQUEST = b"GET /echo%s HTTP/1.1\r\nHost: soak\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
POOL_SIZE = 1 << 20


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to at least ``needed`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class LoadResult:
    """What a run did and what went wrong (``failures`` is empty when every byte checked out)."""

    connections: int
    hijacked: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_verified: int = 0
    bytes_verified_after_mark: int = 0
    chunks: int = 0
    failures: list[str] = field(default_factory=list)
    ends: Counter[str] = field(default_factory=Counter)
    """How connections ended: ``eof`` (the server closed after our EOF or on its own), ``reset``."""


class _Connection:
    def __init__(self, index: int, seed: int, pool: bytes, max_chunk: int, window: int) -> None:
        self.index = index
        self.rng = random.Random(seed * 1_000_003 + index)
        self.pool = pool
        self.max_chunk = max_chunk
        self.window = window
        self.expected = bytearray()  # sent, not yet echoed
        self.space = asyncio.Event()
        self.finished = False
        self.marked = False
        self.sent = self.verified = self.verified_after_mark = self.chunks = 0
        self.crc_sent = self.crc_received = 0
        self.error: str | None = None
        self.end = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def chunk(self) -> bytes:
        # Sizes from 1 byte to max_chunk, half of them small.
        size = self.rng.randint(1, 512) if self.rng.random() < 0.5 else self.rng.randint(1, self.max_chunk)
        offset = self.rng.randrange(len(self.pool) - size)
        data = self.pool[offset : offset + size]
        self.expected += data
        self.sent += size
        self.chunks += 1
        self.crc_sent = zlib.crc32(data, self.crc_sent)
        return data

    async def handshake(self, host: str, port: int, query: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port, limit=1 << 17)
        self.writer.write(REQUEST % query + self.chunk())
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise AssertionError(f"connection {self.index}: not hijacked: {head[:200]!r}")

    async def write(self, stop: asyncio.Event, half_close: bool) -> None:
        writer = self.writer
        assert writer is not None
        try:
            while not stop.is_set() and not self.finished:
                while len(self.expected) >= self.window and not self.finished:
                    self.space.clear()
                    await self.space.wait()
                if self.finished:
                    return
                writer.write(self.chunk())
                await writer.drain()
            if half_close:
                writer.write_eof()
        except ConnectionError:
            if half_close:
                raise

    async def read(self) -> None:
        reader = self.reader
        assert reader is not None
        try:
            while data := await reader.read(65536):
                size = len(data)
                if self.expected[:size] != data:
                    offset = self.verified + next(
                        (i for i, (a, b) in enumerate(zip(self.expected, data, strict=False)) if a != b),
                        min(size, len(self.expected)),
                    )
                    self.error = f"connection {self.index}: echo differs from what was sent at byte {offset}"
                    return
                del self.expected[:size]
                self.verified += size
                if self.marked:
                    self.verified_after_mark += size
                self.crc_received = zlib.crc32(data, self.crc_received)
                self.space.set()
            self.end = "eof"
        except ConnectionError:
            self.end = "reset"
        finally:
            self.finished = True
            self.space.set()

    async def run(self, stop: asyncio.Event, half_close: bool) -> None:
        results = await asyncio.gather(self.write(stop, half_close), self.read(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and self.error is None:
                self.error = f"connection {self.index}: {result!r}"

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def echo_load(
    host: str,
    port: int,
    *,
    connections: int,
    seconds: float,
    seed: int = 0,
    max_chunk: int = 16384,
    window: int = 65536,
    graceful: bool = False,
    on_hijacked: Callable[[], object] | None = None,
    on_mark: Callable[[], object] | None = None,
    finish_timeout: float = 60.0,
) -> LoadResult:
    """Stream through ``connections`` hijacked echo connections.

    Without ``on_mark``: stream for ``seconds``, half-close, and require every byte back,
    in order, before the server's EOF. With ``on_mark`` (e.g. send SIGTERM to the server):
    stream for ``seconds``, call it, keep streaming until the server ends every connection,
    and require what came back to be an exact prefix of what was sent. ``on_hijacked`` is
    called once every connection has been hijacked (to count the server's descriptors).
    """
    pool = random.Random(seed).randbytes(POOL_SIZE)
    conns = [_Connection(i, seed, pool, max_chunk, window) for i in range(connections)]
    result = LoadResult(connections=connections)
    query = b"?graceful" if graceful else b""
    loop = asyncio.get_running_loop()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(c.handshake(host, port, query) for c in conns), return_exceptions=True), finish_timeout
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                result.failures.append(f"handshake: {outcome!r}")
        result.hijacked = connections - len(result.failures)
        if result.failures:
            return result
        if on_hijacked is not None:
            on_hijacked()
        stop = asyncio.Event()
        half_close = on_mark is None
        started = loop.time()
        runs = asyncio.gather(*(c.run(stop, half_close) for c in conns))
        done, _ = await asyncio.wait([runs], timeout=seconds)
        if on_mark is None:
            stop.set()
        else:
            for conn in conns:
                conn.marked = True
            on_mark()
        done, _ = await asyncio.wait([runs], timeout=finish_timeout)
        result.seconds = loop.time() - started
        if not done:
            runs.cancel()
            unfinished = sum(not c.finished for c in conns)
            result.failures.append(f"{unfinished} connections still open {finish_timeout:.0f}s after the end")
            await asyncio.gather(runs, return_exceptions=True)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let the transports finish closing before the loop ends
    for conn in conns:
        result.bytes_sent += conn.sent
        result.bytes_verified += conn.verified
        result.bytes_verified_after_mark += conn.verified_after_mark
        result.chunks += conn.chunks
        result.ends[conn.end or "unfinished"] += 1
        if conn.error is not None:
            result.failures.append(conn.error)
        elif on_mark is None:
            if conn.end != "eof" or conn.expected:
                ended = conn.end or "timeout"
                result.failures.append(
                    f"connection {conn.index}: ended by {ended}, {len(conn.expected)} bytes not echoed"
                )
            elif conn.crc_sent != conn.crc_received:
                result.failures.append(f"connection {conn.index}: CRC-32 of the echo differs")
    return result
