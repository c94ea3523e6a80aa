"""The shared server core: one mixin that gives any uvicorn HTTP/1.x protocol ``http.hijack``.

The core sits in front of the parser and feeds it exactly one request message at a
time. Bytes after a message are held, unparsed, until the response to it is complete
(then they are parsed as the next request) or until the app hijacks the connection
(then they start the pending buffer). Parsers still validate everything they are fed;
the core only decides how much to feed.

Cost: a data chunk that is exactly one request head (the common keep-alive GET) takes
a fast path of one ``bytes.find`` (plus a bare-LF count on h11, which accepts bare LF);
framing state is kept only while a body, a partial head or held bytes exist.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .connection import HijackedConnection
from .errors import (
    AlreadyHijackedError,
    AppReturnedError,
    ClientDisconnectedError,
    IncompleteBodyError,
    ResponseStartedError,
)
from .framing import CHUNKED, ChunkScanner, body_length, find_head_end
from .head import build_head
from .lifecycle import CONNECTION_EXTENSION, ConnectionInfo, ConnState, ConnStateHook, registered_hooks

if TYPE_CHECKING:
    from uvicorn.protocols.http.flow_control import FlowControl

__all__ = ["EXTENSION", "HijackServerMixin"]

EXTENSION = "http.hijack"
MAX_HEAD_SIZE = 65536
"""A request head larger than this is answered 431 and the connection closed."""
HEAD_TIMEOUT = 10.0
"""Seconds a client has to send a complete request head, from connecting or from its first
byte (Go's ``ReadHeaderTimeout``); environment override: ``ASGI_HIJACK_HEAD_TIMEOUT``."""

_LINE_END = re.compile(rb"\r?\n")

# Framing states, kept while the connection is off the fast path.
_HEAD, _BODY, _HELD, _DONE = range(4)

Message = dict[str, Any]


class _Frame(ConnectionInfo):
    """Per-connection state of the core, and the app entry point of the connection.

    The framing fields are live only while ``busy`` (off the fast path). Everything lives
    in this one object behind one attribute, which keeps uvicorn's protocol instances
    within CPython's key-sharing dict limit (a larger instance dict costs memory and speed).
    """

    __slots__ = ("app", "busy", "chunks", "eof", "held", "left", "manual", "partial", "phase", "protocol", "timer")

    def __init__(self, hooks: tuple[ConnStateHook, ...], app: Any, protocol: HijackServerMixin) -> None:
        super().__init__(hooks)
        self.app = app
        self.protocol = weakref.ref(protocol)  # weak: a hijacked app must not keep the parser alive
        self.busy = False  # off the fast path: the framing fields below are live
        self.phase = _HEAD
        self.partial = b""  # an incomplete request head, not yet fed
        self.held = bytearray()  # bytes after a complete message, not yet fed
        self.left = 0  # Content-Length body bytes still to feed
        self.chunks: ChunkScanner | None = None
        self.manual = False  # the parser skipped this body: the core delivers it
        self.eof = False  # the client half-closed after a complete request
        self.timer: asyncio.TimerHandle | None = None  # the head timeout, while a head is awaited

    def enter(self, scope: dict[str, Any], receive: Any, send: Callable[[Message], Awaitable[None]]) -> Awaitable[None]:
        """The app as uvicorn calls it: advertise the extensions, give it a ``send`` that can hijack.

        Returns the app's coroutine (no extra frame per request); uvicorn's own sends (its
        500 page) do not go through the wrapper.
        """
        ext: dict[str, Any] = {}
        connection = self.extension.copy()
        connection["request_index"] = self.requests
        self.requests += 1
        scope["extensions"] = {EXTENSION: ext, CONNECTION_EXTENSION: connection}
        if self.hooks:
            self.set(ConnState.ACTIVE)
            owner = self.protocol()
            if owner is not None:
                send.__self__.on_response = owner._hj_on_response  # type: ignore[attr-defined]

        def send_or_hijack(message: Message) -> Awaitable[None]:
            if ext:
                return _special_send(send, ext, message)
            kind = message["type"]
            if kind == "http.response.body":  # the most frequent message: checked first
                return send(message)
            if kind == EXTENSION:
                return _special_send(send, ext, message)
            if message.get("status") == 101:
                # A 101 sent without hijacking switches protocols with nobody to own the
                # connection: close it after the response, never parse what follows as HTTP.
                send.__self__.keep_alive = False  # type: ignore[attr-defined]
            return send(message)

        result: Awaitable[None] = self.app(scope, receive, send_or_hijack)
        return result


async def _special_send(send: Callable[[Message], Awaitable[None]], ext: dict[str, Any], message: Message) -> None:
    if "connection" in ext:
        raise AlreadyHijackedError(
            f"{message['type']!r} sent after the connection was hijacked: the server no longer "
            "speaks HTTP on it. Write to the hijacked connection (conn.writer / conn.send) instead."
        )
    cycle: Any = send.__self__  # type: ignore[attr-defined]
    protocol = getattr(cycle.on_response, "__self__", None)
    if not isinstance(protocol, HijackServerMixin):
        raise AppReturnedError(
            "hijack after the ASGI application returned: the server has already finished this "
            "request. Call hijack() from inside the request handler, before it returns."
        )
    ext["connection"] = await protocol._hj_hijack(cycle, message)


class _Detached:
    """Stands in for a hijacked cycle's flow control and message event (uvicorn's code on a
    ``disconnected`` cycle only reads ``write_paused`` and calls ``set``/``clear``/``wait``)."""

    write_paused = False

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    async def wait(self) -> bool:
        return True


_DETACHED = _Detached()


def _noop() -> None:
    pass


def _release(cycle: Any) -> None:
    """Detach a hijacked request cycle from the server.

    The app's ``receive``/``send`` keep the cycle alive for as long as the app runs;
    ``disconnected`` makes uvicorn's code on it a no-op (``receive`` returns
    ``http.disconnect``, uvicorn's own error page is not sent), and dropping its links
    lets the protocol, its parser and its flow control be freed.
    """
    cycle.disconnected = True
    cycle.waiting_for_100_continue = False
    cycle.body = bytearray()
    cycle.message_event.set()  # wake a receive() in progress: it returns http.disconnect
    cycle.message_event = _DETACHED
    cycle.on_response = _noop
    cycle.flow = _DETACHED
    if hasattr(cycle, "conn"):  # the h11 / zttp connection state machine
        cycle.conn = None


class HijackServerMixin:
    """Mixin for uvicorn's HTTP/1.x protocol classes (h11, httptools, zttp); put it first in the bases.

    It adds a single instance attribute, ``_hj`` (framing state, ``None`` on the fast
    path), so uvicorn's own attribute accesses stay on CPython's fast paths.
    """

    _hj_upgrade = False  # set (on the instance) when the parser reports a non-WebSocket upgrade
    _hj_strict_lf = True
    """The parser rejects bare-LF line endings itself, so the fast path need not look for them.

    Heads that end in a bare-LF blank line always take the slow path, which normalizes them."""
    conn_state_hooks: tuple[ConnStateHook, ...] = ()
    """Connection state hooks of a server wrapper (subclass); apps register theirs in lifespan state."""
    head_timeout: float = float(os.environ.get("ASGI_HIJACK_HEAD_TIMEOUT", HEAD_TIMEOUT))
    """Seconds allowed to send a complete request head (see :data:`HEAD_TIMEOUT`)."""

    if TYPE_CHECKING:  # provided by uvicorn's protocol classes
        app: Any
        app_state: dict[str, Any]
        loop: asyncio.AbstractEventLoop
        config: Any
        cycle: Any
        scope: Any
        flow: FlowControl
        transport: asyncio.Transport
        connections: set[Any]
        server_state: Any
        logger: Any
        access_log: bool

        def _unset_keepalive_if_required(self) -> None: ...
        def send_400_response(self, msg: str) -> None: ...
        def on_response_complete(self) -> None: ...
        def _hj_stock_data_received(self, data: bytes) -> None: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The parser protocol's data_received, called without a super() object per chunk.
        cls._hj_stock_data_received = super().data_received  # type: ignore[method-assign,misc]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        frame = self._hj = _Frame(registered_hooks(self.conn_state_hooks, self.app_state), self.app, self)
        self.app = frame.enter

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        # The first head is awaited off the fast path, under the head timeout.
        frame = self._hj_enter_slow_path()
        frame.opened(transport)
        self._hj_arm_head_timer(frame)

    def _hj_arm_head_timer(self, frame: _Frame) -> None:
        if frame.timer is None:
            frame.timer = self.loop.call_later(self.head_timeout, self._hj_head_timed_out)

    def _hj_head_timed_out(self) -> None:
        frame = self._hj
        if not frame.busy or frame.phase != _HEAD or self.transport.is_closing():
            return
        frame.phase = _DONE
        if frame.partial:
            self.logger.warning("Request head not received within %.1f s: closing the connection.", self.head_timeout)
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: 21\r\nconnection: close\r\n\r\nRequest head timeout."
            )
        self.transport.close()

    # -- parser-specific hooks ----------------------------------------------------
    def _hj_feed_head(self, head: bytes) -> None:
        """Feed one complete request head to the parser, bare LF line endings made CRLF.

        Go's net/rpc client sends ``CONNECT /_goRPC_ HTTP/1.0\\n\\n``; h11 accepts bare LF
        and llhttp and zttp do not, so the head is normalized for all of them alike.
        """
        if head.count(b"\n") != head.count(b"\r\n"):
            head = _LINE_END.sub(b"\r\n", head)
        self._hj_feed(head)

    def _hj_upgrade_body_skipped(self) -> bool:
        """True if the parser skips the body of an Upgrade/CONNECT request (llhttp does)."""
        return False

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn calls this for every non-WebSocket upgrade; here the app may hijack it.
        self._hj_upgrade = True

    # -- the fast path --------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._hj.busy:
            cycle = self.cycle
            if (
                (cycle is None or (cycle.response_complete and not cycle.more_body))
                and data.find(b"\n\r\n") == len(data) - 3
                and (self._hj_strict_lf or data.count(b"\n") == data.count(b"\r\n"))
                and data[0] != 67  # "C": CONNECT takes the slow path
            ):
                try:
                    self._hj_stock_data_received(data)
                except UnicodeDecodeError:  # zttp decodes the target as ASCII unguarded
                    self._hj_fail("Invalid HTTP request received.")
                    return
                if self._hj_upgrade:
                    self._hj_tunnel(self.cycle)
                elif self.cycle is cycle and self.transport.get_protocol() is not self:  # type: ignore[comparison-overlap]
                    self._hj_handed_to_websocket(b"")
                return
            self._hj_enter_slow_path()
        self._hj_process(data)

    def _hj_handed_to_websocket(self, rest: bytes) -> None:
        """uvicorn gave the connection to its WebSocket implementation; pass on the bytes after the head.

        A handshake that declares a body is refused (closed): its body would be read as frames.
        """
        self._hj.set(ConnState.HIJACKED)
        if body_length(self.headers):  # type: ignore[attr-defined]
            self.logger.warning("WebSocket handshake with a request body refused.")
            self.transport.close()
        elif rest:
            self.transport.get_protocol().data_received(rest)  # type: ignore[attr-defined]

    def _hj_tunnel(self, cycle: Any) -> None:
        """The request just parsed is CONNECT or an Upgrade (its task has not run yet)."""
        self._hj_upgrade = False
        # Bytes after CONNECT or Upgrade are never parsed as HTTP: unless the app
        # hijacks, the connection closes after the response.
        cycle.keep_alive = False
        if self._hj_upgrade_body_skipped() and body_length(cycle.scope["headers"]):
            frame = self._hj_enter_slow_path()
            frame.manual = True
            cycle.more_body = True
            self._hj_begin_body(frame, cycle)

    # -- the slow path: framing state ------------------------------------------------
    def _hj_enter_slow_path(self) -> _Frame:
        frame = self._hj
        if frame.busy:
            return frame
        frame.busy = True
        frame.partial = b""
        frame.left = 0
        frame.chunks = None
        frame.manual = False
        cycle = self.cycle
        if cycle is None or (cycle.response_complete and not cycle.more_body):
            frame.phase = _HEAD
        elif cycle.more_body:
            self._hj_begin_body(frame, cycle)
        else:
            self._hj_hold_for(frame, cycle)
        return frame

    def _hj_begin_body(self, frame: _Frame, cycle: Any) -> None:
        length = body_length(cycle.scope["headers"])
        if length == CHUNKED:
            frame.chunks = ChunkScanner(collect=frame.manual)
        else:
            frame.left = length
        frame.phase = _BODY

    def _hj_hold_for(self, frame: _Frame, cycle: Any) -> None:
        """The message is complete, its response is not: hold later bytes until it is."""
        frame.phase = _HELD
        cycle.on_response = self._hj_on_response

    def _hj_on_response(self) -> None:
        """The response completed: uvicorn's bookkeeping, the idle hook, then any held bytes."""
        self.on_response_complete()
        frame = self._hj
        if frame.hooks and not self.transport.is_closing():
            frame.set(ConnState.IDLE)
        if not frame.busy or frame.phase != _HELD:
            return
        if self.transport.is_closing():
            frame.phase = _DONE
            return
        frame.phase = _HEAD
        held = bytes(frame.held)
        frame.held.clear()
        self._hj_process(held)

    def _hj_feed(self, data: bytes) -> None:
        try:
            self._hj_stock_data_received(data)
        except UnicodeDecodeError:  # zttp decodes the target as ASCII unguarded
            self._hj_fail("Invalid HTTP request received.")
        if self.transport.is_closing():
            self._hj.phase = _DONE

    def _hj_process(self, data: bytes) -> None:
        frame = self._hj
        while data:
            state = frame.phase
            if state == _HEAD:
                data = self._hj_head(frame, data)
            elif state == _BODY:
                data = self._hj_body(frame, data)
            else:
                if state == _HELD:
                    frame.held += data
                    if len(frame.held) > HIGH_WATER_LIMIT:
                        self.flow.pause_reading()
                return
        if frame.phase == _HEAD and not frame.partial and frame.timer is None:
            if frame.eof:
                self.transport.close()
            else:
                frame.busy = False  # back on the fast path

    def _hj_head(self, frame: _Frame, data: bytes) -> bytes:
        if frame.partial:
            data = frame.partial + data
            frame.partial = b""
        elif data[0] in b"\r\n":
            # RFC 9112 2.2: empty lines before a request line are ignored.
            data = data.lstrip(b"\r\n")
            if not data:
                return b""
        end = find_head_end(data)
        if end < 0:
            if len(data) > MAX_HEAD_SIZE:
                self._hj_reject_large_head(frame)
            else:
                frame.partial = data
                self._hj_arm_head_timer(frame)
            return b""
        if frame.timer is not None:
            frame.timer.cancel()
            frame.timer = None
        if end > MAX_HEAD_SIZE:
            self._hj_reject_large_head(frame)
            return b""
        before = self.cycle
        self._hj_feed_head(data[:end])
        rest = data[end:]
        if frame.phase == _DONE:
            return b""
        protocol: Any = self.transport.get_protocol()
        if protocol is not self:
            frame.phase = _DONE
            self._hj_handed_to_websocket(rest)
            return b""
        cycle = self.cycle
        if cycle is before:  # a head the parser did not turn into a request
            self._hj_fail("Invalid HTTP request received.")
            return b""
        if self._hj_upgrade or cycle.scope["method"] == "CONNECT":
            self._hj_tunnel(cycle)
        if frame.phase == _HEAD:
            if cycle.more_body:
                self._hj_begin_body(frame, cycle)
            else:
                self._hj_message_complete(frame, cycle)
        return rest

    def _hj_body(self, frame: _Frame, data: bytes) -> bytes:
        chunks = frame.chunks
        if chunks is not None:
            try:
                end = chunks.scan(data)
            except ValueError as exc:
                self._hj_fail(f"Invalid chunked request body: {exc}.")
                return b""
            piece, rest = (data, b"") if end < 0 else (data[:end], data[end:])
            if chunks.content is not None:
                self._hj_deliver(b"".join(chunks.content))
                chunks.content.clear()
            else:
                self._hj_feed(piece)
            if end < 0:
                return b""
            frame.chunks = None
        else:
            left = frame.left
            piece, rest = (data, b"") if len(data) <= left else (data[:left], data[left:])
            frame.left = left - len(piece)
            if frame.manual:
                self._hj_deliver(piece)
            else:
                self._hj_feed(piece)
            if frame.left:
                return b""
        if frame.phase == _DONE:
            return b""
        cycle = self.cycle
        if frame.manual:
            frame.manual = False
            cycle.more_body = False
            cycle.message_event.set()
        elif cycle.more_body:  # the parser disagrees about where the body ends
            self._hj_fail("Invalid HTTP request received.")
            return b""
        self._hj_message_complete(frame, cycle)
        return rest

    def _hj_deliver(self, content: bytes) -> None:
        """Hand body bytes the parser skipped to the request, as the parser would have."""
        cycle = self.cycle
        if content and not cycle.response_complete and not cycle.disconnected:
            cycle.body += content
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

    def _hj_message_complete(self, frame: _Frame, cycle: Any) -> None:
        if self.transport.is_closing():
            frame.phase = _DONE
        elif cycle.response_complete:
            frame.phase = _HEAD
        else:
            self._hj_hold_for(frame, cycle)

    def _hj_fail(self, msg: str) -> None:
        """Answer 400 and close; a request the app is still handling sees a disconnect."""
        self._hj.phase = _DONE
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's sends are dropped, receive() says http.disconnect
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        if cycle is not None and cycle.response_started:
            self.transport.close()  # too late for a 400: the response is under way
            return
        try:
            self.send_400_response(msg)
        except Exception:  # the parser's state machine refuses a response now (h11, zttp)
            self.transport.close()

    def _hj_reject_large_head(self, frame: _Frame) -> None:
        frame.phase = _DONE
        msg = b"Request header fields too large."
        self.logger.warning(msg.decode())
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
        )
        self.transport.close()

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
            frame = self._hj_enter_slow_path()
            if frame.phase == _HELD:
                frame.eof = True
                return True  # type: ignore[return-value]  # uvicorn narrows asyncio's bool | None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        frame = self._hj_enter_slow_path()
        frame.phase = _DONE
        if frame.timer is not None:
            frame.timer.cancel()
        frame.set(ConnState.CLOSED)
        super().connection_lost(exc)  # type: ignore[misc]

    # -- the hijack ---------------------------------------------------------------------
    async def _hj_hijack(self, cycle: Any, message: Message) -> HijackedConnection:
        if cycle.response_started:
            done = "completed" if cycle.response_complete else "started"
            raise ResponseStartedError(
                f"hijack after the HTTP response {done}: the server already wrote a response head. "
                "Hijack before sending http.response.start; to have the server write a head "
                "(e.g. 101 or 200) first, pass status= and headers= to hijack()."
            )
        if cycle.disconnected:
            raise ClientDisconnectedError(
                "the connection is gone (the client closed or reset it, or the server rejected the "
                "request) before the hijack: there is nothing to take over."
            )
        frame = self._hj
        if frame.busy and frame.chunks is not None:
            raise IncompleteBodyError(
                "the chunked request body has only partly arrived: its framing cannot be handed over. "
                "Read the body to the end with receive() first, then hijack."
            )
        status = message.get("status")
        head = b""
        if status is not None:
            head = build_head(cycle.scope["http_version"], status, message.get("reason"), message.get("headers") or ())
        # Commit: from here on the server lets go of the connection.
        frame = self._hj_enter_slow_path()
        pending = bytes(cycle.body) + bytes(frame.held)
        eof = frame.eof
        frame.phase = _DONE
        frame.held.clear()
        _release(cycle)
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        self.server_state.total_requests += 1
        # Nothing of the old protocol may keep the connection (in scope["extensions"]) alive:
        # a connection its owner drops is then closed at once, by reference counting.
        self.cycle = self.scope = None
        transport = self.transport
        if head:
            transport.write(head)
        conn = HijackedConnection(
            transport,
            pending,
            eof=eof,
            info=frame,
            connections=self.connections,
            shutdown_grace=self.config.timeout_graceful_shutdown,
        )
        frame.set(ConnState.HIJACKED)
        if self.access_log:
            scope = cycle.scope
            self.logger.info(
                '%s - "%s %s HTTP/%s" [hijacked%s]',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                f" {status}" if status is not None else "",
            )
        await conn._flush()
        return conn
