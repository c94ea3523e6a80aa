"""Correctness of :mod:`asgi_hijack.relay` on asyncio and uvloop: half-close, back-pressure, resets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from asgi_hijack.relay import relay_streams

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
TIMEOUT = 10.0


async def _pair() -> tuple[Streams, Streams]:
    """The two ends of a loopback TCP connection as streams: (relay side, far end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        far = socket.create_connection(listener.getsockname())
        near, _ = listener.accept()
    return await asyncio.open_connection(sock=near), await asyncio.open_connection(sock=far)


async def _relayed(
    body: Callable[[Streams, Streams, asyncio.Task[tuple[int, int]]], Awaitable[None]], a_first: bytes = b""
) -> None:
    """Relay between two socket pairs and run ``body(client, upstream, relay_task)``."""
    (a_near, client), (b_near, upstream) = await _pair(), await _pair()
    if a_first:
        client[1].write(a_first)
        await a_near[0].readexactly(1)  # now the rest sits in a_near's StreamReader buffer
    task = asyncio.create_task(relay_streams(*a_near, *b_near))
    await asyncio.wait_for(body(client, upstream, task), TIMEOUT)
    for _, writer in (client, upstream):
        writer.close()


def _run(loop: str, coro: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop.run(coro)
    else:
        asyncio.run(coro)


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@LOOPS
def test_both_directions_buffered_bytes_and_half_close(loop: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        client[1].write(b" world")
        client[1].write_eof()
        assert await upstream[0].read() == b"ello world"  # buffered bytes first, then EOF
        upstream[1].write(b"reply after half-close")
        upstream[1].close()
        assert await client[0].read() == b"reply after half-close"
        assert await task == (10, 22)

    _run(loop, _relayed(body, a_first=b"hello"))


@LOOPS
def test_back_pressure_bounds_buffering(loop: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        chunk = bytes(1 << 20)
        for _ in range(64):  # 64 MiB that nobody reads
            client[1].write(chunk)
        await asyncio.sleep(0.3)
        # The relay stopped reading: the rest waits in the client's own write buffer.
        assert client[1].transport.get_write_buffer_size() > 32 << 20
        received = 0
        while received < 64 << 20:
            received += len(await upstream[0].read(1 << 20))
        client[1].close()
        assert await upstream[0].read() == b""
        upstream[1].close()
        assert (await task)[0] == 64 << 20

    _run(loop, _relayed(body))


@LOOPS
def test_reset_aborts_the_other_side(loop: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        client[1].write(b"x")
        assert await upstream[0].readexactly(1) == b"x"
        upstream[1].transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        upstream[1].transport.abort()  # RST
        with contextlib.suppress(ConnectionResetError):
            assert await client[0].read() == b""
        await task

    _run(loop, _relayed(body))


@LOOPS
def test_previous_protocol_sees_the_end(loop: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        client[1].close()
        upstream[1].close()
        await task

    async def main() -> None:
        (a_near, client), (b_near, upstream) = await _pair(), await _pair()
        task = asyncio.create_task(relay_streams(*a_near, *b_near))
        await asyncio.wait_for(body(client, upstream, task), TIMEOUT)
        # StreamWriter.wait_closed() relies on the original protocol's connection_lost.
        await asyncio.wait_for(a_near[1].wait_closed(), TIMEOUT)
        await asyncio.wait_for(b_near[1].wait_closed(), TIMEOUT)

    _run(loop, main())
