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

Between two plain TCP sockets on Linux the bytes do not pass through Python at all: each
direction is ``splice(2)`` from one socket into a kernel pipe and from the pipe into the
other socket (``os.splice``, as Go's ``io.Copy`` between TCP connections does). The relay
takes the sockets over from their transports first: it pauses reading, writes the buffered
bytes through the other transport and waits until that transport's write buffer is empty,
then drives a duplicate of each socket from the event loop (``add_reader``/``add_writer``,
non-blocking splices). The pipe (1 MiB where the user's pipe quota allows, as Go sets it) is
the only buffer: it is filled from one socket while it is emptied into the other (unlike Go,
which drains it before it reads again), and a full pipe stops the splicing from the sender
(back-pressure); EOF, errors and closing are handled as above. TLS,
other systems, unix sockets and anything that is not a live socket take the transport path;
:func:`relay_path` is the one place that chooses, and ``ASGI_HIJACK_SPLICE=0`` turns
splicing off.

Measured in ``bench/`` (``make bench``): the transport path moves two to four times the bytes
of a relay written with ``reader.read()``/``writer.write()``/``drain()``, since nothing is
copied into a ``StreamReader`` buffer and no coroutine wakes up per chunk; the splice path
spends less CPU per byte again (section 5 compares it with Go).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
import termios
from collections.abc import Callable
from typing import Literal, cast

__all__ = ["SPLICE_ENV", "detach", "relay", "relay_path", "relay_streams"]

SPLICE_ENV = "ASGI_HIJACK_SPLICE"
"""Environment variable: ``0`` makes every relay take the transport path."""


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
    both transports when called (:func:`detach` does it). Splices when :func:`relay_path`
    says so. Returns the bytes forwarded a->b and b->a. Cancelling the relay aborts both
    connections.
    """
    if relay_path(a, b) == "splice":
        try:
            spliced = _SpliceRelay(a, b, a_buffered, b_buffered)
        except OSError:  # out of file descriptors (it needs six): the transport path needs none
            pass
        else:
            spliced.start(a_eof, b_eof)
            return await spliced.wait()
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


def relay_path(a: asyncio.BaseTransport, b: asyncio.BaseTransport) -> Literal["splice", "transport"]:
    """The path :func:`relay` takes between ``a`` and ``b``.

    ``"splice"`` on Linux between two open plain TCP sockets (no TLS), unless
    ``ASGI_HIJACK_SPLICE=0``; ``"transport"`` otherwise.
    """
    if sys.platform != "linux" or not hasattr(os, "splice") or os.environ.get(SPLICE_ENV) == "0":
        return "transport"
    return "splice" if _plain_tcp(a) and _plain_tcp(b) else "transport"


def _plain_tcp(transport: asyncio.BaseTransport) -> bool:
    if transport.is_closing() or transport.get_extra_info("ssl_object") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return (
        sock is not None
        and sock.fileno() >= 0
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
    )


_SPLICE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 0) | getattr(os, "SPLICE_F_MOVE", 0)
_PIPE_SIZE = 1 << 20  # as Go (1.21+) sets it: 16 times fewer splices than the default 64 KiB pipe, half the CPU
_ROUNDS = 16  # splices in and out per readiness callback at most, so that other connections get their turn


def _descriptors(a: asyncio.Transport, b: asyncio.Transport) -> list[int]:
    """Duplicates of both sockets, then a pipe per direction (read end, write end): all of them or none.

    Duplicates, because the event loop refuses ``add_reader()`` on a transport's own descriptor.
    """
    fds: list[int] = []
    try:
        for transport in (a, b):
            fds.append(os.dup(transport.get_extra_info("socket").fileno()))
        for _ in range(2):
            fds += os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # e.g. EPERM past the user's pipe quota: the default size works too
                fcntl.fcntl(fds[-1], fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _pipe_size(fd: int) -> int:
    """The capacity of the pipe whose end is ``fd`` (1 MiB if the quota allowed, else the default 64 KiB)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return 1 << 16


def _unread(fd: int) -> int:
    """Bytes received on socket ``fd`` and not read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


class _Socket(asyncio.Protocol):
    """One connection of a splice relay: its paused transport, and a duplicate of its socket to splice on."""

    def __init__(self, transport: asyncio.Transport, relay: _SpliceRelay, fd: int) -> None:
        self.transport = transport
        self.relay = relay
        self.previous = transport.get_protocol()
        self.sock = socket.socket(fileno=fd)
        self.fd = self.sock.fileno()
        self.error: Exception | None = None  # a splice on this socket failed with it
        self.lost = False
        self.on_flushed: Callable[[], None] | None = None
        transport.pause_reading()
        transport.set_protocol(self)

    def when_flushed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transport's write buffer is empty (now, or on ``resume_writing``)."""
        if not self.transport.get_write_buffer_size():
            callback()
            return
        self.on_flushed = callback
        self.transport.set_write_buffer_limits(high=0)  # resume_writing() when it is empty

    def resume_writing(self) -> None:
        if self.on_flushed is not None and not self.transport.get_write_buffer_size():
            callback, self.on_flushed = self.on_flushed, None
            callback()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.on_flushed = None
        self.previous.connection_lost(exc or self.error)
        self.relay.lost(self, exc)

    def release(self) -> None:
        """Stop splicing on this socket and close the duplicate (the transport still holds the socket)."""
        if self.sock.fileno() >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.fd)
            loop.remove_writer(self.fd)
            self.sock.close()


class _Direction:
    """Bytes from ``src`` to ``dst`` through a kernel pipe.

    ``src`` is read (spliced into the pipe) while the pipe has room, and the pipe is spliced
    out to ``dst`` while it holds bytes and ``dst`` takes them: both at once, so the sender
    is not stopped while the receiver catches up. At most a pipe's worth is in flight: when
    it is full, ``src`` is not read until ``dst`` takes some, so a peer that does not read
    stops the other from sending.
    """

    def __init__(self, relay: _SpliceRelay, src: _Socket, dst: _Socket, pipe: tuple[int, int]) -> None:
        self.relay, self.src, self.dst = relay, src, dst
        self.loop = asyncio.get_running_loop()
        self.pipe_r, self.pipe_w = pipe
        self.capacity = _pipe_size(self.pipe_w)
        self.queued = 0  # bytes in the pipe
        self.forwarded = 0
        self.full = False  # a splice into the pipe found no room: read src again once dst took some
        self.reading = False  # add_reader(src) is on
        self.writing = False  # add_writer(dst) is on
        self.started = False  # dst's transport had flushed its write buffer
        self.eof = False  # nothing more comes from src
        self.done = False

    def start(self) -> None:
        """Begin splicing (``dst``'s transport has nothing left to write)."""
        self.started = True
        self._watch()

    def _readable(self) -> None:
        for _ in range(_ROUNDS):  # until src has nothing more or the pipe is full, then back to the loop
            try:
                moved = os.splice(self.src.fd, self.pipe_w, self.capacity - self.queued, flags=_SPLICE_FLAGS)
            except BlockingIOError:  # src has nothing, or the pipe has no room left (in its page slots)
                self.full = self.queued > 0 and _unread(self.src.fd) > 0
                break
            except OSError as exc:
                self.relay.fail(self.src, exc)
                return
            if not moved:
                self.eof = True
                break
            self.forwarded += moved
            self.queued += moved
            if not self._splice_out() or self.queued >= self.capacity:
                break
        self._watch()

    def _writable(self) -> None:
        if self._splice_out():
            self._watch()

    def _splice_out(self) -> bool:
        """Splice what the pipe holds out to ``dst``, as much as it takes; False if the relay failed."""
        try:
            moved = os.splice(self.pipe_r, self.dst.fd, self.queued, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return True
        except OSError as exc:
            self.relay.fail(self.dst, exc)
            return False
        self.queued -= moved
        if moved:
            self.full = False
        return True

    def _watch(self) -> None:
        """Watch ``src`` while the pipe has room and ``dst`` while it holds bytes; finish after EOF, once empty."""
        if self.done:
            return
        if self.eof and not self.queued:
            self._set(reading=False, writing=False)
            self._finish()
            return
        self._set(reading=not (self.eof or self.full or self.queued >= self.capacity), writing=self.queued > 0)

    def _set(self, *, reading: bool, writing: bool) -> None:
        if reading != self.reading:
            self.reading = reading
            if reading:
                self.loop.add_reader(self.src.fd, self._readable)
            else:
                self.loop.remove_reader(self.src.fd)
        if writing != self.writing:
            self.writing = writing
            if writing:
                self.loop.add_writer(self.dst.fd, self._writable)
            else:
                self.loop.remove_writer(self.dst.fd)

    def src_ended(self) -> None:
        """``src`` was closed: forward what the pipe holds, then finish."""
        if self.done or self.eof:
            return
        self.eof = True
        if self.started:
            self._watch()

    def halt(self) -> None:
        """``dst`` was closed: drop what the pipe holds and stop."""
        self.done = True
        self._set(reading=False, writing=False)

    def _finish(self) -> None:
        self.done = True
        self.relay.direction_done(self)

    def release(self) -> None:
        self.done = True
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipe_r = self.pipe_w = -1


class _SpliceRelay:
    """Both directions between two plain TCP sockets, with the closing rules of :class:`_Side`."""

    def __init__(self, a: asyncio.Transport, b: asyncio.Transport, a_buffered: bytes, b_buffered: bytes) -> None:
        a_fd, b_fd, *pipes = _descriptors(a, b)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False
        self.a, self.b = _Socket(a, self, a_fd), _Socket(b, self, b_fd)
        self.ab = _Direction(self, self.a, self.b, (pipes[0], pipes[1]))
        self.ba = _Direction(self, self.b, self.a, (pipes[2], pipes[3]))
        for direction, buffered in ((self.ab, a_buffered), (self.ba, b_buffered)):
            if buffered:
                direction.dst.transport.write(buffered)  # first, and flushed before any splice
                direction.forwarded += len(buffered)

    def start(self, a_eof: bool, b_eof: bool) -> None:
        self.ab.eof, self.ba.eof = a_eof, b_eof
        self.b.when_flushed(self.ab.start)
        self.a.when_flushed(self.ba.start)

    async def wait(self) -> tuple[int, int]:
        try:
            await self.done
        except asyncio.CancelledError:
            self.close(abort=True)
            raise
        return self.ab.forwarded, self.ba.forwarded

    def direction_done(self, direction: _Direction) -> None:
        """EOF from ``direction.src`` and its pipe is empty: half-close ``dst``, or close both if both ended."""
        if self.closing:
            return
        reverse = self.ba if direction is self.ab else self.ab
        if reverse.done:
            self.close(abort=False)
        else:
            with contextlib.suppress(OSError):  # e.g. ENOTCONN: the peer is gone, the other direction will see it
                direction.dst.sock.shutdown(socket.SHUT_WR)

    def fail(self, side: _Socket, exc: OSError) -> None:
        """A splice on ``side`` failed (e.g. a reset): abort both connections."""
        side.error = exc
        self.close(abort=True)

    def lost(self, side: _Socket, exc: Exception | None) -> None:
        """``side``'s transport reported ``connection_lost``."""
        if not self.closing:
            if exc is not None:
                self.close(abort=True)
            else:  # closed by its owner: deliver what is on the way to the other side, then close it
                into, out = (self.ba, self.ab) if side is self.a else (self.ab, self.ba)
                into.halt()
                out.src_ended()
                side.release()  # the socket itself closes only now: the transport closed its own fd
        if self.a.lost and self.b.lost:
            self.release()
            if not self.done.done():
                self.done.set_result(None)

    def close(self, *, abort: bool) -> None:
        """Stop splicing and close both transports (``abort``: at once, dropping what they buffered)."""
        self.closing = True
        self.release()
        for side in (self.a, self.b):
            if abort:
                side.transport.abort()
            else:
                side.transport.close()

    def release(self) -> None:
        for part in (self.ab, self.ba, self.a, self.b):
            part.release()


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
