"""The shared server core: one mixin that gives any uvicorn HTTP/1.x protocol ``http.hijack``.

The core puts a sans-I/O :class:`~asgi_hijack.framing.Framer` in front of the parser and
feeds the parser exactly one request message at a time. Bytes after a message are held,
unparsed, until the response to it is complete (then they are parsed as the next request)
or until the app hijacks the connection (then they start the pending buffer). Parsers still
validate everything they are fed; the framer only decides how much to feed. Everything the
core touches of uvicorn is declared in :mod:`asgi_hijack.adapter`.

Cost: a data chunk that is exactly one request head (the common keep-alive GET, and a
connection's first request) takes a fast path (:func:`asgi_hijack._hot.data_received`,
compiled when the build can) of one ``bytes.partition`` (plus a bare-LF check on h11, which
accepts bare LF) and bypasses the framer, which is brought up to date only when the
connection leaves that path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from . import adapter
from ._native import hot
from .api import EXTENSION
from .connection import HijackedConnection
from .errors import (
    AlreadyHijackedError,
    AppReturnedError,
    ClientDisconnectedError,
    HijackLimitError,
    IncompleteBodyError,
    ResponseStartedError,
)
from .framing import (
    CLOSED,
    IDLE,
    NEED_DATA,
    PAUSED,
    RESPONDING,
    Body,
    EndOfMessage,
    Framer,
    Head,
    Reject,
    SkippedBody,
    body_length,
)
from .head import build_head, build_rejection
from .lifecycle import ConnState
from .proxy_protocol import intercept, refuse_tls
from .settings import HEAD_TIMEOUT, HijackSettings

if TYPE_CHECKING:
    from .adapter import Cycle

__all__ = ["EXTENSION", "HEAD_TIMEOUT", "HijackServerMixin"]

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


_HIJACKED, _IDLE = ConnState.HIJACKED, ConnState.IDLE
_FAST_PATH_FRAMER = Framer()
"""The framer of every connection on the fast path, which has none of its own (less memory per idle
keep-alive connection). It is never used: leaving the fast path gives a connection a new framer."""


def special_send(send: Send, ext: dict[str, Any], message: Message) -> Awaitable[None]:
    """The app sent ``http.hijack``, or anything after a hijack (from :func:`asgi_hijack._hot.send_or_hijack`).

    Returns the hijack's coroutine itself (no coroutine of its own per hijack); a refusal
    raises when it is awaited, as any ``send`` does."""
    if "connection" in ext:
        return _refuse(
            AlreadyHijackedError(
                f"{message['type']!r} sent after the connection was hijacked: the server no longer "
                "speaks HTTP on it. Write to the hijacked connection (conn.writer / conn.send) instead."
            )
        )
    cycle = adapter.cycle_of(send)
    protocol = adapter.handled_by(cycle)
    if not isinstance(protocol, HijackServerMixin):
        return _refuse(
            AppReturnedError(
                "hijack after the ASGI application returned: the server has already finished this "
                "request. Call hijack() from inside the request handler, before it returns."
            )
        )
    return protocol._hj_hijack(cycle, message, ext)


async def _refuse(error: Exception) -> None:
    raise error


class HijackServerMixin(HijackSettings):
    """Mixin for uvicorn's HTTP/1.x protocol classes (h11, httptools, zttp); put it first in the bases.

    It adds a single instance attribute, ``_hj`` (the per-connection state), so uvicorn's
    own attribute accesses stay on CPython's fast paths. Settings: :class:`HijackSettings`.
    """

    _hj_strict_lf = True
    """The parser rejects bare-LF line endings itself, so the fast path need not look for them.

    Heads that end in a bare-LF blank line always take the slow path, which normalizes them."""

    if TYPE_CHECKING:  # provided by uvicorn's protocol classes: see adapter.H1Protocol
        app: Any
        app_state: dict[str, Any]
        loop: asyncio.AbstractEventLoop
        config: Any
        cycle: Any  # adapter.Cycle | None; Any here, as each parser class declares its own type
        scope: Any
        headers: Any  # the request head's, as a list of pairs
        flow: Any  # adapter.FlowControl
        transport: asyncio.Transport
        connections: set[Any]
        server: Any  # uvicorn's local address of the connection: (host, port), (path, None) or None
        server_state: Any  # adapter.ServerState
        logger: Any
        access_log: bool

        def _unset_keepalive_if_required(self) -> None: ...
        def _hj_stock_init(
            self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None
        ) -> None: ...
        def _hj_stock_connection_made(self, transport: Any) -> None: ...
        def _hj_stock_connection_lost(self, exc: Exception | None) -> None: ...
        def _hj_stock_data_received(self, data: bytes) -> None: ...
        def _hj_stock_on_response_complete(self) -> None: ...
        def _hj_to_http2(self, transport: Any, data: bytes) -> None: ...  # ZttpHijackProtocol's (see _hot.sniff)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The parser protocol's methods that the core extends, called without a super() object each time.
        stock: Any = super()
        cls._hj_stock_init = stock.__init__  # type: ignore[method-assign]
        cls._hj_stock_connection_made = stock.connection_made  # type: ignore[method-assign]
        cls._hj_stock_connection_lost = stock.connection_lost  # type: ignore[method-assign]
        cls._hj_stock_data_received = stock.data_received  # type: ignore[method-assign]
        cls._hj_stock_on_response_complete = stock.on_response_complete  # type: ignore[method-assign]

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._hj_stock_init(config, server_state, app_state, _loop)  # (uvicorn's signature: no *args, **kwargs to pack)
        conn = self._hj = hot.Connection(self, _FAST_PATH_FRAMER)
        self.app = conn
        if self.proxy_protocol != "off" and self.config.is_ssl:
            refuse_tls(self)  # PROXY protocol: the header would come before the TLS handshake

    def connection_made(self, transport: Any) -> None:
        if self.proxy_protocol != "off" and intercept(self, transport, self.proxy_protocol, self.proxy_trusted):
            return  # PROXY protocol: called again once the header is read (asgi_hijack.proxy_protocol)
        self._hj_stock_connection_made(transport)
        # The first head must come within the head timeout; if it comes whole, it takes the fast path.
        self._hj.opened(self, transport)

    def _hj_head_timed_out(self) -> None:
        """No complete head within ``head_timeout`` (called by the server's :class:`~asgi_hijack._hot.Deadlines`)."""
        conn = self._hj
        conn.timer = None
        if not conn.busy:
            if self.cycle is None and not self.transport.is_closing():  # not a byte of the first head came
                self.transport.close()
            return
        if conn.framer.state is not IDLE or self.transport.is_closing():
            return
        reject = conn.framer.head_timed_out()
        if reject is None:
            self.transport.close()
        else:
            self._hj_reject(reject.status, reject.reason)

    # -- parser-specific hooks ----------------------------------------------------
    def _hj_feed_head(self, head: bytes) -> None:
        """Feed one complete request head (CRLF line endings) to the parser."""
        self._hj_feed(head)

    def _hj_upgrade_body_skipped(self) -> bool:
        """True if the parser skips the body of an Upgrade/CONNECT request (llhttp does)."""
        return False

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn calls this for every non-WebSocket upgrade; here the app may hijack it.
        self._hj.upgrade = True

    # -- the fast path --------------------------------------------------------------
    data_received = hot.data_received  # the fast path: see asgi_hijack._hot
    on_response_complete = hot.on_response_complete  # uvicorn's, then the finished request is let go

    def _hj_handed_to_websocket(self, rest: bytes) -> None:
        """uvicorn gave the connection to its WebSocket implementation; pass on the bytes after the head.

        A handshake that declares a body is refused (closed): its body would be read as frames.
        """
        self._hj.set(_HIJACKED)
        if body_length(self.headers):
            self.logger.warning("WebSocket handshake with a request body refused.")
            self.transport.close()
        elif rest:
            self.transport.get_protocol().data_received(rest)  # type: ignore[attr-defined]

    def _hj_tunnel(self, cycle: Cycle) -> bool:
        """The request just parsed is CONNECT or an Upgrade (its task has not run yet).

        Returns True if the parser skipped its body, which the core then delivers.
        """
        self._hj.upgrade = False
        # Bytes after CONNECT or Upgrade are never parsed as HTTP: unless the app
        # hijacks, the connection closes after the response.
        cycle.keep_alive = False
        if self._hj_upgrade_body_skipped() and body_length(cycle.scope["headers"]):
            cycle.more_body = True
            if not self._hj.busy:  # on the fast path: the framer learns of the head now
                self._hj_enter_slow_path(skip=True)
            return True
        return False

    # -- the slow path: the framer -----------------------------------------------------
    def _hj_enter_slow_path(self, skip: bool = False) -> hot.Connection:
        """Leave the fast path: bring the framer up to date with the head fed on it, if any.

        ``skip``: the parser skipped that head's body (see :meth:`_hj_tunnel`)."""
        conn = self._hj
        if conn.busy:
            return conn
        conn.busy = True
        conn.framer = Framer()
        cycle = self.cycle
        if cycle is not None and not (cycle.response_complete and not cycle.more_body):
            self._hj_head_parsed(conn, cycle, skip)
        return conn

    def _hj_head_parsed(self, conn: hot.Connection, cycle: Cycle, skip: bool) -> None:
        length = body_length(cycle.scope["headers"]) if cycle.more_body else 0
        conn.framer.head_parsed(length, skip=skip and bool(length), responded=cycle.response_complete)
        if conn.framer.state is not IDLE:
            cycle.on_response = self._hj_on_response

    def _hj_on_response(self) -> None:
        """The response completed: uvicorn's bookkeeping, the idle hook, then any held bytes."""
        self.on_response_complete()
        conn = self._hj
        closing = self.transport.is_closing()
        if conn.hooks and not closing:
            conn.set(_IDLE)
        if not conn.busy:
            return
        framer = conn.framer
        if closing:
            framer.close()
            return
        held = framer.state is RESPONDING
        framer.response_complete()
        if held:
            self._hj_process(b"")

    def _hj_feed(self, data: bytes) -> None:
        try:
            self._hj_stock_data_received(data)
        except UnicodeDecodeError:  # zttp decodes the target as ASCII unguarded
            self._hj_reject(400, "Invalid HTTP request received.")
        if self.transport.is_closing():
            self._hj.framer.close()

    def _hj_process(self, data: bytes) -> None:
        conn = self._hj
        framer = conn.framer
        framer.receive_data(data)
        while True:
            event = framer.next_event()
            if event is NEED_DATA:
                if framer.buffered:  # part of a head: it must complete in time
                    hot.wait_for_head(self, conn)
                break
            if event is PAUSED:
                if framer.buffered > HIGH_WATER_LIMIT:
                    self.flow.pause_reading()
                break
            if isinstance(event, Head):
                self._hj_head(conn, event.data)
            elif isinstance(event, Body):
                self._hj_feed(event.data)
            elif isinstance(event, SkippedBody):
                self._hj_deliver(event.data)
            elif isinstance(event, EndOfMessage):
                self._hj_end_of_message(conn, event.skipped)
            elif isinstance(event, Reject):
                self._hj_reject(event.status, event.reason)
        if framer.state is IDLE and not framer.buffered and conn.timer is None:
            if framer.eof:
                self.transport.close()
            else:
                conn.busy = False  # back on the fast path
                conn.framer = _FAST_PATH_FRAMER

    def _hj_head(self, conn: hot.Connection, head: bytes) -> None:
        hot.head_came(self, conn)
        before = self.cycle
        self._hj_feed_head(head)
        framer = conn.framer
        if framer.state is CLOSED:
            return
        if self.transport.get_protocol() is not self:  # type: ignore[comparison-overlap]
            self._hj_handed_to_websocket(framer.hand_over())
            return
        cycle = self.cycle
        if cycle is before:  # a head the parser did not turn into a request
            self._hj_reject(400, "Invalid HTTP request received.")
            return
        skip = False
        if conn.upgrade or cycle.scope["method"] == "CONNECT":
            skip = self._hj_tunnel(cycle)
        self._hj_head_parsed(conn, cycle, skip)

    def _hj_end_of_message(self, conn: hot.Connection, skipped: bool) -> None:
        cycle = self.cycle
        if skipped:
            cycle.more_body = False
            cycle.message_event.set()
        elif cycle.more_body:
            if not cycle.response_complete:  # the parser disagrees about where the body ends
                self._hj_reject(400, "Invalid HTTP request received.")
                return
            # Answered before its body arrived: uvicorn's h11 and httptools classes drop the rest
            # of the body and leave the flag as it was (zttp's clears it).
            cycle.more_body = False
        if self.transport.is_closing():
            conn.framer.close()
        elif cycle.response_complete:
            conn.framer.response_complete()
            hot.forget_request(self, cycle)

    def _hj_deliver(self, content: bytes) -> None:
        """Hand body bytes the parser skipped to the request, as the parser would have."""
        cycle = self.cycle
        if content and not cycle.response_complete and not cycle.disconnected:
            cycle.body += content
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

    def _hj_reject(self, status: int, reason: str) -> None:
        """Answer ``status`` (400, 408, 431) and close; a request the app is still handling sees a disconnect."""
        self._hj_enter_slow_path().framer.close()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's sends are dropped, receive() says http.disconnect
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        self.logger.warning(reason)
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(build_rejection(status, reason))
        self.transport.close()  # after a started response it is too late for a status: just close

    # -- connection events ------------------------------------------------------------
    def eof_received(self) -> None:
        # A client may half-close after a complete request (or after CONNECT and its
        # first bytes): keep the write side for the response or for the new owner.
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.more_body
            and not cycle.response_complete
            and self.transport.get_extra_info("sslcontext") is None
        ):
            framer = self._hj_enter_slow_path().framer
            if framer.state is RESPONDING:
                framer.receive_eof()
                return True  # type: ignore[return-value]  # uvicorn narrows asyncio's bool | None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._hj.lost(self)
        self._hj_stock_connection_lost(exc)

    # -- the hijack ---------------------------------------------------------------------
    async def _hj_hijack(self, cycle: Cycle, message: Message, ext: dict[str, Any]) -> None:
        """Hand the connection over; the result goes in the request's ``http.hijack`` extension (``ext``)."""
        if cycle.response_started:
            done = "completed" if cycle.response_complete else "started"
            raise ResponseStartedError(
                f"hijack after the HTTP response {done}: the server already wrote a response head. "
                "Hijack before sending http.response.start; to have the server write a head "
                "(e.g. 101 or 200) first, pass status= and headers= to hijack()."
            )
        if cycle.disconnected or self.transport.is_closing():
            cycle.disconnected = True  # the app's later sends are dropped; receive() says http.disconnect
            cycle.message_event.set()
            raise ClientDisconnectedError(
                "the connection is gone (the client closed or reset it, or the server rejected the "
                "request) before the hijack: there is nothing to take over."
            )
        conn = self._hj
        if conn.busy and conn.framer.in_chunked_body:
            raise IncompleteBodyError(
                "the chunked request body has only partly arrived: its framing cannot be handed over. "
                "Read the body to the end with receive() first, then hijack."
            )
        live = adapter.hijacked_connections(self.server_state)
        if self.max_hijacked is not None and len(live) >= self.max_hijacked:
            raise HijackLimitError(
                f"{len(live)} hijacked connections are open, the most this server allows "
                f"(max_hijacked={self.max_hijacked}, ASGI_HIJACK_MAX_HIJACKED): nothing was written. "
                "Answer the request instead, e.g. with 503 and Retry-After, or raise the cap."
            )
        status = message.get("status")
        head = b""
        if status is not None:
            head = build_head(cycle.scope["http_version"], status, message.get("reason"), message.get("headers") or ())
        # Commit: from here on the server lets go of the connection.
        pending = bytes(cycle.body)
        eof = False
        if conn.busy:  # (on the fast path nothing is held: the parser had exactly the head)
            framer = conn.framer
            pending += framer.hand_over()
            eof = framer.eof
        scope: Any = cycle.scope
        adapter.release(cycle, self)
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        self.server_state.total_requests += 1
        # Nothing of the old protocol may keep the connection (in scope["extensions"]) alive:
        # a connection its owner drops is then closed at once, by reference counting.
        self.cycle = self.scope = None
        transport = self.transport
        if head:
            transport.write(head)
        grace = self.config.timeout_graceful_shutdown
        hijacked = HijackedConnection(
            transport,
            pending,
            eof=eof,
            info=conn.identity(transport),
            connections=self.connections,
            hijacked=live,
            shutdown_grace=self.drain_timeout if grace is None else grace,
        )
        conn.set(_HIJACKED)
        if self.access_log:
            self.logger.info(
                '%s - "%s %s HTTP/%s" [hijacked%s]',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                f" {status}" if status is not None else "",
            )
        if transport.get_write_buffer_size():  # the head is not all in the kernel yet
            await hijacked._flush()
        ext["connection"] = hijacked
