"""HTTP/2 over zttp: uvicorn's protocol with flow control, byte streams and refused hijacks.

HTTP/2 multiplexes many requests on one connection, so no request may take the
socket: ``http.hijack`` is not advertised and :func:`asgi_hijack.hijack` raises
:class:`~asgi_hijack.errors.HijackNotSupported`. If the application does not
handle that (lets it escape, or answers it with a 500 from error middleware), the
stream is reset with ``RST_STREAM`` ``HTTP_1_1_REQUIRED`` (RFC 9113 section 8.1)
instead, so clients retry the request over HTTP/1.1, where the hijack works. Sibling
streams on the connection are untouched.

What this class adds to uvicorn's ``ZttpH2Protocol``:

* **Back-pressure on responses.** zttp parks body bytes the peer has no window for, and
  its cost to release them grows with their amount. ``send()`` hands a body to zttp in
  pieces of :attr:`~ZttpH2HijackProtocol.parked_bytes`, each once at most that much is
  parked, woken by the peer's WINDOW_UPDATE and SETTINGS frames, a reset or a lost
  connection. Server memory per stream stays bounded and a download takes time linear in
  its size (uvicorn parks the whole body, which zttp drains in quadratic time).
* **Bounded request buffers, never a paused connection.** zttp credits the peer's stream
  and connection windows as it parses DATA (it has no ``consume_data`` on HTTP/2), so the
  window cannot hold back one stream. A stream whose unread body (or tunnel bytes) passes
  :attr:`~ZttpH2HijackProtocol.stream_buffer` is reset with ``ENHANCE_YOUR_CALM`` (0xb: "you
  send more than I take"; the peer broke no flow-control rule, so not ``FLOW_CONTROL_ERROR``).
  uvicorn instead pauses reading the whole connection past 64 KiB, stalling every sibling.
* **Byte streams** (the ``http.tunnel`` extension): a CONNECT or extended CONNECT request
  carries ``scope["extensions"]["http.tunnel"] = {"protocol": ":protocol value or None"}``.
  ``send({"type": "http.tunnel.accept", "status": 200, "headers": [...]})`` answers without
  END_STREAM and stores the :class:`~asgi_hijack.h2_stream.H2Stream` under ``"stream"``.
  A graceful shutdown notifies each stream's owner, sends GOAWAY, and resets the streams
  still open after the drain timeout.
* uvicorn 0.54 never wakes ``receive()`` for a request whose HEADERS frame ends the stream
  (a GET): fixed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from collections.abc import Generator
from typing import Any, ClassVar

import zttp
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, HTTPResponseBodyEvent, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.zttp_h2_impl import FORBIDDEN_HEADERS, ZttpH2Protocol
from uvicorn.server import ServerState
from zttp.error_codes import H2ErrorCode

from . import adapter
from .errors import HijackNotSupported
from .h2_stream import Channel, H2Stream
from .h2_websocket import Options as WebSocketOptions
from .h2_websocket import serve_websocket
from .settings import HijackSettings
from .tunnel import EXTENSION as TUNNEL  # the ASGI extension of CONNECT and extended CONNECT requests

__all__ = ["TUNNEL", "ZttpH2HijackProtocol"]


def _refuse(send: ASGISendCallable, exc: HijackNotSupported) -> bool:
    """Reset the stream of ``send`` with ``HTTP_1_1_REQUIRED`` unless its response started.

    Returns False if the response had started: then the stream is left to uvicorn.
    """
    cycle = adapter.h2_cycle_of(send)
    if cycle is None or cycle.response_started:
        return False
    if not cycle.disconnected:
        cycle.logger.info("HTTP/2 stream %d reset with HTTP_1_1_REQUIRED: %s", cycle.stream.stream_id, exc)
        adapter.reset_stream(cycle, H2ErrorCode.HTTP_1_1_REQUIRED)
    return True


class _Backlog:
    """Bytes written to a byte stream that zttp has not been handed yet, and whether END_STREAM follows."""

    def __init__(self) -> None:
        self.chunks: collections.deque[memoryview] = collections.deque()
        self.size = 0
        self.end = False

    def add(self, data: bytes, end: bool) -> None:
        if data:
            self.chunks.append(memoryview(data))
            self.size += len(data)
        self.end = self.end or end

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes from the front."""
        parts = []
        while self.chunks and limit:
            chunk = self.chunks.popleft()
            if len(chunk) > limit:
                chunk, rest = chunk[:limit], chunk[limit:]
                self.chunks.appendleft(rest)
            parts.append(chunk)
            limit -= len(chunk)
        data = b"".join(parts)
        self.size -= len(data)
        return data


class ZttpH2HijackProtocol(ZttpH2Protocol):
    """uvicorn's zttp HTTP/2 protocol with flow control and ``http.tunnel`` (see the module).

    Not for ``uvicorn --http`` on its own (it cannot serve HTTP/1.1 clients): use
    :class:`asgi_hijack.zttp_auto.ZttpHijackProtocol`, which hands HTTP/2 connections to it.
    """

    parked_bytes: ClassVar[int] = 64 * 1024
    """Response bytes a stream may have parked in zttp (no window yet) before ``send()`` waits."""
    stream_buffer: ClassVar[int] = 1 << 20
    """Unread inbound bytes per stream (request body, or tunnel reader) before the stream is
    reset with ``ENHANCE_YOUR_CALM``."""
    drain_timeout: ClassVar[float | None] = HijackSettings.drain_timeout
    """Shutdown drain for byte streams and parked response bytes without ``--timeout-graceful-shutdown``."""
    h2_websockets: ClassVar[str] = HijackSettings.h2_websockets
    """``on``: an extended CONNECT ``websocket`` is an ASGI ``websocket`` scope (an ``http`` one
    with ``http.tunnel`` under ``--ws none``); ``http1``: reset with ``HTTP_1_1_REQUIRED``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.app = self._run_app(self.app)
        self._websockets = WebSocketOptions.from_config(config) if config.ws != "none" else None
        self._window_waiters: dict[int, asyncio.Future[None]] = {}
        self._tunnels: dict[int, Channel] = {}
        self._backlogs: dict[int, _Backlog] = {}
        self._drain_timer: asyncio.TimerHandle | None = None
        self._parked_grace = True  # a close waits for parked response bytes (until the drain timeout)
        self._close_when_sent = False

    # -- requests ---------------------------------------------------------------------------------
    def handle_request(self, event: zttp.Request) -> None:
        super().handle_request(event)
        cycle = adapter.h2_cycles(self)[event.stream_id]
        if event.method == b"CONNECT":
            protocol = event.protocol.decode("ascii", "replace") if event.protocol is not None else None
            cycle.scope["extensions"][TUNNEL] = {"protocol": protocol}
        if event.end_stream:  # HEADERS carried END_STREAM: no Data or EndOfMessage event follows
            adapter.end_headers_only_request(self, event.stream_id)  # type: ignore[arg-type]

    def _run_app(self, app: ASGI3Application) -> ASGI3Application:
        """Wrap ``app``: flow control on ``send``, ``http.tunnel.accept``, refused hijacks.

        A ``HijackNotSupported`` the app does not handle (it escapes before a response
        started, or error middleware answers it with a 500) resets the stream with
        ``HTTP_1_1_REQUIRED``.
        """

        async def run(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            cycle = adapter.h2_cycle_of(send)
            if cycle is None:  # not a request of this protocol
                return await app(scope, receive, send)
            tunnel: dict[str, Any] | None = cycle.scope["extensions"].get(TUNNEL)
            stream_id = cycle.stream.stream_id
            websocket = tunnel is not None and tunnel["protocol"] == "websocket"  # RFC 8441 (engineer B)
            if websocket and self.h2_websockets == "http1":
                adapter.reset_stream(cycle, H2ErrorCode.HTTP_1_1_REQUIRED)  # browsers retry over HTTP/1.1
                return None

            async def guarded_send(message: Any) -> None:
                kind = message["type"]
                if tunnel is not None and "stream" in tunnel:
                    raise RuntimeError(
                        f"ASGI message {kind!r} sent after 'http.tunnel.accept': HTTP/2 stream {stream_id} is "
                        "a byte stream now; write to scope['extensions']['http.tunnel']['stream'].writer instead."
                    )
                if kind == "http.tunnel.accept":
                    if tunnel is None:
                        raise RuntimeError(
                            f"'http.tunnel.accept' sent for a {cycle.scope['method']} request: only CONNECT "
                            "requests (with the http.tunnel extension in their scope) can become byte streams."
                        )
                    tunnel["stream"] = self._accept(cycle, tunnel["protocol"], message)
                    return
                if kind == "http.response.start" and message["status"] == 500:
                    exc = sys.exc_info()[1]
                    if isinstance(exc, HijackNotSupported):
                        _refuse(send, exc)
                if kind == "http.response.body" and message.get("body"):
                    await self._send_body(send, message, stream_id)
                else:
                    await send(message)

            try:  # after the accept, receive() returns http.disconnect (the cycle is disconnected)
                if websocket and self._websockets is not None:
                    return await serve_websocket(app, self._websockets, scope, receive, guarded_send)
                return await app(scope, receive, guarded_send)
            except HijackNotSupported as exc:
                if not _refuse(send, exc):
                    raise
            except Exception as exc:
                stream = tunnel.get("stream") if tunnel is not None else None
                if stream is None:
                    raise
                # uvicorn would reset the stream a second time and log as well: do both once here.
                if isinstance(exc, ConnectionError):
                    cycle.logger.info("HTTP/2 tunnel on stream %d ended: %s", stream_id, exc)
                else:
                    cycle.logger.error("Exception in ASGI application (HTTP/2 tunnel)\n", exc_info=exc)
                stream.reset(H2ErrorCode.INTERNAL_ERROR)

        return run

    async def _send_body(self, send: ASGISendCallable, message: Any, stream_id: int) -> None:
        """uvicorn's ``send`` of a body, in pieces of at most :attr:`parked_bytes`, each once the
        previous ones have window: zttp's cost to release parked bytes grows with their amount."""
        body: bytes = message["body"]
        step = self.parked_bytes
        if len(body) <= step:
            await send(message)
            await self.wait_for_window(stream_id)
            return
        view = memoryview(body)
        more_body = message.get("more_body", False)
        for start in range(0, len(body), step):
            piece: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": bytes(view[start : start + step]),
                "more_body": more_body or start + step < len(body),
            }
            await send(piece)
            await self.wait_for_window(stream_id)

    def _accept(self, cycle: adapter.H2Cycle, protocol: str | None, message: Any) -> H2Stream:
        """Answer ``http.tunnel.accept``: HEADERS without END_STREAM, then the stream is a byte stream."""
        stream_id = cycle.stream.stream_id
        status = int(message.get("status", 200))
        if not 200 <= status < 300:
            raise RuntimeError(f"'http.tunnel.accept' needs a 2xx status, not {status}: use http.response.start.")
        if cycle.response_started:
            raise RuntimeError("'http.tunnel.accept' sent after 'http.response.start': a stream answers once.")
        if cycle.disconnected:
            raise ConnectionResetError(f"HTTP/2 stream {stream_id} was reset before the tunnel was accepted.")
        headers = [(name.lower(), value) for name, value in message.get("headers", [])]
        headers = [(name, value) for name, value in headers if name not in FORBIDDEN_HEADERS]
        cycle.stream.send_response(status, headers)
        self.flush()
        channel = self._tunnels[stream_id] = Channel(self, stream_id, protocol, self.stream_buffer)
        adapter.make_tunnel(cycle)
        if cycle.body:  # DATA that came before the answer
            channel.feed_data(bytes(cycle.body))
            cycle.body.clear()
        if not cycle.more_body:
            channel.feed_eof()
        if self.shutdown_requested:
            channel.shutdown()
        return channel.stream

    # -- events -----------------------------------------------------------------------------------
    def events(self) -> Generator[zttp.Event]:
        """zttp's events, minus the DATA and ends of byte streams and of over-full request bodies."""
        for event in super().events():
            if isinstance(event, zttp.Data):
                self._data(event)
                continue
            if isinstance(event, zttp.EndOfMessage) and event.stream_id in self._tunnels:
                self._tunnels[event.stream_id].feed_eof()
                continue
            if isinstance(event, zttp.WindowUpdate):
                self._wake(event.stream_id)
            elif isinstance(event, zttp.Settings):  # INITIAL_WINDOW_SIZE may have grown
                self._wake(0)
            elif isinstance(event, zttp.RstStream):
                self._backlogs.pop(event.stream_id, None)
                self._wake(event.stream_id)
                channel = self._tunnels.get(event.stream_id)
                if channel is not None:
                    channel.peer_reset(event.error_code)
            yield event

    def _data(self, event: zttp.Data) -> None:
        """Buffer DATA for its stream (instead of uvicorn, which pauses the connection past 64 KiB)."""
        channel = self._tunnels.get(event.stream_id)
        if channel is not None:
            channel.feed_data(event.data)
            return
        cycle = adapter.h2_cycles(self).get(event.stream_id)
        if cycle is None or cycle.response_complete or cycle.disconnected:
            return
        if len(cycle.body) + len(event.data) > self.stream_buffer:
            self._over_buffer(cycle.stream.stream_id)
            adapter.reset_stream(cycle, H2ErrorCode.ENHANCE_YOUR_CALM)
            cycle.message_event.set()  # receive() returns http.disconnect
            return
        cycle.body += event.data
        cycle.message_event.set()

    def _over_buffer(self, stream_id: int) -> None:
        self.logger.info(
            "HTTP/2 stream %d reset with ENHANCE_YOUR_CALM: its app left more than %d bytes unread "
            "(ZttpH2HijackProtocol.stream_buffer).",
            stream_id,
            self.stream_buffer,
        )

    # -- flow control -----------------------------------------------------------------------------
    async def wait_for_window(self, stream_id: int) -> None:
        """Wait while more than :attr:`parked_bytes` of the stream wait for window, then for the socket."""
        while not self.transport.is_closing():
            parked = self.conn.stream(stream_id).pending_bytes  # None once the stream is gone
            if stream_id not in self._backlogs and (not parked or parked <= self.parked_bytes):
                break
            waiter = self._window_waiters.get(stream_id)
            if waiter is None:
                waiter = self._window_waiters[stream_id] = self.loop.create_future()
            await waiter
        if self.flow.write_paused and not self.transport.is_closing():
            await self.flow.drain()

    def _wake(self, stream_id: int) -> None:
        """Wake the senders waiting for window on ``stream_id`` (0: on every stream)."""
        if stream_id == 0:
            waiters = list(self._window_waiters.values())
            self._window_waiters.clear()
        else:
            waiter = self._window_waiters.pop(stream_id, None)
            waiters = [waiter] if waiter is not None else []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- byte streams (h2_stream.Host) ------------------------------------------------------------
    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue a byte stream's DATA (and END_STREAM after it); zttp gets it as window allows."""
        if self.transport.is_closing():
            raise ConnectionResetError(f"the HTTP/2 connection of stream {stream_id} is closed")
        backlog = self._backlogs.setdefault(stream_id, _Backlog())
        backlog.add(data, end_stream)
        self._pump(stream_id, backlog)
        self.flush()

    def _pump(self, stream_id: int, backlog: _Backlog) -> None:
        """Hand zttp the stream's backlog in pieces of :attr:`parked_bytes` while at most that much
        is parked (as :meth:`_send_body` does for responses)."""
        stream = self.conn.stream(stream_id)
        try:
            while backlog.size and (stream.pending_bytes or 0) <= self.parked_bytes:
                stream.send_data(backlog.take(self.parked_bytes))
            if not backlog.size:
                del self._backlogs[stream_id]
                if backlog.end:
                    stream.end_message()
        except zttp.LocalProtocolError as exc:
            self._backlogs.pop(stream_id, None)
            raise ConnectionResetError(f"HTTP/2 stream {stream_id} is closed: {exc}") from exc

    def reset_stream(self, stream_id: int, code: int) -> None:
        self._backlogs.pop(stream_id, None)
        if not self.transport.is_closing():
            self.conn.stream(stream_id).reset(code)
            self.flush()
        self._wake(stream_id)

    def stream_over_buffer(self, channel: Channel) -> None:
        self._over_buffer(channel.stream_id)
        channel.reset(H2ErrorCode.ENHANCE_YOUR_CALM)

    def stream_closed(self, channel: Channel) -> None:
        """The byte stream ended both ways or was reset: its request is complete."""
        if self._tunnels.pop(channel.stream_id, None) is not None:
            self.loop.call_soon(self.on_response_complete, channel.stream_id)

    # -- connection -------------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        for channel in list(self._tunnels.values()):
            channel.connection_lost()
        self._backlogs.clear()
        self._wake(0)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Graceful shutdown: uvicorn's, plus GOAWAY and a notice to every byte stream's owner.

        Byte streams still open, and response bytes still parked for window, after the drain
        timeout (``--timeout-graceful-shutdown``, else ``ASGI_HIJACK_DRAIN_TIMEOUT``) are reset.
        """
        if self._tunnels and not self.transport.is_closing():
            self.conn.close(H2ErrorCode.NO_ERROR)  # GOAWAY now: no new streams, the open ones go on
            self.flush()
            for channel in list(self._tunnels.values()):
                channel.shutdown()
        super().shutdown()
        if self._tunnels:
            self._arm_drain_timer()

    def _arm_drain_timer(self) -> None:
        grace: float | None = self.config.timeout_graceful_shutdown
        if grace is None:  # as for hijacked connections: uvicorn's setting first, then ours
            grace = self.drain_timeout
        if grace is not None and self._drain_timer is None and not self.transport.is_closing():
            self._drain_timer = self.loop.call_later(grace, self._drain_expired)

    def _drain_expired(self) -> None:
        self._parked_grace = False
        for channel in list(self._tunnels.values()):
            channel.reset(H2ErrorCode.CANCEL)
        if not self.cycles:
            self._close_connection()

    def _close_connection(self) -> None:
        """uvicorn's GOAWAY and close; on shutdown, once the response bytes parked for window are sent.

        uvicorn closes when its last request completes after a graceful shutdown or the peer's
        GOAWAY, which would truncate a response whose last bytes wait for the peer's window: those
        get the drain timeout. (The keep-alive timeout closes as uvicorn does: the peer has sent
        nothing, not even WINDOW_UPDATE, for that long.)
        """
        if self.shutdown_requested and self._parked_grace and self._unsent():
            self._close_when_sent = True
            self._arm_drain_timer()
            return
        super()._close_connection()

    def _unsent(self) -> bool:
        """Whether bytes written wait for the peer's window (parked in zttp, or in a backlog here)."""
        return bool(self._backlogs) or self.conn.has_pending_send()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._backlogs and not self.transport.is_closing():  # a WINDOW_UPDATE may have made room
            for stream_id, backlog in list(self._backlogs.items()):
                with contextlib.suppress(ConnectionResetError):
                    self._pump(stream_id, backlog)
            self.flush()
        if self._close_when_sent and not self._unsent():
            self._close_connection()
