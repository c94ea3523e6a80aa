"""The connection an app owns after a hijack: asyncio streams and an anyio byte stream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .lifecycle import ConnectionInfo
from .proxy_protocol import ProxiedTransport

__all__ = ["HijackedConnection"]

DEFAULT_LIMIT = 2**16
"""StreamReader buffer limit: reading pauses above twice this (back-pressure)."""


class _HijackedProtocol(asyncio.Protocol):
    """Transport protocol after the hijack: feeds the reader, paces the writer, keeps the connection's state.

    It does for the ``StreamWriter`` what ``asyncio.StreamReaderProtocol`` does (``drain()``,
    ``wait_closed()``), in slots, making futures and events only when something waits: an
    idle connection costs a few hundred bytes less. It stays in uvicorn's
    ``server_state.connections`` until the socket closes, so a graceful shutdown notifies the
    owner and waits for it (see :meth:`shutdown`). It holds no reference to the owner, so an
    owner dropped without closing is collected (and its writer closes the connection).
    ``StreamWriter.start_tls()`` is not supported: for STARTTLS, wrap the connection in anyio's
    ``TLSStream``.
    """

    __slots__ = (
        "_close_timer",
        "_closed",
        "_closed_event",
        "_connections",
        "_drain_waiters",
        "_error",
        "_grace",
        "_hijacked",
        "_lost",
        "_paused",
        "_reader",
        "_shutdown",
        "_shutdown_callbacks",
        "_shutdown_event",
        "_transport",
    )

    def __init__(
        self, reader: asyncio.StreamReader, connections: set[Any], hijacked: set[Any], grace: float | None
    ) -> None:
        self._reader = reader
        self._connections = connections
        self._hijacked = hijacked
        self._grace = grace
        self._close_timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._paused = False  # the transport's write buffer is above its high-water mark
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._lost = False
        self._error: Exception | None = None  # what the connection was lost with
        self._closed: asyncio.Future[None] | None = None  # StreamWriter.wait_closed()'s
        self._closed_event: asyncio.Event | None = None  # HijackedConnection.wait_closed()'s
        self._shutdown = False
        self._shutdown_event: asyncio.Event | None = None
        self._shutdown_callbacks: list[Callable[[], object]] | None = None
        connections.add(self)
        hijacked.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._reader.set_transport(transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)

    def eof_received(self) -> bool:
        self._reader.feed_eof()
        # Keep the write side open (half-close), except over TLS, where asyncio cannot.
        return self._transport is None or self._transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._error, self._transport = True, exc, None
        self._connections.discard(self)
        self._hijacked.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        if exc is None:
            self._reader.feed_eof()
        else:
            self._reader.set_exception(exc)
        if self._closed is not None:
            _settle(self._closed, exc)
        if self._closed_event is not None:
            self._closed_event.set()
        if self._paused:
            for waiter in self._drain_waiters or ():
                _settle(waiter, exc)

    async def _drain_helper(self) -> None:
        """``StreamWriter.drain()`` waits here while the transport's write buffer is too full."""
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._drain_waiters
        if waiters is None:
            waiters = self._drain_waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        """The future ``StreamWriter.wait_closed()`` awaits: done when the connection is lost."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            if self._lost:
                _settle(self._closed, self._error)
        return self._closed

    def closed_event(self) -> asyncio.Event:
        """Set once the connection is lost."""
        event = self._closed_event = _made(self._closed_event, self._lost)
        return event

    def shutdown_event(self) -> asyncio.Event:
        """Set once a graceful shutdown has begun."""
        event = self._shutdown_event = _made(self._shutdown_event, self._shutdown)
        return event

    def on_shutdown(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when a graceful shutdown begins."""
        if self._shutdown_callbacks is None:
            self._shutdown_callbacks = []
        self._shutdown_callbacks.append(callback)

    def shutdown(self) -> None:
        """Called by uvicorn when a graceful shutdown begins: notify the owner, then close after the grace."""
        if self._shutdown:
            return
        self._shutdown = True
        if self._shutdown_event is not None:
            self._shutdown_event.set()
        for callback in self._shutdown_callbacks or ():
            callback()
        if self._grace is not None and self._transport is not None:
            self._close_timer = asyncio.get_running_loop().call_later(self._grace, self._transport.abort)


def _made(event: asyncio.Event | None, happened: bool) -> asyncio.Event:
    """``event``, or a new one (set if what it waits for has ``happened``): events are made on first use."""
    if event is None:
        event = asyncio.Event()
        if happened:
            event.set()
    return event


def _settle(waiter: asyncio.Future[None], exc: Exception | None) -> None:
    """Complete ``waiter`` with ``exc`` (marked as retrieved: nobody need await it) or None."""
    if waiter.done():
        return
    if exc is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(exc)
        waiter.exception()


class _Deadline:
    """A Go-style deadline: an absolute ``loop.time()`` after which I/O fails, movable at any time."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None

    def check(self, what: str) -> None:
        if self.at is not None and asyncio.get_running_loop().time() >= self.at:
            raise TimeoutError(f"{what} deadline exceeded; move it with set_{what}_deadline() to continue")

    async def wait(self, what: str, awaitable: Any) -> Any:
        self.check(what)
        if self.at is None:
            return await awaitable
        try:
            async with asyncio.timeout_at(self.at):
                return await awaitable
        except TimeoutError:
            raise TimeoutError(f"{what} deadline exceeded; move it with set_{what}_deadline() to continue") from None


_NO_DEADLINE = _Deadline()  # shared until a deadline is set
_READ_EXPIRED = "read deadline exceeded; move it with set_read_deadline() to continue"


class DeadlineReader(asyncio.StreamReader):
    """StreamReader with a read deadline, which also cuts a read already waiting when it is moved."""

    deadline = _NO_DEADLINE
    _expiry: asyncio.TimerHandle | None = None  # while a read waits under a deadline

    def move_deadline(self, at: float | None) -> None:
        if self.deadline is _NO_DEADLINE:
            self.deadline = _Deadline()
        self.deadline.at = at
        if self._waiter is not None:  # type: ignore[attr-defined]  # a read is waiting: re-arm its expiry
            self._arm()

    def _arm(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.deadline.at is not None:
            self._expiry = asyncio.get_running_loop().call_at(self.deadline.at, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        waiter: asyncio.Future[None] | None = self._waiter  # type: ignore[attr-defined]
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(_READ_EXPIRED))

    # Plain methods that return the stream's coroutine: no coroutine frame of their own, which
    # an idle connection waiting in a read would keep (several hundred bytes). They call the
    # base class by name: no super() object per read.
    # Without a deadline (``at`` None) they check nothing.
    def _wait_for_data(self, func_name: str) -> Coroutine[Any, Any, None]:
        if self.deadline.at is None:
            waiting: Coroutine[Any, Any, None] = asyncio.StreamReader._wait_for_data(self, func_name)  # type: ignore[attr-defined]
            return waiting
        self.deadline.check("read")
        return self._wait_within_deadline(func_name)

    async def _wait_within_deadline(self, func_name: str) -> None:
        self._arm()
        try:
            await asyncio.StreamReader._wait_for_data(self, func_name)  # type: ignore[attr-defined]
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None

    def read(self, n: int = -1) -> Coroutine[Any, Any, bytes]:
        if self.deadline.at is not None:
            self.deadline.check("read")
        return asyncio.StreamReader.read(self, n)

    def readline(self) -> Coroutine[Any, Any, bytes]:
        if self.deadline.at is not None:
            self.deadline.check("read")
        return asyncio.StreamReader.readline(self)

    def readexactly(self, n: int) -> Coroutine[Any, Any, bytes]:
        if self.deadline.at is not None:
            self.deadline.check("read")
        return asyncio.StreamReader.readexactly(self, n)

    def readuntil(self, separator: Any = b"\n") -> Coroutine[Any, Any, bytes]:
        if self.deadline.at is not None:
            self.deadline.check("read")
        return asyncio.StreamReader.readuntil(self, separator)


class DeadlineWriter(asyncio.StreamWriter):
    """StreamWriter with a write deadline: writes after it, and drains past it, fail.

    Cooperative (``super()``): an HTTP/2 tunnel's writer puts it before its own ``drain``.
    """

    deadline = _NO_DEADLINE

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.deadline.at is not None:
            self.deadline.check("write")
        super().write(data)

    def drain(self) -> Coroutine[Any, Any, None]:
        if self.deadline.at is None:
            return super().drain()
        waiting: Coroutine[Any, Any, None] = self.deadline.wait("write", super().drain())
        return waiting

    async def start_tls(self, *args: Any, **kwargs: Any) -> None:
        """Not supported (asyncio's would do a client-side handshake): wrap the connection in anyio's ``TLSStream``."""
        raise NotImplementedError(
            "start_tls() on a hijacked connection's writer is not supported (asyncio's does a client-side "
            "handshake). For TLS on the connection, wrap it: await anyio.streams.tls.TLSStream.wrap(conn, "
            "server_side=True, ssl_context=...)."
        )


def set_read_deadline(reader: asyncio.StreamReader, deadline: float | None) -> None:
    """The read deadline of a :class:`DeadlineReader` (a hijacked connection's, an HTTP/2 tunnel's)."""
    assert isinstance(reader, DeadlineReader), "a reader without deadlines"
    reader.move_deadline(deadline)


def set_write_deadline(writer: asyncio.StreamWriter, deadline: float | None) -> None:
    """The write deadline of a :class:`DeadlineWriter` (a hijacked connection's, an HTTP/2 tunnel's)."""
    assert isinstance(writer, DeadlineWriter), "a writer without deadlines"
    if writer.deadline is _NO_DEADLINE:
        writer.deadline = _Deadline()
    writer.deadline.at = deadline


async def receive_from(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """anyio's ``receive()`` on a reader: up to ``max_bytes``, :class:`anyio.EndOfStream` at EOF."""
    try:
        data = await reader.read(max_bytes)
    except TimeoutError:
        raise
    except OSError as exc:
        raise anyio.BrokenResourceError from exc
    if not data:
        raise anyio.EndOfStream
    return data


async def send_to(writer: asyncio.StreamWriter, item: bytes) -> None:
    """anyio's ``send()`` on a writer: write ``item``, then wait for back-pressure to allow more."""
    try:
        writer.write(item)
        await writer.drain()
    except TimeoutError:
        raise
    except OSError as exc:
        raise anyio.BrokenResourceError from exc


class HijackedConnection(ByteStream):
    """A connection taken over from the server.

    ``reader`` yields the pending buffer first (:attr:`pending`, the bytes the server had
    read but the app had not received), then socket data. ``writer`` writes to the
    socket. The server never touches the connection again; the owner closes it with
    :meth:`aclose` or ``async with``. A connection dropped without being closed is
    closed by the garbage collector with a ``ResourceWarning``, like a socket.

    It is also an anyio :class:`~anyio.abc.ByteStream` (``receive``, ``send``,
    ``send_eof``, ``aclose``), so it can be wrapped, e.g. in ``anyio.streams.tls.TLSStream``.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        pending: bytes,
        *,
        eof: bool = False,
        info: ConnectionInfo | None = None,
        connections: set[Any] | None = None,
        hijacked: set[Any] | None = None,
        shutdown_grace: float | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(transport, ProxiedTransport):  # the connection's own socket, not the PROXY header's view
            transport = transport.transport
        self.pending: bytes = pending
        """Bytes the server had read after the request head that the app had not received."""
        self.transport: asyncio.Transport = transport
        self.info: ConnectionInfo | None = info
        """Identity and per-connection state of the HTTP connection this was (``http.connection``)."""
        reader = DeadlineReader(limit=limit, loop=loop)
        protocol = self._protocol = _HijackedProtocol(
            reader,
            connections if connections is not None else set(),
            hijacked if hijacked is not None else set(),
            shutdown_grace,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        transport.resume_reading()
        if pending:
            reader.feed_data(pending)
        if eof:
            reader.feed_eof()
        writer = DeadlineWriter(transport, protocol, reader, loop)
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter = writer

    # -- inspection -----------------------------------------------------------------
    @property
    def socket(self) -> socket.socket:
        """The underlying socket, for options (``setsockopt``) and addresses (``getpeername``)."""
        sock: socket.socket = self.transport.get_extra_info("socket")
        return sock

    @property
    def client(self) -> Any:
        """The client's address: the peer's, or behind the PROXY protocol the one its header names.

        Behind the PROXY protocol the peer (``socket.getpeername()``) is the balancer.
        """
        proxy = self.info.proxy if self.info is not None else None
        if proxy is not None and proxy.source is not None:
            return proxy.source
        return self.transport.get_extra_info("peername") or None

    @property
    def is_closing(self) -> bool:
        """True once the connection is closed or closing."""
        return self.transport.is_closing()

    # -- deadlines and keepalive (Go's SetDeadline, SetKeepAlivePeriod) ---------------
    def set_read_deadline(self, deadline: float | None) -> None:
        """Reads that would wait past ``deadline`` (``loop.time()`` seconds; None: never) raise TimeoutError.

        The deadline can be moved at any time, also while a read waits; a read after it
        fails at once until it is moved.
        """
        set_read_deadline(self.reader, deadline)

    def set_write_deadline(self, deadline: float | None) -> None:
        """Writes after ``deadline``, and ``drain()`` waiting past it (a peer not reading), raise TimeoutError."""
        set_write_deadline(self.writer, deadline)

    def set_deadline(self, deadline: float | None) -> None:
        """Set both the read and the write deadline."""
        self.set_read_deadline(deadline)
        self.set_write_deadline(deadline)

    def set_keepalive(self, idle: float = 30.0, interval: float | None = None, count: int | None = None) -> None:
        """Turn on TCP keepalive: first probe after ``idle`` seconds, then every ``interval``, give up after ``count``.

        Docker sets 30 s on its hijacked attach connections. Idle, interval and count are Linux options.
        """
        sock = self.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
            if value is not None and hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), max(1, int(value)))

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self.socket
        return {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: sock.getsockname(),
            SocketAttribute.remote_address: lambda: sock.getpeername(),
        }

    # -- shutdown notification ------------------------------------------------------
    @property
    def shutdown_requested(self) -> asyncio.Event:
        """Set when the server begins a graceful shutdown: finish up and close."""
        return self._protocol.shutdown_event()

    def on_shutdown(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the server begins a graceful shutdown."""
        self._protocol.on_shutdown(callback)

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (by either side)."""
        await self._protocol.closed_event().wait()

    # -- anyio ByteStream -----------------------------------------------------------
    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return up to ``max_bytes``; raise :class:`anyio.EndOfStream` at EOF."""
        if self.transport.is_closing() and not self.reader._buffer:  # type: ignore[attr-defined]
            if self.reader.at_eof():
                raise anyio.EndOfStream
            raise anyio.ClosedResourceError
        return await receive_from(self.reader, max_bytes)

    async def send(self, item: bytes) -> None:
        """Write ``item`` and wait for the transport to drain below its high-water mark."""
        if self.transport.is_closing():
            raise anyio.ClosedResourceError
        await send_to(self.writer, item)

    async def send_eof(self) -> None:
        """Half-close: send FIN, keep reading (not possible over TLS)."""
        if not self.writer.can_write_eof():
            raise NotImplementedError("half-close is not possible on this transport (TLS)")
        self.writer.write_eof()

    def close(self) -> None:
        """Close the connection now (buffered writes are still flushed by the transport)."""
        self.writer.close()

    async def aclose(self) -> None:
        """Close the connection and wait until the socket is released."""
        self.writer.close()
        try:  # noqa: SIM105  (contextlib.suppress costs three Python calls per connection)
            await self.writer.wait_closed()
        except OSError:  # the connection was lost with an error: it is closed all the same
            pass

    def __aexit__(self, *exc_info: object) -> Coroutine[Any, Any, None]:
        return self.aclose()  # as anyio's, without a coroutine of its own

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
        """Forward bytes both ways between this connection and ``(reader, writer)`` until both close.

        Back-pressure and half-close are kept (see :mod:`asgi_hijack.relay`). Between plain TCP
        sockets on Linux the kernel moves the bytes (``splice(2)``), otherwise the transports
        forward them; either is several times faster than a streams loop. Buffered bytes, the
        pending buffer included, are forwarded first. Returns the bytes forwarded each way.
        """
        from .relay import relay_streams

        return await relay_streams(self.reader, self.writer, reader, writer)

    async def _flush(self) -> None:
        """Wait until every byte written so far has been handed to the kernel (some are still buffered)."""
        low, high = self.transport.get_write_buffer_limits()
        # With a high-water mark of 0 the transport is paused until its buffer is empty, then resumes
        # its protocol; it may have paused the server's protocol (which wrote the head), not this one.
        self.transport.set_write_buffer_limits(high=0)
        self._protocol.pause_writing()
        try:
            await self.writer.drain()
        finally:
            self.transport.set_write_buffer_limits(high=high, low=low)
