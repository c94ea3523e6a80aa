"""Relay two connections at the transport level: the fast path for proxies and tunnels.

A relay written with asyncio streams pays, per chunk and direction, a copy into the
``StreamReader`` buffer, a ``read()`` coroutine wake-up and a ``drain()``. Here each side's
``data_received`` writes straight into the other transport instead:

* back-pressure: when a transport's write buffer passes its high-water mark
  (``pause_writing``), reading from the other side pauses until it drains (``resume_writing``);
* half-close: EOF from one side becomes ``write_eof()`` on the other, and the relay goes on in
  the other direction until it ends too;
* a connection lost with an error aborts the other one; the relay returns when both are gone;
* the protocol each transport had before still gets ``connection_lost``, so whatever tracks
  the connection (``asgi_hijack``'s open-connection set, ``StreamWriter.wait_closed``) sees it end.

Usage in an app (e.g. the CONNECT proxy)::

    conn = await hijack(scope, receive, send, status=200)
    up_reader, up_writer = await asyncio.open_connection(host, port)
    await conn.relay(up_reader, up_writer)     # or relay_streams(conn.reader, conn.writer, ...)

Measured in ``bench/`` (``make bench``): two to four times the throughput of a relay written
with ``reader.read()``/``writer.write()``/``drain()``, since nothing is copied into a
``StreamReader`` buffer and no coroutine wakes up per chunk.
"""

from __future__ import annotations

import asyncio
from typing import cast

__all__ = ["detach", "relay", "relay_streams"]


class _Side(asyncio.Protocol):
    """One transport of a relay: forwards what it reads to its peer's transport."""

    peer: _Side

    def __init__(self, transport: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.transport = transport
        self.previous = transport.get_protocol()
        self.done = done
        self.forwarded = 0  # bytes read here and written to the peer
        self.eof = False  # nothing more will be read here
        self.blocked = False  # our write buffer is full: the peer must not read
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.forwarded += len(data)
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer.eof:
            self.transport.close()
            self.peer.transport.close()
        elif self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        else:
            self.peer.transport.close()
        return True  # keep our write side open for the other direction

    def pause_writing(self) -> None:
        self.blocked = True
        if not self.peer.lost:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.blocked = False
        if not (self.peer.eof or self.peer.lost):
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.previous.connection_lost(exc)
        if not self.peer.lost:
            if exc is None:
                self.peer.transport.close()
            else:
                self.peer.transport.abort()
        elif not self.done.done():
            self.done.set_result(None)


async def relay(
    a: asyncio.Transport,
    b: asyncio.Transport,
    *,
    a_buffered: bytes = b"",
    b_buffered: bytes = b"",
    a_eof: bool = False,
    b_eof: bool = False,
) -> tuple[int, int]:
    """Forward bytes both ways between ``a`` and ``b`` until both connections are closed.

    ``a_buffered``/``b_buffered`` were already read from ``a``/``b`` and are delivered first;
    ``a_eof``/``b_eof`` say that EOF was already read there. Reading should be paused on
    both transports when called (:func:`detach` does it). Returns the bytes forwarded
    a->b and b->a. Cancelling the relay aborts both connections.
    """
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sa, sb = _Side(a, done), _Side(b, done)
    sa.peer, sb.peer = sb, sa
    was_closing = [a.is_closing(), b.is_closing()]
    for side in (sa, sb):
        side.transport.pause_reading()
        side.transport.set_protocol(side)
        high = side.transport.get_write_buffer_limits()[1]
        side.blocked = side.transport.get_write_buffer_size() > high  # already paused by the transport
    for side, buffered, eof in ((sa, a_buffered, a_eof), (sb, b_buffered, b_eof)):
        if buffered:
            side.data_received(buffered)
        if eof:
            side.eof_received()
    for side, closing in zip((sa, sb), was_closing, strict=True):
        if closing:
            side.connection_lost(None)  # closed before the relay took over; may never report it
        elif not (side.eof or side.peer.blocked):
            side.transport.resume_reading()
    try:
        await done
    except asyncio.CancelledError:
        a.abort()
        b.abort()
        raise
    return sa.forwarded, sb.forwarded


def detach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[asyncio.Transport, bytes, bool]:
    """Take the transport away from a streams pair: ``(transport, bytes buffered in reader, EOF seen)``.

    Pauses reading first. Reads ``StreamReader._buffer`` and ``._eof`` (unchanged since
    Python 3.7), so that no byte already buffered is lost.
    """
    transport = cast(asyncio.Transport, writer.transport)
    transport.pause_reading()
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009
    buffered = bytes(buffer)
    buffer.clear()
    return transport, buffered, bool(getattr(reader, "_eof"))  # noqa: B009


async def relay_streams(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> tuple[int, int]:
    """:func:`relay` between two asyncio streams pairs (e.g. a hijacked connection and its upstream)."""
    a, a_buffered, a_eof = detach(a_reader, a_writer)
    b, b_buffered, b_eof = detach(b_reader, b_writer)
    return await relay(a, b, a_buffered=a_buffered, b_buffered=b_buffered, a_eof=a_eof, b_eof=b_eof)
