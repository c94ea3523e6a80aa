"""``tunnel()``: one byte stream for CONNECT and Upgrade requests, on HTTP/1.1 and on HTTP/2.

Most apps that hijack do not want the socket: they want a byte stream for a ``CONNECT``
tunnel or an upgraded protocol. HTTP/1.1 and HTTP/2 both have one:

* on HTTP/1.1 it is the connection itself, after a ``2xx`` answer to ``CONNECT`` or a
  ``101`` to an ``Upgrade`` request: :func:`tunnel` is :func:`asgi_hijack.hijack` with
  that head filled in;
* on HTTP/2 it is the request's stream, after a ``2xx`` answer to ``CONNECT`` (RFC 9113
  section 8.5) or extended ``CONNECT`` with ``:protocol`` (RFC 8441): the server offers the
  ``http.tunnel`` extension (docs/spec.md), and :func:`tunnel` sends its
  ``http.tunnel.accept`` message. The other streams of the connection go on.

Either way the app gets a :class:`Tunnel` (as hyper's ``Upgraded`` is one type for both):
asyncio streams, the anyio ``ByteStream`` methods, the shutdown notice, ``relay()`` and
Go-style deadlines. On HTTP/2, ``send_eof()`` is ``END_STREAM``, a peer's ``END_STREAM`` (or
a reset with ``NO_ERROR`` or ``CANCEL``) is EOF, other resets raise, and ``aclose()`` before
that EOF was read resets the stream with ``CANCEL`` (after it, ends it with ``END_STREAM``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, overload

import anyio
from anyio.abc import ByteStream

from .api import EXTENSION as HIJACK_EXTENSION
from .api import (
    Receive,
    Scope,
    Send,
    _RequestLike,
    _unsupported,
    deliver,
    hijack,
    hijack_supported,
    scope_and_send,
)
from .connection import receive_from, send_to, set_read_deadline, set_write_deadline
from .errors import AlreadyHijackedError, TunnelNotSupported

__all__ = ["EXTENSION", "Tunnel", "tunnel", "tunnel_supported"]

EXTENSION = "http.tunnel"
"""The ASGI extension for HTTP/2 tunnels (see docs/spec.md)."""


class _Stream(Protocol):
    """What a :class:`Tunnel` delegates to: a :class:`~asgi_hijack.HijackedConnection`, or an HTTP/2 stream."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def shutdown_requested(self) -> asyncio.Event: ...
    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]: ...
    def on_shutdown(self, callback: Callable[[], object]) -> None: ...
    async def wait_closed(self) -> None: ...
    def set_read_deadline(self, deadline: float | None) -> None: ...
    def set_write_deadline(self, deadline: float | None) -> None: ...
    async def receive(self, max_bytes: int = 65536) -> bytes: ...
    async def send(self, item: bytes) -> None: ...
    async def send_eof(self) -> None: ...
    async def aclose(self) -> None: ...
    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]: ...


class Tunnel(ByteStream):
    """The byte stream of a tunnelled request, the same on HTTP/1.1 and HTTP/2.

    ``reader`` yields the client's bytes (on HTTP/1.1 the bytes the server had read after
    the head first), ``writer`` sends to it. It is an anyio :class:`~anyio.abc.ByteStream`:
    ``receive()`` raises :class:`anyio.EndOfStream` at EOF, ``send_eof()`` half-closes
    (``FIN`` or ``END_STREAM``), ``aclose()`` and ``async with`` close it.
    """

    def __init__(self, stream: _Stream, protocol: str | None, http_version: str) -> None:
        self._stream = stream
        self.reader: asyncio.StreamReader = stream.reader
        self.writer: asyncio.StreamWriter = stream.writer
        self.protocol: str | None = protocol
        """The ``Upgrade`` token (HTTP/1.1), the ``:protocol`` value (HTTP/2), or None for a plain CONNECT."""
        self.http_version: str = http_version
        """``"1.0"``, ``"1.1"`` or ``"2"``, as in the request's scope."""

    def __repr__(self) -> str:
        return f"<Tunnel HTTP/{self.http_version} protocol={self.protocol!r}>"

    @property
    def shutdown_requested(self) -> asyncio.Event:
        """Set when the server begins a graceful shutdown: finish up and close."""
        return self._stream.shutdown_requested

    def on_shutdown(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the server begins a graceful shutdown."""
        self._stream.on_shutdown(callback)

    async def wait_closed(self) -> None:
        """Wait until the tunnel is closed both ways (or reset, or its connection is gone)."""
        await self._stream.wait_closed()

    def set_read_deadline(self, deadline: float | None) -> None:
        """Reads that would wait past ``deadline`` (``loop.time()``; None: never) raise TimeoutError.

        As on a hijacked connection: it can be moved at any time, also while a read waits.
        """
        self._stream.set_read_deadline(deadline)

    def set_write_deadline(self, deadline: float | None) -> None:
        """Writes after ``deadline``, and ``drain()`` waiting past it, raise TimeoutError."""
        self._stream.set_write_deadline(deadline)

    def set_deadline(self, deadline: float | None) -> None:
        """Set both the read and the write deadline."""
        self.set_read_deadline(deadline)
        self.set_write_deadline(deadline)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return up to ``max_bytes``; raise :class:`anyio.EndOfStream` at EOF."""
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        """Write ``item`` and wait for back-pressure (socket buffer, or HTTP/2 flow control) to allow more."""
        await self._stream.send(item)

    async def send_eof(self) -> None:
        """Half-close: ``FIN`` on HTTP/1.1 (not possible over TLS), ``END_STREAM`` on HTTP/2; keep reading."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the tunnel and wait for it.

        On HTTP/2: ``END_STREAM`` once the peer's EOF was read, else ``RST_STREAM CANCEL``.
        """
        await self._stream.aclose()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
        """Forward bytes both ways between the tunnel and ``(reader, writer)`` until both ends close.

        Back-pressure and half-close are kept. Returns the bytes forwarded each way.
        """
        return await self._stream.relay(reader, writer)


CONNECT_ERROR = 0xA
"""RFC 9113 section 8.5: the TCP connection of a CONNECT stream failed."""


class _H2StreamLike(Protocol):
    """What :class:`~asgi_hijack.h2_stream.H2Stream` offers (docs/spec.md, ``http.tunnel``)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def reset(self, code: int) -> None: ...
    def on_shutdown(self, callback: Callable[[], Any]) -> None: ...
    async def wait_closed(self) -> None: ...


class _H2Tunnel:
    """An accepted HTTP/2 stream seen as a :class:`~asgi_hijack.HijackedConnection` (the ``_Stream`` protocol)."""

    def __init__(self, stream: _H2StreamLike) -> None:
        self._h2 = stream
        self.reader = stream.reader
        self.writer = stream.writer
        self._closed = False
        self._shutdown: asyncio.Event | None = None

    @property
    def shutdown_requested(self) -> asyncio.Event:
        if self._shutdown is None:
            self._shutdown = asyncio.Event()
            self._h2.on_shutdown(self._shutdown.set)  # called at once if the shutdown began
        return self._shutdown

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}

    def on_shutdown(self, callback: Callable[[], object]) -> None:
        self._h2.on_shutdown(callback)

    async def wait_closed(self) -> None:
        await self._h2.wait_closed()

    def set_read_deadline(self, deadline: float | None) -> None:
        set_read_deadline(self.reader, deadline)

    def set_write_deadline(self, deadline: float | None) -> None:
        set_write_deadline(self.writer, deadline)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        return await receive_from(self.reader, max_bytes)

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await send_to(self.writer, item)

    async def send_eof(self) -> None:
        self.writer.write_eof()

    async def aclose(self) -> None:
        self._closed = True
        if self.reader.at_eof():  # the peer's end was read: end ours too, a clean close
            self.writer.write_eof()
        self.writer.close()  # RST_STREAM CANCEL unless both directions ended
        await self._h2.wait_closed()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
        """Copy both ways with ``drain()`` (HTTP/2 flow control one way, the socket the other).

        EOF is passed on (END_STREAM, FIN). If either side fails, the other is aborted: the
        upstream's transport, and the stream with ``CONNECT_ERROR`` (a no-op once it is reset).
        """
        counts = [0, 0]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, index: int) -> None:
            while data := await src.read(65536):
                dst.write(data)
                counts[index] += len(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

        tasks = [
            asyncio.ensure_future(copy(self.reader, writer, 0)),
            asyncio.ensure_future(copy(reader, self.writer, 1)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(task.done() and task.exception() is not None for task in tasks):
                self._h2.reset(CONNECT_ERROR)
                writer.transport.abort()
            await asyncio.wait(tasks)
        finally:
            for task in tasks:
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the abort above is the answer to it
        return counts[0], counts[1]


def _upgrade_token(scope: Scope) -> bytes | None:
    """The first token of the request's ``Upgrade`` header, or None."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"upgrade":
            token = value.split(b",")[0].strip()
            return token or None
    return None


def tunnel_supported(scope: Scope) -> bool:
    """True if :func:`tunnel` can turn this request into a byte stream on this server."""
    extensions = scope.get("extensions") or {}
    if EXTENSION in extensions:
        return True
    if HIJACK_EXTENSION not in extensions:
        return False
    return scope.get("method") == "CONNECT" or _upgrade_token(scope) is not None


def _refusal(scope: Scope) -> TunnelNotSupported:
    """Why this request cannot be tunnelled, and what to do."""
    version = str(scope.get("http_version", ""))
    method = scope.get("method")
    if scope.get("type") == "http" and version == "2":
        if method != "CONNECT":
            return TunnelNotSupported(
                f"tunnel() needs a CONNECT or extended CONNECT (RFC 8441) request on HTTP/2, got {method}: "
                "only such a stream can carry a byte stream. Answer this request with an ordinary response."
            )
        return TunnelNotSupported(
            f"the server did not offer the {EXTENSION!r} ASGI extension for this HTTP/2 CONNECT, so its stream "
            "cannot be handed over. With uvicorn, run with --http asgi_hijack:ZttpHijackProtocol."
        )
    if not hijack_supported(scope):
        return TunnelNotSupported(f"tunnel() is built on hijack() on HTTP/1.x, and {_unsupported(scope)}")
    return TunnelNotSupported(
        f"tunnel() needs a CONNECT request or one with an Upgrade header, got {method} without Upgrade: "
        "the client expects an HTTP response, not a byte stream. Answer it with an ordinary response, or "
        "call hijack() to take over the connection and write your own head."
    )


@overload
async def tunnel(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    status: int | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    reason: bytes | str | None = None,
) -> Tunnel: ...


@overload
async def tunnel(
    scope: _RequestLike,
    receive: None = None,
    send: None = None,
    *,
    status: int | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    reason: bytes | str | None = None,
) -> Tunnel: ...


async def tunnel(
    scope: Any,
    receive: Receive | None = None,
    send: Send | None = None,
    *,
    status: int | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    reason: bytes | str | None = None,
) -> Tunnel:
    """Answer this CONNECT or Upgrade request and return its byte stream, on HTTP/1.1 or HTTP/2.

    Pass ``(scope, receive, send)`` or a request object, as to :func:`~asgi_hijack.hijack`.
    ``status`` defaults to ``200`` for CONNECT and extended CONNECT, ``101`` for an HTTP/1.1
    ``Upgrade`` (whose ``upgrade`` and ``connection`` headers are added unless ``headers``
    has them). ``reason`` is the HTTP/1.x reason phrase (``Connection established`` for CONNECT);
    HTTP/2 has none. Raises :class:`~asgi_hijack.errors.TunnelNotSupported` for a request that
    cannot be tunnelled (a GET without Upgrade, a server without our protocol classes), and
    the other :class:`~asgi_hijack.errors.HijackError` subclasses as ``hijack()`` does.
    """
    request_scope, send_ = scope_and_send(scope, receive, send, "tunnel")
    headers = list(headers)
    if not tunnel_supported(request_scope):
        raise _refusal(request_scope)
    version = str(request_scope["http_version"])
    if request_scope["method"] == "CONNECT":
        protocol, status = None, 200 if status is None else status
        if not 200 <= status < 300:
            raise ValueError(
                f"a CONNECT tunnel is opened by a 2xx response, got status={status}; to refuse it, answer "
                "with an ordinary response (http.response.start) instead of calling tunnel()"
            )
    else:
        token = _upgrade_token(request_scope)
        assert token is not None  # tunnel_supported() checked it
        protocol, status = token.decode("latin-1"), 101 if status is None else status
        if status != 101:
            raise ValueError(
                f"an Upgrade tunnel is opened by a 101 response, got status={status}; to refuse it, answer "
                "with an ordinary response (http.response.start) instead of calling tunnel()"
            )
        names = {name.lower() for name, _ in headers}
        headers += [
            (name, value) for name, value in ((b"upgrade", token), (b"connection", b"Upgrade")) if name not in names
        ]
    extension = (request_scope.get("extensions") or {}).get(EXTENSION)
    if extension is not None:
        return await _accept(request_scope, send_, extension, status, headers)
    if reason is None and protocol is None:
        reason = "Connection established"
    conn = await hijack(scope, receive, send, status=status, reason=reason, headers=headers)  # type: ignore[arg-type]
    return Tunnel(conn, protocol, version)


async def _accept(
    scope: Scope, send: Send, extension: dict[str, Any], status: int, headers: list[tuple[bytes, bytes]]
) -> Tunnel:
    """HTTP/2: send ``http.tunnel.accept`` and wrap the stream the server hands back."""
    from .h2_stream import H2Stream  # only a server with zttp offers http.tunnel

    if "stream" in extension:
        raise AlreadyHijackedError("this stream was already tunnelled; tunnel() may be called once per request")
    message = {"type": "http.tunnel.accept", "status": status, "headers": headers}
    stream = await deliver("tunnel", send, message, extension, "stream", H2Stream)
    return Tunnel(_H2Tunnel(stream), extension.get("protocol"), str(scope["http_version"]))
