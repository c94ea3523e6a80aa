"""Correctness of :mod:`asgi_hijack.relay` on both paths (splice, transport) and both loops, with real sockets.

Every test runs on the splice path (plain TCP on Linux) and on the transport path (forced with
``ASGI_HIJACK_SPLICE=0``), and checks first that :func:`relay_path` chose the path under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import resource
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from asgi_hijack import hijack
from asgi_hijack import relay as relay_module
from asgi_hijack.relay import SPLICE_ENV, relay_path, relay_streams
from tests.helpers import connect, make_certificate, recv_until, wait_until

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Body = Callable[[Streams, Streams, asyncio.Task[tuple[int, int]]], Awaitable[None]]
TIMEOUT = 10.0
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@pytest.fixture(params=["splice", "transport"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The relay path under test, forced through ``ASGI_HIJACK_SPLICE``."""
    monkeypatch.setenv(SPLICE_ENV, "1" if request.param == "splice" else "0")
    return str(request.param)


async def _pair(buffers: int | None = None) -> tuple[Streams, Streams]:
    """The two ends of a loopback TCP connection as streams: (relay side, far end).

    ``buffers``: the far end's receive and the relay side's send buffer sizes (fixed, not autotuned)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        far = socket.socket()
        if buffers:
            far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)  # before connecting: the window
        far.connect(listener.getsockname())
        near, _ = listener.accept()
        if buffers:
            near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
    return await asyncio.open_connection(sock=near), await asyncio.open_connection(sock=far)


def _sockets_and_pipes() -> list[str]:
    """This process's open sockets and pipes (what a relay could leak)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := fd.readlink().name).startswith(("socket:", "pipe:")):
                found.append(target)
    return sorted(found)


async def _relayed(
    path: str,
    body: Body,
    a_first: bytes = b"",
    client_pair: Callable[[], Awaitable[tuple[Streams, Streams]]] = _pair,
    upstream_buffers: int | None = None,
) -> None:
    """Relay between two socket pairs, run ``body(client, upstream, relay_task)``, which ends the relay.

    Then both relayed streams must have seen the end, and no socket or pipe may be left open.
    """
    before = _sockets_and_pipes()
    (a_near, client), (b_near, upstream) = await client_pair(), await _pair(upstream_buffers)
    assert relay_path(a_near[1].transport, b_near[1].transport) == path
    if a_first:
        client[1].write(a_first)
        await a_near[0].readexactly(1)  # now the rest sits in a_near's StreamReader buffer
    task = asyncio.create_task(relay_streams(*a_near, *b_near))
    try:
        await asyncio.wait_for(body(client, upstream, task), TIMEOUT)
        assert task.done()
    finally:
        task.cancel()
        for _, writer in (client, upstream):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    for _, writer in (a_near, b_near):
        with contextlib.suppress(OSError):  # StreamWriter.wait_closed relies on the original protocol
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    await asyncio.sleep(0.01)
    assert _sockets_and_pipes() == before, "the relay left sockets or pipes open"


def _run(loop: str, coro: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        uvloop.run(coro)
    else:
        asyncio.run(coro)


def _random_chunks(rng: random.Random, total: int) -> Iterator[bytes]:
    while total > 0:
        size = min(total, rng.choice((1, 7, 1000, 65536, 300_000)))
        total -= size
        yield rng.randbytes(size)


async def _send_then_eof(writer: asyncio.StreamWriter, rng: random.Random, total: int) -> str:
    """Write ``total`` random bytes in random sizes, then half-close; return their digest."""
    digest = hashlib.sha256()
    for chunk in _random_chunks(rng, total):
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    return digest.hexdigest()


async def _digest_to_eof(reader: asyncio.StreamReader) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while data := await reader.read(1 << 20):
        digest.update(data)
        size += len(data)
    return size, digest.hexdigest()


@LOOPS
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_byte_arrives_both_ways(loop: str, path: str, seed: int) -> None:
    rng = random.Random(seed)
    up_size, down_size = rng.randrange(1, 24 << 20), rng.randrange(1, 24 << 20)

    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        sent_up, sent_down, got_up, got_down = await asyncio.gather(
            _send_then_eof(client[1], random.Random(rng.random()), up_size),
            _send_then_eof(upstream[1], random.Random(rng.random()), down_size),
            _digest_to_eof(upstream[0]),
            _digest_to_eof(client[0]),
        )
        assert got_up == (up_size, sent_up)
        assert got_down == (down_size, sent_down)
        assert await task == (up_size, down_size)

    _run(loop, _relayed(path, body))


@LOOPS
def test_buffered_bytes_first_and_client_half_closes_first(loop: str, path: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        client[1].write(b" world")
        client[1].write_eof()
        assert await upstream[0].read() == b"ello world"  # buffered bytes first, then EOF
        upstream[1].write(b"reply after half-close")
        upstream[1].close()
        assert await client[0].read() == b"reply after half-close"
        assert await task == (10, 22)

    _run(loop, _relayed(path, body, a_first=b"hello"))


@LOOPS
def test_upstream_half_closes_first(loop: str, path: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        upstream[1].write(b"banner")
        upstream[1].write_eof()
        assert await client[0].read() == b"banner"  # EOF passed on, the other way still open
        client[1].write(b"late question")
        client[1].write_eof()
        assert await upstream[0].read() == b"late question"
        assert await task == (13, 6)

    _run(loop, _relayed(path, body))


@LOOPS
def test_back_pressure_bounds_buffering(loop: str, path: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        chunk = bytes(1 << 20)
        for _ in range(256):  # 256 MiB that nobody reads
            client[1].write(chunk)
        await asyncio.sleep(0.3)
        # The relay stopped reading: the rest waits in the client's own write buffer. The kernel holds the
        # relay's 1 MiB pipe and socket buffers that grow to the tcp_wmem/tcp_rmem maxima (4 and 32 MiB here).
        assert client[1].transport.get_write_buffer_size() > 128 << 20
        received = 0
        while received < 256 << 20:
            received += len(await upstream[0].read(1 << 20))
        client[1].close()
        assert await upstream[0].read() == b""
        upstream[1].close()
        assert (await task)[0] == 256 << 20

    _run(loop, _relayed(path, body))


@LOOPS
@pytest.mark.parametrize("pipe", [1 << 20, 4096], ids=["1MiB-pipe", "1-page-pipe"])
def test_stop_and_go_reader_gets_every_byte_in_order(
    loop: str, path: str, pipe: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver, behind small socket buffers, stalls again and again (the relay's pipe fills up,
    then drains): nothing is lost, repeated or reordered while the relay stops and resumes reading.

    A one-page pipe has a single slot: it is full after one splice of any size, which a byte count
    does not show (the relay must not spin on a readable socket it cannot splice from)."""
    monkeypatch.setattr(relay_module, "_PIPE_SIZE", pipe)
    rng = random.Random(7)
    size = 12 << 20

    async def stop_and_go(reader: asyncio.StreamReader) -> tuple[int, str]:
        digest, got = hashlib.sha256(), 0
        while data := await reader.read(rng.choice((1, 4096, 1 << 20))):
            digest.update(data)
            got += len(data)
            if rng.random() < 0.02:
                await asyncio.sleep(0.02)  # long enough for the pipe to fill
        return got, digest.hexdigest()

    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        sent, got = await asyncio.gather(_send_then_eof(client[1], random.Random(8), size), stop_and_go(upstream[0]))
        assert got == (size, sent)
        upstream[1].close()
        assert await task == (size, 0)

    _run(loop, _relayed(path, body, upstream_buffers=16384))


def _rst(writer: asyncio.StreamWriter) -> None:
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _ends(reader: asyncio.StreamReader) -> None:
    """Read until the relay closes this side: EOF or a reset, never a hang."""
    with contextlib.suppress(ConnectionResetError):
        while await reader.read(1 << 20):
            pass


@LOOPS
def test_reset_aborts_the_other_side(loop: str, path: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        client[1].write(b"x")
        assert await upstream[0].readexactly(1) == b"x"
        _rst(upstream[1])
        await _ends(client[0])
        await task

    _run(loop, _relayed(path, body))


@LOOPS
@pytest.mark.parametrize("who", ["upstream", "client"])
def test_reset_in_the_middle_of_a_transfer(loop: str, path: str, who: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        sender, receiver = (client, upstream) if who == "upstream" else (upstream, client)

        async def flood() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    sender[1].write(bytes(1 << 20))
                    await sender[1].drain()

        flooding = asyncio.create_task(flood())
        assert len(await receiver[0].readexactly(3 << 20)) == 3 << 20  # mid-transfer
        _rst(receiver[1])  # the receiving end resets: the sender must see the end
        await _ends(sender[0])
        await asyncio.wait_for(flooding, TIMEOUT)  # its writes fail instead of hanging
        up, down = await task
        assert (up if who == "upstream" else down) >= 3 << 20

    _run(loop, _relayed(path, body))


@LOOPS
def test_cancelling_closes_both_ends(loop: str, path: str) -> None:
    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        client[1].write(b"ping")
        assert await upstream[0].readexactly(4) == b"ping"
        task.cancel()
        await asyncio.gather(_ends(client[0]), _ends(upstream[0]))
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(loop, _relayed(path, body))


@LOOPS
def test_closing_one_side_closes_the_other(loop: str, path: str) -> None:
    """The owner (or the shutdown grace timer) closes one relayed connection: the other closes too."""

    async def main() -> None:
        before = _sockets_and_pipes()
        (a_near, client), (b_near, upstream) = await _pair(), await _pair()
        assert relay_path(a_near[1].transport, b_near[1].transport) == path
        task = asyncio.create_task(relay_streams(*a_near, *b_near))
        client[1].write(b"before the close")
        assert await asyncio.wait_for(upstream[0].readexactly(16), TIMEOUT) == b"before the close"
        a_near[1].transport.close()
        assert await asyncio.wait_for(client[0].read(), TIMEOUT) == b""
        assert await asyncio.wait_for(upstream[0].read(), TIMEOUT) == b""
        assert await asyncio.wait_for(task, TIMEOUT) == (16, 0)
        for _, writer in (client, upstream, b_near):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.sleep(0.01)
        assert _sockets_and_pipes() == before

    _run(loop, main())


def _room_for(count: int) -> int:
    """The open-files limit at which this process can open ``count`` more descriptors."""
    used = {int(fd.name) for fd in Path("/proc/self/fd").iterdir()}
    free = [n for n in range(max(used) + count + 1) if n not in used]
    return free[count - 1] + 1


@LOOPS
def test_out_of_descriptors_falls_back_to_the_transport_path(loop: str, path: str) -> None:
    """Splicing needs six more descriptors; without them the relay takes the transport path instead of failing."""

    async def main() -> None:
        (a_near, client), (b_near, upstream) = await _pair(), await _pair()
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_room_for(2), limits[1]))
        try:
            task = asyncio.create_task(relay_streams(*a_near, *b_near))
            client[1].write(b"up")
            client[1].write_eof()
            assert await asyncio.wait_for(upstream[0].read(), TIMEOUT) == b"up"
            upstream[1].write(b"down")
            upstream[1].write_eof()
            assert await asyncio.wait_for(client[0].read(), TIMEOUT) == b"down"
            assert await asyncio.wait_for(task, TIMEOUT) == (2, 4)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            for _, writer in (client, upstream):
                writer.close()

    _run(loop, main())


def _tls_pair(cert: Path, key: Path) -> Callable[[], Awaitable[tuple[Streams, Streams]]]:
    """A maker of TLS connections on loopback: (server side, client side) as streams."""

    async def pair() -> tuple[Streams, Streams]:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()
        server = await asyncio.start_server(
            lambda reader, writer: accepted.set_result((reader, writer)), "127.0.0.1", 0, ssl=server_context
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            far = await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(cafile=cert))
            return await accepted, far

    return pair


@LOOPS
def test_tls_takes_the_transport_path_and_every_byte_arrives(loop: str, path: str, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    rng = random.Random(4)
    up_size, down_size = rng.randrange(1, 8 << 20), rng.randrange(1, 8 << 20)

    async def body(client: Streams, upstream: Streams, task: asyncio.Task[tuple[int, int]]) -> None:
        digest = hashlib.sha256()
        for chunk in _random_chunks(rng, up_size):  # TLS cannot half-close: the upstream counts
            digest.update(chunk)
            client[1].write(chunk)
        assert hashlib.sha256(await upstream[0].readexactly(up_size)).hexdigest() == digest.hexdigest()
        sent_down = await _send_then_eof(upstream[1], rng, down_size)
        assert await _digest_to_eof(client[0]) == (down_size, sent_down)  # EOF closes the TLS side
        assert await upstream[0].read() == b""  # which closes the upstream
        assert await task == (up_size, down_size)

    _run(loop, _relayed("transport", body, client_pair=_tls_pair(cert, key)))


@LOOPS
def test_conn_relay_through_a_real_server(loop: str, path: str, hijack_server: Any) -> None:
    """``HijackedConnection.relay`` in uvicorn: pending bytes first, every byte both ways, half-close, no leak."""
    rng = random.Random(5)
    up, down = rng.randbytes(rng.randrange(1, 8 << 20)), rng.randbytes(rng.randrange(1, 8 << 20))
    chosen: list[str] = []

    async def tunnel(scope: dict[str, Any], receive: Any, send: Any) -> None:
        up_reader, up_writer = await asyncio.open_connection(*listener.getsockname())
        conn = await hijack(scope, receive, send, status=200)
        chosen.append(relay_path(conn.transport, up_writer.transport))
        await conn.relay(up_reader, up_writer)
        await conn.aclose()

    server = hijack_server(tunnel, loop=loop)
    before = _sockets_and_pipes()
    listener = socket.create_server(("127.0.0.1", 0))
    with connect(server) as client, listener:
        client.sendall(b"CONNECT upstream:1 HTTP/1.1\r\nHost: upstream:1\r\n\r\n" + up[:1000])
        with listener.accept()[0] as upstream:
            upstream.settimeout(TIMEOUT)
            assert recv_until(client, b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")
            client.sendall(up[1000:])
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := upstream.recv(1 << 20):
                received += chunk
            assert received == up
            upstream.sendall(down)
            upstream.shutdown(socket.SHUT_WR)
            client.settimeout(TIMEOUT)
            received = b""
            while chunk := client.recv(1 << 20):
                received += chunk
            assert received == down
            assert upstream.recv(1) == b""  # both closed once both directions ended
    assert chosen == [path]
    assert wait_until(lambda: _sockets_and_pipes() == before), "the server left sockets or pipes open"
