"""One HTTP/2 stream as a byte stream: a CONNECT or extended CONNECT after its 2xx answer.

RFC 9113 section 8.5 (CONNECT) and RFC 8441 (extended CONNECT, ``:protocol``) turn a
stream into a two-way byte stream once the server answers 2xx: the DATA frames in each
direction are the bytes, END_STREAM is a half-close, RST_STREAM an abort. The
connection and its sibling streams are untouched. :class:`H2Stream` exposes that stream
as an asyncio ``reader`` and ``writer`` pair:

============================  ==================================================
peer END_STREAM               EOF on ``reader``
peer RST_STREAM NO_ERROR or   EOF on ``reader`` (a writer then raises
CANCEL                        ``ConnectionResetError``)
peer RST_STREAM, other code   ``reader`` raises ``ConnectionResetError`` naming the code
connection lost               ``reader`` raises ``ConnectionResetError``
``writer.write_eof()``        END_STREAM
``writer.close()``            RST_STREAM CANCEL, unless both directions already ended
``reset(code)``               RST_STREAM with ``code`` (``CONNECT_ERROR`` for a failed upstream)
``writer.drain()``            waits for the stream's and the connection's send window
============================  ==================================================

The engine (:class:`asgi_hijack.zttp_h2.ZttpH2HijackProtocol`) implements :class:`Host`,
makes a :class:`Channel` per accepted stream and feeds it the peer's frames; the application
gets the channel's :class:`H2Stream`, which has only the members docs/spec.md documents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from zttp.error_codes import H2ErrorCode

from .connection import DeadlineReader, DeadlineWriter

__all__ = ["Channel", "H2Stream", "Host"]

_EOF_CODES = (H2ErrorCode.NO_ERROR, H2ErrorCode.CANCEL)


def _code_name(code: int) -> str:
    """``CANCEL (0x8)`` for an RFC 9113 error code, ``0x1f`` for an unknown one."""
    try:
        return f"{H2ErrorCode(code).name} (0x{code:x})"
    except ValueError:
        return f"0x{code:x}"


class Host(Protocol):
    """What a stream needs from its HTTP/2 connection."""

    transport: asyncio.Transport

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...
    def reset_stream(self, stream_id: int, code: int) -> None: ...
    async def wait_for_window(self, stream_id: int) -> None: ...
    def stream_over_buffer(self, channel: Channel) -> None: ...
    def stream_closed(self, channel: Channel) -> None: ...


class H2Stream:
    """One accepted CONNECT or extended CONNECT stream: ``reader``, ``writer``, ``reset``.

    Made by the engine when the app sends ``http.tunnel.accept``; found at
    ``scope["extensions"]["http.tunnel"]["stream"]``. Inbound bytes wait in ``reader`` up to
    the engine's per-stream bound; over it, the stream is reset with ``ENHANCE_YOUR_CALM``
    (zttp credits the peer's window as it parses, so the window cannot hold the peer back).
    """

    http_version = "2"

    def __init__(self, channel: Channel, protocol: str | None) -> None:
        self._channel = channel
        self.stream_id: int = channel.stream_id
        self.protocol: str | None = protocol
        """The ``:protocol`` of an extended CONNECT; ``None`` for a plain CONNECT."""
        self.reader: asyncio.StreamReader = channel.reader
        """The peer's DATA bytes in order; EOF at its END_STREAM."""
        self.writer: asyncio.StreamWriter = channel.writer
        """``write`` sends DATA, ``drain`` waits for flow-control window, ``write_eof`` sends END_STREAM."""

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} protocol={self.protocol!r} state={self._channel.state()}>"

    @property
    def shutdown_requested(self) -> bool:
        """Whether the server has begun a graceful shutdown (see :meth:`on_shutdown`)."""
        return self._channel.shutdown_requested

    def reset(self, code: int = H2ErrorCode.CANCEL) -> None:
        """Abort the stream with RST_STREAM ``code`` (for example ``CONNECT_ERROR``, 0xa)."""
        self._channel.reset(code)

    def on_shutdown(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` when a graceful shutdown begins (at once if it has begun)."""
        self._channel.on_shutdown(callback)

    async def wait_closed(self) -> None:
        """Wait until the stream has ended both ways or been reset."""
        await asyncio.shield(self._channel.closed)


class _StreamWriter(asyncio.StreamWriter):
    """``drain()`` waits for HTTP/2 window and the socket; ``wait_closed()`` for the stream's end."""

    _transport: Channel

    async def drain(self) -> None:
        await self._transport.drain()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._transport.closed)


class _Writer(DeadlineWriter, _StreamWriter):
    """The stream's writer, with the write deadline of a hijacked connection's (the same code)."""


class Channel(asyncio.Transport):
    """The engine's side of one accepted stream, and the transport of its reader and writer.

    The writer writes to it; the reader pauses it when it holds more than its bound. The engine
    calls ``feed_data``, ``feed_eof``, ``peer_reset``, ``connection_lost`` and ``shutdown``.
    """

    def __init__(self, host: Host, stream_id: int, protocol: str | None, buffer: int) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.host = host
        self.stream_id = stream_id
        self.sent_end = False
        self.received_end = False
        self.error: ConnectionResetError | None = None  # reset either way, or connection lost
        self.done = False
        self.closed: asyncio.Future[None] = loop.create_future()
        self.shutdown_requested = False
        self._shutdown_callbacks: list[Callable[[], Any]] = []
        self.reader = DeadlineReader(limit=max(buffer // 2, 1), loop=loop)  # a hijacked connection's read deadline
        self.reader.set_transport(self)  # pause_reading(): over 2 * limit = buffer
        self.writer = _Writer(self, asyncio.Protocol(), self.reader, loop)
        self.stream = H2Stream(self, protocol)

    def state(self) -> str:
        if self.error is not None:
            return "reset"
        return {(False, False): "open", (True, False): "local-ended", (False, True): "remote-ended"}.get(
            (self.sent_end, self.received_end), "closed"
        )

    # -- from the engine -------------------------------------------------------------------------
    def feed_data(self, data: bytes) -> None:
        """The peer's DATA (dropped once the stream has ended or been reset)."""
        if not self.received_end and self.error is None:
            self.reader.feed_data(data)

    def feed_eof(self) -> None:
        """The peer's END_STREAM."""
        self.received_end = True
        self.reader.feed_eof()
        self._maybe_done()

    def peer_reset(self, code: int) -> None:
        """The peer's RST_STREAM."""
        error = ConnectionResetError(f"the peer reset HTTP/2 stream {self.stream_id} with {_code_name(code)}")
        self._lost(error, eof=code in _EOF_CODES)

    def connection_lost(self) -> None:
        self._lost(ConnectionResetError(f"the HTTP/2 connection of stream {self.stream_id} was lost"))

    def shutdown(self) -> None:
        """Graceful shutdown began: set ``shutdown_requested`` and call the callbacks."""
        if self.shutdown_requested:
            return
        self.shutdown_requested = True
        callbacks, self._shutdown_callbacks = self._shutdown_callbacks, []
        for callback in callbacks:
            callback()

    def on_shutdown(self, callback: Callable[[], Any]) -> None:
        if self.shutdown_requested:
            callback()
        else:
            self._shutdown_callbacks.append(callback)

    # -- from the writer, the reader and H2Stream ------------------------------------------------
    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.sent_end:
            raise RuntimeError(f"HTTP/2 stream {self.stream_id}: write after write_eof()")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        if data:
            self.host.send_data(self.stream_id, bytes(data), False)

    def write_eof(self) -> None:
        if self.sent_end or self.error is not None:
            return
        self.sent_end = True
        self.host.send_data(self.stream_id, b"", True)
        self._maybe_done()

    def can_write_eof(self) -> bool:
        return True

    async def drain(self) -> None:
        if self.error is not None:
            raise self.error
        await self.host.wait_for_window(self.stream_id)
        if self.error is not None:
            raise self.error

    def reset(self, code: int) -> None:
        if self.done:
            return
        self.host.reset_stream(self.stream_id, code)
        self._lost(ConnectionResetError(f"HTTP/2 stream {self.stream_id} was reset with {_code_name(code)}"))

    def _lost(self, error: ConnectionResetError, eof: bool = False) -> None:
        """The stream ended abnormally: reads then see EOF (``eof``, or after END_STREAM) or ``error``."""
        if self.error is None:
            self.error = error
        if eof or self.received_end:
            self.reader.feed_eof()
        else:
            self.reader.set_exception(error)
        self._finish()

    def _maybe_done(self) -> None:
        if self.sent_end and self.received_end:
            self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.host.stream_closed(self)
            self.closed.set_result(None)

    def close(self) -> None:
        self.reset(H2ErrorCode.CANCEL)

    def abort(self) -> None:
        self.reset(H2ErrorCode.CANCEL)

    def is_closing(self) -> bool:
        return self.done

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.host.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        """The reader holds more than its bound: the app is not reading."""
        self.host.stream_over_buffer(self)

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self.done
